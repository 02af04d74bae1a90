"""Regenerate every figure of docs/ with genladder's own commands: ``make docs-figures``.

    python scripts/docs_figures.py                   # recipe "fast": trains into runs/docs/, draws in docs/images/
    python scripts/docs_figures.py --runs runs/mine  # reuse the run folders already there (RUNS_DIR=... in make)
    python scripts/docs_figures.py --run cddpm=runs/cddpm-small --only cddpm-trajectory
    python scripts/docs_figures.py --dry-run         # print every command instead of running it
    python scripts/docs_figures.py --recipe quick --out /tmp/figs --data-dir tests/data/mnist-mini   # seconds (tests)

Each figure needs at most one trained run (``ae``, ``vae``, ``vae2d``, ``cvae``, ``cvae-tutorial``, ``cddpm``);
the 2-D flow toy's figures need none (``genladder.flow.toy``: closed forms and a seconds-long reflow fit).
A run folder that already holds a checkpoint is reused as it is; otherwise it is trained first with the
recipe's command. Recipes:

* ``fast`` (default): one epoch per autoencoder and a 3-minute ``cpu-fast`` cddpm: roughly half an
  hour on a 2-core CPU (one VAE epoch took 3.5–5.5 min on one thread), most of it training;
* ``readme``: the runs the committed images come from (5 epochs per autoencoder, the ``small`` cddpm
  for 37 minutes): hours on a CPU;
* ``quick``: tiny networks on a few hundred digits, for the test suite; ``--out`` is required so
  that quick pictures never overwrite the committed ones.

The figure verbs run in this process through ``genladder.cli.main``, exactly as on the command line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from genladder.cli import main as genladder
from genladder.errors import GenladderError

RUN, REPO = "{run}", Path(__file__).resolve().parent.parent
RECIPES = ("fast", "readme", "quick")
_AUTOENCODER_RUNS = {  # run name: the training command common to every recipe
    "ae": ["ae", "--preset", "default"],
    "vae": ["vae", "--preset", "default"],
    "vae2d": ["vae", "--preset", "default", "--latent-dim", "2"],
    "cvae": ["cvae", "--preset", "default"],
    "cvae-tutorial": ["cvae", "--preset", "tutorial"],
}
_QUICK_AUTOENCODER = ["--limit", "256", "--test-limit", "64", "--steps", "4", "--batch-size", "32", "--width", "16"]
_TRAINING = {  # recipe: (extra arguments of every autoencoder run, the cddpm command)
    "fast": (["--epochs", "1"], ["cddpm", "--preset", "cpu-fast", "--time-budget", "3m"]),
    "readme": (["--epochs", "5"], ["cddpm", "--preset", "small", "--time-budget", "37m"]),
    "quick": (_QUICK_AUTOENCODER, ["cddpm", "--preset", "cpu-fast", "--widths", "8,8,8", "--T", "20", "--limit", "64",
                                   "--test-limit", "16", "--steps", "2", "--batch-size", "16"]),
}
_SAMPLING_VERBS = ("sample", "trajectory", "guidance-sweep")


def training_command(name: str, recipe: str) -> list[str]:
    """The ``genladder train`` arguments (without --run-dir) that make run ``name`` under ``recipe``."""
    extra, cddpm = _TRAINING[recipe]
    return ["train", *(cddpm if name == "cddpm" else [*_AUTOENCODER_RUNS[name], *extra])]


@dataclass(frozen=True)
class Figure:
    """One picture: ``name``.png in the output folder, drawn by a genladder command from one run (or none)."""

    name: str
    run: str | None
    argv: tuple[str, ...]  # the command, RUN standing for the run folder; () = copy the run's loss.png
    function: str = ""  # "module:function" called as function(path, quick=...) instead of a command (argv ())


def figures(quick: bool) -> list[Figure]:
    """Every figure of the docs, in reading order; ``quick`` shrinks every count for the tests."""
    n_grid, steps, noising = ("10", "4", ["--n", "2", "--frames", "4"]) if quick else ("100", "20", [])
    recon = ["--n", "8" if quick else "16"]
    interpolate = ["--pairs", "2" if quick else "4"]
    guided = ["--grid", "--n", n_grid, "--guidance", "2"]
    trajectory = ["--n", "2", "--frames", "4", "--steps", "10"] if quick else ["--n", "8", "--frames", "10",
                                                                               "--steps", "100"]
    latent_map = ["--n", "200", "--grid", "4"] if quick else []
    return [
        Figure("ae-reconstructions", "ae", ("reconstruct", RUN, *recon)),
        Figure("ae-interpolation", "ae", ("interpolate", RUN, *interpolate)),
        Figure("vae-samples", "vae", ("sample", RUN, "--n", "16" if quick else "64")),
        Figure("vae-reconstructions", "vae", ("reconstruct", RUN, *recon)),
        Figure("vae-interpolation", "vae", ("interpolate", RUN, *interpolate)),
        Figure("vae2d-latent-map", "vae2d", ("latent-map", RUN, *latent_map)),
        Figure("cvae-grid", "cvae", ("sample", RUN, "--grid", "--n", n_grid)),
        Figure("cvae-tutorial-grid", "cvae-tutorial", ("sample", RUN, "--grid", "--n", n_grid)),
        Figure("cvae-interpolation", "cvae", ("interpolate", RUN, *interpolate)),
        Figure("noising-linear-1000", None, ("noising", "--schedule", "linear", "--T", "1000", *noising)),
        Figure("noising-cosine-1000", None, ("noising", "--schedule", "cosine", "--T", "1000", *noising)),
        Figure("noising-linear-100", None, ("noising", "--schedule", "linear", "--T", "100", *noising)),
        Figure("cddpm-loss", "cddpm", ()),
        Figure("cddpm-grid-dpmpp20", "cddpm", ("sample", RUN, *guided, "--steps", steps)),
        Figure("cddpm-grid-ddim20", "cddpm", ("sample", RUN, *guided, "--sampler", "ddim", "--steps", steps)),
        Figure("cddpm-grid-ddpm1000", "cddpm", ("sample", RUN, *guided, "--sampler", "ddpm")),
        Figure("cddpm-trajectory", "cddpm", ("trajectory", RUN, *trajectory, "--sampler", "ddpm", "--guidance", "2")),
        Figure("cddpm-guidance-sweep", "cddpm", ("guidance-sweep", RUN, "--guidance-weights", "0,0.5,1,2,4,8",
                                                 "--steps", steps, "--seed", "3")),
        Figure("flow-toy-trajectories", None, (), "genladder.flow.toy:draw_toy_trajectories"),  # no training
        Figure("flow-toy-steps", None, (), "genladder.flow.toy:draw_toy_steps"),
    ]


def _parse_runs(pairs: list[str]) -> dict[str, Path]:
    runs = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or name not in (*_AUTOENCODER_RUNS, "cddpm"):
            raise GenladderError(f"--run takes NAME=FOLDER with NAME one of {', '.join([*_AUTOENCODER_RUNS, 'cddpm'])}"
                                 f", got {pair!r}")
        runs[name] = Path(folder)
    return runs


def _call(argv: list[str], dry_run: bool) -> None:
    print("genladder " + " ".join(argv), flush=True)
    if not dry_run and genladder(argv) != 0:
        raise GenladderError(f"'genladder {argv[0]}' failed (its message is above)")


def prepare_run(name: str, folder: Path, recipe: str, data_dir: str | None, dry_run: bool) -> None:
    """Reuse ``folder`` when it holds a checkpoint, else train it with the recipe's command."""
    if (folder / "latest.json").exists():
        print(f"docs-figures: reusing {folder}", flush=True)
        return
    if (folder / "config.json").exists():
        raise GenladderError(f"{folder} holds a run without a checkpoint; delete it or finish it with "
                             f"'genladder train --resume {folder}'")
    argv = [*training_command(name, recipe), "--run-dir", str(folder)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    if recipe == "quick":
        argv.append("--no-progress")
    _call(argv, dry_run)


def draw(figure: Figure, run: Path | None, out: Path, quick: bool, data_dir: str | None, dry_run: bool) -> Path:
    """Make one figure into ``out``; returns its path."""
    path = out / f"{figure.name}.png"
    if figure.function:  # drawn in closed form (plus seconds of fitting) by a function of genladder
        module, name = figure.function.split(":")
        print(f"python -c 'from {module} import {name}; {name}(\"{path}\", quick={quick})'", flush=True)
        if not dry_run:
            getattr(importlib.import_module(module), name)(path, quick=quick)
        return path
    if not figure.argv:  # the loss curve the training loop drew
        print(f"cp {run / 'loss.png'} {path}", flush=True)
        if not dry_run:
            shutil.copyfile(run / "loss.png", path)
        return path
    argv = [str(run) if arg == RUN else arg for arg in figure.argv] + ["--out", str(path)]
    if data_dir and figure.run is None:
        argv += ["--data-dir", data_dir]
    if quick and argv[0] in _SAMPLING_VERBS:
        argv.append("--no-progress")
    _call(argv, dry_run)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=RECIPES, default="fast", help="how runs that are missing are trained")
    parser.add_argument("--runs", default=os.environ.get("RUNS_DIR") or "runs/docs",
                        help="folder of the run folders, reused when present (default $RUNS_DIR or runs/docs)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER",
                        help="use this run folder for run NAME (e.g. cddpm=runs/cddpm-small); repeatable")
    parser.add_argument("--out", help="where the pictures go (default docs/images; required with --recipe quick)")
    parser.add_argument("--only", help="comma-separated figure names (default: all; see --dry-run)")
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files, for training and the noising strips")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    return parser


def run(argv: list[str] | None = None) -> list[Path]:
    """Make the figures ``argv`` asks for; returns their paths."""
    args = build_parser().parse_args(argv)
    if args.recipe == "quick" and not args.out:
        raise GenladderError("--recipe quick needs --out: quick pictures must not replace the ones in docs/images")
    out = Path(args.out or REPO / "docs" / "images")
    chosen = figures(args.recipe == "quick")
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(names) - {f.name for f in chosen})
        if unknown:
            raise GenladderError(f"no figure named {unknown[0]!r}; the names are {', '.join(f.name for f in chosen)}")
        chosen = [f for f in chosen if f.name in names]
    runs = {name: Path(args.runs) / name for name in {f.run for f in chosen if f.run}}
    runs.update({k: v for k, v in _parse_runs(args.run).items() if k in runs})
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name in sorted(runs):
        began = time.perf_counter()
        prepare_run(name, runs[name], args.recipe, args.data_dir, args.dry_run)
        print(f"docs-figures: run {name} ready ({time.perf_counter() - began:.1f} s)", flush=True)
    paths = []
    for figure in chosen:
        began = time.perf_counter()
        paths.append(draw(figure, runs.get(figure.run), out, args.recipe == "quick", args.data_dir, args.dry_run))
        print(f"docs-figures: {paths[-1]} ({time.perf_counter() - began:.1f} s)", flush=True)
    print(f"docs-figures: {len(paths)} figures in {time.perf_counter() - start:.0f} s", flush=True)
    return paths


if __name__ == "__main__":
    try:
        run()
    except GenladderError as error:
        print(f"docs-figures: error: {error}", file=sys.stderr)
        sys.exit(2)
