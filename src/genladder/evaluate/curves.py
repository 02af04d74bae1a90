"""Quality against one knob, from one command: ``genladder guidance-curve`` and ``steps-curve`` (and the
time-to-quality benchmark).

Each point is a full evaluation of the samples (``evaluate_run`` without likelihoods or memorisation)
under both feature networks; the table gives accuracy (argmax and strict), FID with its floor and
excess, KID, precision and recall at every point, and the plot draws them against the knob.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from genladder.checkpoint import atomic_write_bytes, atomic_write_json
from genladder.errors import GenladderError
from genladder.evaluate.evaluation import EvaluationConfig, RealDigitCache, evaluate_run
from genladder.evaluate.report import ROLES, excess, ranking_disagreements
from genladder.plotting import save_metric_panels
from genladder.rungs import rung


def curve_row(result: dict) -> dict:
    """The figures of one point of a curve, flat: accuracy, strict accuracy, FID/floor/excess, KID, P/R per network."""
    row = {}
    for role in ROLES:
        judge = result.get("judges", {}).get(role)
        if judge is None:
            continue
        samples, floor = judge["samples"], judge["floor"]
        accuracy = samples.get("conditional_accuracy", {})
        row[role] = {
            "accuracy": accuracy.get("overall"), "strict_accuracy": accuracy.get("strict"),
            "fid": samples["classifier_fid"], "floor": floor["classifier_fid"], "excess": excess(judge),
            "kid": samples["kid"]["kid"], "kid_std_error": samples["kid"]["std_error"],
            "precision": samples["precision"], "recall": samples["recall"],
            "density": samples["density"], "coverage": samples["coverage"],
        }
    return row


def curve_markdown(knob: str, values: list, rows: list[dict]) -> str:
    """A Markdown table: one line per knob value, the primary network's figures and the second's FID excess."""
    costs = all(row.get("network_evaluations") is not None for row in rows)  # sampling curves say what it cost
    header = (f"| {knob} | accuracy | strict accuracy | FID | floor | excess | KID | precision | recall | "
              "2nd network: accuracy / strict / FID excess |")
    header += " network calls / image | ms / image |" if costs else ""
    lines = [header, "|" + "---|" * (12 if costs else 10)]
    for value, row in zip(values, rows, strict=True):
        p = row["primary"]
        s = row.get("second")
        second = (f"{s['accuracy'] * 100:.2f} % / {s['strict_accuracy'] * 100:.2f} % / {s['excess']:.3g}"
                  if s and s["accuracy"] is not None else (f"{s['excess']:.3g}" if s else "–"))
        accuracy = f"{p['accuracy'] * 100:.2f} %" if p["accuracy"] is not None else "–"
        strict = f"{p['strict_accuracy'] * 100:.2f} %" if p["strict_accuracy"] is not None else "–"
        label = f"{value:g}" if isinstance(value, (int, float)) else str(value)  # a knob's number, or a name
        lines.append(f"| {label} | {accuracy} | {strict} | {p['fid']:.3g} | {p['floor']:.3g} | {p['excess']:.3g} | "
                     f"{p['kid']:.3g} ± {p['kid_std_error']:.2g} | {p['precision']:.3f} | {p['recall']:.3f} | "
                     f"{second} |" + (f" {row['network_evaluations']} | {row['seconds_per_image'] * 1000:.1f} |"
                                      if costs else ""))
    return "\n".join(lines) + "\n"


def plot_curve(knob: str, values: list, rows: list[dict], out: str | Path, title: str, log_x: bool = False) -> Path:
    def series(name: str, scale: float = 1.0) -> dict:
        return {role: [r[role][name] * scale if role in r and r[role][name] is not None else None for r in rows]
                for role in ROLES if role in rows[0]}

    panels = {
        "accuracy % (argmax)": series("accuracy", 100),
        "strict accuracy % (p ≥ 0.9)": series("strict_accuracy", 100),
        "FID excess over the floor": series("excess"),
        "KID": series("kid"),
        "precision": series("precision"),
        "recall": series("recall"),
    }
    panels = {name: s for name, s in panels.items() if any(v is not None for vs in s.values() for v in vs)}
    return save_metric_panels(list(values), panels, out, xlabel=knob, title=title, log_x=log_x)


def write_curve(knob: str, values: list, rows: list[dict], out: str | Path, title: str, extra: dict | None = None,
                log_x: bool = False) -> str:
    """The plot at ``out`` (.png), the table beside it (.md) and the figures (.json); returns the table."""
    out = Path(out)
    table = curve_markdown(knob, values, rows)
    plot_curve(knob, values, rows, out, title, log_x=log_x)
    atomic_write_bytes(out.with_suffix(".md"), table.encode())
    atomic_write_json(out.with_suffix(".json"), {"knob": knob, "values": list(values), "rows": rows, **(extra or {})})
    return table


def sampling_curve(run_dir: str | Path, knob: str, values: list, vary, evaluation: EvaluationConfig,
                   out: str | Path, progress: bool = True, log_x: bool = False, check=None) -> list[dict]:
    """Evaluate a run's samples at each value of one sampling knob (``vary(sampler_config, value)`` sets it);
    print and write the table, the plot and the JSON. ``check(result)`` refuses a run the knob means nothing
    for, after its first evaluation. Each row also says how many network calls an image cost and how long the
    sampling took."""
    if not str(out).endswith(".png"):
        raise GenladderError(f"--out must name a .png file, got {str(out)!r}")
    results, cache = [], RealDigitCache()  # the real digits are embedded once for all values
    for value in values:
        print(f"genladder: {knob} = {value:g}", file=sys.stderr, flush=True)
        config = replace(evaluation, sampling=vary(evaluation.sampling, value), samples_only=True)
        result = evaluate_run(run_dir, config, progress=progress, quiet=False, write=False, cache=cache)
        if check is not None:
            check(result)
        results.append(result)
    rows = [{**curve_row(r), "network_evaluations": r["sampling"].get("network_evaluations"),
             "seconds_per_image": r["sampling"]["seconds_per_image"]} for r in results]
    sampling = results[0]["sampling"]  # with the run's default sampler named
    spacing = f" ({sampling['spacing']})" if "spacing" in sampling else ""
    fixed = {"w": f"{sampling['sampler']} {sampling['steps']} steps{spacing}",
             "steps": f"{sampling['sampler']}{spacing}, w = {sampling['guidance']:g}"}[knob]
    title = f"{Path(run_dir).name}: {fixed}, n = {evaluation.n}"
    table = write_curve(knob, values, rows, out, title, log_x=log_x,
                        extra={"run": str(run_dir), "n": evaluation.n, "step": results[0]["step"], "fixed": fixed})
    print(table, end="")
    for line in ranking_disagreements(results, names=[f"{knob} = {v:g}" for v in values]):
        print(f"genladder: {line}", file=sys.stderr)
    print(f"genladder: wrote {out} and {Path(out).with_suffix('.md')}", file=sys.stderr)
    return rows


def guidance_curve(run_dir: str | Path, weights: list[float], evaluation: EvaluationConfig, out: str | Path,
                   progress: bool = True) -> list[dict]:
    """Evaluate a cddpm or cflow run's samples at each guidance weight (``genladder guidance-curve``)."""

    def guided(result: dict) -> None:
        if not rung(result["kind"]).guided:
            raise GenladderError(f"guidance-curve needs a cddpm or cflow run; {run_dir} is a {result['kind']} run")

    return sampling_curve(run_dir, "w", weights, lambda sampling, w: replace(sampling, guidance=w), evaluation, out,
                          progress=progress, check=guided)


def steps_curve(run_dir: str | Path, steps: list[int], evaluation: EvaluationConfig, out: str | Path,
                progress: bool = True) -> list[dict]:
    """Evaluate a diffusion or flow run's samples at each number of solver steps (``genladder steps-curve``):
    how few steps a sampler, or a reflowed flow, needs."""

    def iterative(result: dict) -> None:
        if not rung(result["kind"]).iterative:
            raise GenladderError(f"steps-curve needs a diffusion or flow run; {run_dir} is a {result['kind']} run")

    return sampling_curve(run_dir, "steps", steps, lambda sampling, k: replace(sampling, steps=int(k)), evaluation,
                          out, progress=progress, log_x=True, check=iterative)
