"""Calibration of a feature network: what real digits, and real digits spoiled in known ways, score.

Every FID genladder publishes is read against this table (``scripts/calibrate_features.py`` writes it
into ``docs/ladder.md``): a model whose FID lies below the "σ = 0.05 pixel noise" row draws digits
closer to the test set than real training digits with faint noise are. Rows, each n images against the
MNIST test set (the evaluation's reference), under the same metrics as ``genladder evaluate``:

* ``floor`` — n real training digits (what a perfect model scores at this n);
* ``test halves`` — n digits of one random half of the test set against the other half;
* ``noise σ=0.05`` / ``noise σ=0.25`` — training digits plus Gaussian pixel noise, clamped to [0, 1];
* ``blur 3×3`` — training digits under a 3×3 box filter;
* ``25% pixels noise`` — a random quarter of each digit's pixels replaced by uniform noise;
* ``digits 0–4 only`` — real training digits of half the classes (mode dropping);
* ``resized, not padded`` — training digits brought to 32×32 by bilinear resizing instead of padding;
* ``clear digits only`` — training digits that the *other* network reads as their label with probability
  ≥ 0.9 (the strict reading), so each judge scores digits chosen by a judge it does not share. Real digits are
  not all clear (the floor's strict accuracy is below 99 %), so this row shows what FID a generator that draws
  only unambiguous digits could reach: the reference for a target of ≥ 99 % strict accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genladder.data import to_32, to_unit
from genladder.evaluate.evaluation import EvaluationConfig, quality
from genladder.evaluate.features import Embedding, FeatureNetwork, embed
from genladder.evaluate.metrics import STRICT_PROBABILITY

CALIBRATION_ROWS = ("floor", "test halves", "noise σ=0.05", "noise σ=0.25", "blur 3×3", "25% pixels noise",
                    "digits 0–4 only", "resized, not padded", "clear digits only")


def _spoil(name: str, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images in [0, 1] (N, C, 32, 32) spoiled as the row ``name`` says."""
    if name.startswith("noise σ="):
        sigma = float(name.split("=")[1])
        return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    if name == "blur 3×3":
        channels = images.shape[1]
        kernel = torch.full((channels, 1, 3, 3), 1 / 9)
        return F.conv2d(F.pad(images, (1, 1, 1, 1)), kernel, groups=channels)
    if name == "25% pixels noise":
        replace = torch.rand(images.shape, generator=generator) < 0.25
        return torch.where(replace, torch.rand(images.shape, generator=generator), images)
    return images


def calibration_rows(networks: dict[str, FeatureNetwork], train_28: torch.Tensor, train_labels: torch.Tensor,
                     test_28: torch.Tensor, test_labels: torch.Tensor, n: int, seed: int = 0,
                     evaluation: EvaluationConfig | None = None) -> dict[str, dict]:
    """{row name: {network role: quality figures}} for n images per row (fewer where a row has fewer).

    ``*_28`` are uint8 MNIST digits (N, 1, 28, 28); the reference is the whole test set, padded to 32×32.
    """
    evaluation = evaluation or EvaluationConfig(n=n, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train_order = torch.randperm(len(train_28), generator=generator)
    chosen = train_order[:n]
    train = to_unit(to_32(train_28[chosen]))
    labels = train_labels[chosen]
    test = to_unit(to_32(test_28))
    halves = torch.randperm(len(test_28), generator=generator)
    half_a, half_b = halves[: len(halves) // 2], halves[len(halves) // 2 :]
    low = train_order[train_labels[train_order] < 5][:n]

    references = {role: embed(network, test) for role, network in networks.items()}  # once per network
    rows: dict[str, dict] = {}
    for name in CALIBRATION_ROWS:
        if name == "clear digits only":  # a selection per judge: the digits the other networks read strictly
            rows[name] = {}
            for role, network in networks.items():
                others = [other for other_role, other in networks.items() if other_role != role]
                clear = clear_digits(others, train_28, train_labels, train_order, n)
                drawn = embed(network, to_unit(to_32(train_28[clear])))
                rows[name][role] = quality(drawn, references[role], train_labels[clear], 10, evaluation)
            continue
        images, row_labels = train, labels
        if name == "digits 0–4 only":
            images, row_labels = to_unit(to_32(train_28[low])), train_labels[low]
        elif name == "resized, not padded":
            images = to_unit(to_32(train_28[chosen], method="resize"))
        elif name != "test halves":
            images = _spoil(name, images, generator)
        rows[name] = {}
        for role, network in networks.items():
            reference = references[role]
            if name == "test halves":  # n digits of one half against the other half of the test set
                drawn, reference = _subset(reference, half_a[:n]), _subset(reference, half_b)
                row_labels = test_labels[half_a[:n]]
            else:
                drawn = embed(network, images)
            rows[name][role] = quality(drawn, reference, row_labels, 10, evaluation)
    return rows


def clear_digits(networks: list[FeatureNetwork], digits_28: torch.Tensor, labels: torch.Tensor,
                 order: torch.Tensor, n: int) -> torch.Tensor:
    """The first n indices in ``order`` of digits that every one of ``networks`` reads as their label with
    probability ≥ STRICT_PROBABILITY (fewer when the digits run out). Digits are read 4n at a time."""
    kept: list[torch.Tensor] = []
    count = 0
    for start in range(0, len(order), 4 * n):
        candidates = order[start : start + 4 * n]
        images = to_unit(to_32(digits_28[candidates]))
        clear = torch.ones(len(candidates), dtype=torch.bool)
        for network in networks:
            probabilities = embed(network, images).probabilities
            clear &= probabilities[torch.arange(len(candidates)), labels[candidates]] >= STRICT_PROBABILITY
        kept.append(candidates[clear])
        count += int(clear.sum())
        if count >= n:
            break
    return torch.cat(kept)[:n]


def _subset(embedding: Embedding, index: torch.Tensor) -> Embedding:
    return Embedding(embedding.features[index], embedding.predicted[index], embedding.probabilities[index])


def calibration_markdown(rows: dict[str, dict], n: int) -> str:
    """The calibration at one n as a Markdown table: FID (excess over the floor row), KID, P/R, D/C, accuracy."""
    lines = [f"| row (n = {n:,}) | FID | excess | KID | precision | recall | density | coverage | accuracy / strict "
             "| FID, 2nd network (excess) |", "|" + "---|" * 10]
    floor = rows["floor"]
    for name, judges in rows.items():
        p = judges["primary"]
        excess = p["classifier_fid"] - floor["primary"]["classifier_fid"]
        accuracy = p.get("conditional_accuracy", {})
        second = judges.get("second")
        second_text = "–"
        if second:
            second_excess = second["classifier_fid"] - floor["second"]["classifier_fid"]
            second_text = f"{second['classifier_fid']:.3g} ({second_excess:.3g})"
        lines.append(f"| {name} ({p['n']:,}) | {p['classifier_fid']:.3g} | {excess:.3g} | {p['kid']['kid']:.3g} | "
                     f"{p['precision']:.3f} | {p['recall']:.3f} | {p['density']:.3f} | {p['coverage']:.3f} | "
                     f"{accuracy.get('overall', 0) * 100:.2f} % / {accuracy.get('strict', 0) * 100:.2f} % | "
                     f"{second_text} |")
    return "\n".join(lines) + "\n"
