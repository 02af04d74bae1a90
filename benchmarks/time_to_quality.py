"""Quality against training images: train a diffusion preset once, then evaluate its kept checkpoints.

    python benchmarks/time_to_quality.py --run-dir runs/ttq-cpu-fast --every 172 --plot docs/images/cpu-fast-curve.png

The run trains to its preset's budget (or ``--train-args``), keeping a checkpoint every ``--every`` steps.
Each checkpoint at a multiple of ``--every``, and the last one, is then evaluated (``genladder evaluate
--checkpoint``, samples only: ``--n`` guided samples in equal shares of the ten digits, under both feature
networks, each FID beside its floor at the same n); the loop's epoch-end checkpoints are left out. A learning
rate that decays to zero at the end of the budget makes an earlier checkpoint a point on *this* run's way, not
the end of a shorter run. Prints the table (training images, minutes, accuracy and strict accuracy, FID / floor
/ excess, KID, precision, recall) and writes the plot, .md and .json beside it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from genladder.checkpoint import read_json
from genladder.evaluate import EvaluationConfig, evaluate_run
from genladder.evaluate.curves import curve_row, write_curve
from genladder.evaluate.evaluation import RealDigitCache
from genladder.sampling import SamplerConfig


def curve_checkpoints(checkpoints: list[Path], every: int) -> list[Path]:
    """The checkpoints on the curve: those at multiples of ``every`` steps, and the newest (the end of the run).

    The loop also checkpoints at each epoch end; those would put unevenly spaced points on the curve."""
    steps = {path: read_json(path / "trainer_state.json")["step"] for path in checkpoints}
    newest = max(checkpoints, key=steps.get, default=None)
    return sorted((path for path in checkpoints if steps[path] % every == 0 or path == newest), key=steps.get)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="run folder (trained when it has no config.json)")
    parser.add_argument("--kind", default="cddpm")
    parser.add_argument("--preset", default="cpu-fast")
    parser.add_argument("--every", type=int, default=172, help="steps between kept checkpoints (default 172)")
    parser.add_argument("--n", type=int, default=1000, help="samples per evaluation (default 1000)")
    parser.add_argument("--sampler", default="dpmpp")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--train-args", default="", help="extra arguments for 'genladder train'")
    parser.add_argument("--plot", required=True, help="the plot (.png); the table goes beside it as .md and .json")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.json").exists():
        command = [sys.executable, "-m", "genladder", "train", args.kind, "--preset", args.preset, "--run-dir",
                   str(run_dir), "--checkpoint-every", str(args.every), "--keep-checkpoints", "1000", "--no-progress",
                   *args.train_args.split()]
        print("$ " + " ".join(command[2:]), file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
    checkpoints = curve_checkpoints(list((run_dir / "checkpoints").glob("step_*")), args.every)
    evaluation = EvaluationConfig(n=args.n, samples_only=True, sampling=SamplerConfig(
        sampler=args.sampler, steps=args.steps, guidance=args.guidance))
    values, rows, cache = [], [], RealDigitCache()  # the real digits are embedded once for every checkpoint
    for checkpoint in checkpoints:
        state = read_json(checkpoint / "trainer_state.json")
        print(f"genladder: {checkpoint.name}, {state['images_seen']:,} images", file=sys.stderr, flush=True)
        result = evaluate_run(run_dir, replace(evaluation, checkpoint=checkpoint.name), progress=False, quiet=True,
                              write=False, cache=cache)
        row = curve_row(result)
        row["images"], row["minutes"], row["step"] = state["images_seen"], state["train_seconds"] / 60, state["step"]
        values.append(state["images_seen"])
        rows.append(row)
    title = (f"{run_dir.name}: {args.sampler} {args.steps} steps, w = {args.guidance:g}, n = {args.n}")
    table = write_curve("training images", values, rows, args.plot, title, extra={"run": str(run_dir)})
    minutes = " · ".join(f"{r['images']:,} images = {r['minutes']:.1f} min" for r in rows)
    print(table + "\n" + minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
