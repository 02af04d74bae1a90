"""The README's "Using it" block works pasted top to bottom, and the run-folder names it promises are real.

The block (between ``<!-- using-it:begin -->`` and ``<!-- using-it:end -->``) runs here line by line
through ``genladder.cli.main`` in an empty folder, on the committed MNIST extract and with tiny budgets:
every ``train`` gets the extract, 256 training digits and 2–3 steps (a resume 6), the networks are shrunk,
diffusion samplers take 4 steps and the evaluations a few dozen samples. What is tested is the block's
plumbing: each command finds the folders the lines above it wrote, and writes the file it names.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from genladder.cli import main
from tests.conftest import MINI_MNIST

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BEGIN, END = "<!-- using-it:begin -->", "<!-- using-it:end -->"
DIFFUSION = ("ddpm", "cddpm")
FLOW = ("flow", "cflow", "latent")  # (the latent rung samples with the flow solvers by default)
# Tiny networks of the same kind: as in scripts/docs_figures.py's quick recipe.
TINY_NETWORK = {"ae": ["--width", "16"], "vae": ["--width", "16"], "cvae": ["--width", "16"],
                "ddpm": ["--widths", "8,8,8", "--T", "20"], "cddpm": ["--widths", "8,8,8", "--T", "20"],
                "flow": ["--widths", "8,8,8"], "cflow": ["--widths", "8,8,8"],
                "latent": ["--widths", "8,8,8", "--attention", ""]}
# 256 training digits at the default batch of 128 make 2 steps an epoch, so 3 steps end one epoch and stop
# in the middle of the next: an autoencoder's run folder then holds both kinds of sample grid the README names.
# A diffusion run stops at the epoch's end: its per-epoch grid is a 20-step guided chain, seconds even when tiny.
TRAIN_STEPS = {"ae": "3", "vae": "3", "cvae": "3", "ddpm": "2", "cddpm": "2", "flow": "2", "cflow": "2",
               "latent": "2"}
RESUME_STEPS = "6"
TINY_EVALUATION = {  # evaluate: a few samples, and the likelihood bounds on a few digits
    "ae": ["--memorisation-samples", "10"],
    "vae": ["--iwae-k", "2", "--iwae-images", "5", "--memorisation-samples", "10"],
    "cvae": ["--iwae-k", "2", "--iwae-images", "5", "--memorisation-samples", "10"],
    "ddpm": ["--bpd-images", "2", "--bpd-timesteps", "2", "--memorisation-samples", "10"],
    "cddpm": ["--bpd-images", "2", "--bpd-timesteps", "2", "--memorisation-samples", "10"],
    "flow": ["--bpd-images", "2", "--ode-steps", "2", "--memorisation-samples", "10"],
    "cflow": ["--bpd-images", "2", "--ode-steps", "2", "--memorisation-samples", "10"],
    "latent": ["--memorisation-samples", "10"],
}
TINY_REFLOW = ["--pairs", "40", "--teacher-steps", "2", "--steps", "2", "--batch-size", "16"]
LARGEST_N = {"sample": 100, "evaluate": 40, "guidance-curve": 20}  # --n caps per verb
SAMPLING_VERBS = ("sample", "trajectory", "guidance-sweep", "evaluate", "guidance-curve")


def using_it_commands(text: str) -> list[list[str]]:
    """The commands of the README's marked bash block, split as the shell would, comments and blank lines dropped."""
    if BEGIN not in text or END not in text:
        raise AssertionError(f"the README lost its {BEGIN} … {END} markers around the 'Using it' block")
    block = re.search(r"```bash\n(.*?)```", text[text.index(BEGIN) : text.index(END)], flags=re.S)
    assert block, "no ```bash block between the 'Using it' markers"
    return [words for line in block.group(1).splitlines() if (words := shlex.split(line, comments=True))]


def _set(words: list[str], option: str, value: str | None) -> list[str]:
    """``words`` with ``option`` (and its value) removed, then appended with ``value`` unless None."""
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == option:
            skip = True
        else:
            out.append(word)
    return out + ([option, value] if value is not None else [])


def _value(words: list[str], option: str) -> str | None:
    return words[words.index(option) + 1] if option in words else None


def shrink(words: list[str], kinds: dict[str, str]) -> list[str]:
    """One README command made tiny; ``kinds`` maps the run folders trained so far to their kind (updated)."""
    verb, args = words[1], words[2:]
    if verb == "train":
        for option in ("--epochs", "--steps", "--time-budget"):
            args = _set(args, option, None)
        if "--resume" in args:
            return ["train", *args, "--steps", RESUME_STEPS, "--no-progress"]
        kind = args[0]
        kinds[_value(args, "--run-dir")] = kind
        return ["train", *args, "--steps", TRAIN_STEPS[kind], "--data-dir", str(MINI_MNIST), "--limit", "256",
                "--test-limit", "64", *TINY_NETWORK[kind], "--no-progress"]
    run = args[0] if args and not args[0].startswith("-") else None
    kind = kinds.get(run)
    if verb == "reflow":  # a flow trained on its teacher's pairs: a run of the teacher's kind
        kinds[_value(args, "--run-dir")] = kind
        for option in ("--pairs", "--teacher-steps", "--steps"):
            args = _set(args, option, None)
        return ["reflow", *args, *TINY_REFLOW, "--no-progress"]
    if verb in LARGEST_N and _value(args, "--n") is not None:
        args = _set(args, "--n", str(min(int(_value(args, "--n")), LARGEST_N[verb])))
    elif verb in ("evaluate", "guidance-curve"):
        args = _set(args, "--n", str(LARGEST_N[verb]))
    if verb == "evaluate":
        args += TINY_EVALUATION[kind]
    if verb in SAMPLING_VERBS:
        if kind in DIFFUSION or (kind in FLOW and _value(args, "--steps") is not None):
            args = _set(args, "--steps", "4")  # the tiny diffusion networks have T = 20
        args.append("--no-progress")
    return [verb, *args]


@pytest.fixture(scope="module")
def pasted(tmp_path_factory):
    """The block run in an empty folder: (the folder, the commands as written, the commands as run)."""
    folder = tmp_path_factory.mktemp("using-it")
    written = using_it_commands(README.read_text(encoding="utf-8"))
    patch = pytest.MonkeyPatch()
    patch.chdir(folder)
    patch.setenv("GENLADDER_DATA_DIR", str(MINI_MNIST))  # the verbs that read test digits without a run
    ran, kinds = [], {}
    try:
        for words in written:
            assert words[0] == "genladder", f"the 'Using it' block runs only genladder commands: {shlex.join(words)}"
            command = shrink(words, kinds)
            ran.append(command)
            assert main(command) == 0, f"README line failed: {shlex.join(words)} (run as {shlex.join(command)})"
    finally:
        patch.undo()
    return folder, written, ran


def test_the_using_it_block_runs_top_to_bottom_and_writes_what_it_names(pasted):
    folder, written, _ = pasted
    verbs = {words[1] for words in written}
    assert {"train", "sample", "evaluate", "report"} <= verbs  # the block still tours the ladder
    for words in written:
        for option in ("--out", "--run-dir", "--resume"):
            if option in words:
                assert (folder / _value(words, option)).exists(), f"{shlex.join(words)}: no {_value(words, option)}"
        if "--run-dir" in words:
            assert (folder / _value(words, "--run-dir") / "latest.json").is_file()
    runs = [_value(words, "--run-dir") for words in written if "--run-dir" in words]
    for words in written:  # every folder a command reads was written by a line above it
        if words[1] not in ("train", "noising"):  # (reflow reads its teacher and writes its --run-dir)
            named = [word for word in words[2:] if word.startswith("runs/")]
            assert named and set(named) <= set(runs), shlex.join(words)


def _promises(text: str) -> list[str]:
    """The file and folder names of the README's "Run folders" paragraph (backticked paths, N for a digit)."""
    match = re.search(r"\*\*Run folders\.\*\*(.*?)\n\n", text, flags=re.S)
    assert match, "the README has no **Run folders.** paragraph"
    names = re.findall(r"`([^`\s]+)`", match.group(1))
    return [name for name in names if re.fullmatch(r"[\w/.]+", name) and ("." in name or name.endswith("/"))]


def test_the_run_folder_names_the_readme_promises_are_what_training_writes(pasted):
    folder, written, _ = pasted
    promises = _promises(README.read_text(encoding="utf-8"))
    assert {"samples/epoch_NNN.png", "samples/step_NNNNNNN.png", "config.json", "metrics.jsonl"} <= set(promises)
    runs = {_value(words, "--run-dir") for words in written if words[1] == "train" and "--run-dir" in words}
    paths = [f"{path.relative_to(folder / run)}{'/' if path.is_dir() else ''}"
             for run in runs for path in (folder / run).rglob("*")]
    for promise in promises:
        pattern = re.sub(r"N+", lambda m: rf"\d{{{len(m.group())}}}", re.escape(promise))
        assert any(re.search(rf"(^|/){pattern}$", path) for path in paths), f"the README promises {promise}"
