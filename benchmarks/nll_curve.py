"""Binarised-MNIST likelihood against training epochs, beside the published figures it is compared with.

    python benchmarks/nll_curve.py runs/vae-bin runs/vae-nll --out nll-curve.png [--markdown table.md]

Reads each run's test −ELBO per epoch from its ``metrics.jsonl`` (one draw per digit on the fixed binarised test
set, an upper bound on −log p(x)), the test IWAE bound at the training k for a run trained with ``--objective
iwae`` (a tighter bound, dashed), and, where the run has been evaluated, the IWAE bound of its ``eval.json``
(``genladder evaluate RUN --iwae-k 5000``), and draws them with the literature's dynamically binarised numbers
(Burda et al. 2016, one stochastic layer: VAE 86.76, IWAE k = 5 85.54; two layers, IWAE k = 50, 82.90) as
horizontal lines. Prints the table of the per-epoch figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PUBLISHED = {"VAE (Burda et al. 2016)": 86.76, "IWAE k = 5 (Burda et al. 2016)": 85.54,
             "IWAE k = 50, 2 layers (Burda et al. 2016)": 82.90}


def test_curve(run_dir: Path) -> list[tuple[float, float, float, float | None]]:
    """(epoch, test −ELBO, its KL, test −IWAE at the training k or None) of each epoch end in metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["epoch"], r["neg_elbo"], r.get("kl", float("nan")), r.get("neg_iwae")) for r in records
            if r.get("split") == "test" and "neg_elbo" in r]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    lines = ["| run | epoch | test −ELBO (nats) | KL | test −IWAE at the training k |", "|---|---|---|---|---|"]
    for run_dir in args.run_dirs:
        curve = test_curve(run_dir)
        axes.plot([c[0] for c in curve], [c[1] for c in curve], marker=".", label=f"{run_dir.name}: test −ELBO")
        if any(c[3] is not None for c in curve):
            k = json.loads((run_dir / "config.json").read_text())["objective"].get("k")
            axes.plot([c[0] for c in curve], [c[3] for c in curve], marker=".", linestyle="--",
                      label=f"{run_dir.name}: test −IWAE, k = {k}")
        lines += [f"| {run_dir.name} | {epoch:g} | {elbo:.2f} | {'–' if kl != kl else f'{kl:.2f}'} | "
                  f"{'–' if iwae is None else f'{iwae:.2f}'} |" for epoch, elbo, kl, iwae in curve]
        evaluation = run_dir / "eval.json"
        if evaluation.exists() and curve:
            iwae = json.loads(evaluation.read_text())["iwae_nll_nats"]
            value = iwae.get("whole_test_set_estimate", iwae)["value"]
            axes.scatter([curve[-1][0]], [value], marker="*", s=120, zorder=3,
                         label=f"{run_dir.name}: IWAE k = {iwae['k']} ({value:.2f})")
    for (name, value), style in zip(PUBLISHED.items(), (":", "--", "-."), strict=True):
        axes.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{name}: {value}")
    axes.set_xlabel("epochs")
    axes.set_ylabel("nats per test digit (binarised, 28×28)")
    axes.set_ylim(80, 115)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out)
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
