"""What limits sample quality: one change at a time from the cpu-fast recipe, at a fixed budget of images.

    python benchmarks/ablation.py --images 30720 --jobs 2 --root runs/ablation --markdown docs/ablation.md

Each training variant is ``genladder train cddpm --preset cpu-fast --steps S`` plus its flags, S chosen so
that every variant sees the same number of training images (the learning rate decays to 0 at that budget, and
the warm-up keeps the preset's share of it, 25,600 of 110,080 images, unless the variant sets its own);
``--jobs 2`` trains two at a time with one torch thread each. Each trained run is then evaluated
(``genladder evaluate``'s samples-only figures: ``--n`` guided samples, equal shares of the ten digits, both
feature networks, FID beside its floor at the same n); the sampling variants re-evaluate the baseline run
with other sampler settings. Prints one Markdown table, a row per variant with the command that made it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from genladder.checkpoint import atomic_write_bytes
from genladder.evaluate import EvaluationConfig, evaluate_run
from genladder.evaluate.curves import curve_row
from genladder.evaluate.evaluation import RealDigitCache
from genladder.sampling import DIFFUSION_SAMPLERS, SamplerConfig

# name -> extra `genladder train` flags (one change from the preset each)
TRAINING_VARIANTS = {
    "baseline (cpu-fast)": [],
    "ε-prediction": ["--prediction", "eps"],
    "x0-prediction": ["--prediction", "x0"],
    "2×2 pixel patches": ["--patch-size", "2"],
    "constant learning rate": ["--lr-schedule", "constant"],
    "no warm-up": ["--warmup-images", "0"],
    "min-SNR-γ = 5": ["--min-snr-gamma", "5"],
    "attention at 8×8": ["--attention", "8"],
    "label dropout 0.2": ["--label-dropout", "0.2"],
    "AdamW β₂ = 0.999": ["--adam-beta2", "0.999"],
    "batch 64": ["--batch-size", "64"],
    "EMA half-life 10k images": ["--ema-half-life-images", "10000"],
}
# name -> sampler settings that differ from the evaluation's (re-using the baseline run)
SAMPLING_VARIANTS = {
    "trailing spacing (genladder ≤ 0.3)": {"spacing": "trailing"},
    "DDIM instead of DPM-Solver++": {"sampler": "ddim"},
    "guidance only at 0.3 < σ ≤ 5": {"guidance_interval": (0.3, 5.0)},
}


# The preset's warm-up as a share of its budget (25,600 of 110,080 images): a shorter ablation budget keeps the
# share, or the learning rate would still be rising when the cosine decay ends.
WARMUP_SHARE = 25_600 / 110_080


def _train(root: Path, name: str, flags: list[str], images: int) -> tuple[subprocess.Popen, Path, list[str]]:
    batch = int(flags[flags.index("--batch-size") + 1]) if "--batch-size" in flags else 128
    run_dir = root / name.replace(" ", "_").replace("/", "-")
    if "--warmup-images" not in flags:
        flags = ["--warmup-images", str(round(images * WARMUP_SHARE)), *flags]
    args = ["train", "cddpm", "--preset", "cpu-fast", "--steps", str(images // batch), "--run-dir", str(run_dir),
            "--threads", "1", "--no-progress", *flags]
    if (run_dir / "config.json").exists():
        return None, run_dir, args
    log = open(root / f"{run_dir.name}.log", "w")  # noqa: SIM115  closed with the process
    process = subprocess.Popen([sys.executable, "-m", "genladder", *args], stdout=log, stderr=log)
    return process, run_dir, args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30_720, help="training images per variant (default 30720)")
    parser.add_argument("--root", default="runs/ablation", help="folder of the variants' run folders")
    parser.add_argument("--variants", help="comma-separated names (default: all); see TRAINING/SAMPLING_VARIANTS")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time, one torch thread each")
    parser.add_argument("--n", type=int, default=1000, help="samples per evaluation (default 1000)")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=20, help="solver steps (default 20)")
    parser.add_argument("--sampler", choices=DIFFUSION_SAMPLERS, help="the evaluation's sampler (default: the "
                        "library's; the committed tables used dpmpp, the default then)")
    parser.add_argument("--markdown", help="also write the table to this .md file")
    args = parser.parse_args()

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    wanted = args.variants.split(",") if args.variants else [*TRAINING_VARIANTS, *SAMPLING_VARIANTS]
    unknown = [w for w in wanted if w not in TRAINING_VARIANTS and w not in SAMPLING_VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {[*TRAINING_VARIANTS, *SAMPLING_VARIANTS]}")
    training = [w for w in wanted if w in TRAINING_VARIANTS]
    if any(w in SAMPLING_VARIANTS for w in wanted) and "baseline (cpu-fast)" not in training:
        training.insert(0, "baseline (cpu-fast)")

    runs, pending, running = {}, list(training), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            process, run_dir, command = _train(root, name, TRAINING_VARIANTS[name], args.images)
            runs[name] = (run_dir, command)
            if process is not None:
                print(f"training {name}: genladder {' '.join(command)}", file=sys.stderr, flush=True)
                running.append((name, process))
        for name, process in list(running):
            if process.poll() is not None:
                running.remove((name, process))
                if process.returncode:
                    sys.exit(f"{name} failed (exit {process.returncode}); see {root}")
        time.sleep(2)

    sampler = SamplerConfig(sampler=args.sampler, steps=args.steps, guidance=args.guidance)
    evaluation = EvaluationConfig(n=args.n, samples_only=True, sampling=sampler)
    lines = [f"| variant (n = {args.n}, w = {args.guidance:g}, {args.steps} steps; {args.images:,} training images) "
             "| accuracy / strict | FID | excess | KID | precision / recall | 2nd network: strict / excess "
             "| train img/s (1 thread) | command |", "|" + "---|" * 9]
    rows = [(name, runs[name][0], runs[name][1], {}) for name in training]
    rows += [(name, runs["baseline (cpu-fast)"][0], runs["baseline (cpu-fast)"][1], SAMPLING_VARIANTS[name])
             for name in wanted if name in SAMPLING_VARIANTS]
    cache = RealDigitCache()  # the real digits are embedded once for every row
    for name, run_dir, command, sampling in rows:
        print(f"evaluating {name}", file=sys.stderr, flush=True)
        config = replace(evaluation, sampling=replace(evaluation.sampling, **sampling))
        result = evaluate_run(run_dir, config, progress=False, quiet=True, write=False, cache=cache)
        row = curve_row(result)
        p, s = row["primary"], row["second"]
        speed = result["training"]["images_per_s"]
        how = "genladder " + " ".join(command) + "".join(f"; sample with {k}={v}" for k, v in sampling.items())
        lines.append(f"| {name} | {p['accuracy'] * 100:.2f} % / {p['strict_accuracy'] * 100:.2f} % | {p['fid']:.3g} | "
                     f"{p['excess']:.3g} | {p['kid']:.3g} ± {p['kid_std_error']:.2g} | {p['precision']:.3f} / "
                     f"{p['recall']:.3f} | {s['strict_accuracy'] * 100:.2f} % / {s['excess']:.3g} | {speed:.0f} | "
                     f"`{how}` |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        atomic_write_bytes(args.markdown, table.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
