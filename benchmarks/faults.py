"""The fault campaign of issue 17: hostile inputs and hard faults, each classified, one table.

    .venv/bin/python benchmarks/faults.py            # the full campaign (800+ cases; minutes on 2 cores)
    .venv/bin/python benchmarks/faults.py --quick    # the bounded form the test suite runs (tests/test_faults.py)

Categories (each case is built here from a tiny trained run, never downloaded):

- **corrupted run files**: every file of a run folder truncated, emptied, bit-flipped, of wrong JSON
  types, huge (sparse), deeply nested, replaced by a folder, a FIFO, /dev/zero, a symlink loop, or
  deleted, then read by ``sample``, ``train --resume`` and the web demo's catalogue;
- **own data**: bad folders and .npz files (bombs, lies, links, specials) given to ``train --data``;
- **argument fuzz**: hostile values for every option of every verb;
- **crash trials**: SIGKILL at the k-th fsync / rename / folder removal / metrics append of a short
  run, then ``--resume``: the result must equal the uninterrupted run bitwise; and two resumes at once;
- **disk full**: a file-size limit (RLIMIT_FSIZE, the same ``OSError`` path as ENOSPC) hit mid-run;
- **web demo**: hostile form values and typed paths through the page's handlers, and hostile HTTP
  requests (Host, Origin, uploads, bodies) plus 20 concurrent ones against a real ``genladder serve``.

Outcomes: *clean* (exit 0 where the input is acceptable, else exit 2 ending in one
``genladder: error:`` line), *traceback* (any other exception or output), *hang* (past the case's
time limit), *silent wrong / stuck* (exit 0 on input that must be refused, damaged weights loaded,
a resumed run that differs from the uninterrupted one or cannot continue).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "tests" / "data" / "mnist-mini"
OUTCOMES = ("clean", "traceback", "hang", "silent")


class Hang(BaseException):
    """Raised by the alarm inside a case that ran past its limit (BaseException: nothing swallows it)."""


def _on_alarm(*_):
    raise Hang()


def run_main(argv: list[str], limit_s: float = 60) -> tuple[int | str, str]:
    """``genladder.cli.main(argv)`` in this process: (exit code, or "traceback"/"hang"; stderr + stdout)."""
    from genladder.cli import main

    out = io.StringIO()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            code = main([str(a) for a in argv])
    except Hang:
        return "hang", out.getvalue()
    except BaseException as error:  # noqa: BLE001 - escaping main is exactly what we count
        return "traceback", out.getvalue() + f"{type(error).__name__}: {error}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return code, out.getvalue()


def note(outcome: str, label: str, text: str) -> str:
    """``outcome``, printed with its case and output when it is not clean and FAULTS_VERBOSE is set."""
    if outcome != "clean" and os.environ.get("FAULTS_VERBOSE"):
        print(f"faults: {outcome}: {label}\n    {text.strip()[-600:]}", file=sys.stderr, flush=True)
    return outcome


def classify(code: int | str, text: str, must_fail: bool) -> str:
    if code == "hang":
        return "hang"
    if code == "traceback" or "Traceback" in text:
        return "traceback"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if code == 2 and lines and lines[-1].startswith("genladder: error: ") or code == 2 and not lines:
        return "clean"
    if code == 0:
        # Damage that recovery skips and says so (a checkpoint passed over for an older complete one) is fine.
        stated = "using the newest complete checkpoint" in text
        return "silent" if must_fail and not stated else "clean"
    return "traceback"


# ---------------------------------------------------------------------------------------------- runs
def make_runs(root: Path) -> dict[str, Path]:
    """A tiny VAE (with an EMA) and a tiny cddpm trained on the committed extract."""
    from genladder.cli import main

    common = ["--data-dir", MINI, "--limit", 128, "--test-limit", 32, "--batch-size", 32, "--no-progress"]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main([str(a) for a in ["train", "vae", "--run-dir", root / "vae", "--steps", 4, "--width", 8,
                                      "--latent-dim", 4, "--ema-decay", 0.9, "--checkpoint-every", 2,
                                      *common]]) == 0
        assert main([str(a) for a in ["train", "cddpm", "--preset", "small", "--run-dir", root / "cddpm",
                                      "--steps", 2, "--widths", "8,8", "--attention", "", "--T", 20,
                                      *common]]) == 0
    return {"vae": root / "vae", "cddpm": root / "cddpm"}


# ------------------------------------------------------------------------------ corrupted run files
JSON_FILES = ("config.json", "latest.json", "trainer_state.json")
WEIGHT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors")


def _mutations(name: str) -> list[str]:
    common = ["truncate-half", "empty", "folder", "fifo", "dev-zero", "symlink-loop", "sparse-giant", "deleted"]
    if name.endswith(".json"):
        return common + ["json-list", "json-nested", "json-bignum", "json-nan", "json-wrong-types", "binary"]
    if name.endswith(".safetensors"):
        return common + ["flip-data-1", "flip-data-2", "flip-header", "header-huge-length", "metadata-garbage"]
    return common + ["torn-line", "garbage-lines"]  # metrics.jsonl


def _first_number_to_nan(value):
    """The JSON value with its first number (depth first) replaced by NaN (written as the token NaN)."""
    done = False

    def walk(item):
        nonlocal done
        if isinstance(item, dict):
            return {key: walk(v) for key, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, (int, float)) and not isinstance(item, bool) and not done:
            done = True
            return float("nan")
        return item

    return walk(value)


def _wrong_types(value: dict) -> dict:
    """Every top-level value replaced by one of another JSON type."""
    swap = {str: 7, int: "38", float: [1.5], list: {"a": 1}, dict: "x", bool: "yes", type(None): {"n": 1}}
    return {key: swap[type(v)] for key, v in value.items()}


def mutate(path: Path, how: str) -> None:
    data = path.read_bytes() if path.is_file() else b""
    if how not in ("folder", "symlink-loop", "dev-zero", "fifo", "deleted"):
        path.unlink()
    if how == "truncate-half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how in ("folder", "symlink-loop", "dev-zero", "fifo", "deleted"):
        path.unlink()
        if how == "folder":
            path.mkdir()
        elif how == "symlink-loop":
            path.symlink_to(path)
        elif how == "dev-zero":
            path.symlink_to("/dev/zero")
        elif how == "fifo":
            os.mkfifo(path)
    elif how == "sparse-giant":
        with open(path, "wb") as handle:
            handle.truncate(100 * 2**30)
    elif how == "json-list":
        path.write_text("[]")
    elif how == "json-nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif how == "json-bignum":
        path.write_text('{"step": ' + "9" * 5000 + "}")
    elif how == "json-nan":
        path.write_text(json.dumps(_first_number_to_nan(json.loads(data))))
    elif how == "json-wrong-types":
        path.write_text(json.dumps(_wrong_types(json.loads(data))))
    elif how == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif how.startswith("flip-data"):
        header = 8 + int.from_bytes(data[:8], "little")
        flipped = bytearray(data)
        position = header + (len(data) - header) * (1 if how.endswith("1") else 3) // 4
        flipped[min(position, len(data) - 1)] ^= 0x40
        path.write_bytes(bytes(flipped))
    elif how == "flip-header":
        flipped = bytearray(data)
        flipped[8 + 20] ^= 0x01
        path.write_bytes(bytes(flipped))
    elif how == "header-huge-length":
        path.write_bytes((2**62).to_bytes(8, "little") + data[8:])
    elif how == "metadata-garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":' + data[24:])
    elif how == "torn-line":
        path.write_bytes(data + b'{"split": "train", "step": 99, "lo')
    elif how == "garbage-lines":
        path.write_bytes(data + b"\x00\xff[1,2\n{}\n" + b"[" * 50_000 + b"\n")
    else:
        raise AssertionError(how)


def _target(run: Path, name: str) -> Path:
    if name in ("config.json", "latest.json", "metrics.jsonl"):
        return run / name
    return next(p for p in sorted((run / "checkpoints").iterdir()) if p.name.startswith("step_"))


def corrupted_cases(runs: dict[str, Path], work: Path, every: int = 1,
                    only: tuple[str, str] | None = None) -> list[str]:
    """Mutate one file of a copy of the VAE run, then run a verb; the outcomes. ``only``: (file, mutation)."""
    outcomes = []
    names = [*JSON_FILES, *WEIGHT_FILES, "metrics.jsonl"]
    cases = [(n, m, v) for n in names for m in _mutations(n) for v in ("sample", "resume", "serve")
             if only is None or (n, m) == only]
    for index, (name, how, verb) in enumerate(cases[::every]):
        run = work / f"corrupt-{index}-{name}-{how}-{verb}"
        shutil.copytree(runs["vae"], run, symlinks=True)
        checkpoints = sorted(p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
        # Damage the newest checkpoint's file (the one latest.json names); the run folder's own files directly.
        path = run / name if name in ("config.json", "latest.json", "metrics.jsonl") else checkpoints[-1] / name
        mutate(path, how)
        benign = name in ("latest.json", "metrics.jsonl") or (verb != "resume" and name in (
            "optimizer.safetensors", "rng.safetensors", "trainer_state.json", "model.safetensors"))
        if verb == "sample":
            code, text = run_main(["sample", run, "--n", 2, "--out", work / f"s{index}.png", "--device", "cpu"])
        elif verb == "resume":
            code, text = run_main(["train", "--resume", run, "--steps", 6, "--no-progress"])
        else:
            code, text = _serve_load(run)
        outcomes.append(note(classify(code, text, must_fail=not benign), f"{name} {how} {verb}", text))
        shutil.rmtree(run, ignore_errors=True)
    return outcomes


def _serve_load(run: Path) -> tuple[int | str, str]:
    """The demo's catalogue loading a typed path below --runs-root: 0 when loaded, 2 with its one line."""
    from genladder.errors import GenladderError
    from genladder.serve import RunCatalog, generate_grid

    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 30)
    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(out):
            catalog = RunCatalog([], device="cpu", runs_root=str(run.parent))
            generate_grid(catalog, str(run), "all", 2, "dpmpp", 5, 0, 0)
        return 0, out.getvalue()
    except GenladderError as error:
        return 2, f"genladder: error: {error}"
    except Hang:
        return "hang", ""
    except Exception as error:  # noqa: BLE001
        return "traceback", f"{type(error).__name__}: {error}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


# --------------------------------------------------------------------------------------- own data
def own_data_cases(work: Path, every: int = 1) -> list[str]:
    from PIL import Image

    def folder(name: str) -> Path:
        path = work / "own" / name
        path.mkdir(parents=True)
        return path

    def npz(name: str, **arrays) -> Path:
        path = folder(name) / "data.npz"
        np.savez(path, **arrays)
        return path

    images = np.zeros((8, 16, 16), np.uint8)
    builders = {
        "missing": lambda: work / "own" / "missing",
        "empty-string": lambda: "",
        "dev-null": lambda: "/dev/null",
        "dev-zero": lambda: "/dev/zero",
        "fifo": lambda: _fifo(folder("fifo") / "x.npz"),
        "empty-folder": lambda: folder("empty"),
        "csv": lambda: _write(folder("csv") / "t.csv", b"1,2"),
        "npy-renamed": lambda: _npy_renamed(folder("npy") / "d.npz", images),
        "npz-pickle": lambda: npz("pickle", images=np.array([images, "x"], dtype=object)),
        "npz-float": lambda: npz("float", images=images.astype(np.float32)),
        "npz-no-images": lambda: npz("noimg", pictures=images),
        "npz-shape": lambda: npz("shape", images=np.zeros((2, 5, 16, 16), np.uint8)),
        "npz-empty": lambda: npz("empty-npz", images=images[:0]),
        "npz-12px": lambda: npz("12px", images=np.zeros((4, 12, 12), np.uint8)),
        "npz-labels-huge": lambda: npz("lhuge", images=images, labels=np.array([0, 1, 2, 3, 4, 5, 6, 10**12])),
        "npz-labels-negative": lambda: npz("lneg", images=images, labels=-np.ones(8, np.int64)),
        "npz-labels-float": lambda: npz("lfloat", images=images, labels=np.zeros(8)),
        "npz-labels-count": lambda: npz("lcount", images=images, labels=np.zeros(3, np.int64)),
        "npz-labels-gap": lambda: npz("lgap", images=images, labels=np.array([0, 2] * 4)),
        "npz-corrupt-zip": lambda: _write(folder("zip") / "d.npz", b"PK\x03\x04junk"),
        "npz-header-bomb": lambda: _header_bomb(folder("bomb") / "d.npz"),
        "npz-truncated": lambda: _truncated_npz(folder("trunc") / "d.npz", images),
        "png-corrupt": lambda: _write(folder("pngbad") / "a.png", b"\x89PNG\r\n\x1a\nxx").parent,
        "png-huge-side": lambda: _png(folder("big"), (2048, 2048)),
        "png-not-square": lambda: _png(folder("rect"), (24, 16)),
        "png-odd-size": lambda: _png(folder("odd"), (20, 20)),
        "png-16bit": lambda: (Image.fromarray(np.zeros((16, 16), np.uint16)).save(folder("deep") / "a.png"),
                              work / "own/deep")[1],
        "png-transparent": lambda: (Image.new("RGBA", (16, 16), (0, 0, 0, 9)).save(folder("alpha") / "a.png"),
                                    work / "own/alpha")[1],
        "class-link-to-root": lambda: _link_root(folder("linkroot")),
        "symlink-loop-class": lambda: _loop_class(folder("loop")),
        "data-symlink-loop": lambda: _self_link(folder("selfloop") / "loop"),
        "mixed-loose-and-classes": lambda: _mixed(folder("mixed")),
        "empty-class": lambda: _empty_class(folder("emptyclass")),
    }
    outcomes = []
    for name, build in list(builders.items())[::every]:
        try:
            path = build()
        except Exception as error:  # noqa: BLE001 - a builder bug must show, not pass
            raise RuntimeError(f"own-data case {name}: {error}") from error
        for kind in ("vae", "cvae"):
            code, text = run_main(["train", kind, "--data", path, "--dry-run"], limit_s=60)
            outcomes.append(note(classify(code, text, must_fail=True), f"own data {name} {kind}", text))
    return outcomes


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _self_link(path: Path) -> Path:
    path.symlink_to(path)
    return path


def _npy_renamed(path: Path, images) -> Path:
    np.save(path.with_suffix(".npy"), images)
    path.with_suffix(".npy").rename(path)
    return path


def _png(path: Path, size) -> Path:
    from PIL import Image

    Image.new("L", size).save(path / "a.png")
    return path


def _header_bomb(path: Path) -> Path:
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (9 * 2**20, 1024, 1024)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue())
    return path


def _truncated_npz(path: Path, images) -> Path:
    np.savez(path, images=images)
    path.write_bytes(path.read_bytes()[:-30])
    return path


def _link_root(path: Path) -> Path:
    (path / "cats").mkdir()
    _png(path / "cats", (16, 16))
    (path / "all").symlink_to(path)
    return path


def _loop_class(path: Path) -> Path:
    (path / "a").mkdir()
    _png(path / "a", (16, 16))
    (path / "a" / "loop").symlink_to(path / "a" / "loop")
    (path / "b").symlink_to(path / "b")
    return path


def _mixed(path: Path) -> Path:
    _png(path, (16, 16))
    (path / "cls").mkdir()
    _png(path / "cls", (16, 16))
    return path


def _empty_class(path: Path) -> Path:
    (path / "a").mkdir()
    _png(path / "a", (16, 16))
    (path / "b").mkdir()
    return path


# ----------------------------------------------------------------------------------- argument fuzz
MUST_REFUSE = ("nan", "inf", "-inf", "1e309", "9" * 30)
FUZZ_VALUES = ("", "-1", "0", "nan", "inf", "1e309", "9" * 30, "9" * 5000, "abc", "/dev/null")
PATH_OPTIONS = {"--run-dir", "--out", "--data", "--dataset", "--data-dir", "--resume", "--classifier", "--runs-root"}


def _verb_options(verb: str) -> list[str]:
    from genladder.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    options = []
    for action in sub._actions:
        if action.option_strings and action.nargs != 0 and "--help" not in action.option_strings:
            options.append(max(action.option_strings, key=len))
    return options


def fuzz_cases(runs: dict[str, Path], work: Path, every: int = 1) -> list[str]:
    """Every option of every verb given each hostile value, on a real run where the verb needs one."""
    out = work / "fuzz.png"
    base = {
        "train": ["train", "vae", "--dry-run"],
        "sample": ["sample", runs["vae"], "--n", 2, "--out", out],
        "trajectory": ["trajectory", runs["cddpm"], "--n", 1, "--frames", 2, "--steps", 3, "--out", out],
        "guidance-sweep": ["guidance-sweep", runs["cddpm"], "--steps", 2, "--guidance-weights", "0,1", "--out", out],
        "reconstruct": ["reconstruct", runs["vae"], "--n", 2, "--out", out, "--data-dir", MINI],
        "interpolate": ["interpolate", runs["vae"], "--pairs", 1, "--steps", 3, "--out", out, "--data-dir", MINI],
        "latent-map": ["latent-map", runs["vae"], "--n", 10, "--grid", 3, "--out", out, "--data-dir", MINI],
        "noising": ["noising", "--n", 1, "--frames", 2, "--T", 20, "--out", out, "--data-dir", MINI],
        "report": ["report", runs["vae"]],
    }
    cases = [(verb, option, value) for verb in base for option in _verb_options(verb) for value in FUZZ_VALUES]
    outcomes = []
    for verb, option, value in cases[::every]:
        argv = [str(a) for a in base[verb]]
        if option in argv:  # replace the base value of this option
            position = argv.index(option)
            argv = argv[:position] + argv[position + 2:]
        code, text = run_main([*argv, option, value], limit_s=60)
        must_fail = value in MUST_REFUSE and option not in PATH_OPTIONS
        outcomes.append(note(classify(code, text, must_fail=must_fail), f"{verb} {option} {value[:20]!r}", text))
    return outcomes


# ------------------------------------------------------------------------------------ crash trials
CHILD = """
import json, os, shutil, signal, sys, torch
torch.set_num_threads(1)
import genladder.checkpoint as checkpoint, genladder.training.loop as loop
target, at = sys.argv[2], int(sys.argv[3]) if sys.argv[3].isdigit() else 0
calls = {"n": 0}
def counted(real):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return wrapper
if target == "fsync": os.fsync = counted(os.fsync)
if target == "replace": os.replace = counted(os.replace)
if target == "rmtree": shutil.rmtree = counted(shutil.rmtree)
if target == "append": loop.append_metrics = counted(loop.append_metrics)
if target == "hold":  # hold the run (and its lock) at the first metrics record until the file sys.argv[3] exists
    import pathlib, time
    real_append = loop.append_metrics
    def held(*args):
        while not pathlib.Path(sys.argv[3]).exists():
            time.sleep(0.05)
        real_append(*args)
    loop.append_metrics = held
from genladder.runs import run_training
run_training(json.loads(sys.argv[4]), sys.argv[1], resume=len(sys.argv) > 5, show_progress=False)
"""


def _crash_config(steps: int) -> dict:
    from dataclasses import asdict

    from genladder.models import AutoencoderConfig
    from genladder.runs import DataConfig
    from genladder.training.loop import TrainConfig

    model = AutoencoderConfig.preset("vae", width=8, latent_dim=4).to_dict()
    data = asdict(DataConfig(data_dir=str(MINI), limit=96, test_limit=32))
    train = asdict(TrainConfig(steps=steps, batch_size=16, checkpoint_every=2, log_every=1, keep_checkpoints=2,
                               ema_decay=0.9))
    return {"kind": "vae", "preset": "tutorial", "model": model, "objective": {"kl_weight": 1.0}, "data": data,
            "train": train}


def _weights_equal(a: Path, b: Path) -> bool:
    from genladder.checkpoint import latest_checkpoint, read_safetensors

    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        wa = read_safetensors(latest_checkpoint(a) / name)[0]
        wb = read_safetensors(latest_checkpoint(b) / name)[0]
        if wa.keys() != wb.keys() or any(not (wa[k] == wb[k]).all() for k in wa):
            return False
    return True


def crash_cases(work: Path, trials: list[tuple[str, int]]) -> list[str]:
    """Kill a short run at the k-th call of one operation, resume it, compare with an uninterrupted run."""
    import torch

    from genladder.errors import GenladderError
    from genladder.runs import run_training

    torch.set_num_threads(1)
    config = _crash_config(steps=8)
    straight = work / "crash-straight"
    with contextlib.redirect_stderr(io.StringIO()):
        run_training(config, straight, show_progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    outcomes = []
    for index, (target, at) in enumerate(trials):
        run = work / f"crash-{index}"
        killed = subprocess.run([sys.executable, "-c", CHILD, run, target, str(at), json.dumps(config)], env=env,
                                capture_output=True, text=True, timeout=300)
        if killed.returncode not in (0, -signal.SIGKILL):
            outcomes.append("traceback")
            continue
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                if not (run / "config.json").exists():  # killed before config.json was in place: start again
                    run_training(config, run, show_progress=False)
                else:  # resume; a run with no checkpoint yet restarts, one that had finished says so
                    try:
                        run_training(config, run, resume=True, show_progress=False)
                    except GenladderError as error:
                        if "already reached step" not in str(error):
                            raise
            outcomes.append("clean" if _weights_equal(straight, run) else "silent")
        except GenladderError:
            outcomes.append("silent")  # a stuck run: it can neither continue nor restart
        except Exception:  # noqa: BLE001
            outcomes.append("traceback")
    return outcomes


def concurrent_resume_case(work: Path) -> str:
    """Two resumes of one run at once: the second is refused by the lock, the first ends as a straight run."""
    import torch

    from genladder.runs import run_training

    torch.set_num_threads(1)
    short, config = _crash_config(steps=4), _crash_config(steps=8)
    run, straight, release = work / "concurrent", work / "concurrent-straight", work / "concurrent-release"
    with contextlib.redirect_stderr(io.StringIO()):
        run_training(short, run, show_progress=False)
        run_training(config, straight, show_progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    # The first resume holds the run at its first metrics record (lock taken) until `release` exists.
    first = subprocess.Popen([sys.executable, "-c", CHILD, run, "hold", release, json.dumps(config), "resume"],
                             env=env, stderr=subprocess.PIPE, text=True)
    deadline, lock = time.monotonic() + 60, run / "train.lock"
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        if first.poll() is not None or time.monotonic() > deadline:
            release.write_text("go")
            first.kill()
            first.wait()
            return "silent"  # no lock names the first resume: nothing would stop a second writer
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-c", CHILD, run, "none", "0", json.dumps(config), "resume"], env=env,
                            capture_output=True, text=True, timeout=300)
    release.write_text("go")
    first_code = first.wait(timeout=300)
    refused = f"is being trained by process {first.pid}" in second.stderr
    if first_code != 0 or not refused:
        return "silent" if first_code == 0 or refused else "traceback"
    return "clean" if _weights_equal(straight, run) else "silent"


# --------------------------------------------------------------------------------------- disk full
DISK_CHILD = """
import json, resource, signal, sys, torch
torch.set_num_threads(1)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG instead of a signal
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from genladder.cli import main
sys.exit(main(["train", "--resume", sys.argv[1], "--steps", "8", "--no-progress"]))
"""


def disk_full_cases(work: Path, limits: tuple[int, ...]) -> list[str]:
    """A file-size limit hit while writing checkpoints: one line naming the file, the last checkpoint kept."""
    import torch

    from genladder.checkpoint import latest_checkpoint
    from genladder.runs import run_training

    torch.set_num_threads(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    outcomes = []
    for index, limit in enumerate(limits):
        run = work / f"full-{index}"
        with contextlib.redirect_stderr(io.StringIO()):
            run_training(_crash_config(steps=2), run, show_progress=False)
        result = subprocess.run([sys.executable, "-c", DISK_CHILD, run, str(limit)], env=env, capture_output=True,
                                text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        if result.returncode == 0:
            outcomes.append("clean")
        elif result.returncode == 2 and lines and lines[-1].startswith("genladder: error: cannot write "):
            try:
                latest_checkpoint(run)  # still a complete checkpoint to resume from
                outcomes.append("clean")
            except Exception:  # noqa: BLE001
                outcomes.append("silent")
        else:
            outcomes.append("traceback")
    return outcomes


# ---------------------------------------------------------------------------------------- web demo
def web_handler_cases(runs: dict[str, Path], work: Path, every: int = 1) -> list[str]:
    """Hostile form values and typed paths through the page's handlers (what a visitor can send)."""
    from genladder.serve import RunCatalog, generate_grid, in_page, interpolate_digits, latent_point

    root = work / "served"
    root.mkdir()
    shutil.copytree(runs["vae"], root / "vae")
    fifo_run = root / "fifo"
    shutil.copytree(runs["vae"], fifo_run)
    for checkpoint in (fifo_run / "checkpoints").iterdir():
        (checkpoint / "model.safetensors").unlink()
        os.mkfifo(checkpoint / "model.safetensors")
    catalog = RunCatalog([str(runs["vae"]), str(runs["cddpm"])], device="cpu", runs_root=str(root))
    paths = ["/etc", "/etc/passwd", "/dev/zero", "/proc/self", "../../../../etc", str(fifo_run), "x" * 5000,
             f"{root}/../..", f"{root}/vae/./", f"//{root}/vae", "~root", "", " ", str(work)]
    numbers = ["nan", "inf", "-1", "1e309", "9" * 30, "abc", None, "0", "1.5"]
    cases = [(generate_grid, (path, "all", 2, "dpmpp", 5, 0, 0)) for path in paths]
    cases += [(generate_grid, (str(runs["cddpm"]), digit, n, sampler, steps, guidance, 0))
              for digit, n, sampler, steps, guidance in
              [(d, 2, "dpmpp", 3, 0) for d in ("12", "-1", "nan", "all", "3.5", None)]
              + [("1", n, "dpmpp", 3, 0) for n in numbers]
              + [("1", 2, "dpmpp", st, 0) for st in numbers]
              + [("1", 2, "dpmpp", 3, g) for g in numbers]
              + [("1", 2, sampler, 3, 0) for sampler in ("euler", "", None, "ddpm")]]
    cases += [(generate_grid, (str(runs["vae"]), "all", 2, "dpmpp", 5, 0, seed)) for seed in numbers]
    cases += [(latent_point, (str(runs["vae"]), "0", x, y, a, b)) for x, y, a, b in
              [(0, 1, 0, 0), (0, 0, 0, 0), (0, 99, 0, 0), (0, 1, "nan", 0), (0, 1, 1e309, 0), ("x", 1, 0, 0)]]
    cases += [(interpolate_digits, (str(runs["vae"]), a, b, st)) for a, b, st in
              [(0, 1, 5), (-1, 1, 5), (0, 10**9, 5), (0, 1, 10**6), ("nan", 1, 5), (0, 1, None)]]
    outcomes = []
    for fn, args in cases[::every]:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 30)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                result = in_page(fn, 1)(catalog, *args)
            status = result[-1]
            raw = "Error" in status and "genladder-error" not in status
            outcome = "traceback" if raw or not status.startswith("<p class=") else "clean"
            outcomes.append(note(outcome, f"web {fn.__name__} {args}", status))
        except Hang:
            outcomes.append("hang")
        except Exception:  # noqa: BLE001 - in_page must never let one out
            outcomes.append("traceback")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    if len(catalog) > 2 + 4:
        outcomes.append("silent")  # the catalogue grew past its bound
    return outcomes


def web_http_cases(runs: dict[str, Path]) -> list[str]:
    """Hostile HTTP requests and 20 concurrent ones against a real ``genladder serve``."""
    import socket
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen([sys.executable, "-m", "genladder", "serve", runs["vae"], "--port", str(port),
                               "--device", "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"

    def status(path="config", headers=None, data=None) -> int:
        request = urllib.request.Request(url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return -1

    try:
        deadline = time.monotonic() + 120
        while status() != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                return ["traceback"]  # the demo did not start
            time.sleep(0.5)
        expected = [(("config", {"Host": f"evil.example:{port}"}), 403), (("config", {"Host": "127.0.0.1"}), 403),
                    (("config", {"Host": f"127.0.0.1.evil.example:{port}"}), 403),
                    (("config", {"Origin": "http://evil.example"}), 403), (("config", {"Origin": "null"}), 403),
                    (("config", {"Origin": f"http://localhost:{port}"}), 200),
                    (("config", {"Host": f"localhost:{port}"}), 200)]
        expected += [((route, {"Content-Type": "application/octet-stream"}, b"x" * 64), 403)
                     for route in ("gradio_api/upload", "upload", "gradio_api/upload?upload_id=1")]
        expected += [(("gradio_api/queue/join", {"Content-Type": "application/json"}, b" " * size), code)
                     for size, code in ((2**20, 413), (2**24, 413))]
        traversals = ("file=/etc/passwd", "gradio_api/file=/etc/passwd", "../../etc/passwd",
                      "gradio_api/file=../../etc/passwd", "gradio_api/file=%2Fetc%2Fpasswd")
        expected += [((path,), 403) for path in traversals]
        outcomes = []
        for args, code in expected:
            got = status(*args)
            # A 413 sent before a 16 MB body is read makes the client's send fail: refused all the same.
            fine = got == code or (code in (403, 404) and got in (403, 404)) or (code == 413 and got == -1)
            outcomes.append(note("clean" if fine else "silent", f"HTTP {args[:2]}", f"answered {got}, not {code}"))
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda _: status(), range(20)))
        outcomes += ["clean" if got == 200 else "hang" for got in statuses]
        outcomes.append("clean" if status() == 200 and server.poll() is None else "silent")
        return outcomes
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


# ------------------------------------------------------------------------------------------- table
def campaign(quick: bool, work: Path, only: str | None = None) -> dict[str, Counter]:
    """Run every category (a sample of each when ``quick``); outcome counts per category."""
    import torch

    torch.set_num_threads(1)
    os.chdir(work)
    runs = make_runs(work)
    every = 9 if quick else 1
    kills = ([("fsync", 3), ("replace", 2)] if quick else
             [(op, k) for op in ("fsync", "replace", "rmtree", "append") for k in range(1, 11)])
    categories = {
        "crash trials": lambda: crash_cases(work, kills) + [concurrent_resume_case(work)],
        "corrupted run files": lambda: corrupted_cases(runs, work, every),
        "own data": lambda: own_data_cases(work, 4 if quick else 1),
        "argument fuzz": lambda: fuzz_cases(runs, work, 25 if quick else 1),
        "disk full": lambda: disk_full_cases(work, (20_000,) if quick else (2_000, 20_000, 60_000, 120_000, 400_000)),
        "web demo": lambda: web_handler_cases(runs, work, 6 if quick else 1) + ([] if quick else web_http_cases(runs)),
    }
    results = {}
    for name, run_category in categories.items():
        if only and name != only:
            continue
        started = time.perf_counter()
        results[name] = Counter(run_category())
        print(f"faults: {name}: {dict(results[name])} in {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)
    return results


def table(results: dict[str, Counter]) -> str:
    lines = ["| category | tried | clean | traceback | hang | silent wrong / stuck |", "|---|---|---|---|---|---|"]
    totals = Counter()
    for name, counts in results.items():
        totals.update(counts)
        lines.append(f"| {name} | {sum(counts.values())} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    lines.append(f"| **all** | **{sum(totals.values())}** | " + " | ".join(f"**{totals[o]}**" for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the bounded form (a sample of every category)")
    parser.add_argument("--json", help="also write the counts to this file")
    parser.add_argument("--only", help="run one category, e.g. 'crash trials'")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genladder-faults-") as work:
        results = campaign(args.quick, Path(work), args.only)
    print(table(results))
    print(f"\n{sum(sum(c.values()) for c in results.values())} cases in {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({k: dict(v) for k, v in results.items()}, indent=2))
    bad = sum(c[o] for c in results.values() for o in OUTCOMES[1:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
