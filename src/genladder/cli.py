"""The ``genladder`` command: train, the figure verbs (sample, reconstruct, …), evaluate, report, serve.

Every user error ends as one line ``genladder: error: …`` on stderr with exit code 2, never a
traceback. Options that the user did not give are absent from the parsed namespace
(``argparse.SUPPRESS``), so presets and stored run configs fill them and an explicit flag always wins.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from pathlib import Path

from genladder import __version__
from genladder.cli_args import (
    GUIDANCE_RANGE,
    MAX_BATCH,
    MAX_BLOCKS,
    MAX_IMAGES,
    MAX_LATENT,
    MAX_T,
    MAX_WIDTH,
    SEED,
    attention_sizes,
    device_name,
    float_in,
    guidance_list,
    int_in,
    output_file,
    positive_int,
    thread_count,
    unet_widths,
)
from genladder.errors import GenladderError
from genladder.flow import FLOW_SOLVERS, TIME_SAMPLINGS
from genladder.presets import label_dropout_help, train_default_help
from genladder.rungs import MODEL_KINDS, check_kind
from genladder.sampling import SAMPLERS
from genladder.training.progress import LOG_FORMATS

SUPPRESS = argparse.SUPPRESS
# One help text for --threads on every verb in COMPUTE_VERBS (cli._set_threads reads the flag).
THREADS_HELP = "CPU threads for torch (default: one per core, fewer when other processes keep cores busy at start-up)"
# How the last line of 'train' names the test-set figures of the objectives (genladder.objectives and
# genladder.diffusion.objective); a name not listed is shown with its underscores as spaces.
TEST_FIGURE_NAMES = {"loss_sum_px": "loss summed over pixels", "label_drop_frac": "share of labels dropped",
                     "neg_elbo": "−ELBO (nats)", "kl": "KL (nats)"}


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        # No prefix matching: '--epoch 3' silently meaning --epochs, or '--guidance' meaning --guidance-weights,
        # is a guess; an unknown option gets the closest real one as a suggestion instead (see _parse).
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, no usage dump
        raise GenladderError(f"{message} (see 'genladder {self.prog.split()[-1]} --help')"
                             if " " in self.prog else f"{message} (see 'genladder --help')")


def parse_duration(text: str) -> float:
    """'90' or '90s' -> 90.0, '10m' -> 600.0, '1.5h' -> 5400.0 (seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use e.g. 90s, 10m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _add_train_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model and write a run folder", argument_default=SUPPRESS,
        description="Train one rung of the ladder. Unset options come from the preset (or, with --resume, "
        "from the run's config.json).",
    )
    # No argparse `choices` here: with nargs="?" and SUPPRESS it rejects the absent value; check_kind validates.
    p.add_argument("kind", nargs="?", help=f"which rung to train: {', '.join(MODEL_KINDS)}")
    p.add_argument("--preset", help="'default' (improved, the default), 'tutorial' (the article's networks); "
                   "diffusion also 'small' (CPU-sized U-Net) and 'cpu-fast' (10-minute CPU recipe); latent: "
                   "'cpu-fast', 'small', 'quality' (cpu-fast on 16x the images), 'default'; classifier: "
                   "'default' (the shipped judge), 'resnet' (the second opinion), 'shift' (the first shipped recipe)")
    where = p.add_argument_group("run folder")
    where.add_argument("--run-dir", help="where to write the run (default: runs/<kind>-<timestamp>/)")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly where it stopped")
    where.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    where.add_argument("--config", metavar="FILE", help="start from this run description (.json as --dry-run prints "
                       "and config.json holds, or .toml) instead of a preset; flags given as well still win")
    model = p.add_argument_group("model")
    model.add_argument("--latent-dim", type=int_in(1, MAX_LATENT),
                       help="latent size of the AE/VAE/CVAE (tutorial: 64)")
    model.add_argument("--latent-channels", type=int_in(1, MAX_WIDTH), metavar="C",
                       help="AE/VAE/CVAE: a convolutional latent of C×8×8 for 32-px images (C × size/4 × size/4), "
                       "for latent diffusion, in place of the dense --latent-dim bottleneck (codes stay flat: "
                       "C·64 numbers at 32 px)")
    model.add_argument("--width", type=int_in(1, MAX_WIDTH), help="conv filters of the AE/VAE/CVAE (tutorial: 64)")
    model.add_argument("--prior-components", type=int_in(0, 10_000), metavar="K",
                       help="VAE: a VampPrior (Tomczak & Welling 2018) of K learned pseudo-inputs in place of the "
                       "N(0, I) prior (default 0: N(0, I); the paper uses 500)")
    model.add_argument("--likelihood", choices=("gaussian", "bernoulli"),
                       help="decoder likelihood: gaussian = summed L2 (tutorial), bernoulli = BCE in nats")
    model.add_argument("--kl-weight", type=float_in(0, 1e6),
                       help="weight of the KL term of the VAE/CVAE loss (default 1)")
    model.add_argument("--objective", choices=("elbo", "iwae"), help="VAE/CVAE training loss: the ELBO (default) or "
                       "the importance-weighted bound of Burda et al. 2016 with --k samples")
    model.add_argument("--kl-warmup-images", type=int_in(0, 10**12), help="VAE/CVAE ELBO: raise the KL weight "
                       "linearly from 0 over this many training images (default 0: no warm-up)")
    model.add_argument("--k", type=int_in(1, 5000), help="--objective iwae: importance samples per training image "
                       "(the IWAE paper's 5 and 50; default 1)")
    classifier = p.add_argument_group("classifier (the feature network of 'genladder evaluate')")
    classifier.add_argument("--max-shift", type=int_in(0, 64), help="largest random shift in pixels of training "
                            "digits with --augment shift (default 2)")
    classifier.add_argument("--augment", choices=("shift", "handwriting"), help="training-digit augmentation: "
                            "handwriting = random rotation/zoom/shear/shift + elastic distortion (default; preset "
                            "shift: whole-pixel shifts only)")
    diffusion = p.add_argument_group("diffusion and flow matching (ddpm, cddpm, flow, cflow)")
    diffusion.add_argument("--widths", type=unet_widths, help="U-Net channels per level, e.g. 64,128,128")
    diffusion.add_argument("--blocks-per-level", type=int_in(1, MAX_BLOCKS), help="U-Net residual blocks per level")
    diffusion.add_argument("--attention", type=attention_sizes,
                           help="feature sizes with self-attention, e.g. 8 (empty string: none)")
    diffusion.add_argument("--dropout", type=float_in(0, 0.99), help="dropout inside the U-Net residual blocks")
    diffusion.add_argument("--patch-size", type=int_in(1, 8), help="U-Net: pixel-unshuffle p×p patches first "
                           "(2: a quarter of the compute; cpu-fast preset)")
    diffusion.add_argument("--schedule", choices=("linear", "cosine"), help="ddpm/cddpm: noise schedule of the betas")
    diffusion.add_argument("--T", type=int_in(1, MAX_T), help="ddpm/cddpm: diffusion steps (tutorial 100, default "
                           "1000)")
    diffusion.add_argument("--prediction", choices=("eps", "x0", "v"), help="ddpm/cddpm: what the network predicts "
                           "(a flow predicts the velocity)")
    diffusion.add_argument("--time-sampling", choices=TIME_SAMPLINGS, help="flow/cflow: how training draws t on the "
                           "path (default logit-normal, Esser et al. 2024)")
    diffusion.add_argument("--logit-mean", type=float_in(-10, 10), help="flow/cflow, logit-normal t: the mean m of "
                           "t = sigmoid(m + s·n) (default 0)")
    diffusion.add_argument("--logit-std", type=float_in(0, 10, low_open=True), help="flow/cflow, logit-normal t: "
                           "the spread s (default 1)")
    diffusion.add_argument("--label-dropout", type=float_in(0, 1), help="cddpm/cflow: share of labels replaced by "
                           f"the null label in training (default {label_dropout_help()})")
    diffusion.add_argument("--ema-decay", type=float_in(0, 1), help="decay per step of the weights' EMA used for "
                           f"sampling (default {train_default_help('ema_decay')})")
    diffusion.add_argument("--ema-half-life-images", type=int_in(1, 10**12), help="the EMA's half-life in training "
                           "images (replaces --ema-decay; the same at any batch size; default "
                           f"{train_default_help('ema_half_life_images')})")
    diffusion.add_argument("--min-snr-gamma", type=float_in(0, 1e6, low_open=True), help="Min-SNR-gamma loss "
                           "weighting (Hang et al. 2023; 5 in the paper; default off)")
    latent = p.add_argument_group("latent diffusion (latent)")
    latent.add_argument("--autoencoder", metavar="RUN_DIR", help="latent: the trained ae/vae/cvae run whose spatial "
                        "latent to model (train one with --latent-channels 4); frozen, its latents scaled to unit "
                        "variance")
    latent.add_argument("--denoiser", choices=("flow", "diffusion"), help="latent: a flow (rectified flow, the "
                        "default) or a diffusion (the cddpm's objective) in the latent space")
    data = p.add_argument_group("data")
    data.add_argument("--data", "--dataset", dest="dataset", metavar="DATA",
                      help="mnist (default), fashion-mnist, or your own images: a folder (one sub-folder per class "
                      "gives labels) or an .npz with 'images' and optional 'labels'; square, side divisible by 8, "
                      "grey or RGB, never resized (a folder named mnist: ./mnist; --dataset is the old name)")
    data.add_argument("--data-dir", help="mnist/fashion-mnist: folder with the four IDX files (default: "
                      "$GENLADDER_DATA_DIR, then the user cache, then a download)")
    data.add_argument("--test-share", type=float_in(0, 1),
                      help="own images: share held out as the test set, chosen by a "
                      "fixed permutation (default 0.1)")
    data.add_argument("--limit", type=positive_int, help="train on the first N training images only")
    data.add_argument("--test-limit", type=positive_int, help="evaluate on the first N test images only")
    data.add_argument("--resize", choices=("pad", "resize", "none"), help="mnist/fashion-mnist 28->32: pad with 2 "
                      "blank pixels (default) or bilinear resize (tutorial); none keeps 28×28 (binarised MNIST)")
    data.add_argument("--binarize", choices=("dynamic", "static"), help="autoencoders: binarised digits, each pixel "
                      "on with probability grey/255: drawn afresh every time a training image is used (dynamic, "
                      "Burda et al. 2016) or once (static); the test set is drawn once either way")
    data.add_argument("--binarize-seed", type=int_in(*SEED), help="--binarize static: seed of the training set's "
                      "one draw (default 0)")
    data.add_argument("--test-binarize-seed", type=int_in(*SEED), help="--binarize: seed of the test set's one "
                      "draw (default 0; reported with every figure)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int_in(1, 10**6), help="passes over the training set (default: "
                     f"{train_default_help('epochs')})")
    opt.add_argument("--steps", type=int_in(1, 10**9), help="total optimiser steps (overrides --epochs)")
    opt.add_argument("--batch-size", type=int_in(1, MAX_BATCH), help="images per step, per process under torchrun "
                     f"(default {train_default_help('batch_size')})")
    opt.add_argument("--lr", type=float_in(0, 10, low_open=True), help="peak learning rate (default: "
                     f"{train_default_help('lr')})")
    opt.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), help="after the warm-up: constant, "
                     f"or cosine/linear decay to 0 at the last step (default {train_default_help('lr_schedule')})")
    opt.add_argument("--warmup-images", type=int_in(0, 10**12), help="training images of linear learning-rate "
                     f"warm-up (default {train_default_help('warmup_images')})")
    opt.add_argument("--optimizer", choices=("adam", "adamw"), help="adam or adamw (default "
                     f"{train_default_help('optimizer')})")
    opt.add_argument("--adam-beta2", type=float_in(0, 1), help="second-moment decay of Adam/AdamW "
                     f"(default {train_default_help('adam_beta2')})")
    opt.add_argument("--weight-decay", type=float_in(0, 10), help="AdamW's decoupled weight decay (default 0)")
    opt.add_argument("--seed", type=int_in(*SEED), help="seed of weights, data order and noise (default 0)")
    opt.add_argument("--init-from", metavar="RUN_OR_FILE", help="fine-tune: start the network from a trained run of "
                     "the same rung and network (its newest checkpoint, EMA weights when it keeps them) or one "
                     "model file, not from random weights; the file is recorded in config.json")
    opt.add_argument("--grad-clip", type=float_in(0, 1e6, low_open=True),
                     help=f"clip the global gradient norm to this value (default {train_default_help('grad_clip')})")
    opt.add_argument("--time-budget", type=parse_duration, help="stop cleanly after this much training "
                     "time, e.g. 10m (a final checkpoint is written)")
    opt.add_argument("--checkpoint-every", type=int_in(1, 10**9),
                     help="steps between checkpoints (default 500; also at "
                     "every epoch end)")
    opt.add_argument("--keep-checkpoints", type=int_in(1, 1000), help="newest checkpoints kept on disk (default 2)")
    opt.add_argument("--log-every", type=int_in(1, 10**9), help="steps between loss records (default 50)")
    run = p.add_argument_group("execution")
    run.add_argument("--device", type=device_name, help="auto (default), cpu or cuda (under torchrun: GPU LOCAL_RANK)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar: plain lines (--log-format lines)")
    run.add_argument("--log-format", choices=LOG_FORMATS, help="progress on stderr: auto (default: the bar on a "
                     "terminal, plain lines otherwise), bar, lines, or json (one object per record)")
    run.add_argument("--tensorboard", action="store_true", help="also log the loss, learning rate, test figures and "
                     "sample grids for TensorBoard in RUN_DIR/tensorboard/ (pip install 'genladder[tensorboard]')")
    run.add_argument("--compile", action="store_true", help="torch.compile the training step (faster after a "
                     "warm-up of about a minute on CPU)")
    run.add_argument("--precision", choices=("fp32", "bf16"), help="fp32 (default) or bf16 autocast (GPUs, and "
                     "CPUs with AMX; slower on other CPUs)")
    run.add_argument("--threads", type=thread_count, help=THREADS_HELP)


def _add_figure_parsers(subparsers) -> None:
    p = subparsers.add_parser("sample", help="draw new images from a trained run")
    p.add_argument("run_dir", help="a run folder written by 'genladder train'")
    p.add_argument("--n", type=int_in(1, MAX_IMAGES), help="number of images (default 64; with --grid 10 per class)")
    p.add_argument("--label", type=int_in(0, 10**6), help="conditional models: draw only this class")
    p.add_argument("--grid", action="store_true", help="conditional models: one row per class (--n a multiple of "
                   "the number of classes)")
    p.add_argument("--out", required=True, type=output_file,
                   help="output: .png (a grid) or .npz (images in [-1, 1] and labels)")
    _add_sampling_options(p)

    p = subparsers.add_parser("trajectory", help="diffusion: x_t along the denoising chain, one row per sample")
    p.add_argument("run_dir", help="a run folder written by 'genladder train'")
    p.add_argument("--n", type=int_in(1, 1000), default=8, help="rows (default 8)")
    p.add_argument("--label", type=int_in(0, 10**6), help="conditional models: this class in every row")
    p.add_argument("--frames", type=int_in(1, 1000),
                   help="columns of x_t before the final image (default 10, or one per solver step when fewer)")
    p.add_argument("--out", required=True, type=output_file, help="output .png")
    _add_sampling_options(p)

    p = subparsers.add_parser("guidance-sweep", help="cddpm: rows = guidance weights, columns = digits")
    p.add_argument("run_dir", help="a run folder written by 'genladder train'")
    p.add_argument("--guidance-weights", dest="weights_list", default="0,1,2,4", type=guidance_list,
                   help="comma-separated guidance weights w, one row each (default 0,1,2,4)")
    p.add_argument("--out", required=True, type=output_file, help="output .png")
    _add_sampling_options(p, guidance=False)

    p = subparsers.add_parser("reconstruct", help="test digits beside their reconstructions")
    p.add_argument("run_dir", help="a run folder written by 'genladder train'")
    p.add_argument("--n", type=int_in(1, 10_000), default=16, help="number of test digits (default 16)")
    _add_test_digit_output(p)

    p = subparsers.add_parser("interpolate", help="a latent walk between pairs of test digits")
    p.add_argument("run_dir", help="a run folder written by 'genladder train'")
    p.add_argument("--pairs", type=int_in(1, 1000), default=4, help="rows, one pair of test digits each (default 4)")
    p.add_argument("--steps", type=int_in(1, 100), default=10, help="images per row, ends included (default 10)")
    p.add_argument("--seed", type=int_in(*SEED), default=0, help="which test digits are paired (default 0)")
    _add_test_digit_output(p)

    p = subparsers.add_parser("latent-map", help="2-d VAE: test digits at their codes beside the decoded grid")
    p.add_argument("run_dir", help="a vae run trained with --latent-dim 2")
    p.add_argument("--n", type=int_in(1, MAX_IMAGES), default=10_000,
                   help="test images to place (default 10000, or all "
                   "there are)")
    p.add_argument("--grid", type=int_in(1, 64), default=15, help="decoded images per side of the grid (default 15)")
    _add_test_digit_output(p)

    p = subparsers.add_parser("noising", help="diffusion: test digits under q(x_t | x0) at evenly spaced t")
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear", help="beta schedule "
                   "(default linear)")
    p.add_argument("--T", type=int_in(1, MAX_T), default=1000, help="diffusion steps (default 1000; tutorial 100)")
    p.add_argument("--n", type=int_in(1, 1000), default=4, help="rows, one test digit each (default 4)")
    p.add_argument("--frames", type=int_in(1, 1000), default=8,
                   help="noised columns, evenly spaced up to t = T-1 (default 8)")
    p.add_argument("--seed", type=int_in(*SEED), default=0, help="seed of the noise (default 0)")
    p.add_argument("--data", "--dataset", dest="dataset", metavar="DATA", default="mnist",
                   help="mnist (default), fashion-mnist, or a folder of images / an .npz file, as for 'train'")
    p.add_argument("--data-dir", help="mnist/fashion-mnist: folder with the IDX files (default: $GENLADDER_DATA_DIR, "
                   "then the cache)")
    p.add_argument("--out", required=True, type=output_file, help="output .png")


def _add_test_digit_output(p: argparse.ArgumentParser) -> None:
    """--out, --data-dir and --device of the verbs that draw test digits through a model."""
    p.add_argument("--out", required=True, type=output_file, help="output .png")
    p.add_argument("--data-dir", help="mnist/fashion-mnist runs: folder with the IDX files (default: the run's "
                   "data source)")
    p.add_argument("--device", type=device_name, default="auto", help="auto (default), cpu or cuda")


def _interval(text: str) -> tuple[float, float]:
    import math

    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LOW,HIGH, got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW < HIGH, finite, got {text!r}")
    return low, high


def _add_sampling_options(p: argparse.ArgumentParser, guidance: bool = True) -> None:
    # The diffusion options default to None ("not given": genladder.figures.sampler_config fills SamplerConfig's
    # defaults), so that one a run or sampler would ignore can be refused.
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="diffusion: ancestral ddpm, ddim, DPM-Solver++(2M) (dpmpp, an ODE solver) or its SDE variant "
                   "(dpmpp-sde, fresh noise at every step; the default); flow: euler, heun or midpoint (default heun; "
                   "heun and midpoint evaluate the network twice a step, heun's last step once)")
    p.add_argument("--steps", type=int_in(1, MAX_T), help="solver steps (default 20; ddpm: the full chain)")
    if guidance:
        p.add_argument("--guidance", type=float_in(*GUIDANCE_RANGE),
                       help="cddpm/cflow: classifier-free guidance weight w "
                       "(eps = (1+w) eps_cond - w eps_uncond, the same for the velocity; default 0)")
    p.add_argument("--eta", type=float_in(0, 1),
                   help="ddim and euler: fresh noise at every step, 0 none (an ODE solver, the default), 1 as much as "
                   "ancestral sampling")
    p.add_argument("--variance", choices=("beta", "posterior"),
                   help="ddpm: reverse variance beta_t (tutorial, the default) or the posterior's beta-tilde_t")
    p.add_argument("--spacing", choices=("karras", "trailing"),
                   help="diffusion: timesteps at Karras et al.'s noise levels down to the smallest trained one "
                   "(default), or trailing (genladder <= 0.3; its last step jumps from sigma ~ 0.09)")
    p.add_argument("--guidance-interval", type=_interval, help="cddpm/cflow: apply guidance only where the noise "
                   "level sigma_t (flow: t/(1-t)) lies in LOW,HIGH (Kynkaanniemi et al. 2024), e.g. 0.3,5; default: "
                   "every step")
    p.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=100,
                   help="images per sampler call (default 100, the fastest "
                   "on CPU; more on a GPU)")
    p.add_argument("--seed", type=int_in(*SEED), default=0, help="sampling seed (default 0)")
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                   help="EMA weights when the run has them (auto), or the raw ones")
    p.add_argument("--device", type=device_name, default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=thread_count, help=THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _optional_steps(text: str) -> int | str:
    """--bpd-timesteps: a count, or "all" (EvaluationConfig's None: every one of the T terms)."""
    return "all" if text == "all" else positive_int(text)


def _add_evaluate_parsers(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="measure a trained run: classifier-FID, precision/recall, "
                              "accuracy, likelihood; writes eval.json", description="Evaluate a run against the "
                              "MNIST test set in the feature space of genladder's shipped digit classifier, print a "
                              "table and write eval.json into the run folder.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by 'genladder train' (with "
                   "several, each is evaluated and the two feature networks' rankings of them are compared)")
    p.add_argument("--n", type=positive_int, default=10_000, help="samples to draw (default 10000; 1000 for a quick "
                   "look); the real-data floor uses as many training digits")
    _add_sampling_options(p)
    p.add_argument("--pr-k", type=positive_int, default=None, help="neighbours in precision/recall (default 3)")
    p.add_argument("--iwae-k", type=positive_int, default=None, help="VAE: importance samples of the IWAE bound "
                   "(default 100)")
    p.add_argument("--iwae-images", type=positive_int, default=None, help="VAE: test digits in the IWAE bound "
                   "(default 1000)")
    p.add_argument("--bpd-images", type=positive_int, default=None, help="diffusion and flow: test digits in the "
                   "likelihood (the variational bound; the ODE likelihood) (default 200)")
    p.add_argument("--bpd-timesteps", type=_optional_steps, default=None, help="diffusion: KL terms scored per digit, "
                   "stratified over t (default 50; 'all' for the exact sum)")
    p.add_argument("--ode-steps", type=positive_int, default=None, help="flow: Heun steps of the probability-flow "
                   "ODE in the likelihood (default 32)")
    p.add_argument("--memorisation-samples", type=positive_int, default=None, help="samples checked against "
                   "their nearest training image (default 2000)")
    p.add_argument("--classifier", help="feature network: a classifier run folder or file (default: the shipped "
                   "MNIST classifier)")
    p.add_argument("--second-classifier", help="the second opinion: another classifier run folder or file "
                   "(default: the shipped second network, when --classifier is not given)")
    p.add_argument("--checkpoint", help="a kept checkpoint of the run, e.g. step_0000430 (default: the newest)")
    p.add_argument("--json", action="store_true", help="print eval.json to stdout instead of the table")

    p = subparsers.add_parser("guidance-curve", help="cddpm: accuracy, FID, KID, precision and recall against the "
                              "guidance weight, as a table and a plot")
    p.add_argument("run_dir", help="a cddpm run folder")
    p.add_argument("--guidance-weights", dest="weights_list", default="0,0.5,1,2,3,4",
                   help="comma-separated guidance weights w (default 0,0.5,1,2,3,4)")
    p.add_argument("--n", type=positive_int, default=10_000, help="samples per weight (default 10000)")
    p.add_argument("--out", required=True, help="the plot, .png (the table is printed and written beside it as .md "
                   "and .json)")
    _add_sampling_options(p, guidance=False)
    p.add_argument("--classifier", help=argparse.SUPPRESS)
    p.add_argument("--second-classifier", help=argparse.SUPPRESS)

    p = subparsers.add_parser("steps-curve", help="diffusion/flow: accuracy, FID, KID, precision and recall "
                              "against the solver's steps, as a table and a plot (before and after reflow)")
    p.add_argument("run_dir", help="a diffusion or flow run folder")
    p.add_argument("--steps-list", default="1,2,4,8,20", help="comma-separated solver steps (default 1,2,4,8,20)")
    p.add_argument("--n", type=positive_int, default=10_000, help="samples per point (default 10000)")
    p.add_argument("--out", required=True, help="the plot, .png (the table is printed and written beside it as .md "
                   "and .json)")
    _add_sampling_options(p)
    p.add_argument("--classifier", help=argparse.SUPPRESS)
    p.add_argument("--second-classifier", help=argparse.SUPPRESS)

    p = subparsers.add_parser("report", help="one Markdown table comparing evaluated runs side by side")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders evaluated by 'genladder evaluate'")
    p.add_argument("--out", help="write the table to this .md file (default: print it)")


def _add_reflow_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reflow", help="flow/cflow/latent flow: straighten a trained flow on its own (noise, sample) pairs, for "
        "1-4-step sampling", argument_default=SUPPRESS,
        description="Reflow (Liu et al. 2023, 2-rectified flow): draw (noise, sample) pairs with a trained flow "
        "(the teacher), then fine-tune a copy of it on the straight lines between them. The pairs are kept in "
        "the run folder; a stopped run continues with 'genladder reflow' again (drawing) or 'genladder train "
        "--resume' (training).")
    p.add_argument("teacher", help="a trained flow, cflow or latent (--denoiser flow) run folder; a latent "
                   "teacher's pairs are latents")
    p.add_argument("--run-dir", required=True, help="the reflowed run's folder (pairs and training)")
    pairs = p.add_argument_group("the pairs")
    pairs.add_argument("--pairs", type=int_in(20, 10**7), default=10_000, help="(noise, sample) pairs to draw "
                       "(default 10000; 5 %% are the test set)")
    pairs.add_argument("--teacher-sampler", choices=tuple(FLOW_SOLVERS), default="heun",
                       help="the teacher's ODE solver (default heun)")
    pairs.add_argument("--teacher-steps", type=int_in(1, MAX_T), default=20, help="its steps (default 20)")
    pairs.add_argument("--guidance", type=float_in(*GUIDANCE_RANGE), default=0.0, help="cflow: the teacher's "
                       "guidance weight w, distilled into the student (which then samples without guidance; "
                       "default 0)")
    pairs.add_argument("--pair-seed", type=int_in(*SEED), default=0, help="seed of the pairs' noise (default 0)")
    pairs.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                       help="the teacher's EMA weights when it has them (auto), or its raw ones")
    pairs.add_argument("--sample-batch-size", type=int_in(1, MAX_BATCH), default=100,
                       help="images per teacher call (default 100)")
    train = p.add_argument_group("training the student (defaults: a fine-tune of 400 steps of 128 at lr 5e-4)")
    train.add_argument("--steps", type=int_in(1, 10**9), help="optimiser steps (default 400)")
    train.add_argument("--batch-size", type=int_in(1, MAX_BATCH), help="pairs per step (default: the teacher's)")
    train.add_argument("--lr", type=float_in(0, 10, low_open=True), help="peak learning rate (default 5e-4)")
    train.add_argument("--warmup-images", type=int_in(0, 10**12), help="linear warm-up (default 6400 images)")
    train.add_argument("--ema-half-life-images", type=int_in(1, 10**12), help="the EMA's half-life (default 12800 "
                       "images)")
    train.add_argument("--time-budget", type=parse_duration, help="stop training cleanly after this long (90s, "
                       "10m, 1h)")
    train.add_argument("--checkpoint-every", type=int_in(1, 10**9), help="steps between checkpoints (default: the "
                       "teacher's)")
    train.add_argument("--seed", type=int_in(*SEED), help="training seed (default: the teacher's)")
    p.add_argument("--threads", type=thread_count, help=THREADS_HELP)
    p.add_argument("--device", type=device_name, default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")


def _add_posthoc_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "posthoc-ema", help="choose the weights' average after training, from the run's kept checkpoints",
        description="Post-hoc EMA (after Karras et al. 2024): average the raw weights of a run's kept checkpoints "
        "as an EMA of the given length would have, and write the average as RUN/checkpoints/posthoc_…/ "
        "(evaluate it with 'genladder evaluate RUN --checkpoint posthoc_…'). Train with --keep-checkpoints 1000 "
        "and a --checkpoint-every that keeps several snapshots per EMA length.")
    p.add_argument("run_dir", help="a run folder written by 'genladder train'")
    p.add_argument("--sigma-rel", help="comma-separated widths of Karras et al.'s power-function profile relative "
                   "to the run's length, in (0, 0.2887], e.g. 0.05,0.1,0.2")
    p.add_argument("--half-life-images", help="comma-separated half-lives of an exponential EMA, in training "
                   "images (the training loop's kind), e.g. 50000,200000")


def _posthoc_ema(args: argparse.Namespace) -> int:
    from genladder.posthoc_ema import posthoc_ema

    profiles = [{"sigma_rel": value} for value in _numbers(args.sigma_rel, "--sigma-rel")]
    profiles += [{"half_life_images": value} for value in _numbers(args.half_life_images, "--half-life-images")]
    if not profiles:
        raise GenladderError("give --sigma-rel or --half-life-images (comma-separated values)")
    for profile in profiles:
        folder = posthoc_ema(args.run_dir, **profile)
        print(f"genladder: wrote {folder} (evaluate it with 'genladder evaluate {args.run_dir} --checkpoint "
              f"{folder.name}')")
    return 0


def _numbers(text: str | None, flag: str) -> list[float]:
    """A comma-separated list of numbers ('' or None: none), or a one-line error naming the flag."""
    try:
        return [float(part) for part in (text or "").split(",") if part.strip()]
    except ValueError:
        raise GenladderError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="a local web demo of trained runs (needs: pip install 'genladder[demo]')",
                              description="Start a Gradio page on 127.0.0.1 to draw digits from trained runs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by 'genladder train'")
    p.add_argument("--runs-root", help="also serve run folders typed in the page when they lie below this folder "
                   "(default: only the RUN_DIRs given)")
    p.add_argument("--port", type=int_in(1, 65535), default=7860, help="port on 127.0.0.1 (default 7860)")
    p.add_argument("--device", type=device_name, default="auto", help="auto (default), cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genladder", description="The ladder of generative models: AE, VAE, CVAE, DDPM, "
                     "guided DDPM, on MNIST-like images.")
    parser.add_argument("--version", action="version", version=f"genladder {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_parser(subparsers)
    _add_figure_parsers(subparsers)
    _add_evaluate_parsers(subparsers)
    _add_reflow_parser(subparsers)
    _add_posthoc_parser(subparsers)
    _add_serve_parser(subparsers)
    return parser


def _train(args: argparse.Namespace) -> int:
    import json

    from genladder.resolve import EXECUTION_OPTIONS, resolve_run_config
    from genladder.runs import check_run_dir, default_run_dir, read_run_config, resume_config, run_training
    from genladder.training.distributed import is_main_process
    from genladder.training.loop import TrainConfig

    given = vars(args)
    main_process = is_main_process()  # under torchrun only rank 0 writes and reports
    if given.get("kind") is not None:
        check_kind(given["kind"])
    if "resume" in given:
        run_dir = Path(args.resume)
        stored = read_run_config(run_dir)
        if given.get("kind") not in (None, stored.kind):
            raise GenladderError(f"{run_dir} is a {stored.kind} run, not {given['kind']}")
        train_fields = set(TrainConfig.__dataclass_fields__)
        overrides = {k: v for k, v in given.items() if k in train_fields}
        other = sorted(set(given) - train_fields - (EXECUTION_OPTIONS - {"config", "run_dir"}))
        if other:
            raise GenladderError(f"--{other[0].replace('_', '-')} cannot change when resuming {run_dir}")
        config = resume_config(run_dir, overrides, write=main_process) if not given.get("dry_run") else stored
    else:
        if given.get("run_dir") is not None:
            check_run_dir(Path(given["run_dir"]))  # a file or /dev/null: refused before the data is read
        config = resolve_run_config(given)
        run_dir = Path(given.get("run_dir") or default_run_dir(config.kind))
    if given.get("dry_run"):
        if main_process:
            print(json.dumps(config.to_dict(), indent=2))
        return 0
    if given.get("tensorboard"):
        from genladder.training.tensorboard import check_tensorboard

        check_tensorboard()  # before the data is read: a missing extra is a one-line error, not a late one
    def announce() -> None:
        if "resume" in given:
            print(f"genladder: resuming {run_dir} ({config.kind}, {config.preset} preset)", file=sys.stderr)
        else:
            print(f"genladder: training {config.kind} ({config.preset} preset) in {run_dir}", file=sys.stderr)

    log_format = "lines" if given.get("no_progress") else given.get("log_format", "auto")
    result = run_training(config, run_dir, resume="resume" in given, device=given.get("device", "auto"),
                          log_format=log_format, on_start=announce, tensorboard=given.get("tensorboard", False))
    if not main_process:
        return 0
    test = ", ".join(f"{TEST_FIGURE_NAMES.get(k, k.replace('_', ' '))} {v:.4g}" for k, v in result.last_test.items())
    how = "time budget reached" if result.stopped_by_budget else "done"
    print(f"genladder: {how} at step {result.step} after {result.train_seconds:.0f} s of training in all; "
          f"test set: {test}")
    print(f"genladder: run folder {run_dir} (samples in {run_dir / 'samples'}, loss curve {run_dir / 'loss.png'})")
    return 0


def _reflow(args: argparse.Namespace) -> int:
    from genladder.flow.reflow import ReflowConfig
    from genladder.reflow_pairs import check_pairs_folder, draw_pairs, student_config
    from genladder.runs import CONFIG, check_run_dir, load_run, run_training

    given = vars(args)
    run_dir = Path(args.run_dir)
    check_run_dir(run_dir)
    if (run_dir / CONFIG).exists():
        raise GenladderError(f"{run_dir} already holds a run; continue its training with 'genladder train --resume "
                             f"{run_dir}'")
    teacher = load_run(args.teacher, weights=args.weights, device=args.device)
    if teacher.config.family != "flow":  # flow, cflow, or a latent run with --denoiser flow
        what = "a latent diffusion (--denoiser diffusion)" if teacher.config.rung.latent else f"a {teacher.kind}"
        raise GenladderError(f"reflow needs a flow, cflow or latent flow run as the teacher; {args.teacher} is "
                             f"{what} run")
    if not hasattr(teacher.config, "train"):
        raise GenladderError(f"reflow needs the teacher's run folder (its data and recipe), not a model file: "
                             f"{args.teacher}")
    if args.guidance and not teacher.config.rung.conditional:
        raise GenladderError("--guidance needs a conditional teacher (cflow); this one is unconditional")
    reflow = ReflowConfig(teacher=str(args.teacher), checkpoint=teacher.checkpoint.name, weights=teacher.weights,
                          pairs=args.pairs, sampler=args.teacher_sampler, steps=args.teacher_steps,
                          guidance=args.guidance, seed=args.pair_seed)
    train_fields = ("steps", "batch_size", "lr", "warmup_images", "ema_half_life_images", "time_budget",
                    "checkpoint_every", "seed")
    config = student_config(teacher.config, reflow, {k: given[k] for k in train_fields if k in given})
    config = config.replace(genladder_version=__version__)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_pairs_folder(run_dir, reflow)
    print(f"genladder: drawing {reflow.pairs} pairs with {args.teacher} ({reflow.sampler} {reflow.steps} steps, "
          f"w = {reflow.guidance:g}) into {run_dir}", file=sys.stderr)
    progress = not given.get("no_progress", False)
    draw_pairs(teacher, reflow, run_dir, batch_size=args.sample_batch_size, progress=progress)
    initial_state = {k: v.detach().cpu().clone() for k, v in teacher.model.state_dict().items()}
    del teacher
    print(f"genladder: training the reflowed {config.kind} in {run_dir} from the teacher's weights", file=sys.stderr)
    result = run_training(config, run_dir, device=args.device, log_format="auto" if progress else "lines",
                          initial_state=initial_state)
    print(f"genladder: done at step {result.step} after {result.train_seconds:.0f} s of training; test loss "
          f"{result.last_test.get('loss', float('nan')):.4g}; sample it with 'genladder sample {run_dir} --steps 1'")
    return 0


def _figure(args: argparse.Namespace) -> int:
    from genladder import figures

    out = figures.COMMANDS[args.command](args)
    print(f"genladder: wrote {out}")
    return 0


def _evaluation_config(args: argparse.Namespace, **changes):
    from genladder.evaluate import EvaluationConfig
    from genladder.figures import sampler_config

    values = dict(
        n=args.n, sampling=sampler_config(args), seed=args.seed, classifier=args.classifier,
        second_classifier=args.second_classifier, weights=args.weights, device=args.device,
    )
    for name in ("pr_k", "iwae_k", "iwae_images", "bpd_images", "bpd_timesteps", "ode_steps",
                 "memorisation_samples", "checkpoint"):
        if getattr(args, name, None) is not None:  # not given: EvaluationConfig's default
            values[name] = None if getattr(args, name) == "all" else getattr(args, name)
    return EvaluationConfig(**{**values, **changes})


def _refuse_ignored_evaluation_options(args: argparse.Namespace, run_dirs: list[str]) -> None:
    """One-line error for an evaluation option that none of ``run_dirs`` would read (EVALUATION_READERS), or a
    sampling option that their samplers would ignore (genladder.figures.refuse_ignored_sampling_options)."""
    from types import SimpleNamespace

    from genladder.evaluate.evaluation import EVALUATION_READERS
    from genladder.figures import refuse_ignored_sampling_options
    from genladder.rungs import readers_of
    from genladder.runs import read_run_config

    configs = [read_run_config(run_dir) for run_dir in run_dirs]
    for option, (readers, reads) in EVALUATION_READERS.items():
        if getattr(args, option, None) is not None and not any(reads(config.rung) for config in configs):
            which = f"this run is a {configs[0].kind}" if len(configs) == 1 else "none of these runs is one"
            raise GenladderError(f"--{option.replace('_', '-')} applies to {readers} ({readers_of(reads)}); {which}")
    iterative = [config for config in configs if config.rung.iterative] or configs[:1]
    for config in iterative:  # a mixed comparison: the sampling options are for its diffusion and flow runs
        refuse_ignored_sampling_options(args, SimpleNamespace(kind=config.kind, config=config))


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from genladder.evaluate import EVAL_FILE, evaluate_run, ranking_disagreements, terminal_table
    from genladder.evaluate.evaluation import RealDigitCache

    _refuse_ignored_evaluation_options(args, args.run_dirs)
    config = _evaluation_config(args)
    results, cache = [], RealDigitCache()  # several runs: the real digits are embedded once
    for run_dir in args.run_dirs:
        result = evaluate_run(run_dir, config, progress=not args.no_progress, quiet=args.json, cache=cache)
        results.append(result)
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            print(terminal_table(result))
            print(f"genladder: wrote {Path(run_dir) / EVAL_FILE}")
    for line in ranking_disagreements(results):
        print(f"genladder: {line}", file=sys.stderr)
    if len(results) > 1 and not ranking_disagreements(results):
        print("genladder: both feature networks rank these runs alike (by FID excess)", file=sys.stderr)
    return 0


def _guidance_curve(args: argparse.Namespace) -> int:
    from genladder.evaluate.curves import guidance_curve
    from genladder.figures import parse_weights

    weights = parse_weights(args.weights_list)
    _refuse_ignored_evaluation_options(args, [args.run_dir])
    guidance_curve(args.run_dir, weights, _evaluation_config(args), args.out, progress=not args.no_progress)
    return 0


def _steps_curve(args: argparse.Namespace) -> int:
    from genladder.evaluate.curves import steps_curve
    from genladder.presets import parse_ints

    if args.steps is not None:
        raise GenladderError("steps-curve varies the steps itself: give them with --steps-list, not --steps")
    steps = parse_ints(args.steps_list, "--steps-list")
    if not steps or min(steps) < 1:
        raise GenladderError(f"--steps-list takes whole numbers >= 1, at least one, got {args.steps_list!r}")
    _refuse_ignored_evaluation_options(args, [args.run_dir])
    steps_curve(args.run_dir, list(steps), _evaluation_config(args), args.out, progress=not args.no_progress)
    return 0


def _report(args: argparse.Namespace) -> int:
    from genladder.checkpoint import atomic_write_bytes
    from genladder.evaluate import markdown_table, read_evaluation

    table = markdown_table(read_evaluation(run_dir) for run_dir in args.run_dirs)
    if args.out:
        if not args.out.endswith(".md"):
            raise GenladderError(f"--out must name a .md file, got {args.out!r}")
        atomic_write_bytes(args.out, table.encode())
        print(f"genladder: wrote {args.out}")
    else:
        print(table, end="")
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, but an unknown option is named with the closest option of its sub-command and that
    sub-command's help (argparse reports it from the top-level parser, which knows neither)."""
    import difflib

    args, unknown = parser.parse_known_args(argv)
    if not unknown:
        return args
    verb = args.command
    subparser = next(action for action in parser._subparsers._group_actions
                     if isinstance(action, argparse._SubParsersAction)).choices[verb]
    options = [o for action in subparser._actions for o in action.option_strings if o.startswith("--")]
    first = unknown[0].split("=")[0]
    close = difflib.get_close_matches(first, options, n=1, cutoff=0.6) if first.startswith("-") else []
    hint = f"; did you mean {close[0]}?" if close else ""
    what = "unknown option" if first.startswith("-") else "unexpected argument"
    raise GenladderError(f"{what} {first!r} for '{verb}'{hint} (see 'genladder {verb} --help')")


def _interrupted_run_dir(args: argparse.Namespace | None) -> str | None:
    """The run folder a Ctrl-C'd 'train' was writing, for the message that says how to resume it."""
    if args is None or getattr(args, "command", None) not in ("train", "reflow"):
        return None
    return getattr(args, "resume", None) or getattr(args, "run_dir", None)


# The verbs that run the networks for long enough that a second thread stalled by a busy core matters.
COMPUTE_VERBS = ("train", "sample", "trajectory", "guidance-sweep", "evaluate", "guidance-curve", "steps-curve",
                 "reflow")


def _set_threads(threads: int | None) -> None:
    """--threads for every verb that runs a network; without it, fewer threads when other processes keep cores busy
    (genladder.runtime.avoid_contention), said once."""
    import torch

    from genladder.runtime import avoid_contention

    if threads is not None:
        torch.set_num_threads(threads)
        return
    cores = torch.get_num_threads()
    threads = avoid_contention()
    if threads is not None:
        print(f"genladder: other processes keep {cores - threads} of {cores} cores busy: using {threads} torch "
              f"thread{'s' * (threads > 1)} (--threads or OMP_NUM_THREADS to choose)", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that a run stops the same way."""


@contextlib.contextmanager
def _sigterm_stops_like_ctrl_c():
    """While ``train`` or ``reflow`` runs in one process, SIGTERM (kill, a scheduler, a container's stop) saves a
    checkpoint and stops as Ctrl-C does, instead of ending the process with the steps since the last checkpoint
    lost. Under torchrun the launcher stops its workers and no process can save alone (the loop's rule), and
    Python only lets the main thread set handlers; there, and afterwards, the old handler stands."""
    single = os.environ.get("WORLD_SIZE", "1") == "1"
    if not single or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``genladder`` console script; returns the exit code."""
    from genladder.runtime import tune_allocator

    tune_allocator()  # faster CPU steps: see genladder.runtime
    try:
        args = _parse(build_parser(), sys.argv[1:] if argv is None else [str(a) for a in argv])
        if args.command in COMPUTE_VERBS:
            _set_threads(getattr(args, "threads", None))
        if args.command == "train":
            with _sigterm_stops_like_ctrl_c():
                return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "report":
            return _report(args)
        if args.command == "guidance-curve":
            return _guidance_curve(args)
        if args.command == "reflow":
            with _sigterm_stops_like_ctrl_c():
                return _reflow(args)
        if args.command == "steps-curve":
            return _steps_curve(args)
        if args.command == "posthoc-ema":
            return _posthoc_ema(args)
        if args.command == "serve":
            from genladder.serve_http import serve

            serve(args.run_dirs, port=args.port, device=args.device, runs_root=args.runs_root)
            return 0
        return _figure(args)
    except GenladderError as error:
        # Under torchrun every process may fail alike; the others say which they are.
        rank = os.environ.get("RANK", "0")
        print(f"genladder{'' if rank == '0' else f' [rank {rank}]'}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk or a refused permission outside the checked writers: still one line
        from genladder.safe_io import os_error_message

        print(f"genladder: error: {os_error_message(error, doing='use')}", file=sys.stderr)
        return 2
    except MemoryError:
        print("genladder: error: out of memory; ask for fewer or smaller images (--n, --batch-size) or a smaller model",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        code = 143 if isinstance(interrupt, Terminated) else 130  # 128 + the signal's number, as shells report
        if os.environ.get("RANK", "0") != "0":  # under torchrun the main process speaks for all
            return code
        args = locals().get("args")
        run_dir = _interrupted_run_dir(args)
        if getattr(args, "command", None) == "reflow" and not (Path(args.run_dir) / "config.json").exists():
            print(f"genladder: interrupted while drawing pairs; 'genladder reflow {args.teacher} --run-dir "
                  f"{args.run_dir}' again keeps the chunks already drawn", file=sys.stderr)
        elif run_dir is not None:
            print(f"genladder: interrupted; continue from the newest checkpoint with 'genladder train --resume "
                  f"{run_dir}' (one process saves one on Ctrl-C or SIGTERM)", file=sys.stderr)
        else:
            print("genladder: interrupted", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
