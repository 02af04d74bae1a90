"""The suite's tables: one for training, one for sampling, as aligned text or Markdown."""

from __future__ import annotations

from bench_machine import BUSY_CORES


def _num(value, digits: int = 3) -> str:
    """A figure with about ``digits`` significant digits (no scientific notation for readable sizes)."""
    if value is None:
        return "—"
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _mb(value) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _name(row: dict) -> str:
    return row["case"] if row["variant"] == "eager" else f"{row['case']} [{row['variant']}]"


def _busy(row: dict) -> str:
    """A mark on rows measured while other processes loaded the machine."""
    cores = row.get("other_cores")
    return " †" if cores is not None and cores >= BUSY_CORES else ""


def training_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "params M", "GFLOP/img fwd", "GFLOP/img train", "train img/s", "GFLOP/s", "% of peak",
              "peak MB", "peer params M", "peer GFLOP/img fwd", "peer img/s", "peer % of peak", "ours/peer"]
    rows = []
    for r in results:
        t, peer = r["train"], r.get("peer")
        rows.append([
            _name(r) + _busy(r), _num(r["params"] / 1e6), _num(r["gflop_per_image"]["forward"]),
            _num(r["gflop_per_image"]["train"]), _num(t["images_per_s"]), _num(t["gflop_per_s"]),
            _pct(t["share_of_peak"]), _mb(t["peak_mb"]),
            _num(peer["params"] / 1e6) if peer else "—", _num(peer["gflop_per_image"]["forward"]) if peer else "—",
            _num(peer["train"]["images_per_s"]) if peer else "—", _pct(peer["train"]["share_of_peak"]) if peer else "—",
            _ratio(t.get("peer_ratio")),
        ])
    return header, rows


def sampling_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "sampler", "evals/img", "evals/s", "img/s", "% of peak", "peak MB", "peer evals/s",
              "peer % of peak", "ours/peer"]
    rows = []
    for r in results:
        peer_rows = r["peer"]["sampling"] if r.get("peer") else [None] * len(r["sampling"])
        for s, p in zip(r["sampling"], peer_rows, strict=True):
            rows.append([
                _name(r) + _busy(r), s["label"], str(s["evaluations_per_image"]), _num(s["evaluations_per_s"]),
                _num(s["images_per_s"]), _pct(s["share_of_peak"]), _mb(s["peak_mb"]),
                _num(p["evaluations_per_s"]) if p else "—", _pct(p["share_of_peak"]) if p else "—",
                _ratio(s.get("peer_ratio")),
            ])
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):  # names left-aligned, figures right-aligned
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def conditions(report: dict) -> list[str]:
    """The lines above the tables: what the figures depend on, and whether they are comparable."""
    m, load = report["machine"], report["load"]
    lines = [
        f"device {m['device']} ({m['device_name']}), torch {m['torch_version']}, "
        f"{m['torch_threads']} torch threads (interop {m['torch_interop_threads']}, "
        f"OMP_NUM_THREADS={m['omp_num_threads']}), {m['usable_cpus']} usable CPUs, Python {m['python']}",
        f"peak: fp32 {report['peak']['size']}² matmul {report['peak']['gflop_per_s']:,.1f} GFLOP/s (median of "
        f"{report['peak']['repeats']}); '% of peak' = achieved matmul+conv GFLOP/s ÷ that",
        "other processes' CPU use: "
        + (f"{load['before_cores']:.2f} cores before the run, " if load["before_cores"] is not None else "")
        + (f"{load['during_cores']:.2f} during it" if load["during_cores"] is not None else "(not measurable)")
        + (f"; load average {', '.join(f'{v:.2f}' for v in load['loadavg'])}" if load["loadavg"] else ""),
        f"settings: {report['settings_line']}",
    ]
    lines += report["warnings"]
    return lines


def render(report: dict, markdown: bool) -> str:
    train_header, train = training_rows(report["cases"])
    sample_header, sample = sampling_rows(report["cases"])
    table = markdown_table if markdown else text_table
    item = "- {}" if markdown else "{}"  # Markdown: lists and bold titles, so lines do not run together
    title = "**{}** ({})" if markdown else "{} ({})"
    parts = [item.format(line) for line in conditions(report)]
    parts += ["", title.format("Training", "the real step: objective, backward, clipping, Adam, EMA; channels_last "
                               "as the loop"), "", table(train_header, train)]
    if sample:
        parts += ["", title.format("Sampling", "evals = network evaluations × images, guidance doubles them; eval "
                                   "mode, inference_mode"), "", table(sample_header, sample)]
    notes = list(dict.fromkeys(f"{r['case']}: {note}" for r in report["cases"] for note in r["notes"]))
    if any(_busy(r) for r in report["cases"]):
        notes.append("† measured while other processes used CPU: not comparable")
    if notes:
        parts += ["", *(item.format(note) for note in notes)]
    return "\n".join(parts)
