"""``genladder evaluate RUN_DIR``: every metric that applies to a trained run, written to ``eval.json``.

The steps, for a run of any rung:

1. real data: the full MNIST test set (the reference), the run's own training images (the floor
   and the memorisation check), brought to 32×32 as the run's data were;
2. samples: ``n`` images from the model (conditional models: the ten digits in equal shares), timed;
3. for each of two feature networks of different architecture (the shipped judge and the second
   opinion, ``genladder.evaluate.features``): FID, KID, precision/recall, density/coverage, argmax
   and strict conditional accuracy or the class histogram — and the same figures for n training
   digits against the test set, the real-data floor, so that every FID is read as its excess over
   the floor at the same n;
4. likelihoods on test digits: reconstruction error (AE, VAE, CVAE), −ELBO and the IWAE bound
   (VAE, CVAE), the variational bound in bits/dim (DDPM, on a subset, stratified over t);
5. memorisation: the share of samples closer to a training image than 99 % of test digits are.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from genladder import __version__
from genladder.checkpoint import atomic_write_json, latest_checkpoint, read_json
from genladder.data import to_signed, to_unit
from genladder.data.config import DataConfig
from genladder.errors import GenladderError
from genladder.evaluate.features import (
    SECOND_CLASSIFIER,
    SHIPPED_CLASSIFIER,
    Embedding,
    FeatureNetwork,
    embed,
    load_feature_network,
)
from genladder.evaluate.likelihood import ddpm_bits_per_dim, iwae_negative_log_likelihood, vae_negative_elbo
from genladder.evaluate.metrics import (
    MIN_MANIFOLD_SAMPLES,
    class_histogram,
    classifier_fid,
    conditional_accuracy,
    density_coverage,
    kernel_inception_distance,
    memorisation_share,
    nearest_neighbour_distances,
    precision_recall,
    reconstruction_error,
    stderr_of_mean,
)
from genladder.pipeline import sample_images
from genladder.rungs import decode_image, encode_mean, rung
from genladder.runs import Run, load_run
from genladder.sampling import SamplerConfig

EVAL_FILE = "eval.json"
MEMORISATION_PERCENTILE = 0.01  # the threshold: nearest-training-image distance of the closest 1 % of test digits


@dataclass
class EvaluationConfig:
    """What ``genladder evaluate`` measures and how much of it (the CLI's options)."""

    n: int = 10_000  # samples drawn (and training digits in the floor)
    # diffusion: solver, steps, guidance; its batch_size is also the images per model call for the autoencoders
    sampling: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0  # samples, IWAE and bound noise
    pr_k: int = 3  # neighbourhood size of precision/recall (Kynkäänniemi et al. 2019)
    dc_k: int = 5  # neighbourhood size of density/coverage (Naeem et al. 2020)
    kid_subsets: int = 50  # random subsets in the KID estimate and its standard error
    kid_subset_size: int = 1_000
    iwae_k: int = 100  # importance samples of the IWAE bound
    iwae_images: int = 1_000  # test digits in the IWAE estimate (the ELBO uses all of them)
    bpd_images: int = 200  # test digits in the DDPM bound and in the flow's ODE likelihood
    bpd_timesteps: int | None = 50  # KL terms per image in the DDPM bound (None: all T)
    ode_steps: int = 32  # Heun steps of the flow's likelihood ODE (64 evaluations, each with its divergence)
    ode_probes: int = 2  # Hutchinson probes per evaluation: two, so that the estimator's own error is measured
    memorisation_samples: int = 2_000  # samples (and test digits) in the nearest-training-image check
    classifier: str | None = None  # classifier file or run folder (default: the shipped MNIST classifier)
    # the second opinion (default: the shipped second network when ``classifier`` is the shipped one too)
    second_classifier: str | None = None
    samples_only: bool = False  # skip likelihoods and memorisation (curves over a sampling knob)
    checkpoint: str | None = None  # a kept checkpoint folder's name (default: the newest)
    weights: str = "auto"  # EMA weights when the run has them
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("n", "pr_k", "dc_k", "iwae_k", "iwae_images", "bpd_images", "ode_steps", "ode_probes",
                     "memorisation_samples", "kid_subset_size"):
            if getattr(self, name) < 1:
                raise GenladderError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.n <= max(self.pr_k, self.dc_k):
            raise GenladderError(f"--n must exceed the neighbourhood sizes (--pr-k {self.pr_k}, density/coverage "
                                 f"k {self.dc_k}), got {self.n}")
        if self.kid_subsets < 2:
            raise GenladderError(f"KID needs at least 2 subsets, got {self.kid_subsets}")


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"genladder: {message}", file=sys.stderr, flush=True)


def _real_data(data: DataConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels), images uint8 at the models' size (IDX: 32×32;
    own images: as they are): the run's train subset, the full test set."""
    from genladder.runs import load_data_split

    train = load_data_split(data, "train", limit=data.limit)
    test = load_data_split(data, "test")
    return train.images, train.labels, test.images, test.labels


def _sample(run: Run, evaluation: EvaluationConfig, labels: torch.Tensor | None, progress: bool):
    """n images in [0, 1] from the run's model, and the seconds it took."""
    start = time.perf_counter()
    with torch.inference_mode():
        images = sample_images(run, evaluation.n, labels, evaluation.sampling, seed=evaluation.seed,
                               progress=progress).cpu()
    return images, time.perf_counter() - start


def quality(drawn, reference, labels: torch.Tensor | None, num_classes: int, evaluation: EvaluationConfig) -> dict:
    """Every sample-quality figure of one set of embedded images against the embedded reference set.

    ``labels``: the digit each image was drawn as (conditional samples) or is (real digits), else None.
    """
    precision, recall = precision_recall(drawn.features, reference.features, k=evaluation.pr_k)
    density, coverage = density_coverage(drawn.features, reference.features, k=evaluation.dc_k)
    generator = torch.Generator().manual_seed(evaluation.seed)
    result = {
        "n": len(drawn.features),
        "classifier_fid": classifier_fid(drawn.features, reference.features),
        "kid": kernel_inception_distance(drawn.features, reference.features, subsets=evaluation.kid_subsets,
                                         subset_size=evaluation.kid_subset_size, generator=generator),
        "precision": precision, "recall": recall, "density": density, "coverage": coverage,
        "class_histogram": class_histogram(drawn.predicted, num_classes),
    }
    if labels is not None:
        result["conditional_accuracy"] = conditional_accuracy(drawn.predicted, labels, num_classes,
                                                              drawn.probabilities)
    return result


def judge_networks(evaluation: EvaluationConfig) -> dict[str, FeatureNetwork]:
    """The feature networks to measure with: {"primary": …, "second": …} (the second when there is one)."""
    networks = {"primary": load_feature_network(evaluation.classifier)}
    second = evaluation.second_classifier
    if second is None and evaluation.classifier in (None, str(SHIPPED_CLASSIFIER)) and SECOND_CLASSIFIER.exists():
        second = SECOND_CLASSIFIER
    if second is not None:
        networks["second"] = load_feature_network(second)
    return networks


@torch.no_grad()
def _autoencoder_likelihoods(run: Run, test: torch.Tensor, test_labels: torch.Tensor,
                             evaluation: EvaluationConfig, quiet: bool) -> dict:
    device = next(run.model.parameters()).device
    labels = test_labels.to(device) if rung(run.kind).conditional else None
    reconstructions = []
    for s in range(0, len(test), evaluation.sampling.batch_size):
        x = to_unit(test[s : s + evaluation.sampling.batch_size]).to(device)
        part_labels = labels[s : s + len(x)] if labels is not None else None
        reconstructions.append(decode_image(run.kind, run.model, encode_mean(run.kind, run.model, x, part_labels),
                                            part_labels).cpu())
    result = {"reconstruction": reconstruction_error(to_unit(test), torch.cat(reconstructions))}
    if not rung(run.kind).variational:  # the AE: no posterior, so no likelihood bound
        return result
    generator = torch.Generator(device=device).manual_seed(evaluation.seed)
    iwae_count = min(evaluation.iwae_images, len(test))
    _log(f"−ELBO on {len(test)} test digits, IWAE bound (k = {evaluation.iwae_k}) on {iwae_count}", quiet)
    step = evaluation.sampling.batch_size
    elbo = torch.cat([
        vae_negative_elbo(run.model, to_unit(test[s : s + step]).to(device),
                          labels[s : s + step] if labels is not None else None, generator)
        for s in range(0, len(test), step)
    ])
    # A seeded random subset, not the first n: MNIST's first 5,000 test digits are the cleaner half (LeCun et al.'s
    # description of the set), so the first 1,000 would flatter the bound.
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(evaluation.seed))[:iwae_count]
    chosen = chosen.sort().values  # in test-set order (all of it when iwae_images covers the set)
    # The k draws of 100 digits at a time, decoded 64 draws at once: memory stays flat at k = 5,000.
    start = time.perf_counter()
    iwae = torch.cat([
        iwae_negative_log_likelihood(run.model, to_unit(test[part]).to(device),
                                     labels[part.to(device)] if labels is not None else None, evaluation.iwae_k,
                                     generator)
        for part in chosen.split(100)
    ])
    seconds = time.perf_counter() - start
    result["neg_elbo_nats"] = elbo.mean().item()
    result["neg_elbo_stderr"] = stderr_of_mean(elbo)
    # stderr: the spread of the per-digit bounds over the digits measured (the test set's sampling error, which
    # dominates the importance sampling's own at k in the thousands).
    gap = elbo[chosen] - iwae  # how much the k draws tighten each digit's one-draw −ELBO (paired, so low-variance)
    result["iwae_nll_nats"] = {"value": iwae.mean().item(), "stderr": stderr_of_mean(iwae), "k": evaluation.iwae_k,
                               "images": iwae_count, "subset_seed": evaluation.seed if iwae_count < len(test) else None,
                               "seconds": seconds, "neg_elbo_same_images": elbo[chosen].mean().item()}
    if iwae_count < len(test):
        # The whole test set's bound, estimated: its −ELBO (one draw per digit, all digits) less the mean gap on
        # the subset. Unbiased for the mean of −L_k over every digit, since the subset is a random one; its
        # error is the two independent parts' (the gap varies far less between digits than the bound does).
        result["iwae_nll_nats"]["whole_test_set_estimate"] = {
            "value": (elbo.mean() - gap.mean()).item(),
            "stderr": _independent_sum_stderr(stderr_of_mean(elbo), stderr_of_mean(gap)), "digits": len(test)}
    result["pixels"] = run.config.data.binarized_label
    result["likelihood"] = run.config.model.likelihood
    return result


def _independent_sum_stderr(*errors: float | None) -> float | None:
    """The standard error of a sum of independent estimates; None when any part's is unknown."""
    return None if None in errors else math.sqrt(sum(error ** 2 for error in errors))


@torch.no_grad()
def _diffusion_likelihood(run: Run, test: torch.Tensor, test_labels: torch.Tensor,
                          evaluation: EvaluationConfig) -> dict:
    """The variational bound in bits per real pixel (784 for padded MNIST), beside the perfect denoiser's
    floor on the same digits; −log p(x | y) for the conditional model, −log p(x) for the unconditional one."""
    from genladder.diffusion import as_eps_fn, conditional, unconditional
    from genladder.evaluate.likelihood import oracle_eps_function

    device = next(run.model.parameters()).device
    count = min(evaluation.bpd_images, len(test))
    images = to_signed(test[:count]).to(device)
    schedule = run.schedule.build().to(device)
    # The conditional model's bound is for p(x | y) with the true label and no guidance.
    conditional_run = rung(run.kind).conditional
    fn = conditional(run.model, test_labels[:count].to(device)) if conditional_run else unconditional(run.model)
    eps_fn = as_eps_fn(fn, schedule, run.prediction)
    dims = _padded_digit_pixels(run, images)
    bound = {}
    for name, fn_ in (("model", eps_fn), ("floor", oracle_eps_function(schedule, images))):
        generator = torch.Generator(device=device).manual_seed(evaluation.seed)
        with torch.inference_mode():
            bound[name] = ddpm_bits_per_dim(fn_, schedule, images, timesteps=evaluation.bpd_timesteps,
                                            generator=generator, dims=dims)
    key = "bits_per_dim_given_label" if conditional_run else "bits_per_dim"
    return {key: {**bound["model"], "floor": {v: bound["floor"][v] for v in ("beta", "posterior")},
                  "pixels": _pixels_label(dims)}}


def _padded_digit_pixels(run: Run, images: torch.Tensor) -> int | None:
    """784 per channel for MNIST-like digits padded to 32×32 (the dimensions the bits are shared over), else None
    (every pixel)."""
    data = run.config.data
    padded = data.is_named and data.resize == "pad" and tuple(images.shape[-2:]) == (32, 32)
    return 28 * 28 * images.shape[1] if padded else None


def _pixels_label(dims: int | None) -> str:
    """What a likelihood's bits are shared over, for eval.json (``dims`` from _padded_digit_pixels)."""
    return "the 28×28 digit (the padding's terms included)" if dims is not None else "every pixel"


def _flow_likelihood(run: Run, test: torch.Tensor, test_labels: torch.Tensor, evaluation: EvaluationConfig) -> dict:
    """The ODE likelihood (instantaneous change of variables, Hutchinson divergence) in bits per real pixel, as a
    bound on the 8-bit likelihood (uniform dequantization): the DDPM bound's axis. −log p(x | y) with the true
    label and no guidance for cflow, −log p(x) for flow."""
    from genladder.flow import flow_bits_per_dim, network_velocity

    device = next(run.model.parameters()).device
    count = min(evaluation.bpd_images, len(test))
    images = to_signed(test[:count]).to(device)
    conditional_run = rung(run.kind).conditional
    velocity = network_velocity(run.model, test_labels[:count].to(device) if conditional_run else None)
    generator = torch.Generator(device=device).manual_seed(evaluation.seed)
    dims = _padded_digit_pixels(run, images)
    bits = flow_bits_per_dim(velocity, images, dims=dims, steps=evaluation.ode_steps, solver="heun",
                             divergence="hutchinson", probes=evaluation.ode_probes, generator=generator)
    key = "ode_bits_per_dim_given_label" if conditional_run else "ode_bits_per_dim"
    return {key: {**bits, "pixels": _pixels_label(dims)}}


def _training_summary(run_dir: Path, run: Run) -> dict:
    """Training time, steps and median images/s from the run's checkpoint and metrics.jsonl."""
    state = read_json(run.checkpoint / "trainer_state.json") if (run.checkpoint / "trainer_state.json").exists() else {}
    # Speeds of the steps up to this checkpoint only (an earlier checkpoint of a longer run).
    speeds = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("split") == "train" and "images_per_s" in record and \
                    record.get("step", 0) <= (state.get("step") or math.inf):
                speeds.append(record["images_per_s"])
    speeds.sort()
    return {"seconds": state.get("train_seconds"), "step": state.get("step"), "images_seen": state.get("images_seen"),
            "images_per_s": speeds[len(speeds) // 2] if speeds else None}


def classifier_accuracy(classifier: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy of a trained digit classifier on uint8 images at its size, overall and per class."""
    predicted = embed(FeatureNetwork(classifier, {}, Path()), to_unit(images)).predicted
    return conditional_accuracy(predicted, labels, classifier.num_classes)


@dataclass
class RealDigitCache:
    """Embeddings of real digits (the test set, the floor's training digits) kept across the evaluations of one
    process — the points of a guidance curve or a time-to-quality curve, several runs — so that each feature
    network embeds them once, and the metrics' neighbour radii of the reference (keyed by its tensor) are
    reused. Keyed by network file, which digits, and the run's data description."""

    embeddings: dict[tuple, Embedding] = field(default_factory=dict)

    def embed(self, network, images: torch.Tensor, key: tuple) -> Embedding:
        full_key = (str(network.path), *key)
        if full_key not in self.embeddings:
            self.embeddings[full_key] = embed(network, images)
        return self.embeddings[full_key]


# Which runs read each rung-specific option of `genladder evaluate` (CLI name → (who, test on the rung); the
# message names the rungs from the table, genladder.rungs.readers_of): an option that none of the evaluated runs
# reads is refused rather than accepted and ignored.
EVALUATION_READERS = {
    "pr_k": ("the rungs that draw samples", lambda r: r.samples),
    "memorisation_samples": ("the rungs that draw samples", lambda r: r.samples),
    "iwae_k": ("the variational autoencoders", lambda r: r.variational),
    "iwae_images": ("the variational autoencoders", lambda r: r.variational),
    "bpd_images": ("the diffusion and flow rungs", lambda r: r.diffusion or r.flow),
    "bpd_timesteps": ("the diffusion rungs", lambda r: r.diffusion),
    "ode_steps": ("the flow rungs", lambda r: r.flow),
}


def evaluate_run(run_dir: str | Path, evaluation: EvaluationConfig | None = None, *, progress: bool = True,
                 quiet: bool = False, write: bool = True, cache: RealDigitCache | None = None) -> dict:
    """Measure everything that applies to the run in ``run_dir``; write ``eval.json`` there (``write``).

    ``cache``: share the real digits' embeddings with other evaluations of this process (RealDigitCache).
    """
    evaluation = evaluation or EvaluationConfig()
    cache = cache if cache is not None else RealDigitCache()
    run_dir = Path(run_dir)
    run = load_run(run_dir, weights=evaluation.weights, device=evaluation.device,
                   checkpoint_name=evaluation.checkpoint)
    config = run.config
    if config.data.dataset != "mnist" and evaluation.classifier is None:
        raise GenladderError(f"{run_dir} was trained on {config.data.dataset}; the shipped classifier reads "
                             "MNIST digits only: pass --classifier with a classifier run trained on that data")
    _log(f"loading data and the feature networks for {run_dir}", quiet)
    train_images, train_labels, test_images, test_labels = _real_data(config.data)
    training = _training_summary(run_dir, run)
    result = {
        "genladder_version": __version__, "run": str(run_dir), "kind": run.kind, "preset": config.preset,
        "step": training["step"], "checkpoint": run.checkpoint.name, "weights": run.weights,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "training": training, "evaluation": asdict(evaluation),
    }
    spec = rung(run.kind)
    if spec.iterative:  # the family's default sampler named, so that eval.json says what drew the samples
        evaluation = replace(evaluation, sampling=evaluation.sampling.for_model(run.config))
        result["evaluation"] = asdict(evaluation)
    if not spec.generative:  # the classifier: its accuracy is all there is
        result["test_accuracy"] = classifier_accuracy(run.model, test_images, test_labels)
        return _finish(run_dir, result, write)

    if spec.samples:
        networks = judge_networks(evaluation)
        num_classes = networks["primary"].classifier.num_classes
        conditional_run = spec.conditional
        labels = torch.arange(evaluation.n) % num_classes if conditional_run else None
        if evaluation.n < MIN_MANIFOLD_SAMPLES:
            _log(f"warning: at n = {evaluation.n} < {MIN_MANIFOLD_SAMPLES} precision, recall, density and coverage "
                 "are too coarse to trust (a pure-noise model can score precision above real data's); FID is "
                 "biased upwards: read it only against the floor at the same n", quiet)
        _log(f"drawing {evaluation.n} samples", quiet)
        samples, seconds = _sample(run, evaluation, labels, progress and not quiet)
        result["sampling"] = {"n": evaluation.n, "seconds": seconds, "seconds_per_image": seconds / evaluation.n}
        if spec.iterative:
            sampling = evaluation.sampling
            result["sampling"].update(sampler=sampling.sampler, steps=sampling.steps, guidance=sampling.guidance,
                                      network_evaluations=sampling.network_evaluations(spec.guided))
            if run.config.family == "diffusion":
                result["sampling"]["spacing"] = sampling.spacing
        floor_count = min(evaluation.n, len(train_images))
        # A seeded random subset, not the first n: MNIST's first 1,000 training digits scored a floor of 28.6
        # where random ones score 14.8 (n = 1,000). The same draw as the calibration's floor row.
        chosen = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(evaluation.seed))
        chosen = chosen[:floor_count]
        has_labels = train_labels is not None and len(train_labels) == len(train_images)
        floor_labels = train_labels[chosen] if has_labels else None
        result["judges"] = {}
        for role, network in networks.items():
            _log(f"{role} feature network ({network.classifier.config.arch}): FID, KID, precision/recall, "
                 f"density/coverage of the samples and of {floor_count} training digits (the floor)", quiet)
            data_key = json.dumps(config.data.to_dict(), sort_keys=True)
            reference = cache.embed(network, to_unit(test_images), ("test", data_key))
            real = cache.embed(network, to_unit(train_images[chosen]), ("floor", data_key, evaluation.seed,
                                                                          floor_count))
            result["judges"][role] = {
                "network": {"path": str(network.path), "arch": network.classifier.config.arch, **network.info},
                "samples": quality(embed(network, samples), reference, labels, num_classes, evaluation),
                "floor": quality(real, reference, floor_labels, num_classes, evaluation),
            }
    if evaluation.samples_only:
        return _finish(run_dir, result, write)
    if spec.samples:
        _log("memorisation: nearest training image of each sample", quiet)
        count = min(evaluation.memorisation_samples, evaluation.n, len(test_images))
        train_flat = to_unit(train_images).flatten(1)
        test_distances = nearest_neighbour_distances(to_unit(test_images[:count]).flatten(1), train_flat)
        threshold = torch.quantile(test_distances, MEMORISATION_PERCENTILE).item()
        result["memorisation"] = {**memorisation_share(samples[:count].flatten(1), train_flat, threshold),
                                  "samples": count, "percentile_of_test_digits": MEMORISATION_PERCENTILE}
    if spec.codes:
        result.update(_autoencoder_likelihoods(run, test_images, test_labels, evaluation, quiet))
    elif spec.diffusion:
        _log(f"variational bound on {min(evaluation.bpd_images, len(test_images))} test digits", quiet)
        result.update(_diffusion_likelihood(run, test_images, test_labels, evaluation))
    elif spec.flow:
        _log(f"ODE likelihood on {min(evaluation.bpd_images, len(test_images))} test digits ({evaluation.ode_steps} "
             "Heun steps)", quiet)
        result.update(_flow_likelihood(run, test_images, test_labels, evaluation))
    return _finish(run_dir, result, write)


def _finish(run_dir: Path, result: dict, write: bool) -> dict:
    if write:
        atomic_write_json(run_dir / EVAL_FILE, result)
    return result


def read_evaluation(run_dir: str | Path) -> dict:
    """The ``eval.json`` of a run, with a one-line error when it has not been evaluated yet."""
    path = Path(run_dir) / EVAL_FILE
    if not Path(run_dir).is_dir():
        raise GenladderError(f"run folder {run_dir} does not exist")
    if not path.exists():
        raise GenladderError(f"{run_dir} has no {EVAL_FILE}; run 'genladder evaluate {run_dir}' first")
    result = read_json(path)
    try:  # a run trained further after its evaluation: report flags the figures as stale
        newest = latest_checkpoint(run_dir).name
    except GenladderError:
        newest = None
    result["newer_checkpoint"] = newest if newest and result.get("checkpoint") not in (None, newest) else None
    return result
