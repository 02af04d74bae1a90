"""Training and sampling throughput when other busy processes share the CPU, at 1 and 2 torch threads and at
the thread count genladder now picks by itself (``auto``: the cores left free at start-up,
genladder.runtime.avoid_contention).

    python benchmarks/under_load.py --seconds 8 --markdown under-load.md

Each figure is measured in a fresh process (its own torch thread pool) while ``--busy`` other processes spin a
one-thread 512×512 matmul, as a second training would: training images/s of the ``cpu-fast`` U-Net (batch 32,
forward, backward and AdamW step) and sampling network evaluations/s (batch 100, guided pairs counted as two).
"Fair share" is what a fair scheduler gives one process among busy + 1 on the cores: 1 / (busy + 1) of the
machine, against which each figure is read as a share of the quiet machine's best. Run it on an otherwise
quiet machine: it says how busy the machine was before it started.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

BUSY_SOURCE = "import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\nwhile True: a @ a"
WORKLOADS = ("train", "sample")


def worker(workload: str, threads: str, seconds: float) -> dict:
    """One measurement in this process: ``threads`` an integer, or "auto" (the CLI's own choice)."""
    import torch

    from genladder.resolve import resolve_from_preset
    from genladder.rungs import rung
    from genladder.runtime import avoid_contention, tune_allocator

    tune_allocator()
    if threads == "auto":
        torch.set_num_threads(2)
        avoid_contention()
    else:
        torch.set_num_threads(int(threads))
    config = resolve_from_preset({"kind": "cddpm", "preset": "cpu-fast"})
    spec = rung("cddpm")
    model = spec.build(config.model).to(memory_format=torch.channels_last)
    objective = spec.objective(config.objective, config.model)
    batch = 32 if workload == "train" else 100
    x = torch.randn(batch, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    t = torch.randint(0, 1000, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        if workload == "train":
            loss, _ = objective(model, x, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode():
                model(x, t, labels)

    step()  # warm-up: first-call allocations
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        step()
        count += 1
    elapsed = time.perf_counter() - began
    return {"images_per_s": count * batch / elapsed, "threads": torch.get_num_threads()}


def measure(workload: str, threads: str, busy: int, seconds: float) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY_SOURCE]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0.0)  # the spinners are busy before the worker looks at the load
        result = subprocess.run([sys.executable, __file__, "--worker", workload, "--threads", threads, "--seconds",
                                 str(seconds)], check=True, capture_output=True, text=True)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure (default 8)")
    parser.add_argument("--busy", default="0,1,2", help="numbers of competing busy processes (default 0,1,2)")
    parser.add_argument("--threads", default="1,2,auto", help="torch thread settings (default 1,2,auto)")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.seconds)))
        return 0

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from bench_machine import busy_warning, load_before_start

    warning = busy_warning(load_before_start(2.0), "before the benchmark")
    busy_counts = [int(b) for b in args.busy.split(",")]
    settings = args.threads.split(",")
    results = {}
    for busy in busy_counts:
        for threads in settings:
            for workload in WORKLOADS:
                results[busy, threads, workload] = measure(workload, threads, busy, args.seconds)
                got = results[busy, threads, workload]
                print(f"busy {busy}, threads {threads} ({got['threads']}), {workload}: {got['images_per_s']:.1f}/s",
                      file=sys.stderr, flush=True)
    quiet = {w: max(results[busy_counts[0], s, w]["images_per_s"] for s in settings) for w in WORKLOADS}
    lines = ["| busy processes | torch threads | train images/s | share of quiet best | sampling evals/s | "
             "share of quiet best | fair share |", "|---|---|---|---|---|---|---|"]
    for busy in busy_counts:
        for threads in settings:
            train, sample = results[busy, threads, "train"], results[busy, threads, "sample"]
            shown = threads if threads != "auto" else f"auto → {train['threads']}"
            lines.append(f"| {busy} | {shown} | {train['images_per_s']:.1f} | "
                         f"{train['images_per_s'] / quiet['train']:.0%} | {sample['images_per_s']:.0f} | "
                         f"{sample['images_per_s'] / quiet['sample']:.0%} | {1 / (busy + 1):.0%} |")
    table = "\n".join(lines)
    print(table)
    if warning:
        print(warning)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(table + "\n" + (warning + "\n" if warning else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
