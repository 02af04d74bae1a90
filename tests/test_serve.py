"""The web demo: its form checks and handlers without a browser, then the real page in headless Chromium."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from genladder.cli import main
from genladder.diffusion import ScheduleConfig
from genladder.errors import GenladderError
from genladder.run_config import ModelDescription
from genladder.rungs import rung
from genladder.runs import Run
from genladder.serve import (
    BUSY,
    INTERNAL,
    NOT_AVAILABLE,
    RunCatalog,
    generate_grid,
    in_page,
    interpolate_digits,
    latent_directions,
    latent_point,
    latent_sweep,
    parse_digit,
    parse_sampler,
    whole_number,
)
from tests.test_cli import run_cli, tiny_train_args
from tests.test_diffusion_cli import tiny_diffusion_args

SRC = Path(__file__).resolve().parents[1] / "src"


def tile_grid_size(columns: int, rows: int) -> tuple[int, int]:
    """Pixel size of a save_grid/grid_image PNG: 32-px tiles, 2-px padding, upscaled 2x."""
    return 2 * (columns * 34 + 2), 2 * (rows * 34 + 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny trained cvae and cddpm (a few steps each, on the committed extract)."""
    from tests.conftest import MINI_MNIST

    root = tmp_path_factory.mktemp("serve-runs")
    torch.set_num_threads(1)
    assert main([str(a) for a in tiny_train_args("cvae", root / "cvae", MINI_MNIST, "--latent-dim", 16)]) == 0
    assert main([str(a) for a in tiny_diffusion_args("cddpm", root / "cddpm", MINI_MNIST)]) == 0
    assert main([str(a) for a in tiny_train_args("vae", root / "vae", MINI_MNIST, "--latent-dim", 4,
                                                 "--steps", 2)]) == 0
    # the newer rungs, for the page: a guided flow, and a latent flow on a spatial VAE
    flow_args = tiny_diffusion_args("cflow", root / "cflow", MINI_MNIST)
    at = flow_args.index("--T")
    assert main([str(a) for a in flow_args[:at] + flow_args[at + 2 :]]) == 0  # a flow has no T
    assert main([str(a) for a in tiny_train_args("vae", root / "vae-spatial", MINI_MNIST, "--latent-channels", 2,
                                                 "--steps", 2)]) == 0
    assert main(["train", "latent", "--autoencoder", str(root / "vae-spatial"), "--preset", "cpu-fast", "--widths",
                 "8,8,8", "--attention", "", "--steps", "2", "--batch-size", "32", "--limit", "128", "--test-limit",
                 "32", "--data-dir", str(MINI_MNIST), "--run-dir", str(root / "latent"), "--no-progress"]) == 0
    return {name: str(root / name) for name in ("cvae", "cddpm", "vae", "cflow", "latent")}


@pytest.fixture(scope="module")
def catalog(runs):
    return RunCatalog([runs["cddpm"], runs["cvae"]], device="cpu")


def fake_run(kind: str, num_classes: int = 0) -> Run:
    """A run without a network: its config only (a 50-step schedule for the diffusion rungs, label dropout for the
    guided ones, whose guidance needs the null label)."""
    spec = rung(kind)
    model = spec.model_config(kind=kind, num_classes=num_classes) if spec.codes else \
        spec.model_config(num_classes=num_classes)
    dropout = {"label_dropout": 0.1} if spec.guided else {}
    objective = spec.objective_config(schedule=ScheduleConfig(T=50), **dropout) if spec.diffusion else \
        spec.objective_config(**dropout)
    return Run(kind, None, ModelDescription(kind, model, objective), Path("."), "model")


class TestFormChecks:
    @pytest.mark.parametrize("value,low,high,expected", [
        (0, 1, None, "steps must be at least 1, got 0"),
        (12, 0, 9, "steps must be in 0..9, got 12"),
        (2.5, 1, None, "steps must be a whole number, got 2.5"),
        ("abc", 1, None, "steps must be a whole number, got 'abc'"),
        (None, 1, None, "steps is empty"),
        ("", 1, None, "steps is empty"),
        (float("nan"), 1, None, "steps must be a whole number"),
    ])
    def test_whole_number_errors(self, value, low, high, expected):
        with pytest.raises(GenladderError, match=expected):
            whole_number(value, "steps", low, high)

    def test_whole_number_accepts(self):
        assert whole_number("7", "steps", 1) == 7 and whole_number(3.0, "steps", 1, 3) == 3

    def test_digit(self):
        cvae = fake_run("cvae", 10)
        assert parse_digit("all", cvae) is None and parse_digit(" 3 ", cvae) == 3 and parse_digit(None, cvae) is None
        with pytest.raises(GenladderError, match="digit must be in 0..9, got 12"):
            parse_digit("12", cvae)
        with pytest.raises(GenladderError, match="pick one digit in 0..9"):
            parse_digit("all", cvae, allow_all=False)
        with pytest.raises(GenladderError, match="this vae run is unconditional"):
            parse_digit("3", fake_run("vae"))

    def test_sampler_fields(self):
        cddpm = fake_run("cddpm", 10)
        config = parse_sampler(cddpm, "ddim", 10, 2.5)
        assert (config.sampler, config.steps, config.guidance) == ("ddim", 10, 2.5)
        assert parse_sampler(fake_run("ddpm"), "dpmpp", 5, 3).guidance == 0  # unconditional: the slider is hidden
        assert parse_sampler(fake_run("vae"), "nonsense", 0, -1) is None  # autoencoders ignore these fields
        for args, expected in [(("dpmpp", 0, 0), "steps must be in 1..50, got 0"),
                               (("dpmpp", 51, 0), "steps must be in 1..50, got 51"),
                               (("rk4", 5, 0), "sampler must be one of ddpm, ddim, dpmpp"),
                               (("euler", 5, 0), "the euler sampler is for flow runs; this cddpm run samples with"),
                               (("dpmpp", 5, -1), "guidance weight must be in 0..100, got -1.0"),
                               (("dpmpp", 5, "x"), "guidance weight must be a number")]:
            with pytest.raises(GenladderError, match=expected):
                parse_sampler(cddpm, *args)

    def test_in_page_turns_errors_into_escaped_messages(self):
        def broken(name):
            raise GenladderError(f"{name} is not a genladder run folder")

        image, status = in_page(broken, 1)("<b>runs/x</b>")
        assert image is None and "&lt;b&gt;runs/x&lt;/b&gt; is not a genladder run folder" in status
        assert "genladder-error" in status


class TestHandlers:
    def test_catalog_checks_runs_at_start_and_confines_typed_paths(self, runs, tmp_path):
        with pytest.raises(GenladderError, match="is not a genladder run folder"):
            RunCatalog([runs["cvae"], str(tmp_path)])
        catalog = RunCatalog([runs["cvae"]], device="cpu")
        assert catalog.names == [runs["cvae"]] and catalog.get(runs["cvae"]).kind == "cvae"
        assert catalog.get(runs["cvae"] + "/.").kind == "cvae" and len(catalog) == 1  # one run, one entry
        # Outside the command line's folders (and no --runs-root): one message, whatever is there.
        for typed in (runs["cddpm"], str(tmp_path), "/no/such/folder", "/etc", "/dev/zero", "x" * 5000):
            with pytest.raises(GenladderError) as caught:
                catalog.get(typed)
            assert str(caught.value) == NOT_AVAILABLE, typed
        with pytest.raises(GenladderError, match="pick a run"):
            catalog.get("  ")

    def test_runs_root_catalogue_is_keyed_by_resolved_path_and_bounded(self, runs, tmp_path, monkeypatch):
        import genladder.serve as serve

        root = tmp_path / "root"
        for name in ("a", "b", "c"):
            shutil.copytree(runs["vae"], root / name)
        catalog = RunCatalog([runs["cvae"]], device="cpu", runs_root=str(root))
        spellings = [f"{root}/a", f"{root}/a/", f"{root}/./a", f"/{root}/a", f"{root}/b/../a"]
        assert len({id(catalog.get(s)) for s in spellings}) == 1 and len(catalog) == 2
        monkeypatch.setattr(serve, "MAX_TYPED_RUNS", 2)
        for name in ("a", "b", "c"):
            assert catalog.get(str(root / name)).kind == "vae"
        assert len(catalog) == 1 + 2  # the command line's run stays; the oldest typed one was dropped
        with pytest.raises(GenladderError, match="^that run is not available"):
            catalog.get(f"{root}/../../etc")

    def test_fifo_in_a_typed_run_does_not_block(self, runs, tmp_path):
        import signal

        bad = tmp_path / "root" / "fifo-run"
        shutil.copytree(runs["vae"], bad)
        checkpoint = next((bad / "checkpoints").iterdir())
        (checkpoint / "model.safetensors").unlink()
        os.mkfifo(checkpoint / "model.safetensors")
        catalog = RunCatalog([runs["vae"]], device="cpu", runs_root=str(tmp_path / "root"))

        def hung(*_):
            raise AssertionError("reading a FIFO blocked")

        signal.signal(signal.SIGALRM, hung)
        signal.alarm(10)
        try:
            with pytest.raises(GenladderError, match="^that run is not available"):
                catalog.get(str(bad))
        finally:
            signal.alarm(0)

    def test_unexpected_errors_and_overload_give_a_fixed_line(self, monkeypatch):
        import genladder.serve as serve

        def broken():
            raise AttributeError("'list' object has no attribute 'get'")

        image, status = in_page(broken, 1)()
        assert image is None and INTERNAL in status and "attribute" not in status
        for _ in range(serve.MAX_CONCURRENT):
            serve._working.acquire()
        try:
            image, status = in_page(lambda: (None, "drawn"), 1)()
            assert BUSY in status
        finally:
            for _ in range(serve.MAX_CONCURRENT):
                serve._working.release()
        assert "drawn" in in_page(lambda: (None, "drawn"), 1)()[1]

    def test_latent_tab_works_for_an_unconditional_vae(self, runs):
        catalog = RunCatalog([runs["vae"]], device="cpu")
        # The hidden digit field keeps its default "0": an unconditional run must ignore it.
        image, caption = latent_point(catalog, runs["vae"], "0", 0, 1, 1.5, 0)
        assert image.size[0] == image.size[1] >= 8 * 32  # one digit, drawn large
        assert "z[0] = +1.5" in caption
        assert latent_sweep(catalog, runs["vae"], "0", 0, 1).size == tile_grid_size(7, 7)

    def test_generate_grid_with_progress(self, catalog, runs):
        fractions = []
        image, caption = generate_grid(catalog, runs["cddpm"], "all", 20, "dpmpp", 4, 2, 0,
                                       progress=lambda fraction, desc: fractions.append(fraction))
        assert image.size == tile_grid_size(2, 10)  # one row per digit, two of each
        assert fractions == [0.25, 0.5, 0.75, 1.0] and "dpmpp 4 steps, guidance w = 2" in caption

    def test_generate_grid_is_seeded(self, catalog, runs):
        def png(seed, digit="3"):
            return generate_grid(catalog, runs["cvae"], digit, 8, "dpmpp", 20, 0, seed)[0].tobytes()

        assert png(0) == png(0) and png(0) != png(1)
        image, caption = generate_grid(catalog, runs["cvae"], "3", 8, "dpmpp", 20, 0, 0)
        assert image.size == tile_grid_size(3, 3) and "digit 3" in caption  # 8 images, near-square

    def test_generate_errors(self, catalog, runs, tmp_path):
        cases = [((runs["cddpm"], "all", 20, "dpmpp", 0, 2, 0), "steps must be in 1..50, got 0"),
                 ((runs["cddpm"], "12", 20, "dpmpp", 5, 2, 0), "digit must be in 0..9, got 12"),
                 ((runs["cvae"], "all", 0, "dpmpp", 5, 2, 0), "images must be in 1..400, got 0"),
                 ((runs["cvae"], "all", 10, "dpmpp", 5, 2, -1), "seed must be in 0.."),
                 ((str(tmp_path), "all", 10, "dpmpp", 5, 2, 0), "^that run is not available")]
        for args, expected in cases:
            with pytest.raises(GenladderError, match=expected):
                generate_grid(catalog, *args)

    def test_latent_sliders_move_the_digit(self, catalog, runs):
        choices, note = latent_directions(catalog, runs["cvae"])
        activities = [float(label.split("activity ")[1].rstrip(")")) for label, _ in choices]
        assert sorted(i for _, i in choices) == list(range(16)) and activities == sorted(activities, reverse=True)
        assert "1000 test digits" in note
        first, second = choices[0][1], choices[1][1]
        centre = latent_point(catalog, runs["cvae"], "4", first, second, 0, 0)[0].tobytes()
        moved, caption = latent_point(catalog, runs["cvae"], "4", first, second, 3, -3)
        assert moved.tobytes() != centre and f"z[{first}] = +3.0" in caption
        assert latent_sweep(catalog, runs["cvae"], "4", first, second).size == tile_grid_size(7, 7)

    def test_latent_errors(self, catalog, runs):
        cases = [((runs["cvae"], "4", 1, 1, 0, 0), "pick two different latent directions"),
                 ((runs["cvae"], "4", 0, 16, 0, 0), "direction 2 must be in 0..15, got 16"),
                 ((runs["cvae"], "4", 0, 1, 5, 0), "direction 1 slider must be in -3..3"),
                 ((runs["cvae"], "all", 0, 1, 0, 0), "pick one digit"),
                 ((runs["cddpm"], "4", 0, 1, 0, 0), "need a vae or cvae run; this run is a cddpm")]
        for args, expected in cases:
            with pytest.raises(GenladderError, match=expected):
                latent_point(catalog, *args)

    def test_interpolation(self, catalog, runs):
        x, labels = catalog.test_digits(runs["cvae"])
        first, second = 0, int((labels != labels[0]).nonzero()[0])  # two different classes: two rows
        image, caption = interpolate_digits(catalog, runs["cvae"], first, second, 6)
        assert image.size == tile_grid_size(8, 2) and "rows decoded as" in caption
        with pytest.raises(GenladderError, match="second test digit must be in 0..999, got 1000"):
            interpolate_digits(catalog, runs["cvae"], 0, 1000, 6)
        with pytest.raises(GenladderError, match="interpolations need"):
            interpolate_digits(catalog, runs["cddpm"], 0, 1, 6)


class TestServeCommand:
    def test_not_a_run_folder(self, capsys, tmp_path):
        code, _, err = run_cli(capsys, "serve", tmp_path)
        assert code == 2
        assert err.strip() == f"genladder: error: {tmp_path} is not a genladder run folder (no config.json)"

    def test_bad_port(self, capsys, runs):
        code, _, err = run_cli(capsys, "serve", runs["cvae"], "--port", 70000)
        assert code == 2 and "--port: must be in 1..65535, got 70000" in err

    def test_port_in_use(self, capsys, runs):
        require(importlib.util.find_spec("gradio") is not None, "gradio")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            code, _, err = run_cli(capsys, "serve", runs["cvae"], "--port", port, "--device", "cpu")
        assert code == 2 and f"cannot serve on 127.0.0.1:{port}" in err and "pick another --port" in err

    def test_without_gradio_says_how_to_install(self, capsys, runs, monkeypatch):
        monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
        code, _, err = run_cli(capsys, "serve", runs["cvae"])
        assert code == 2
        assert err.strip() == "genladder: error: the web demo needs Gradio: pip install 'genladder[demo]'"


# --- the real page in a real browser ---

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require(ok: bool, what: str) -> None:
    """Skip with the reason on a developer machine without the browser tools; in CI (CI=true) fail instead."""
    if ok:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing in CI; .ci/run installs it")
    pytest.skip(f"{what} is missing (pip install -e '.[dev,demo]'; apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(runs):
    """`genladder serve` in a subprocess on a free port; yields its URL and stops it afterwards."""
    require(importlib.util.find_spec("gradio") is not None, "gradio")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "genladder", "serve", runs["cddpm"], runs["cvae"], runs["cflow"],
                                runs["latent"], "--port",
                                str(port), "--device", "cpu"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            pytest.fail(f"genladder serve exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"genladder serve did not answer on {url} within 120 s")
        time.sleep(0.5)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def test_page_in_headless_chromium(server, runs, tmp_path):
    require(importlib.util.find_spec("playwright") is not None, "playwright")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium is not None, "chromium")
    from playwright.sync_api import expect, sync_playwright

    outside = []

    def local_only(route):  # the page must work offline: any request off this server is refused and recorded
        if route.request.url.startswith(server) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.route("**/*", local_only)
            page.goto(server)

            def generate(expect_image: bool):
                grid = page.locator("#gen-grid img")
                old = grid.get_attribute("src") if grid.count() else None
                page.locator("#gen-button").click()
                if not expect_image:
                    return None
                # (90 s: the first picture includes loading the run; on a loaded 2-core machine it once took over 30)
                expect(page.locator("#gen-grid img")).to_be_visible(timeout=90_000)
                expect(page.locator("#gen-grid img")).not_to_have_attribute("src", old or "", timeout=90_000)
                body = page.request.get(page.locator("#gen-grid img").get_attribute("src")).body()
                assert body[:8] == b"\x89PNG\r\n\x1a\n"  # a real PNG
                return Image.open(io.BytesIO(body))

            def type_into(elem_id: str, text: str):
                page.locator(f"#{elem_id} input").fill(text)
                page.locator(f"#{elem_id} input").press("Enter")

            # A grid from the cddpm: 20 images, one row per digit, 5 DPM-Solver++ steps.
            type_into("gen-n", "20")
            type_into("gen-steps", "5")
            assert generate(expect_image=True).size == tile_grid_size(2, 10)
            status = "cddpm: 20 images, one row per digit, dpmpp-sde 5 steps"
            expect(page.locator("#gen-status")).to_contain_text(status)

            # Bad input: a message in the page each time, and the server keeps answering.
            last_picture = page.locator("#gen-grid img").get_attribute("src")
            type_into("gen-steps", "0")
            generate(expect_image=False)
            expect(page.locator("#gen-status")).to_contain_text("steps must be in 1..50, got 0", timeout=15_000)
            expect(page.locator("#gen-grid img")).to_have_attribute("src", last_picture)  # kept under the message
            type_into("gen-steps", "5")
            type_into("gen-digit", "12")
            generate(expect_image=False)
            expect(page.locator("#gen-status")).to_contain_text("digit must be in 0..9, got 12", timeout=15_000)
            type_into("gen-run", str(tmp_path))
            expect(page.locator("#gen-status")).to_contain_text("that run is not available", timeout=15_000)

            # Still serving: the cvae draws eight 3s.
            type_into("gen-run", runs["cvae"])
            expect(page.locator("#gen-status")).to_have_text("", timeout=15_000)  # the run loaded: error cleared
            type_into("gen-digit", "3")
            type_into("gen-n", "8")
            assert generate(expect_image=True).size == tile_grid_size(3, 3)
            expect(page.locator("#gen-status")).to_contain_text("cvae: 8 images, digit 3")

            # The newer rungs, typed in: the sampler field turns to the ODE solvers, guidance stays available.
            for name in ("cflow", "latent"):
                type_into("gen-run", runs[name])
                expect(page.locator("#gen-status")).to_have_text("", timeout=15_000)
                expect(page.locator("#gen-sampler")).to_contain_text("midpoint", timeout=15_000)
                expect(page.locator("#gen-guidance")).to_be_visible()
                assert generate(expect_image=True).size == tile_grid_size(3, 3)
                expect(page.locator("#gen-status")).to_contain_text(f"{name}: 8 images, digit 3, heun 5 steps")

            # The VAE tabs: the latent sweep is drawn on load; an interpolation on request.
            page.get_by_role("tab", name="Latent space").click()
            expect(page.locator("#latent-sweep img")).to_be_visible(timeout=30_000)
            page.get_by_role("tab", name="Interpolate").click()
            page.locator("#interp-button").click()
            expect(page.locator("#interp-row img")).to_be_visible(timeout=30_000)
        finally:
            browser.close()
    assert outside == [], f"the page asked for outside resources: {outside}"
    with urllib.request.urlopen(server, timeout=5) as response:
        assert response.status == 200


def http_status(url: str, headers: dict | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def declared_body_status(url: str, path: str, length: int) -> int:
    """The status of a POST that declares a body of ``length`` bytes and sends none of it."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_http_guard_and_concurrent_requests(server):
    """Host/Origin checked, uploads off, bodies capped, and 20 requests at once all answered."""
    from concurrent.futures import ThreadPoolExecutor

    port = server.rstrip("/").rsplit(":", 1)[1]
    config = server + "config"
    assert http_status(config) == 200
    assert http_status(config, {"Host": f"localhost:{port}"}) == 200
    assert http_status(config, {"Host": f"rebound.example:{port}"}) == 403  # DNS rebinding
    assert http_status(config, {"Origin": "http://evil.example"}) == 403  # a cross-site page
    assert http_status(config, {"Origin": f"http://127.0.0.1:{port}"}) == 200
    upload = server + "gradio_api/upload"
    assert http_status(upload, {"Content-Type": "application/octet-stream"}, b"x" * 100) == 403
    # A 2 MB body is refused from its Content-Length, before it is read. Only the headers are sent: a client
    # still writing the body when the server answers and closes gets a broken pipe (seen once in CI).
    assert declared_body_status(server, "/gradio_api/queue/join", 2 * 2**20) == 413
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: http_status(config), range(20)))
    assert statuses == [200] * 20
