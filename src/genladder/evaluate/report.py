"""Tables from ``eval.json`` files: one run's figures in the terminal, several runs side by side in Markdown.

Every FID is printed beside its real-data floor at the same n and its **excess** (FID − floor): a ratio
to the floor hides how far samples are from real digits when the floor itself is large. Figures come
from both feature networks where the evaluation has both, and :func:`ranking_disagreements` says when
the two would order runs differently.
"""

from __future__ import annotations

from collections.abc import Iterable

from genladder.rungs import kinds

ROLES = ("primary", "second")


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
    """−log p(x) in the unit its literature uses (the diffusion floor beside it)."""
    if "bits_per_dim" in result:
        bound = result["bits_per_dim"]
        return (f"≤ {bound['posterior']:.3f} bits/dim (±{_fmt(bound['posterior_stderr'], '.3f')}; floor "
                f"{bound['floor']['posterior']:.3f}, {bound['dims']} px)")
    if "ode_bits_per_dim" in result:
        return _ode_bits(result["ode_bits_per_dim"])
    if "iwae_nll_nats" in result:
        return _iwae(result)
    return "–"


def _iwae(result: dict) -> str:
    """A VAE's IWAE bound, saying what it is a likelihood of: binarised digits (with the test set's seed), or
    grey levels as Bernoulli targets, a cross-entropy (every eval.json written before binarisation existed)."""
    iwae = result["iwae_nll_nats"]
    # An unknown standard error (one digit) prints "–", as the whole-set estimate's does; an eval.json written
    # before standard errors were recorded has no key and prints none.
    spread = f" ± {_fmt(iwae['stderr'], '.2f')}" if "stderr" in iwae else ""
    pixels = result.get("pixels", "grey levels")
    what = ("grey-level cross-entropy" if pixels == "grey levels" and result["likelihood"] == "bernoulli"
            else f"{result['likelihood']}, {pixels}")
    whole = iwae.get("whole_test_set_estimate")
    extra = (f"; whole test set ≈ {whole['value']:.2f} ± {_fmt(whole['stderr'], '.2f')} from its −ELBO less the gap"
             if whole else "")
    return f"≤ {iwae['value']:.1f}{spread} nats (IWAE k={iwae['k']}, {iwae['images']} digits{extra}; {what})"


def _ode_bits(bits: dict) -> str:
    """A flow's dequantized ODE likelihood: a bound on the 8-bit likelihood, as the DDPM bound is."""
    return (f"≤ {bits['bits_per_dim']:.3f} bits/dim (±{_fmt(bits['stderr'], '.3f')}; ODE, {bits['steps']} "
            f"{bits['solver']} steps, {bits['dims']} px)")


def _conditional_likelihood(result: dict) -> str:
    """−log p(x | y): a conditional model's figure, never comparable with −log p(x)."""
    if "bits_per_dim_given_label" in result:
        bound = result["bits_per_dim_given_label"]
        return (f"≤ {bound['posterior']:.3f} bits/dim (±{_fmt(bound['posterior_stderr'], '.3f')}; floor "
                f"{bound['floor']['posterior']:.3f}, {bound['dims']} px)")
    if "ode_bits_per_dim_given_label" in result:
        return _ode_bits(result["ode_bits_per_dim_given_label"])
    if "iwae_nll_nats" in result and result.get("kind") in kinds(variational=True, conditional=True):
        return _iwae(result)
    return "–"


def excess(judge: dict) -> float:
    """FID − its real-data floor at the same n, under one feature network."""
    return judge["samples"]["classifier_fid"] - judge["floor"]["classifier_fid"]


def _fid(judge: dict | None) -> str:
    if judge is None:
        return "–"
    samples, floor = judge["samples"], judge["floor"]
    return f"{samples['classifier_fid']:.3g} (floor {floor['classifier_fid']:.3g}, excess {excess(judge):.3g})"


def _kid(judge: dict | None) -> str:
    if judge is None:
        return "–"
    kid = judge["samples"]["kid"]
    return f"{kid['kid']:.3g} ± {kid['std_error']:.2g} (floor {judge['floor']['kid']['kid']:.2g})"


def _accuracy(judge: dict | None) -> str:
    accuracy = judge["samples"].get("conditional_accuracy") if judge else None
    if accuracy is None:
        return "–"
    strict = accuracy.get("strict")
    return f"{accuracy['overall'] * 100:.2f} % / {_fmt(strict * 100 if strict is not None else None, '.2f', ' %')}"


def stale(result: dict) -> bool:
    """True when the run has a newer checkpoint than the one this evaluation measured (set by read_evaluation)."""
    return bool(result.get("newer_checkpoint"))


def summary(result: dict) -> dict[str, str]:
    """The comparable figures of one evaluation, formatted: column name -> text."""
    judges = result.get("judges", {})
    primary, second = judges.get("primary"), judges.get("second")
    samples = primary["samples"] if primary else {}
    sampling = result.get("sampling", {})
    how = ""
    if "sampler" in sampling:
        # eval.json files of genladder <= 0.3 name no spacing: theirs was trailing. Flow samplers have none (and
        # say how many network calls an image took, which the older files do not).
        flow = "network_evaluations" in sampling and "spacing" not in sampling
        spacing = "" if flow else f" {sampling.get('spacing', 'trailing')}"
        evaluations = f", {sampling['network_evaluations']} evaluations" if "network_evaluations" in sampling else ""
        how = (f" ({sampling['sampler']} {sampling['steps'] or 'all'} steps{spacing}{evaluations}, "
               f"w={sampling['guidance']:g})")
    reconstruction = result.get("reconstruction")
    step = f"{result.get('step')}" + (" (stale: newer checkpoint)" if stale(result) else "")
    return {
        "run": result["run"].rstrip("/").split("/")[-1],
        "model": f"{result['kind']} ({result.get('preset')})",
        "parameters": f"{result['parameters'] / 1e6:.2f} M",
        "training time": _duration(result["training"].get("seconds")),
        "train images": _fmt(result["training"].get("images_seen"), ","),
        "train images/s": _fmt(result["training"].get("images_per_s"), ".0f"),
        "sampling ms/image": _fmt(sampling["seconds_per_image"] * 1e3, ".2f") + how if sampling else "–",
        "n": _fmt(sampling.get("n"), "d") if sampling else "–",
        "FID": _fid(primary),
        "KID": _kid(primary),
        "FID, 2nd network": _fid(second),
        "precision / recall (floor)": (f"{samples['precision']:.3f} / {samples['recall']:.3f} "
                                       f"({primary['floor']['precision']:.3f} / {primary['floor']['recall']:.3f})"
                                       if samples else "–"),
        "density / coverage (floor)": (f"{samples['density']:.3f} / {samples['coverage']:.3f} "
                                       f"({primary['floor']['density']:.3f} / {primary['floor']['coverage']:.3f})"
                                       if samples else "–"),
        "accuracy argmax / strict": _accuracy(primary),
        "accuracy, 2nd network": _accuracy(second),
        "−log p(x)": _likelihood(result),
        "−log p(x | y)": _conditional_likelihood(result),
        "recon. MSE": _fmt(reconstruction["mse"], ".4f") if reconstruction else "–",
        "memorised": _fmt(result["memorisation"]["share"] * 100, ".1f", " %") if "memorisation" in result else "–",
        "step evaluated": step,
    }


def ranking_disagreements(results: list[dict], names: list[str] | None = None) -> list[str]:
    """Pairs of evaluations the two feature networks order differently by FID excess (one line each).

    Only evaluations with both networks take part. Names default to the run folders' names.
    """
    names = names or [r["run"].rstrip("/").split("/")[-1] for r in results]
    scored = [(name, {role: excess(r["judges"][role]) for role in ROLES})
              for name, r in zip(names, results, strict=True) if all(role in r.get("judges", {}) for role in ROLES)]
    lines = []
    for i, (name_a, a) in enumerate(scored):
        for name_b, b in scored[i + 1 :]:
            if (a["primary"] - b["primary"]) * (a["second"] - b["second"]) < 0:
                lines.append(f"the two feature networks disagree: {name_a} vs {name_b} — FID excess "
                             f"{a['primary']:.3g} vs {b['primary']:.3g} (primary), {a['second']:.3g} vs "
                             f"{b['second']:.3g} (second)")
    return lines


def _escape_pipes(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(results: Iterable[dict]) -> str:
    """One Markdown table, a row per evaluated run, the columns of :func:`summary` that any row fills, then a
    line for every pair of runs the two feature networks rank differently."""
    results = list(results)
    rows = [summary(result) for result in results]
    if not rows:
        return ""
    columns = [c for c in rows[0] if any(row[c] != "–" for row in rows)]
    # A "|" inside a header ("−log p(x | y)") or a cell is escaped, or Markdown would split it into two columns.
    lines = ["| " + " | ".join(_escape_pipes(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_escape_pipes(row[column]) for column in columns) + " |" for row in rows]
    counts = sorted({r["sampling"]["n"] for r in results if "sampling" in r})
    notes = [f"evaluated at different n ({', '.join(map(str, counts))}): FID depends on n, so compare each FID only "
             "with its own floor"] if len(counts) > 1 else []
    notes += ranking_disagreements(results) + [f"{row['run']}: evaluated at step {r.get('step')}, but the run has "
                                              "a newer checkpoint: evaluate it again" for row, r in zip(rows, results,
                                                                                                        strict=True)
                                              if stale(r)]
    return "\n".join(lines) + "\n" + "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")


def _judge_lines(role: str, judge: dict) -> list[str]:
    samples, floor = judge["samples"], judge["floor"]
    name = f"{role} ({judge['network'].get('arch', '?')})"
    lines = [f"  {name}",
             f"    {'FID':<22}{samples['classifier_fid']:.4g}   floor {floor['classifier_fid']:.4g}   excess "
             f"{excess(judge):.4g}   (n = {samples['n']} vs the {floor['n']}-digit floor)",
             f"    {'KID':<22}{samples['kid']['kid']:.4g} ± {samples['kid']['std_error']:.2g}   floor "
             f"{floor['kid']['kid']:.2g} ± {floor['kid']['std_error']:.2g}",
             f"    {'precision / recall':<22}{samples['precision']:.3f} / {samples['recall']:.3f}   floor "
             f"{floor['precision']:.3f} / {floor['recall']:.3f}",
             f"    {'density / coverage':<22}{samples['density']:.3f} / {samples['coverage']:.3f}   floor "
             f"{floor['density']:.3f} / {floor['coverage']:.3f}"]
    accuracy = samples.get("conditional_accuracy")
    real = floor.get("conditional_accuracy")
    if accuracy:
        lines.append(f"    {'accuracy':<22}{accuracy['overall'] * 100:.2f} % argmax, {accuracy['strict'] * 100:.2f} % "
                     f"strict (p ≥ {accuracy['strict_probability']:g})   real digits {real['overall'] * 100:.2f} / "
                     f"{real['strict'] * 100:.2f} %")
        lines.append(f"    {'strict per digit':<22}" + " ".join(_fmt(a * 100 if a is not None else None, ".1f")
                                                              for a in accuracy["strict_per_class"]))
    else:
        histogram = samples["class_histogram"]
        lines.append(f"    {'class shares %':<22}" + " ".join(f"{s * 100:.1f}" for s in histogram["shares"]))
        if "entropy" in histogram:  # eval.json files before genladder 0.3 lack it
            lines.append(f"    {'class entropy':<22}{histogram['entropy']:.4f} of 1 (equal shares)")
    return lines


def terminal_table(result: dict) -> str:
    """One run's evaluation as aligned 'name  value' lines: the summary, then every figure per feature network."""
    keep = ("run", "model", "parameters", "training time", "train images", "train images/s", "sampling ms/image",
            "−log p(x)", "−log p(x | y)", "recon. MSE", "memorised", "step evaluated")
    lines = [f"{name:<24}{value}" for name, value in summary(result).items() if name in keep and value != "–"]
    if "test_accuracy" in result:
        lines.append(f"{'test accuracy':<24}{result['test_accuracy']['overall'] * 100:.2f} %")
    for role in ROLES:
        if role in result.get("judges", {}):
            lines += _judge_lines(role, result["judges"][role])
    if "neg_elbo_nats" in result:
        lines.append(f"{'test −ELBO':<24}{result['neg_elbo_nats']:.2f} nats")
    if "reconstruction" in result:
        lines.append(f"{'recon. PSNR':<24}{result['reconstruction']['psnr_db']:.2f} dB")
    for key in ("bits_per_dim", "bits_per_dim_given_label"):
        if key in result:
            bound = result[key]
            lines.append(f"{'bound, σ² = β':<24}≤ {bound['beta']:.3f} bits/dim (±{_fmt(bound['beta_stderr'], '.3f')}; "
                         f"floor {bound['floor']['beta']:.3f})")
    return "\n".join(lines)
