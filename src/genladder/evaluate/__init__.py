"""Evaluation of every rung: sample quality in a digit classifier's feature space, likelihood bounds, a report.

Typical use::

    from genladder.evaluate import EvaluationConfig, evaluate_run
    from genladder.sampling import SamplerConfig
    result = evaluate_run("runs/cddpm-small", EvaluationConfig(n=2000, sampling=SamplerConfig(guidance=2.0)))

The metric functions (``classifier_fid``, ``precision_recall``, ``iwae_negative_log_likelihood``,
``ddpm_bits_per_dim`` …) are plain functions over tensors and can be used on their own.
"""

from genladder.evaluate.evaluation import (
    EVAL_FILE,
    EvaluationConfig,
    RealDigitCache,
    evaluate_run,
    read_evaluation,
)
from genladder.evaluate.features import (
    SECOND_CLASSIFIER,
    SHIPPED_CLASSIFIER,
    FeatureNetwork,
    embed,
    load_feature_network,
)
from genladder.evaluate.likelihood import (
    ddpm_bits_per_dim,
    discretized_gaussian_log_likelihood,
    iwae_negative_log_likelihood,
    normal_kl,
    vae_negative_elbo,
)
from genladder.evaluate.metrics import (
    class_histogram,
    classifier_fid,
    conditional_accuracy,
    density_coverage,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    memorisation_share,
    nearest_neighbour_distances,
    precision_recall,
    reconstruction_error,
)
from genladder.evaluate.report import markdown_table, ranking_disagreements, terminal_table

__all__ = [
    "EVAL_FILE", "EvaluationConfig", "FeatureNetwork", "RealDigitCache", "SECOND_CLASSIFIER", "SHIPPED_CLASSIFIER",
    "class_histogram",
    "classifier_fid", "conditional_accuracy", "ddpm_bits_per_dim", "density_coverage", "kernel_inception_distance",
    "discretized_gaussian_log_likelihood", "embed", "evaluate_run",
    "feature_statistics", "frechet_distance", "iwae_negative_log_likelihood", "load_feature_network",
    "markdown_table", "memorisation_share", "nearest_neighbour_distances", "normal_kl", "precision_recall",
    "ranking_disagreements", "read_evaluation", "reconstruction_error", "terminal_table", "vae_negative_elbo",
]
