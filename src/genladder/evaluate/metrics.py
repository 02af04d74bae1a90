"""Sample-quality metrics over feature vectors and images: plain functions, no models, no files.

Features are the penultimate layer (before its ReLU) of genladder's digit classifiers (``genladder.evaluate.features``);
images are float tensors in [0, 1], shape (N, C, H, W). Every function states what it measures and
where it comes from. Statistics are accumulated in float64 (NVlabs/edm's habit for FID).
"""

from __future__ import annotations

import math

import torch

from genladder.errors import GenladderError


def stderr_of_mean(values: torch.Tensor) -> float | None:
    """The standard error of the mean of per-image ``values``: their sample standard deviation over √n. None for
    a single image, whose spread is unknown (0 would claim an exact figure)."""
    if len(values) < 2:
        return None
    return (values.double().std() / math.sqrt(len(values))).item()


def _check_features(features: torch.Tensor, what: str, minimum: int = 2) -> None:
    if features.dim() != 2:
        raise GenladderError(f"{what} must be a (N, D) matrix of feature vectors, got shape {tuple(features.shape)}")
    if len(features) < minimum:
        raise GenladderError(f"{what} needs at least {minimum} vectors, got {len(features)}")


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of feature vectors (N, D), in float64."""
    _check_features(features, "feature_statistics")
    x = features.to(torch.float64)
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via its eigen-decomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b).

    d² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})   (Dowson & Landau 1982; the FID of Heusel et
    al. 2017, eq. 6). Tr (Σ_a Σ_b)^{1/2} equals Σ_i √λ_i of the *symmetric* PSD matrix
    Σ_a^{1/2} Σ_b Σ_a^{1/2}, which ``eigh`` handles stably; this avoids scipy's general ``sqrtm``
    (and a scipy dependency) and its complex round-off on near-singular covariances.
    """
    mean_a, mean_b = mean_a.to(torch.float64), mean_b.to(torch.float64)
    cov_a, cov_b = cov_a.to(torch.float64), cov_b.to(torch.float64)
    root_a = _symmetric_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
    return float(distance.clamp(min=0))


def classifier_fid(features: torch.Tensor, reference_features: torch.Tensor) -> float:
    """FID (Heusel et al. 2017) between two sets of classifier features (N, D) and (M, D).

    With genladder's digit classifier as the feature network in place of Inception ("classifier-FID").
    FID is biased upwards at small N, so compare figures only at the same sample count: the
    evaluation reports the real-data floor (training digits vs test digits) at the same N beside it.
    """
    _check_features(features, "classifier_fid: the samples' features")
    _check_features(reference_features, "classifier_fid: the reference features")
    return frechet_distance(*feature_statistics(features), *feature_statistics(reference_features))


def kernel_inception_distance(features: torch.Tensor, reference_features: torch.Tensor, subsets: int = 50,
                              subset_size: int = 1000, generator: torch.Generator | None = None) -> dict:
    """KID (Bińkowski et al. 2018, "Demystifying MMD GANs", §3 and appendix D): unbiased MMD² between the two
    feature sets with the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets.

    The unbiased estimator (Gretton et al. 2012, eq. 3) on m samples of each set is
    MMD²_u = 1/(m(m−1)) Σ_{i≠j} [k(x_i, x_j) + k(y_i, y_j)] − 2/m² Σ_{i,j} k(x_i, y_j),
    whose expectation is exactly the population MMD² — 0 when both sets come from one distribution, at any m
    (FID's bias grows as its n shrinks, KID's does not). ``subsets`` draws of ``subset_size`` from each set
    (without replacement within a draw, capped at the smaller set) give the mean and its standard error
    (std over subsets / √subsets; the subsets overlap when the sets are small, so it is then optimistic).
    Returns ``{"kid": float, "std_error": float, "subsets": int, "subset_size": int}``.
    """
    _check_features(features, "kernel_inception_distance: the samples' features")
    _check_features(reference_features, "kernel_inception_distance: the reference features")
    if subsets < 2:
        raise GenladderError(f"kernel_inception_distance needs at least 2 subsets for a standard error, got {subsets}")
    x_all, y_all = features.to(torch.float64), reference_features.to(torch.float64)
    m = min(subset_size, len(x_all), len(y_all))
    d = x_all.shape[1]
    generator = generator or torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(subsets):
        x = x_all[torch.randperm(len(x_all), generator=generator)[:m]]
        y = y_all[torch.randperm(len(y_all), generator=generator)[:m]]
        k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        estimates.append(float(within - 2 * k_xy.mean()))
    values = torch.tensor(estimates, dtype=torch.float64)
    return {"kid": float(values.mean()), "std_error": float(values.std() / math.sqrt(subsets)),
            "subsets": subsets, "subset_size": m}


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Euclidean distances between the rows of a (N, D) and b (M, D) -> (N, M), float32, in row chunks."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    b_norms = b.square().sum(1)  # (M,)
    rows = []
    for start in range(0, len(a), chunk):
        part = a[start : start + chunk]
        # ‖x − y‖² = ‖x‖² − 2 x·y + ‖y‖², clamped at 0 against round-off
        squared = part.square().sum(1, keepdim=True) - 2 * part @ b.T + b_norms
        rows.append(squared.clamp(min=0).sqrt())
    return torch.cat(rows)


def nearest_neighbour_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For every row of a (N, …), the distance to its nearest row of b (M, …) -> (N,). Memory O(chunk·M).

    The expanded-square formula finds the neighbour fast but loses ~1e-3 to round-off near 0; the
    distance to the neighbour it found is then recomputed directly, so an exact copy gives exactly 0.
    """
    a, b = a.flatten(1).float(), b.flatten(1).float()
    nearest = torch.cat([pairwise_distances(a[s : s + chunk], b).argmin(1) for s in range(0, len(a), chunk)])
    return (a - b[nearest]).norm(dim=1)


_RADII_CACHE: dict[tuple, torch.Tensor] = {}
_RADII_NEIGHBOURS = 5  # one pass gives the radii for every k up to this (3 for precision/recall, 5 for density)


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each vector to its k-th nearest *other* vector of the same set (N,).

    The reference set is the same for every sample set an evaluation compares, and its N² distances are the
    costliest part of these metrics: the sorted neighbour distances of the last few sets are kept, keyed by
    the tensor's storage, shape and a checksum of its values.
    """
    depth = max(k, _RADII_NEIGHBOURS)
    key = (features.data_ptr(), tuple(features.shape), float(features.double().sum()), depth)
    if key not in _RADII_CACHE:
        nearest = []
        for start in range(0, len(features), chunk):
            distances = pairwise_distances(features[start : start + chunk], features)
            # the depth + 1 smallest include the vector itself at distance 0
            nearest.append(distances.topk(min(depth + 1, len(features)), dim=1, largest=False).values)
        if len(_RADII_CACHE) >= 8:
            _RADII_CACHE.pop(next(iter(_RADII_CACHE)))
        _RADII_CACHE[key] = torch.cat(nearest)
    return _RADII_CACHE[key][:, k]


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, chunk: int = 1024) -> float:
    """Share of ``queries`` inside at least one ball B(manifold_i, radii_i)."""
    inside = [
        (pairwise_distances(queries[s : s + chunk], manifold) <= radii).any(1) for s in range(0, len(queries), chunk)
    ]
    return torch.cat(inside).float().mean().item()


def precision_recall(features: torch.Tensor, reference_features: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1–3) of samples against real data.

    Each set's manifold is the union of balls around its vectors with radius = distance to the k-th
    nearest neighbour in the same set (k = 3 in the paper). Precision: share of samples inside the
    real manifold (low when samples are blurred or malformed). Recall: share of real vectors inside
    the samples' manifold (low when modes are dropped).
    """
    _check_features(features, "precision_recall: the samples' features", minimum=k + 1)
    _check_features(reference_features, "precision_recall: the reference features", minimum=k + 1)
    if k < 1:
        raise GenladderError(f"precision_recall: k must be at least 1, got {k}")
    precision = _coverage(reference_features, _kth_neighbour_radii(reference_features, k), features)
    recall = _coverage(features, _kth_neighbour_radii(features, k), reference_features)
    return precision, recall


# Below this many vectors per set the k-NN balls of precision/recall and density/coverage are too coarse to
# mean much: a pure-noise model scored precision 0.97 at n = 100 (above real data's 0.87). Measured on
# genladder's features; the evaluation warns below it.
MIN_MANIFOLD_SAMPLES = 1_000


def density_coverage(features: torch.Tensor, reference_features: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics", eqs. 5–6).

    Balls B(y_j, r_j) around the *real* vectors only, r_j = distance to y_j's k-th nearest real neighbour
    (k = 5 in the paper). Density = (1/(kM)) Σ_i Σ_j 1[x_i ∈ B(y_j, r_j)]: how many real balls hold each
    sample, ≈ 1 for real data; unlike precision it is not inflated by a few outlying real vectors with huge
    balls. Coverage = (1/M) Σ_j 1[some sample lies in B(y_j, r_j)]: the share of real neighbourhoods that
    samples reach, which drops with missing modes and, unlike recall, does not use balls around samples,
    so a cloud of bad samples cannot inflate it.
    """
    _check_features(features, "density_coverage: the samples' features", minimum=1)
    _check_features(reference_features, "density_coverage: the reference features", minimum=k + 1)
    if k < 1:
        raise GenladderError(f"density_coverage: k must be at least 1, got {k}")
    radii = _kth_neighbour_radii(reference_features, k)  # (M,)
    counts = torch.zeros(len(reference_features))  # samples inside each real ball
    inside_any = 0.0
    for start in range(0, len(features), 1024):
        inside = pairwise_distances(features[start : start + 1024], reference_features) <= radii  # (chunk, M)
        inside_any += inside.sum().item()
        counts += inside.sum(0)
    density = inside_any / (k * len(features))
    coverage = (counts > 0).float().mean().item()
    return density, coverage


STRICT_PROBABILITY = 0.9  # "read as the requested digit with probability ≥ 0.9"


def conditional_accuracy(predicted: torch.Tensor, requested: torch.Tensor, num_classes: int,
                         probabilities: torch.Tensor | None = None) -> dict:
    """Share of samples the classifier reads as the digit they were drawn for, overall and per class.

    ``predicted`` and ``requested`` are label vectors (N,). Returns ``{"overall": float,
    "per_class": [float | None] * num_classes}`` (None for a class with no samples). Given the
    classifier's ``probabilities`` (N, num_classes), also the **strict** accuracy: the share read as the
    requested digit with probability ≥ 0.9 (``strict``, ``strict_per_class``). Argmax accuracy accepts a
    malformed digit the classifier finds marginally closest to the right class; strict accuracy does not.
    """
    if predicted.shape != requested.shape:
        raise GenladderError(f"conditional_accuracy: {tuple(predicted.shape)} predictions for "
                             f"{tuple(requested.shape)} requested labels")

    def shares(hit: torch.Tensor) -> tuple[float, list]:
        per_class = []
        for label in range(num_classes):
            chosen = requested == label
            per_class.append(hit[chosen].mean().item() if chosen.any() else None)
        return hit.mean().item(), per_class

    overall, per_class = shares((predicted == requested).float())
    result = {"overall": overall, "per_class": per_class}
    if probabilities is not None:
        if probabilities.shape != (len(requested), num_classes):
            raise GenladderError(f"conditional_accuracy: probabilities of shape {tuple(probabilities.shape)} for "
                                 f"{len(requested)} samples of {num_classes} classes")
        p_requested = probabilities.gather(1, requested.long().view(-1, 1)).squeeze(1)
        result["strict"], result["strict_per_class"] = shares((p_requested >= STRICT_PROBABILITY).float())
        result["strict_probability"] = STRICT_PROBABILITY
    return result


def class_histogram(predicted: torch.Tensor, num_classes: int) -> dict:
    """Mode coverage of unconditional samples: the share read as each class, and two summaries.

    ``kl_from_uniform`` is KL(histogram ‖ uniform) in nats (0 when every class is equally frequent,
    log(num_classes) when one class takes everything); ``entropy`` is the histogram's entropy over its
    maximum, H/log(num_classes) = 1 − KL/log(num_classes) (1 for equal shares, 0 for one class); ``smallest``
    is the rarest class's share.
    """
    counts = torch.bincount(predicted.long(), minlength=num_classes)[:num_classes].double()
    shares = counts / counts.sum().clamp(min=1)
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    return {"shares": shares.tolist(), "kl_from_uniform": math.log(num_classes) - entropy,
            "entropy": entropy / math.log(num_classes) if num_classes > 1 else 1.0, "smallest": float(shares.min())}


def reconstruction_error(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict:
    """Per-pixel mean squared error and PSNR of reconstructions, images in [0, 1].

    PSNR = 10·log10(1 / MSE) in dB (peak value 1), computed per image and averaged, the usual
    convention; ``mse`` is the mean over all pixels of all images.
    """
    if originals.shape != reconstructions.shape:
        raise GenladderError(f"reconstruction_error: shapes {tuple(originals.shape)} and "
                             f"{tuple(reconstructions.shape)} differ")
    per_image = (originals.double() - reconstructions.double()).square().flatten(1).mean(1)  # (N,)
    psnr = 10 * torch.log10(1.0 / per_image.clamp(min=1e-10))
    return {"mse": per_image.mean().item(), "psnr_db": psnr.mean().item()}


def memorisation_share(samples: torch.Tensor, train_images: torch.Tensor, threshold: float) -> dict:
    """Share of samples whose nearest training image (pixel L2 distance) is at most ``threshold`` away.

    A model that copies its training set puts many samples right on a training image. The
    evaluation sets ``threshold`` from held-out real digits (the 1st percentile of their
    nearest-training-image distances), so a model that does not memorise scores ≈ 1 %. A threshold
    of 0 (data whose test set repeats training images) counts exact copies only.
    """
    if not math.isfinite(threshold) or threshold < 0:
        raise GenladderError(f"memorisation_share: threshold must be a distance >= 0, got {threshold}")
    distances = nearest_neighbour_distances(samples.flatten(1), train_images.flatten(1))
    return {"share": (distances <= threshold).float().mean().item(), "threshold": threshold,
            "median_distance": distances.median().item()}
