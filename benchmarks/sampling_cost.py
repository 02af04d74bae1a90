"""What one sampled image costs, rung against rung: network calls, FLOPs and measured milliseconds.

    python benchmarks/sampling_cost.py runs/cpu-fast:dpmpp:20 runs/cflow:heun:5 runs/latent:heun:5 \\
        --guidance 1 --n 200 --threads 1

Each argument is RUN:SAMPLER:STEPS. FLOPs are counted by ``torch.utils.flop_counter`` on one network call of
one image (2 FLOPs per multiply-add) and multiplied by the sampler's calls per image (a guided call counts
twice: the batch is [c; ∅]); the latent rung adds its decoder, once per image. Milliseconds are measured on
``--n`` images after a warm-up batch, so the first row is the peer of the others in the same process (machine
speed varies 3× between sessions here; the ratios do not). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from genladder.rungs import grid_labels
from genladder.runs import load_run
from genladder.sampling import SamplerConfig, generate


def flops_per_call(run) -> int:
    """FLOPs of one conditional network call on one image (the U-Net, or the latent rung's U-Net)."""
    model = run.model
    x = torch.randn(1, *run.config.noise_shape)
    labels = torch.tensor([0]) if run.num_classes else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.tensor([500.0]), labels) if labels is not None else model(x, torch.tensor([500.0]))
    return counter.get_total_flops()


def decoder_flops(run) -> int:
    """FLOPs of decoding one latent (the latent rung; 0 for the others)."""
    if not run.config.rung.latent:
        return 0
    z = torch.randn(1, *run.config.noise_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run.model.decode(z, torch.tensor([0]))
    return counter.get_total_flops()


def milliseconds(run, sampler: SamplerConfig, n: int) -> float:
    labels = grid_labels(n, run.num_classes) if run.num_classes else None
    generate(run.model, run.config, min(n, sampler.batch_size), sampler,
             labels=labels[: sampler.batch_size] if labels is not None else None)  # warm-up
    start = time.perf_counter()
    generate(run.model, run.config, n, sampler, labels=labels)
    return (time.perf_counter() - start) * 1000 / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN:SAMPLER:STEPS")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=200, help="images timed per row (default 200)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.n} images per row, guidance w = {args.guidance:g}, {args.threads} thread(s)\n")
    print("| run | kind | parameters | sampler | calls / image | GFLOP / call | decoder GFLOP | GFLOP / image | "
          "ms / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for spec in args.runs:
        path, sampler_name, steps = spec.rsplit(":", 2)
        run = load_run(path)
        guidance = args.guidance if run.num_classes else 0.0
        sampler = SamplerConfig(sampler=sampler_name, steps=int(steps), guidance=guidance).for_model(run.config)
        calls = sampler.network_evaluations(run.config.rung.guided)
        per_call, decoder = flops_per_call(run), decoder_flops(run)
        total = calls * per_call + decoder
        ms = milliseconds(run, sampler, args.n)
        rows.append((path, total, ms))
        parameters = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        print(f"| {path} | {run.kind} | {parameters / 1e6:.2f} M | {sampler_name} {steps} | {calls} | "
              f"{per_call / 1e9:.3f} | {decoder / 1e9:.3f} | {total / 1e9:.2f} | {ms:.1f} |", flush=True)
    if len(rows) > 1:
        base = rows[0]
        print()
        for path, total, ms in rows[1:]:
            print(f"{path}: {base[1] / total:.1f}× fewer FLOPs and {base[2] / ms:.1f}× faster per image than {base[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
