"""Calibrate the shipped feature networks: what real and deliberately spoiled digits score (docs/ladder.md).

    python scripts/calibrate_features.py --n 1000,10000 --json docs/calibration.json --docs docs/ladder.md

For each n: real training digits (the floor), two test halves, Gaussian pixel noise σ = 0.05 and 0.25, a
3×3 box blur, 25 % of pixels replaced by noise, digits 0–4 only, and resized instead of padded digits, each
against the MNIST test set, under both shipped networks (genladder.evaluate.calibration). Prints Markdown
tables; with --docs, replaces the text between the calibration markers of that page.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from genladder.checkpoint import atomic_write_bytes, atomic_write_json
from genladder.data import load_split
from genladder.evaluate.calibration import calibration_markdown, calibration_rows
from genladder.evaluate.evaluation import EvaluationConfig, judge_networks

BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="1000,10000", help="comma-separated sample counts (default 1000,10000)")
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files (default: $GENLADDER_DATA_DIR, cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every figure to this JSON file")
    parser.add_argument("--docs", help="a Markdown page whose calibration section to replace")
    args = parser.parse_args()

    train = load_split("mnist", "train", data_dir=args.data_dir)
    test = load_split("mnist", "test", data_dir=args.data_dir)
    networks = judge_networks(EvaluationConfig())
    tables, figures = [], {}
    for n in (int(v) for v in args.n.split(",")):
        start = time.perf_counter()
        rows = calibration_rows(networks, train.images, train.labels, test.images, test.labels, n, seed=args.seed,
                                evaluation=EvaluationConfig(n=n, seed=args.seed))
        figures[str(n)] = rows
        tables.append(calibration_markdown(rows, n))
        print(tables[-1], flush=True)
        print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    if args.json:
        atomic_write_json(args.json, {"command": "python " + " ".join(sys.argv), "networks": {
            role: {"path": network.path.name, "arch": network.classifier.config.arch} for role, network in
            networks.items()}, "rows": figures})
    if args.docs:
        page = Path(args.docs).read_text()
        if BEGIN not in page or END not in page:
            sys.exit(f"{args.docs} has no {BEGIN} … {END} section to replace")
        head, rest = page.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        body = f"\n\nCommand: `python {' '.join(sys.argv)}`\n\n" + "\n".join(tables) + "\n"
        atomic_write_bytes(args.docs, (head + BEGIN + body + END + tail).encode())
        print(f"wrote the calibration into {args.docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
