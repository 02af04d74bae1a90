"""No accepted option is silently ignored: every option of every verb that draws a picture, on every rung, either
changes the picture or is refused in one line.

For each (verb, rung) the verb first runs with a small valid baseline; then once per option with that option
set to a value other than its default. A run that exits 0 must write a different picture (else the option
was accepted and ignored); a refusal must be exit 2 with one ``genladder: error:`` line. The few options that
by design leave the picture as it is (where it is written, the device, the batch size: the same seed gives
the same images at any batch size) are listed with that reason. The table must name every option the parser
has, so a new option cannot skip the walk.
"""

from __future__ import annotations

import argparse
import json

import pytest

from genladder.cli import build_parser, main
from genladder.rungs import rung
from tests.conftest import MINI_MNIST

AUTOENCODERS = ("ae", "vae", "cvae", "vae-spatial")
ITERATIVE = ("ddpm", "cddpm", "flow", "cflow", "latent")
RUNS = AUTOENCODERS + ITERATIVE

# The baseline of each verb: small and valid wherever the verb applies (``steps`` only for the solvers).
BASELINE = {
    "sample": ["--n", 4],
    "trajectory": ["--n", 2, "--frames", 2],  # of the 3 solver steps
    "guidance-sweep": ["--guidance-weights", "0,1"],
    "reconstruct": ["--n", 4, "--data-dir", MINI_MNIST],
    "interpolate": ["--pairs", 1, "--steps", 3, "--data-dir", MINI_MNIST],
    "latent-map": ["--n", 64, "--grid", 3, "--data-dir", MINI_MNIST],
}
# added to the baseline of the iterative rungs' sampling verbs (3: DPM-Solver++(2M) in 2 steps is DDIM)
SOLVER_STEPS = ["--steps", 3]
SAMPLING_VERBS = ("sample", "trajectory", "guidance-sweep")

# Each option's other value: a list of arguments, or a function of the run's kind giving them.
OTHER_VALUE = {
    "--n": lambda verb, kind: ["--n", 6],
    "--label": lambda verb, kind: ["--label", 3],
    "--grid": lambda verb, kind: ["--grid", 4] if verb == "latent-map" else ["--grid", "--n", 10],
    "--frames": lambda verb, kind: ["--frames", 3],
    "--sampler": lambda verb, kind: ["--sampler", "euler" if kind in ("flow", "cflow", "latent") else "ddim"],
    "--steps": lambda verb, kind: ["--steps", 4],
    "--guidance": lambda verb, kind: ["--guidance", 1.5],
    "--eta": lambda verb, kind: ["--eta", 0.5],
    "--variance": lambda verb, kind: ["--variance", "posterior"],
    "--spacing": lambda verb, kind: ["--spacing", "trailing"],
    "--guidance-interval": lambda verb, kind: ["--guidance-interval", "0.3,5"],
    "--seed": lambda verb, kind: ["--seed", 7],
    "--weights": lambda verb, kind: ["--weights", "model"],
    "--guidance-weights": lambda verb, kind: ["--guidance-weights", "0,2"],
    "--pairs": lambda verb, kind: ["--pairs", 2],
}
# Options that leave the picture unchanged on purpose, and why.
INERT = {
    "--out": "where the picture goes",
    "--device": "where it is computed ('cpu' here)",
    "--no-progress": "what stderr shows",
    "--batch-size": "each image draws from its own seeded stream: the same images at any batch size",
    "--data-dir": "already the baseline's data",
    "--threads": "how many threads compute it (the baseline's one; float sums may differ at other counts)",
}
INERT_VALUE = {"--device": ["--device", "cpu"], "--no-progress": ["--no-progress"], "--batch-size": ["--batch-size", 1],
               "--data-dir": ["--data-dir", MINI_MNIST], "--threads": ["--threads", 1]}


def verb_options(verb: str) -> list[str]:
    parser = build_parser()._subparsers._group_actions[0].choices[verb]
    return [action.option_strings[-1] for action in parser._actions
            if action.option_strings and not isinstance(action, argparse._HelpAction)]


@pytest.fixture(scope="module")
def walk_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("walk-runs")
    small = ["--data-dir", MINI_MNIST, "--limit", 128, "--test-limit", 32, "--steps", 4, "--batch-size", 32,
             "--no-progress"]
    unet = ["--preset", "small", "--widths", "16,16"]
    arguments = {"ae": ["--width", 16], "vae": ["--width", 16], "cvae": ["--width", 16],
                 # 40 steps: its decoder draws distinct blurs (after 4 every picture decodes alike)
                 "vae-spatial": ["vae", "--width", 16, "--latent-channels", 2, "--steps", 40],
                 "ddpm": [*unet, "--T", 50], "cddpm": [*unet, "--T", 50], "flow": unet, "cflow": unet,
                 "latent": ["--preset", "cpu-fast", "--widths", "8,8", "--attention", "", "--autoencoder",
                            root / "vae-spatial"]}
    runs = {}
    for name in RUNS:
        extra = arguments[name]
        kind = extra[0] if name == "vae-spatial" else name
        extra = extra[1:] if name == "vae-spatial" else extra
        runs[name] = root / name
        assert main([str(a) for a in ["train", kind, "--run-dir", runs[name], *small, *extra]]) == 0
    return runs


def accepted(case: str, code: int, err: str, problems: list[str]) -> bool:
    """True when the command ran (exit 0). Otherwise it must be a refusal, exit 2 with one ``genladder: error:``
    line; anything else is recorded in ``problems``."""
    if code == 0:
        return True
    if code != 2 or len(err.splitlines()) != 1 or not err.startswith("genladder: error:"):
        problems.append(f"{case}: exit {code} without a one-line refusal: {err!r}")
    return False


def run_verb(capsys, argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


def test_the_table_names_every_option_of_the_picture_verbs():
    for verb in BASELINE:
        unknown = [option for option in verb_options(verb) if option not in OTHER_VALUE and option not in INERT]
        assert unknown == [], f"{verb}: add {unknown} to OTHER_VALUE or INERT"


@pytest.mark.parametrize("verb", list(BASELINE))
def test_every_option_changes_the_picture_or_is_refused(verb, walk_runs, tmp_path, capsys):
    problems = []
    for name, run_dir in walk_runs.items():
        kind = "vae" if name == "vae-spatial" else name
        baseline = [verb, run_dir, *BASELINE[verb]]
        if verb in SAMPLING_VERBS and rung(kind).iterative:
            baseline += SOLVER_STEPS
        reference = tmp_path / f"{name}-baseline.png"
        code, err = run_verb(capsys, [*baseline, "--out", reference])
        if not accepted(f"{verb} on {name} (baseline)", code, err, problems):  # the verb does not apply here
            continue
        for option in verb_options(verb):
            if option == "--out":
                continue
            other = INERT_VALUE[option] if option in INERT else OTHER_VALUE[option](verb, kind)
            out = tmp_path / f"{name}{option}.png"
            code, err = run_verb(capsys, [*baseline, *other, "--out", out])
            case = f"{verb} on {name} with {' '.join(map(str, other))}"
            if not accepted(case, code, err, problems):
                continue
            if option in INERT or (option == "--weights" and not any((run_dir / "checkpoints").glob("*/ema.*"))):
                continue
            if out.read_bytes() == reference.read_bytes():
                problems.append(f"{case}: accepted, and the picture is the baseline's (ignored)")
    assert problems == [], "\n".join(problems)


# ``genladder train``: each option must change the run's resolved config (what ``--dry-run`` prints, what
# config.json will hold) or be refused. Two values each (every choice of a choice option; None: a flag), so a
# value that happens to be a preset's default cannot hide an option that works.
TRAIN_VALUES = {
    "--preset": ["tutorial", "small"], "--latent-dim": [8, 12], "--latent-channels": [2, 3], "--width": [24, 40],
    "--kl-weight": [0.3, 0.7], "--max-shift": [1, 3], "--widths": ["16,32", "24,48"], "--blocks-per-level": [1, 3],
    "--attention": ["16", ""], "--dropout": [0.05, 0.3], "--patch-size": [2, 4], "--T": [123, 321],
    "--logit-mean": [0.3, -0.3], "--logit-std": [0.7, 1.3], "--label-dropout": [0.05, 0.3],
    "--ema-decay": [0.9, 0.99], "--ema-half-life-images": [1000, 5000], "--min-snr-gamma": [3, 5],
    "--test-share": [0.1, 0.2], "--limit": [100, 200], "--test-limit": [50, 60], "--epochs": [2, 3],
    "--steps": [10, 20], "--batch-size": [16, 48], "--lr": [1e-4, 3e-4], "--warmup-images": [100, 1000],
    "--adam-beta2": [0.9, 0.95], "--weight-decay": [0.01, 0.1], "--seed": [1, 2], "--grad-clip": [0.5, 2],
    "--time-budget": ["5m", "7m"], "--checkpoint-every": [10, 20], "--keep-checkpoints": [3, 4],
    "--log-every": [10, 20], "--compile": [None], "--dataset": ["fashion-mnist"],
    "--k": [2, 5], "--kl-warmup-images": [100, 1000], "--prior-components": [2, 5], "--binarize-seed": [1, 2],
    "--test-binarize-seed": [1, 2],
}
# How to run, not what the run is (never in config.json), or covered by the baseline itself.
TRAIN_NOT_WALKED = {
    "--run-dir": "where the run goes", "--device": "where it runs", "--threads": "how many CPU threads",
    "--no-progress": "what stderr shows", "--log-format": "what stderr shows", "--tensorboard": "an extra log",
    "--dry-run": "the walk's own option", "--resume": "continues a run (tests/test_cli.py)",
    "--config": "reads a config file (tests/test_cli.py: round trip, flags win)",
    "--data-dir": "the baseline's data (the extract)", "--autoencoder": "the latent baseline's autoencoder",
    "--init-from": "needs a trained run of the same network (tests/test_init_from.py)",
}


def train_values(option: str) -> list:
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                  if option in a.option_strings)
    return list(action.choices) if action.choices else TRAIN_VALUES[option]


def test_the_train_table_names_every_option():
    options = verb_options("train")
    unknown = [o for o in options if o not in TRAIN_NOT_WALKED and o not in TRAIN_VALUES and not train_values(o)]
    assert unknown == []


def test_every_train_option_changes_the_config_or_is_refused(walk_runs, capsys):
    problems = []
    for kind in ("ae", "vae", "cvae", "ddpm", "cddpm", "flow", "cflow", "latent"):
        baseline = ["train", kind, "--dry-run", "--data-dir", MINI_MNIST, "--limit", 256]
        if kind == "latent":
            baseline += ["--autoencoder", walk_runs["vae-spatial"]]
        assert main([str(a) for a in baseline]) == 0, kind
        reference = capsys.readouterr().out
        for option in verb_options("train"):
            if option in TRAIN_NOT_WALKED or option == "--data":
                continue
            accepted_and_same = []
            for value in train_values(option):
                argv = [*baseline, option] + ([] if value is None else [value])
                code = main([str(a) for a in argv])
                out, err = capsys.readouterr()
                case = f"train {kind} {option} {'' if value is None else value}".rstrip()
                if accepted(case, code, err, problems) and out == reference:
                    accepted_and_same.append(case)
            if accepted_and_same and len(accepted_and_same) == len(train_values(option)):
                problems.append(f"{accepted_and_same[0]}: accepted, and the config is the baseline's (ignored)")
    assert problems == [], "\n".join(problems)


def test_evaluation_options_no_run_reads_are_refused(walk_runs, tmp_path, capsys):
    """``evaluate``, ``guidance-curve`` and ``steps-curve``: every rung-specific option on every rung that does not
    read it is refused before any work (evaluating each accepted one would take minutes; test_evaluate.py runs
    them where they apply). With several runs an option is taken when one of them reads it."""
    from genladder.evaluate.evaluation import EVALUATION_READERS
    from genladder.runs import read_run_config

    values = {"pr_k": 2, "memorisation_samples": 5, "iwae_k": 3, "iwae_images": 5, "bpd_images": 4,
              "bpd_timesteps": "all", "ode_steps": 3}
    assert set(values) == set(EVALUATION_READERS)
    problems = []
    for name, run_dir in walk_runs.items():
        config = read_run_config(run_dir)
        spec = config.rung
        for option, (_, reads) in EVALUATION_READERS.items():
            if reads(spec):
                continue
            code, err = run_verb(capsys, ["evaluate", run_dir, "--n", 20, f"--{option.replace('_', '-')}",
                                          values[option]])
            if code != 2 or len(err.splitlines()) != 1 or f"--{option.replace('_', '-')} applies to" not in err:
                problems.append(f"evaluate {name} --{option}: exit {code}: {err!r}")
        for verb, extra in (("evaluate", []), ("guidance-curve", ["--out", tmp_path / "curve.png"]),
                            ("steps-curve", ["--out", tmp_path / "curve.png"])):
            other_family = "ddpm" if config.family == "flow" else "euler"  # (a latent run's family is its denoiser's)
            for sampling in (["--eta", 0.5], ["--variance", "posterior"], ["--sampler", other_family]):
                code, err = run_verb(capsys, [verb, run_dir, "--n", 20, *extra, *sampling])
                if code != 2 or len(err.splitlines()) != 1:
                    problems.append(f"{verb} {name} {sampling}: exit {code}: {err!r}")
    assert problems == [], "\n".join(problems)
    # a comparison of a vae and a flow: --ode-steps is the flow's, --iwae-k the vae's; both pass the check
    from genladder.cli import _refuse_ignored_evaluation_options, build_parser

    args = build_parser().parse_args(["evaluate", str(walk_runs["vae"]), str(walk_runs["flow"]), "--ode-steps", "3",
                                      "--iwae-k", "3", "--sampler", "euler"])
    _refuse_ignored_evaluation_options(args, args.run_dirs)


# ``genladder reflow``: each option must change the student's run (its config.json or its drawn pairs) or be
# refused; those that must not change it (how many pairs per teacher call, where it runs) must leave it equal.
REFLOW_VALUES = {
    "--pairs": 100, "--teacher-sampler": "euler", "--teacher-steps": 3, "--guidance": 1, "--pair-seed": 1,
    "--weights": "model", "--steps": 2, "--batch-size": 16, "--lr": 1e-4, "--warmup-images": 100,
    "--ema-half-life-images": 1000, "--time-budget": "5m", "--checkpoint-every": 7, "--seed": 3,
}
REFLOW_SAME = {"--sample-batch-size": 7}
REFLOW_NOT_WALKED = {"--run-dir": "where the run goes", "--no-progress": "in the baseline (what stderr shows)",
                     "--threads": "how many CPU threads", "--device": "where it runs"}


def _reflow_outcome(run_dir) -> tuple[str, list]:
    """The student's config (without the version) and its drawn pairs' tensors."""
    from safetensors.torch import load_file

    pairs = [tensor for path in sorted((run_dir / "reflow-pairs").glob("*.safetensors"))
             for _, tensor in sorted(load_file(path).items())]
    config = json.loads((run_dir / "config.json").read_text())
    config.pop("genladder_version", None)
    return json.dumps(config, sort_keys=True), pairs


def _same_outcome(a, b) -> bool:
    """Equal configs and pairs equal to float round-off (a convolution's sums depend on the batch size)."""
    import torch

    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(
        x.shape == y.shape and torch.allclose(x, y, atol=1e-5) for x, y in zip(a[1], b[1], strict=True))


def test_every_reflow_option_changes_the_student_or_is_refused(walk_runs, tmp_path, capsys):
    assert set(verb_options("reflow")) == set(REFLOW_VALUES) | set(REFLOW_SAME) | set(REFLOW_NOT_WALKED)
    problems = []
    # every option on the guided teacher; on the unguided one only --guidance (refused), the rest being the same
    # code path (and each reflow draws pairs, trains and draws a preview: seconds apiece)
    for name, options in (("cflow", {**REFLOW_VALUES, **REFLOW_SAME}), ("flow", {"--guidance": 1})):
        def reflow(out, *extra, teacher=walk_runs[name]):
            return run_verb(capsys, ["reflow", teacher, "--run-dir", tmp_path / out, "--pairs", 80,
                                     "--teacher-steps", 2, "--steps", 1, "--no-progress", *extra])

        assert reflow(f"{name}-baseline")[0] == 0
        reference = _reflow_outcome(tmp_path / f"{name}-baseline")
        for option, value in options.items():
            out = f"{name}{option}"
            code, err = reflow(out, option, value)
            case = f"reflow {name} {option} {value}"
            if not accepted(case, code, err, problems):
                continue
            if option in REFLOW_SAME and not _same_outcome(_reflow_outcome(tmp_path / out), reference):
                problems.append(f"{case}: changed the student's run (it must not)")
            elif option in REFLOW_VALUES and _same_outcome(_reflow_outcome(tmp_path / out), reference):
                problems.append(f"{case}: accepted, and the student's run is the baseline's (ignored)")
    assert problems == [], "\n".join(problems)
