"""Does a post-hoc EMA pay? The trained EMA, the raw weights and post-hoc averages of one run, side by side.

    python benchmarks/posthoc_ema.py runs/latent-q16 --sigma-rel 0.05,0.1,0.2 --half-life-images 88700 \
        --n 1000 --sampler heun --steps 5 --guidance 1 --markdown posthoc.md

The run must keep its checkpoints along the way (``train --keep-checkpoints 1000``). Each profile's average is
written by ``genladder posthoc-ema`` (genladder.posthoc_ema) into ``RUN/checkpoints/posthoc_…/`` unless it is
there already; then the newest checkpoint's trained EMA, its raw weights and every average draw ``--n`` samples
(in equal shares of the digits, one seed for all rows) and are measured under both feature networks, each FID
beside its floor at the same n. Prints the Markdown table and writes it to ``--markdown``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from genladder.checkpoint import atomic_write_bytes, latest_checkpoint
from genladder.evaluate import EvaluationConfig, evaluate_run
from genladder.evaluate.curves import curve_markdown, curve_row
from genladder.evaluate.evaluation import RealDigitCache
from genladder.posthoc_ema import posthoc_ema, profile_name
from genladder.sampling import SamplerConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--sigma-rel", default="0.05,0.1,0.2", help="power-function widths (default 0.05,0.1,0.2)")
    parser.add_argument("--half-life-images", default="", help="exponential half-lives in images (default none)")
    parser.add_argument("--n", type=int, default=1000, help="samples per row (default 1000)")
    parser.add_argument("--sampler", default=None, help="default: the run family's own")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--markdown", help="write the table here too")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    profiles = [{"sigma_rel": float(v)} for v in args.sigma_rel.split(",") if v.strip()]
    profiles += [{"half_life_images": float(v)} for v in args.half_life_images.split(",") if v.strip()]
    newest = latest_checkpoint(run_dir).name
    rows_to_measure = [(f"trained EMA ({newest})", newest, "auto"), (f"raw weights ({newest})", newest, "model")]
    for profile in profiles:
        name = profile_name(**profile)
        if not (run_dir / "checkpoints" / name / "ema.safetensors").is_file():
            posthoc_ema(run_dir, **profile)
        rows_to_measure.append((name.removeprefix("posthoc_").replace("_", " "), name, "ema"))
    sampling = SamplerConfig(steps=args.steps, guidance=args.guidance)
    if args.sampler:
        sampling = replace(sampling, sampler=args.sampler)
    evaluation = EvaluationConfig(n=args.n, samples_only=True, sampling=sampling)
    labels, rows, cache = [], [], RealDigitCache()
    for label, checkpoint, weights in rows_to_measure:
        print(f"genladder: {label}", file=sys.stderr, flush=True)
        result = evaluate_run(run_dir, replace(evaluation, checkpoint=checkpoint, weights=weights), progress=False,
                              quiet=True, write=False, cache=cache)
        labels.append(label)
        rows.append(curve_row(result))
    table = curve_markdown("weights", labels, rows)
    print(table, end="")
    if args.markdown:
        atomic_write_bytes(args.markdown, table.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
