"""The command line end to end on the committed MNIST extract, and every user error as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

import genladder
from genladder.cli import COMPUTE_VERBS, main, parse_duration


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_train_args(kind, run_dir, data_dir, *extra):
    return ["train", kind, "--run-dir", run_dir, "--data-dir", data_dir, "--limit", 256, "--test-limit", 64,
            "--steps", 12, "--batch-size", 32, "--width", 16, "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """One tiny trained run per autoencoder rung (module-scoped: trained once)."""
    from tests.conftest import MINI_MNIST

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for kind in ("ae", "vae", "cvae"):
        runs[kind] = root / kind
        assert main([str(a) for a in tiny_train_args(kind, runs[kind], MINI_MNIST)]) == 0
    return runs


class TestEndToEnd:
    def test_train_writes_a_run_folder(self, trained_runs):
        for kind, run_dir in trained_runs.items():
            config = json.loads((run_dir / "config.json").read_text())
            assert config["kind"] == kind and config["train"]["steps"] == 12
            assert (run_dir / "loss.png").exists() and list((run_dir / "samples").glob("*.png"))

    def test_log_in_a_file_is_plain_lines_and_resume_says_so(self, tmp_path, capsys, mini_mnist):
        run_dir = tmp_path / "ae"
        code, out, err = run_cli(capsys, *tiny_train_args("ae", run_dir, mini_mnist, "--log-every", 4))
        assert code == 0 and "\r" not in err
        steps = [line.split()[1] for line in err.splitlines() if line.startswith("step ")]
        assert steps == ["4/12", "8/12", "12/12"]
        assert "test set: loss" in out and "_" not in out.splitlines()[0].split("test set:")[1]
        code, out, err = run_cli(capsys, "train", "--resume", run_dir, "--steps", 16, "--log-format", "json")
        assert code == 0 and err.startswith(f"genladder: resuming {run_dir} (ae, ")
        records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert [r["step"] for r in records] == [16] and records[0]["total_steps"] == 16

    def test_sample_grid_for_cvae(self, trained_runs, tmp_path, capsys):
        out = tmp_path / "grid.png"
        code, stdout, _ = run_cli(capsys, "sample", trained_runs["cvae"], "--grid", "--n", 100, "--out", out)
        assert code == 0 and str(out) in stdout
        # 10 x 10 tiles of 32 px with 2 px padding, upscaled 2x.
        assert Image.open(out).size == (2 * (10 * 34 + 2),) * 2

    def test_sample_label_and_vae(self, trained_runs, tmp_path, capsys):
        code = run_cli(capsys, "sample", trained_runs["cvae"], "--label", 3, "--n", 8, "--out", tmp_path / "a.png")[0]
        assert code == 0
        assert run_cli(capsys, "sample", trained_runs["vae"], "--n", 16, "--out", tmp_path / "b.png")[0] == 0

    def test_same_seed_same_picture(self, trained_runs, tmp_path, capsys):
        paths = [tmp_path / "1.png", tmp_path / "2.png", tmp_path / "3.png"]
        for path, seed in zip(paths, (5, 5, 6), strict=True):
            run_cli(capsys, "sample", trained_runs["vae"], "--seed", seed, "--out", path)
        assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()

    @pytest.mark.parametrize("kind", ["ae", "vae", "cvae"])
    def test_reconstruct_and_interpolate(self, trained_runs, tmp_path, capsys, mini_mnist, kind):
        recon, interp = tmp_path / "r.png", tmp_path / "i.png"
        run = trained_runs[kind]
        assert run_cli(capsys, "reconstruct", run, "--n", 8, "--out", recon, "--data-dir", mini_mnist)[0] == 0
        assert run_cli(capsys, "interpolate", run, "--out", interp, "--data-dir", mini_mnist, "--pairs", 2)[0] == 0
        assert Image.open(recon).size == (2 * (8 * 34 + 2), 2 * (2 * 34 + 2))
        assert Image.open(interp).size == (2 * (10 * 34 + 2), 2 * (2 * 34 + 2))

    def test_resume_from_the_cli(self, tmp_path, capsys, mini_mnist):
        run_dir = tmp_path / "r"
        assert run_cli(capsys, *tiny_train_args("ae", run_dir, mini_mnist))[0] == 0
        code, out, _ = run_cli(capsys, "train", "--resume", run_dir, "--steps", 16, "--no-progress")
        assert code == 0 and "step 16" in out
        assert json.loads((run_dir / "latest.json").read_text())["step"] == 16

    def test_python_api_load(self, trained_runs):
        pipe = genladder.load(trained_runs["cvae"])
        assert not pipe.model.training
        import torch

        assert pipe.sample(3, labels=torch.tensor([0, 1, 2])).shape == (3, 1, 32, 32)

    def test_dry_run_precedence(self, capsys):
        code, out, _ = run_cli(capsys, "train", "vae", "--latent-dim", 8, "--lr", 0.01, "--dry-run")
        config = json.loads(out)
        assert code == 0 and config["model"]["latent_dim"] == 8 and config["train"]["lr"] == 0.01
        assert config["model"]["width"] == 64  # unset options keep the preset's value

    def test_config_file_round_trip_and_flags_win(self, tmp_path, capsys, mini_mnist):
        code, out, _ = run_cli(capsys, "train", "vae", "--latent-dim", 8, "--data-dir", mini_mnist, "--limit", 256,
                               "--test-limit", 64, "--dry-run")
        written = tmp_path / "vae.json"
        written.write_text(out)
        code, again, _ = run_cli(capsys, "train", "--config", written, "--dry-run")
        assert code == 0 and json.loads(again) == json.loads(out)  # what --dry-run prints reads back unchanged
        code, changed, _ = run_cli(capsys, "train", "--config", written, "--lr", 0.01, "--kl-weight", 0.5,
                                   "--latent-dim", 4, "--dry-run")
        config = json.loads(changed)
        assert config["train"]["lr"] == 0.01 and config["objective"]["kl_weight"] == 0.5
        assert config["model"]["latent_dim"] == 4 and config["model"]["width"] == json.loads(out)["model"]["width"]
        toml = tmp_path / "vae.toml"
        toml.write_text('kind = "vae"\npreset = "default"\n[model]\n' + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in config["model"].items()) + "[objective]\nkl_weight = 0.5\n"
            f"[data]\ndataset = \"mnist\"\ndata_dir = \"{mini_mnist}\"\nlimit = 256\ntest_limit = 64\n"
            "[train]\nsteps = 4\nbatch_size = 32\n")
        code, out, err = run_cli(capsys, "train", "--config", toml, "--run-dir", tmp_path / "run", "--no-progress")
        stored = json.loads((tmp_path / "run" / "config.json").read_text())
        assert code == 0 and stored["train"]["steps"] == 4 and stored["model"]["latent_dim"] == 4, err

    @pytest.mark.parametrize("content, extra, message", [
        ('{"kind": "vae"}', [], "has no 'model' entry"),
        ('{"kind": "vae", "model": {}, "objective": {}, "data": {}, "train": {"lrr": 1}}', [],
         "unknown train setting 'lrr'"),
        ('{"kind": "vae", "colour": 1}', [], "unknown entry 'colour'"),
        ("[1, 2]", [], "expected a JSON object, found list"),
        ('{"kind": "ddpm", "model": {}, "objective": {}, "data": {}, "train": {}}', ["--preset", "small"],
         "--preset and --config do not mix"),
        ('{"kind": "ddpm", "model": {}, "objective": {}, "data": {}, "train": {}}', ["vae"],
         "describes a ddpm run, not vae"),
    ])
    def test_bad_config_files(self, tmp_path, capsys, content, extra, message):
        path = tmp_path / "c.json"
        path.write_text(content)
        code, _, err = run_cli(capsys, "train", *extra, "--config", path, "--dry-run")
        assert code == 2 and message in err and err.count("\n") == 1, err

    def test_duration(self):
        assert parse_duration("10m") == 600 and parse_duration("90") == 90 and parse_duration("1.5h") == 5400


class TestErrors:
    @pytest.mark.parametrize(
        "argv,message",
        [
            (["train", "gan"], "unknown model 'gan'"),
            (["train", "vae", "--steps", "-3", "--dry-run"], "--steps: must be in 1..1000000000, got -3"),
            (["train", "vae", "--epochs", "0", "--dry-run"], "--epochs: must be in 1..1000000, got 0"),
            (["train", "vae", "--lr", "0", "--dry-run"], "--lr: must be a finite number in (0, 10]"),
            # Limits before work (issue 17): overflow, non-finite, out of range, absurd sizes.
            (["train", "vae", "--seed", "9" * 30, "--dry-run"], "--seed: must be in 0..4294967295"),
            (["train", "vae", "--seed", "9" * 5000, "--dry-run"], "--seed: expected a whole number"),
            (["train", "vae", "--kl-weight", "-1", "--dry-run"], "--kl-weight: must be a finite number in [0"),
            (["train", "vae", "--lr", "nan", "--dry-run"], "--lr: must be a finite number"),
            (["train", "vae", "--threads", "500", "--dry-run"], "--threads: must be in 1.."),
            (["train", "vae", "--latent-dim", "100000000", "--dry-run"], "--latent-dim: must be in 1..4096"),
            (["train", "vae", "--width", "100000", "--dry-run"], "--width: must be in 1..1024"),
            (["train", "ddpm", "--widths", "64,1000000", "--dry-run"], "--widths: must be in 1..1024"),
            (["train", "ddpm", "--widths", "", "--dry-run"], "--widths: expected 1..6"),
            (["train", "ddpm", "--blocks-per-level", "1000", "--dry-run"], "--blocks-per-level: must be in 1..8"),
            (["train", "ddpm", "--T", "100000000", "--dry-run"], "--T: must be in 1..10000"),
            (["train", "ddpm", "--attention", "nan", "--dry-run"], "--attention: expected a whole number"),
            (["train", "vae", "--data", "", "--dry-run"], "--data must name"),
            (["train", "vae", "--run-dir", "/dev/null"], "is not a folder"),
            (["sample", "/no/such/run", "--out", "x.png", "--seed", "9" * 30], "--seed: must be in"),
            (["sample", "/no/such/run", "--out", "x.png", "--guidance", "inf"], "--guidance: must be a finite"),
            (["sample", "/no/such/run", "--out", "x.png", "--guidance", "1e309"], "--guidance: must be a finite"),
            (["sample", "/no/such/run", "--out", "/no/such/folder/x.png"], "folder /no/such/folder does not exist"),
            (["sample", "/no/such/run", "--out", "/tmp"], "/tmp is a folder"),
            (["sample", "/no/such/run", "--out", "x.png", "--device", "meta"], "unknown device 'meta'"),
            (["guidance-sweep", "/no/such/run", "--out", "x.png", "--guidance-weights", ""], "got none"),
            (["guidance-sweep", "/no/such/run", "--out", "x.png", "--guidance-weights", "1,inf"], "finite"),
            (["interpolate", "/no/such/run", "--out", "x.png", "--steps", "100000"], "--steps: must be in 1..100"),
            (["interpolate", "/no/such/run", "--out", "x.png", "--seed", "-1"], "--seed: must be in 0.."),
            (["noising", "--out", "x.png", "--T", "10000000"], "--T: must be in 1..10000"),
            (["noising", "--out", "x.png", "--seed", "9" * 30], "--seed: must be in"),
            (["train", "vae", "--limit", "0"], "must be at least 1"),
            (["train", "vae", "--preset", "huge", "--dry-run"], "unknown preset 'huge'"),
            (["train", "--dry-run"], "name the model to train"),
            (["train", "vae", "--time-budget", "soon"], "invalid duration"),
            (["train", "--resume", "/no/such/run"], "does not exist"),
            (["sample", "/no/such/run", "--out", "x.png"], "does not exist"),
            (["frobnicate"], "invalid choice"),
            (["sample", "/no/such/run", "--out", "x.png", "--lable", "3"],
             "unknown option '--lable' for 'sample'; did you mean --label? (see 'genladder sample --help')"),
            (["sample", "/no/such/run", "--out", "x.png", "extra"], "unexpected argument 'extra' for 'sample'"),
            (["guidance-sweep", "/no/such/run", "--out", "x.png", "--guidance", "5"],
             "unknown option '--guidance' for 'guidance-sweep'"),
        ],
    )
    def test_bad_arguments(self, capsys, argv, message):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert err.count("\n") == 1 and err.startswith("genladder: error: ") and message in err

    # Over cli.COMPUTE_VERBS itself, so a verb added there is covered without anyone listing it here.
    @pytest.mark.parametrize("verb", COMPUTE_VERBS)
    def test_every_compute_verb_takes_threads_and_sets_them_before_any_work(self, capsys, monkeypatch, verb):
        import torch

        import genladder.runtime as runtime

        def guessed():
            raise AssertionError("--threads was given: the contention check must not override it")

        monkeypatch.setattr(runtime, "avoid_contention", guessed)
        torch.set_num_threads(2)  # (the autouse fixture restores the count afterwards)
        argv = {"reflow": ["reflow", "/no/such/run", "--run-dir", "/no/such/student"],
                "train": ["train", "--resume", "/no/such/run"]}.get(verb, [verb, "/no/such/run"])
        if verb in ("sample", "trajectory", "guidance-sweep", "guidance-curve", "steps-curve"):
            argv += ["--out", "x.png"]
        code, _, err = run_cli(capsys, *argv, "--threads", "1")
        assert code == 2 and "does not exist" in err, err  # the run is missing, but the count was already set
        assert torch.get_num_threads() == 1
        code, _, err = run_cli(capsys, *argv, "--threads", "0")
        assert code == 2 and "--threads: must be in 1.." in err and err.count("\n") == 1, err

    def test_run_specific_errors(self, trained_runs, tmp_path, capsys):
        cases = [
            (["sample", trained_runs["cvae"], "--label", 12, "--out", tmp_path / "x.png"], "--label must be in 0..9"),
            (["sample", trained_runs["vae"], "--label", 3, "--out", tmp_path / "x.png"], "need a conditional model"),
            (["sample", trained_runs["ae"], "--out", tmp_path / "x.png"], "no prior"),
            (["sample", trained_runs["vae"], "--out", tmp_path / "x.jpg"], "must end in .png"),
            (["train", "vae", "--resume", trained_runs["ae"]], "is a ae run, not vae"),
            (["train", "--resume", trained_runs["ae"], "--lr", 0.1], "--lr cannot change"),
            (["sample", tmp_path, "--out", tmp_path / "x.png"], "not a genladder run folder"),
            (["latent-map", trained_runs["vae"], "--out", tmp_path / "x.png"], "this VAE has 64 dimensions"),
            (["latent-map", trained_runs["cvae"], "--out", tmp_path / "x.png"], "'latent-map' needs a vae run"),
            (["noising", "--T", 10, "--frames", 11, "--out", tmp_path / "x.png"], "--frames must be in 1..T=10"),
            # options the run would ignore are refused, not dropped
            (["sample", trained_runs["vae"], "--sampler", "ddim", "--steps", 3, "--out", tmp_path / "x.png"],
             "--sampler applies to diffusion and flow runs (ddpm, cddpm, flow, cflow); this run is a vae"),
            (["sample", trained_runs["cvae"], "--grid", "--n", 15, "--out", tmp_path / "x.png"],
             "--n must be a multiple of 10, got 15"),
        ]
        for argv, message in cases:
            code, _, err = run_cli(capsys, *argv)
            assert code == 2 and message in err and err.count("\n") == 1, (argv, err)

    def test_checkpoint_of_another_model(self, trained_runs, tmp_path, capsys):
        import shutil

        mixed = tmp_path / "mixed"
        shutil.copytree(trained_runs["vae"], mixed)
        shutil.copy(trained_runs["ae"] / "config.json", mixed / "config.json")  # an AE's config, a VAE's weights
        code, _, err = run_cli(capsys, "reconstruct", mixed, "--out", tmp_path / "x.png")
        assert code == 2 and "holds a 'vae' model" in err
        config = json.loads((trained_runs["vae"] / "config.json").read_text())
        config["kind"] = "ae"  # a VAE's settings under the AE's name: refused when the config is read
        (mixed / "config.json").write_text(json.dumps(config))
        code, _, err = run_cli(capsys, "reconstruct", mixed, "--out", tmp_path / "x.png")
        assert code == 2 and "unknown objective setting 'kl_weight'" in err and err.count("\n") == 1

    @pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
    def test_sigterm_saves_a_checkpoint_and_the_run_resumes(self, tmp_path, capsys, mini_mnist):
        # A scheduler's kill (SIGTERM) must stop training as Ctrl-C does: a checkpoint at the step reached, exit
        # 143, the resume command in one line; without the handler the process dies with nothing saved since
        # the last checkpoint (here: none, as the first would come at the epoch's end, step 94).
        import signal
        import time

        run_dir = tmp_path / "ae"
        argv = [sys.executable, "-m", "genladder", *map(str, tiny_train_args("ae", run_dir, mini_mnist)),
                "--limit", "3000", "--steps", "5000", "--log-every", "1", "--threads", "1"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        seen = []
        deadline = time.monotonic() + 120
        for line in process.stderr:  # wait for three logged steps
            seen.append(line)
            if line.startswith("step 3/") or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 143, "".join(seen) + rest
        lines = (*seen, *rest.splitlines())
        logged = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("step ")]
        saved = json.loads((run_dir / "latest.json").read_text())["step"]
        assert 3 <= saved < 94 and saved in (logged[-1], logged[-1] + 1), (saved, logged)
        assert rest.strip().splitlines()[-1] == (f"genladder: interrupted; continue from the newest checkpoint with "
                                                 f"'genladder train --resume {run_dir}' (one process saves one on "
                                                 "Ctrl-C or SIGTERM)")
        code, _, err = run_cli(capsys, "train", "--resume", run_dir, "--steps", saved + 2, "--no-progress")
        assert code == 0 and err.startswith(f"genladder: resuming {run_dir} (ae, ")
        assert json.loads((run_dir / "latest.json").read_text())["step"] == saved + 2
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the in-process run put the old handler back

    def test_no_traceback_from_the_console_script(self, tmp_path):
        result = subprocess.run([sys.executable, "-m", "genladder", "train", "vae", "--batch-size", "0"],
                                capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr == ("genladder: error: argument --batch-size: must be in 1..65536, got 0 "
                                 "(see 'genladder train --help')\n")


def test_every_option_is_documented():
    import argparse

    from genladder.cli import build_parser

    subcommands = build_parser()._subparsers._group_actions[0].choices
    undocumented = [(name, action.dest) for name, sub in subcommands.items() for action in sub._actions
                    if not action.help and not isinstance(action, argparse._HelpAction)]
    assert undocumented == []
