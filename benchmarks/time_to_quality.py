"""Time to quality: train a diffusion preset in budget slices and evaluate after each one.

    python benchmarks/time_to_quality.py --run-dir runs/ttq-cpu-fast --minutes 2,4,6,8,10

For every budget m (training minutes in total, counted by the trainer itself, so data loading,
checkpoint reloads and evaluations are not included), the run is resumed with ``--time-budget m``,
then ``genladder evaluate`` draws ``--n`` guided samples (equal shares of the ten digits) and
measures conditional accuracy, classifier-FID and its real-data floor at the same sample count, and
the time the samples took. The table goes to stdout (and ``--markdown``); the curves to ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _genladder(*args: str) -> None:
    command = [sys.executable, "-m", "genladder", *args]
    print("$ genladder " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="run folder (created, or resumed if it exists)")
    parser.add_argument("--kind", default="cddpm")
    parser.add_argument("--preset", default="cpu-fast")
    parser.add_argument("--minutes", default="2,4,6,8,10", help="cumulative training budgets to evaluate at")
    parser.add_argument("--n", default="1000", help="samples per evaluation (default 1000)")
    parser.add_argument("--sampler", default="dpmpp")
    parser.add_argument("--steps", default="20")
    parser.add_argument("--guidance", default="2")
    parser.add_argument("--train-args", default="", help="extra arguments for the first 'genladder train'")
    parser.add_argument("--markdown", help="write the table to this .md file")
    parser.add_argument("--plot", help="write accuracy and FID against training minutes to this .png")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    rows = []
    for minutes in [float(m) for m in args.minutes.split(",")]:
        budget = f"{minutes * 60:.0f}s"
        if (run_dir / "config.json").exists():
            _genladder("train", "--resume", str(run_dir), "--time-budget", budget, "--no-progress")
        else:
            _genladder("train", args.kind, "--preset", args.preset, "--run-dir", str(run_dir), "--time-budget",
                       budget, "--no-progress", *args.train_args.split())
        _genladder("evaluate", str(run_dir), "--n", args.n, "--sampler", args.sampler, "--steps", args.steps,
                   "--guidance", args.guidance, "--bpd-images", "50", "--bpd-timesteps", "20",
                   "--memorisation-samples", "500", "--no-progress")
        result = json.loads((run_dir / "eval.json").read_text())
        samples, floor = result["samples"], result["floor"]
        rows.append({
            "minutes": result["training"]["seconds"] / 60, "step": result["step"],
            "images_per_s": result["training"]["images_per_s"],
            "accuracy": samples["conditional_accuracy"]["overall"], "fid": samples["classifier_fid"],
            "floor": floor["classifier_fid"], "precision": samples["precision"], "recall": samples["recall"],
            "sampling_s": result["sampling"]["seconds"], "n": result["sampling"]["n"],
        })
        (run_dir / "time_to_quality.json").write_text(json.dumps(rows, indent=2) + "\n")

    header = ("| training min | step | train img/s | cond. accuracy | classifier-FID | floor | FID / floor | "
              "precision | recall | sampling s |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['minutes']:.1f} | {r['step']} | {r['images_per_s']:.0f} | {r['accuracy'] * 100:.2f} % | "
                     f"{r['fid']:.2f} | {r['floor']:.2f} | {r['fid'] / r['floor']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['sampling_s']:.1f} ({r['n']} images) |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.plot:
        _plot(rows, Path(args.plot))
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["minutes"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(minutes, [r["accuracy"] * 100 for r in rows], "o-")
    left.axhline(99, color="grey", ls="--", lw=1, label="target 99 %")
    left.set(xlabel="training minutes", ylabel="conditional accuracy (%)", title="samples read as the asked digit")
    left.legend()
    right.plot(minutes, [r["fid"] for r in rows], "o-", label="samples")
    right.plot(minutes, [3 * r["floor"] for r in rows], "--", color="grey", lw=1, label="3 × real-data floor")
    right.plot(minutes, [r["floor"] for r in rows], ":", color="black", lw=1, label="real-data floor")
    right.set(xlabel="training minutes", ylabel="classifier-FID", title=f"n = {rows[0]['n']} samples")
    right.set_yscale("log")
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
