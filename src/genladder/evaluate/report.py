"""Tables from ``eval.json`` files: one run's figures in the terminal, several runs side by side in Markdown."""

from __future__ import annotations

from collections.abc import Iterable


def _fmt(value, spec: str = ".3g", suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:{spec}}{suffix}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _likelihood(result: dict) -> str:
    """The held-out likelihood in the unit its literature uses."""
    if "bits_per_dim" in result:
        bound = result["bits_per_dim"]
        error = _fmt(bound["posterior_stderr"], ".3f")
        return f"≤ {bound['posterior']:.3f} bits/dim (±{error}, {bound['images']} digits)"
    if "iwae_nll_nats" in result:
        iwae = result["iwae_nll_nats"]
        return f"≤ {iwae['value']:.1f} nats (IWAE k={iwae['k']}, {result['likelihood']})"
    return "–"


def summary(result: dict) -> dict[str, str]:
    """The comparable figures of one evaluation, formatted: column name -> text."""
    samples, floor = result.get("samples", {}), result.get("floor", {})
    accuracy = samples.get("conditional_accuracy", {}).get("overall")
    fid = samples.get("classifier_fid")
    sampling = result.get("sampling", {})
    how = ""
    if "sampler" in sampling:
        how = f" ({sampling['sampler']} {sampling['steps'] or 'all'} steps, w={sampling['guidance']:g})"
    reconstruction = result.get("reconstruction")
    return {
        "run": result["run"].rstrip("/").split("/")[-1],
        "model": f"{result['kind']} ({result.get('preset')})",
        "parameters": f"{result['parameters'] / 1e6:.2f} M",
        "training time": _duration(result["training"].get("seconds")),
        "train images/s": _fmt(result["training"].get("images_per_s"), ".0f"),
        "sampling ms/image": _fmt(sampling["seconds_per_image"] * 1e3, ".2f") + how if sampling else "–",
        "classifier-FID (floor)": f"{fid:.3g} ({floor['classifier_fid']:.3g})" if fid is not None else "–",
        "precision": _fmt(samples.get("precision"), ".3f"),
        "recall": _fmt(samples.get("recall"), ".3f"),
        "cond. accuracy": _fmt(accuracy * 100 if accuracy is not None else None, ".2f", " %"),
        "test NLL": _likelihood(result),
        "recon. MSE": _fmt(reconstruction["mse"], ".4f") if reconstruction else "–",
        "memorised": _fmt(result["memorisation"]["share"] * 100, ".1f", " %") if "memorisation" in result else "–",
    }


def markdown_table(results: Iterable[dict]) -> str:
    """One Markdown table, a row per evaluated run, the columns of :func:`summary`."""
    rows = [summary(result) for result in results]
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[column].replace("|", "\\|") for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def terminal_table(result: dict) -> str:
    """One run's evaluation as aligned 'name  value' lines, with per-class accuracy and the floor."""
    lines = [f"{name:<24}{value}" for name, value in summary(result).items()]
    if "test_accuracy" in result:
        lines.append(f"{'test accuracy':<24}{result['test_accuracy']['overall'] * 100:.2f} %")
    samples = result.get("samples", {})
    if "conditional_accuracy" in samples:
        per_class = samples["conditional_accuracy"]["per_class"]
        lines.append(f"{'accuracy per digit':<24}" + " ".join(_fmt(a * 100 if a is not None else None, ".1f")
                                                          for a in per_class))
    if "class_histogram" in samples and "conditional_accuracy" not in samples:
        shares = samples["class_histogram"]["shares"]
        lines.append(f"{'class shares %':<24}" + " ".join(f"{s * 100:.1f}" for s in shares))
    floor = result.get("floor")
    if floor:
        lines.append(f"{'floor precision/recall':<24}{floor['precision']:.3f} / {floor['recall']:.3f} "
                     f"(training digits vs test, n = {floor['n']})")
    if "neg_elbo_nats" in result:
        lines.append(f"{'test −ELBO':<24}{result['neg_elbo_nats']:.2f} nats")
    if "reconstruction" in result:
        lines.append(f"{'recon. PSNR':<24}{result['reconstruction']['psnr_db']:.2f} dB")
    if "bits_per_dim" in result:
        bound = result["bits_per_dim"]
        lines.append(f"{'bound, σ² = β':<24}≤ {bound['beta']:.3f} bits/dim (±{_fmt(bound['beta_stderr'], '.3f')})")
    return "\n".join(lines)
