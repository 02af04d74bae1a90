"""genladder's benchmark suite: training and sampling throughput of every model, beside diffusers.

    make bench                                   # the full suite (tens of minutes on 2 cores; a quiet machine)
    .venv/bin/python benchmarks/bench.py --quick # a smoke run in seconds
    .venv/bin/python benchmarks/bench.py --cases 'cddpm-*' --threads 2 --json bench.json --markdown

For every case (a model at a preset, ``bench_cases.CASES``) and variant (``bench_cases.VARIANTS``:
eager, compile = ``genladder train --compile``, bf16 = ``--precision bf16``) it
reports: parameters; GFLOP per image (FlopCounterMode: one forward, and a training step's forward +
backward); training images/s of the real step (objective, backward, clipping, Adam, EMA); for each
sampler, step count and guidance weight, network evaluations × images per second and images per
second; the share of the machine's peak (an fp32 matmul measured in the same run) those reach; the
memory a phase adds; and, for diffusion, the same figures for diffusers' ``UNet2DModel`` +
schedulers at a matching size, with our/peer ratios. Times are medians of single timed calls after
warm-up. The torch thread count and other processes' CPU use are printed with the tables: figures
taken with different thread counts or on a loaded machine are not comparable.

JSON layout (``--json``): {"machine", "peak", "load", "settings", "warnings", "cases": [{"case",
"kind", "preset", "variant", "params", "gflop_per_image": {"forward", "train"}, "train": {"batch_size",
"step_seconds", "images_per_s", "gflop_per_image", "gflop_per_s", "share_of_peak", "peak_mb",
"peer_ratio"?}, "sampling": [{"label", "sampler", "steps", "guidance", "evaluations_per_image",
"images", "seconds", "images_per_s", "evaluations_per_s", "gflop_per_s", "share_of_peak", "peak_mb",
"peer_ratio"?}], "peer": null | {"name", "unet2d_kwargs", "params", "gflop_per_image", "train",
"sampling"}, "notes", "other_cores"}]}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings

import torch

from genladder.checkpoint import atomic_write_json
from genladder.errors import GenladderError
from genladder.runs import pick_device
from genladder.runtime import tune_allocator

from bench_cases import CASES, QUICK, VARIANTS, Settings, select_cases, select_variants
from bench_machine import OtherLoad, busy_warning, load_before_start, loadavg, machine_info, matmul_peak_gflops
from bench_peer import peer_available
from bench_report import render
from bench_run import run_case


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py", description="genladder's benchmark suite (see the module "
                                     "docstring); not part of the tests.")
    parser.add_argument("--quick", action="store_true", help="tiny batches, few repeats, cases "
                        "ae-default and cddpm-small unless --cases: a smoke run in seconds (figures meaningless)")
    parser.add_argument("--cases", help="comma-separated case names or shell patterns, e.g. 'cddpm-*,vae-tutorial' "
                        "(default: all; --list shows them)")
    parser.add_argument("--variants", default="eager", help=f"comma-separated, from {', '.join(VARIANTS)} "
                        "(default eager)")
    parser.add_argument("--compile", action="store_true", help="shorthand for --variants eager,compile")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu or cuda")
    parser.add_argument("--train-batch", type=int, help="images per training step (default 128, --quick 8)")
    parser.add_argument("--sample-batch", type=int, help="images per sampler call (default 16, --quick 4)")
    parser.add_argument("--no-peer", action="store_true", help="skip the diffusers peer")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    parser.add_argument("--list", action="store_true", help="list the cases and variants, then exit")
    return parser


def settings_line(settings: Settings, quick: bool) -> str:
    return (f"{'--quick, ' if quick else ''}train batch {settings.train_batch}, {settings.train_warmup} warm-up + "
            f"{settings.train_steps} timed steps; sampling {settings.sample_batch} images per call, "
            f"{settings.sample_warmup} warm-up + {settings.sample_repeats} timed calls; medians")


def run(args: argparse.Namespace) -> int:
    if args.list:
        print("cases:    " + ", ".join(case.name for case in CASES))
        print("variants: " + ", ".join(f"{name} ({v.description})" for name, v in VARIANTS.items()))
        return 0
    if args.threads is not None:
        if args.threads < 1:
            raise GenladderError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cases = select_cases(args.cases, args.quick)
    variants = select_variants("eager,compile" if args.compile else args.variants)
    settings = QUICK if args.quick else Settings()
    if device.type == "cuda" and not args.quick:
        settings = dataclasses.replace(settings, peak_size=8192, peak_repeats=10)
    for name in ("train_batch", "sample_batch"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise GenladderError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
            settings = dataclasses.replace(settings, **{name: value})
    with_peer = not args.no_peer and peer_available()

    before = load_before_start(settings.load_window_s)
    during = OtherLoad()
    start = time.perf_counter()
    peak = matmul_peak_gflops(device, settings.peak_size, settings.peak_repeats)
    results = []
    for case in cases:
        for variant in variants:
            print(f"bench: {case.name} [{variant.name}] …", file=sys.stderr, flush=True)
            results.append(run_case(case, variant, settings, device, peak, with_peer))
    during_cores = during.cores()

    alerts = [w for w in (busy_warning(before, f"in the {settings.load_window_s:g} s before the run"),
                          busy_warning(during_cores, "during the run")) if w]
    if not with_peer and not args.no_peer:
        alerts.append("note: diffusers is not installed, so there is no peer (pip install -e '.[bench]')")
    report = {
        "machine": dataclasses.asdict(machine_info(device)),
        "peak": {"kind": "fp32 matmul", "size": settings.peak_size, "repeats": settings.peak_repeats,
                 "gflop_per_s": peak},
        "load": {"before_cores": before, "during_cores": during_cores, "loadavg": loadavg()},
        "settings": {**dataclasses.asdict(settings), "quick": args.quick, "peer": with_peer},
        "settings_line": settings_line(settings, args.quick),
        "warnings": alerts,
        "seconds": time.perf_counter() - start,
        "cases": results,
    }
    print(render(report, markdown=args.markdown))
    print(f"bench: {len(results)} case runs in {report['seconds']:.0f} s", file=sys.stderr)
    for alert in alerts:
        print(f"bench: {alert}", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, report)
        print(f"bench: wrote {args.json}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    # numpy 2's `copy=` notice from inside diffusers' DPM-Solver, once per scheduler: noise in the tables
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"diffusers\.")
    tune_allocator()  # the allocator settings the genladder command applies (genladder.runtime), for both sides
    try:
        return run(build_parser().parse_args(argv))
    except GenladderError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
