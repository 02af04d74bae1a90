"""Seconds for 1,000 guided samples from a trained diffusion run, in each memory format and step count.

    python benchmarks/sampling_speed.py runs/cpu-fast --n 1000 --guidance 1 --steps 20,10

The issue's target for the cpu-fast recipe is 1,000 guided samples in at most 30 s on 2 cores. Each row draws
the same images (one seed per image) with DPM-Solver++(2M) at Karras spacing, after one untimed warm-up batch;
the peer is the same network in PyTorch's default NCHW layout, timed in the same process, so machine speed
(which varies 3× between sessions here) cancels in the ratio. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from genladder.runs import load_run
from genladder.sampling import SamplerConfig, generate


def seconds(model, config, n: int, sampler: SamplerConfig, labels) -> float:
    generate(model, config, min(sampler.batch_size, n), sampler, labels=labels[: sampler.batch_size])  # warm-up
    start = time.perf_counter()
    generate(model, config, n, sampler, labels=labels)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--steps", default="20,10", help="comma-separated solver step counts (default 20,10)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = load_run(args.run_dir)  # channels-last, as genladder loads every run
    num_classes = run.num_classes
    labels = torch.arange(args.n) % num_classes if num_classes else None
    guidance = args.guidance if num_classes else 0.0
    print(f"{args.run_dir}: n = {args.n}, w = {guidance:g}, batch {args.batch_size}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs")
    print("| steps | layout | seconds | images/s | vs NCHW |")
    print("|---|---|---|---|---|")
    for steps in (int(s) for s in args.steps.split(",")):
        sampler = SamplerConfig(steps=steps, guidance=guidance, batch_size=args.batch_size)
        with torch.inference_mode():
            nhwc = seconds(run.model, run.config, args.n, sampler, labels)
            run.model.to(memory_format=torch.contiguous_format)
            nchw = seconds(run.model, run.config, args.n, sampler, labels)
            run.model.to(memory_format=torch.channels_last)
        print(f"| {steps} | NHWC (genladder) | {nhwc:.1f} | {args.n / nhwc:.1f} | {nchw / nhwc:.2f}× faster |")
        print(f"| {steps} | NCHW (PyTorch default) | {nchw:.1f} | {args.n / nchw:.1f} | 1 |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
