"""Figures from a trained run (samples, reconstructions, latent walks and maps, denoising) and of the noising
process itself: the CLI's figure verbs."""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from genladder.checkpoint import atomic_write_bytes
from genladder.data import to_unit
from genladder.data.config import DataConfig
from genladder.diffusion.samplers import SOLVERS
from genladder.errors import GenladderError
from genladder.flow.samplers import FLOW_SOLVERS
from genladder.plotting import save_grid, save_image_table, save_labelled_grid, save_latent_map
from genladder.rungs import decode_image, encode_mean, grid_labels, kinds, rung
from genladder.runs import Run, load_data_split, load_run


def _check_out(out: str, suffixes: tuple[str, ...] = (".png",)) -> Path:
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise GenladderError(f"--out must end in {' or '.join(suffixes)}, got {out!r}")
    if not path.parent.exists():
        raise GenladderError(f"folder {path.parent} does not exist")
    return path


def sample_labels(run: Run, n: int, label: int | None, grid: bool) -> torch.Tensor | None:
    """Labels for a conditional model (one class, a per-row grid, or cycling), or None; validated."""
    num_classes = run.num_classes
    if not num_classes:
        if label is not None or grid:
            raise GenladderError(f"--label/--grid need a conditional model; this run is an unconditional {run.kind}")
        return None
    if label is not None:
        if not 0 <= label < num_classes:
            raise GenladderError(f"--label must be in 0..{num_classes - 1}, got {label}")
        return torch.full((n,), label, dtype=torch.long)
    if grid:
        if n % num_classes:
            raise GenladderError(f"--grid draws one row per class: --n must be a multiple of {num_classes}, got {n}")
        return grid_labels(n, num_classes)
    return torch.arange(n) % num_classes


def test_digits(
    run: Run, n: int, data_dir: str | None, minimum: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images of the run's data as [0, 1] floats (N, C, H, W), with labels.

    Fewer than n is an error unless ``minimum`` allows it.
    """
    data = run.config.data
    split = load_data_split(data, "test", limit=n, data_dir=data_dir)
    if len(split.images) < (n if minimum is None else minimum):
        raise GenladderError(f"asked for {minimum or n} test images but the test set holds {len(split.images)}")
    device = next(run.model.parameters()).device
    return to_unit(split.images).to(device), split.labels.to(device)


def _open_run(args: argparse.Namespace, verb: str, kinds: tuple[str, ...]) -> tuple[Path, Run]:
    """Check ``--out``, load the run (``--weights`` when the verb has it) and check it is one of ``kinds``."""
    out = _check_out(args.out)
    run = load_run(args.run_dir, weights=getattr(args, "weights", "auto"), device=args.device)
    if run.kind not in kinds:
        raise GenladderError(f"'{verb}' needs {_either(kinds)} run; this run is a {run.kind}")
    return out, run


def _either(kinds: tuple[str, ...]) -> str:
    article = "an" if kinds[0][0] in "aeiou" else "a"
    if len(kinds) == 1:
        return f"{article} {kinds[0]}"
    return f"{article} {', '.join(kinds[:-1])} or {kinds[-1]}"


AUTOENCODERS, ITERATIVE = kinds(codes=True), kinds(iterative=True)  # from the rung table: AE/VAE/CVAE; DDPM/flow


def _encode(run: Run, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return encode_mean(run.kind, run.model, x, labels)


def _decode(run: Run, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return decode_image(run.kind, run.model, z, labels)


def latent_line(z_start: torch.Tensor, z_end: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` evenly spaced points of the straight line from z_start to z_end, ends included. (steps, D)"""
    weights = torch.linspace(0, 1, steps, device=z_start.device)[:, None]  # (steps, 1)
    return (1 - weights) * z_start + weights * z_end


def latent_activity(run: Run, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Variance over images of each latent coordinate's code, (latent_dim,).

    For a VAE this is Burda et al. 2016's activity Cov_x(E_q[z_i]): a unit whose posterior mean does not move
    with the input (below about 0.01) is inactive, and sliding along it changes nothing.
    """
    return _encode(run, x, labels).var(dim=0)


# The sampling options of the CLI that only a diffusion or flow run reads, and the samplers each solver option
# belongs to. Their command-line default is None ("not given"), so a given one that would be ignored is refused.
ITERATIVE_SAMPLING_OPTIONS = ("sampler", "steps", "guidance", "eta", "variance", "spacing", "guidance_interval")
# (eta and variance: the diffusion and flow solvers that list them; spacing: every diffusion solver, no flow solver)
SOLVER_OPTIONS = {option: tuple(name for name, solver in (SOLVERS | FLOW_SOLVERS).items() if option in solver.options)
                  for option in ("eta", "variance")} | {"spacing": tuple(SOLVERS)}


def sampler_config(args: argparse.Namespace):
    """The SamplerConfig of the sampling options of ``args``; options not given take SamplerConfig's defaults."""
    from genladder.sampling import SamplerConfig

    given = {name: getattr(args, name, None) for name in ITERATIVE_SAMPLING_OPTIONS}
    given = {name: value for name, value in given.items() if value is not None}
    if "steps" not in given and given.get("sampler") == "ddpm":
        given["steps"] = None  # ancestral sampling's default: the full chain
    return SamplerConfig(**given, batch_size=args.batch_size)


def refuse_ignored_sampling_options(args: argparse.Namespace, run: Run) -> None:
    """One-line error for a sampling option the run (or the chosen sampler) would ignore."""
    from genladder.sampling import SamplerConfig

    given = [name for name in ITERATIVE_SAMPLING_OPTIONS if getattr(args, name, None) is not None]
    if run.kind not in ITERATIVE:
        if given:
            raise GenladderError(f"--{given[0].replace('_', '-')} applies to diffusion and flow runs (ddpm, cddpm, "
                                 f"flow, cflow); this run is a {run.kind}, which samples its prior in one step")
        return
    if "guidance_interval" in given:  # it says where guidance applies: without guidance it would change nothing
        weights = parse_weights(args.weights_list) if getattr(args, "weights_list", None) else [args.guidance or 0]
        if not rung(run.kind).conditional or not any(weights):
            raise GenladderError("--guidance-interval limits where guidance applies: it needs a guided rung (cddpm, "
                                 "cflow, latent) and a guidance weight above 0")
    sampler = SamplerConfig(sampler=getattr(args, "sampler", None)).for_model(run.config).sampler
    for option, owners in SOLVER_OPTIONS.items():
        if option in given and sampler not in owners:
            names = owners[0] if len(owners) == 1 else f"{', '.join(owners[:-1])} and {owners[-1]}"
            raise GenladderError(f"--{option} applies to the {names} sampler{'s' * (len(owners) > 1)} only, not "
                                 f"{sampler}")


def _iterative_images(run: Run, labels, n: int, args, callback=None, sampler=None) -> torch.Tensor:
    """Images in [0, 1] from a diffusion or flow run, with ``sampler`` (default: the sampling options of
    ``args``)."""
    from genladder.sampling import generate

    sampler = sampler if sampler is not None else sampler_config(args)
    images = generate(run.model, run.config, n, sampler, labels=labels, seed=args.seed,
                      progress=not args.no_progress, callback=callback)
    return (images + 1) / 2


@dataclass
class Samples:
    """New images from a run, with their labels and the grid layout that shows them best."""

    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    labels: torch.Tensor | None  # (N,) int64 for a conditional model, else None
    columns: int | None  # images per grid row (None: a near-square grid)


@torch.no_grad()
def draw_samples(run: Run, n: int, *, label: int | None = None, grid: bool = False, sampler=None,
                 seed: int = 0, progress: bool = False, callback=None) -> Samples:
    """Draw about n new images (a grid rounds n to whole rows); ``sampler`` (a SamplerConfig) for diffusion runs.

    ``callback(i, t, x_t, x0_hat)`` is called after every solver step of a diffusion run.
    """
    from genladder.pipeline import sample_images

    labels = sample_labels(run, n, label, grid)
    n = len(labels) if labels is not None else n
    images = sample_images(run, n, labels, sampler, seed=seed, progress=progress, callback=callback)
    columns = None
    if labels is not None and label is None:
        # A grid has one class per row (labels 0,0,…,1,1,…); cycling labels (0,1,…,9,0,…) one per column.
        num_classes = run.num_classes
        columns = n // num_classes if grid else num_classes
    return Samples(images, labels, columns)


def sample_command(args: argparse.Namespace) -> Path:
    out = _check_out(args.out, (".png", ".npz"))
    run = load_run(args.run_dir, weights=args.weights, device=args.device)
    refuse_ignored_sampling_options(args, run)
    n = args.n
    if n is None:  # 64 images, or a grid of ten per class
        n = 10 * run.num_classes if args.grid else 64
    samples = draw_samples(run, n, label=args.label, grid=args.grid, sampler=sampler_config(args),
                           seed=args.seed, progress=not args.no_progress)
    if out.suffix.lower() == ".npz":
        return save_npz(out, samples.images * 2 - 1, samples.labels)
    return save_grid(samples.images, out, nrow=samples.columns)


def save_npz(path: Path, images: torch.Tensor, labels: torch.Tensor | None) -> Path:
    """Raw samples for external evaluation: ``images`` float32 (N, C, H, W) in [−1, 1], ``labels`` int64 (N,)."""
    buffer = io.BytesIO()
    arrays = {"images": images.float().cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path


@torch.no_grad()
def trajectory_command(args: argparse.Namespace) -> Path:
    """The denoising trajectory: x_t at ``--frames`` points of the chain (or of the flow's ODE), one row per
    sample, t above each column."""
    out, run = _open_run(args, "trajectory", ITERATIVE)
    refuse_ignored_sampling_options(args, run)
    steps = sampler_config(args).steps or run.schedule.T  # (only ddpm's full chain has no --steps)
    frame_count = args.frames if args.frames is not None else min(10, steps)
    if not 2 <= frame_count <= steps:  # more frames than steps would repeat a step's x_t, so they are refused
        raise GenladderError(f"--frames must be at least 2 and at most the {steps} solver steps, got {frame_count}")
    labels = sample_labels(run, args.n, args.label, False)
    keep = sorted({round(i * (steps - 1) / (frame_count - 1)) for i in range(frame_count)})
    # step index -> (its timestep t, x_t of every batch): the sampler runs once per batch of --batch-size images
    frames: dict[int, tuple[int | float, list[torch.Tensor]]] = {}

    def record(i, t, x_t, x0_hat):
        if i in keep:
            frames.setdefault(i, (t, []))[1].append(((x_t.clamp(-1, 1) + 1) / 2).cpu())

    final = _iterative_images(run, labels, args.n, args, callback=record).cpu()
    columns = torch.stack([*(torch.cat(frames[i][1]) for i in keep), final], dim=1)  # (n, frames + 1, C, H, W)
    titles = trajectory_titles([frames[i][0] for i in keep])
    return save_labelled_grid(columns.flatten(0, 1), out, nrow=len(keep) + 1, column_labels=titles)


def trajectory_titles(timesteps: list[int | float]) -> list[str]:
    """Column labels of a trajectory: the code's timestep t of each frame (a diffusion step counted from 0, as
    the noising figure; a flow time in [0, 1], 1 = noise), then the final image x0."""
    return [f"t={t:.2f}" if isinstance(t, float) else f"t={int(t)}" for t in timesteps] + ["x0"]


def parse_weights(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]: guidance weights, finite and >= 0, at least one."""
    import math

    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise GenladderError(f"--guidance-weights takes comma-separated numbers, got {text!r}") from None
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise GenladderError(f"--guidance-weights takes finite numbers >= 0, at least one, got {text!r}")
    return weights


@torch.no_grad()
def guidance_sweep_command(args: argparse.Namespace) -> Path:
    """Rows = guidance weights w, columns = the ten digits, the same noise in every row."""
    out, run = _open_run(args, "guidance-sweep", ITERATIVE)
    num_classes = run.num_classes
    if not num_classes:
        raise GenladderError("'guidance-sweep' needs a conditional model (cddpm, cflow); this run is "
                             "unconditional")
    weights = parse_weights(args.weights_list)
    refuse_ignored_sampling_options(args, run)
    labels = torch.arange(num_classes)
    sampler = sampler_config(args)
    rows = [_iterative_images(run, labels, num_classes, args, sampler=replace(sampler, guidance=w)) for w in weights]
    return save_labelled_grid(torch.cat(rows), out, nrow=num_classes, row_labels=sweep_titles(weights),
                              column_labels=[str(c) for c in range(num_classes)])


def sweep_titles(weights: list[float]) -> list[str]:
    """Row labels of a guidance sweep: 'w=0', 'w=0.5', … (no trailing '.0')."""
    return [f"w={w:g}" for w in weights]


@torch.no_grad()
def reconstruct_command(args: argparse.Namespace) -> Path:
    out, run = _open_run(args, "reconstruct", AUTOENCODERS)
    x, labels = test_digits(run, args.n, args.data_dir)
    reconstructions = _decode(run, _encode(run, x, labels), labels)
    ncol = min(args.n, 8)
    rows = []
    for start in range(0, args.n, ncol):  # a row of originals, then the row of their reconstructions
        rows += [x[start : start + ncol], reconstructions[start : start + ncol]]
    return save_grid(torch.cat(rows), out, nrow=ncol)


@torch.no_grad()
def interpolate_command(args: argparse.Namespace) -> Path:
    out, run = _open_run(args, "interpolate", AUTOENCODERS)
    if args.steps < 2:
        raise GenladderError(f"--steps must be at least 2 (the two ends), got {args.steps}")
    x, labels = test_digits(run, 1000, args.data_dir, minimum=2 * args.pairs)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed)).to(x.device)
    if rung(run.kind).conditional:  # a CVAE decodes under one label: pair each image with another of its class
        partnered = order[torch.bincount(labels)[labels[order]] >= 2]  # images whose class has another
        if len(partnered) < args.pairs:
            raise GenladderError(f"the test set has {len(partnered)} images with a partner of their class, fewer "
                                 f"than --pairs {args.pairs}; ask for fewer pairs or hold out more images")
        start = partnered[: args.pairs]
        end = torch.stack([order[(labels[order] == labels[i]) & (order != i)][0] for i in start])
    else:
        start, end = order[: args.pairs], order[args.pairs : 2 * args.pairs]
    z_start, z_end = _encode(run, x[start], labels[start]), _encode(run, x[end], labels[end])
    rows = []
    for i in range(args.pairs):
        row_labels = labels[start[i]].repeat(args.steps)
        rows.append(_decode(run, latent_line(z_start[i], z_end[i], args.steps), row_labels))
    return save_grid(torch.cat(rows), out, nrow=args.steps)


@torch.no_grad()
def latent_map_command(args: argparse.Namespace) -> Path:
    """A 2-d VAE's latent space: test digits at their posterior means beside the images a grid of z decodes to."""
    out, run = _open_run(args, "latent-map", ("vae",))
    latent_dim = run.config.model.latent_dim
    if run.config.model.latent_channels is not None:
        shape = "×".join(map(str, run.config.model.latent_shape))
        raise GenladderError(f"'latent-map' draws a 2-d latent space; this VAE has a spatial {shape} latent "
                             "(--latent-channels); train one with --latent-dim 2")
    if latent_dim != 2:
        raise GenladderError(f"'latent-map' draws a 2-d latent space; this VAE has {latent_dim} dimensions "
                             "(train one with --latent-dim 2)")
    if args.grid < 2:
        raise GenladderError(f"--grid must be at least 2, got {args.grid}")
    x, labels = test_digits(run, args.n, args.data_dir, minimum=1)  # up to n: the whole test set by default
    z = torch.cat([_encode(run, x[i : i + 1000], None) for i in range(0, len(x), 1000)])  # (n, 2)
    # Kingma & Welling 2014, fig. 4: z at evenly spaced quantiles of the prior N(0, 1) on each axis,
    # so every cell of the grid holds the same prior mass; 5 % … 95 % here.
    quantiles = torch.linspace(0.05, 0.95, args.grid)
    axis = torch.distributions.Normal(0.0, 1.0).icdf(quantiles).to(x.device)  # (g,) increasing
    z1, z2 = torch.meshgrid(axis, axis.flip(0), indexing="xy")  # (g, g): row 0 is the top, i.e. the largest z₂
    grid_z = torch.stack([z1, z2], dim=-1).reshape(-1, 2)  # (g·g, 2), row-major
    manifold = _decode(run, grid_z, None).view(args.grid, args.grid, *x.shape[1:])  # (g, g, C, H, W)
    title = f"{Path(args.run_dir).name}: 2-d VAE, {len(x):,} test digits"
    return save_latent_map(z, labels, manifold, axis, out, title=title)


@torch.no_grad()
def noising_command(args: argparse.Namespace) -> Path:
    """The forward process q(x_t | x0) at evenly spaced t for a few test digits, one fixed ε per digit."""
    from genladder.data import to_signed
    from genladder.diffusion import ScheduleConfig

    out = _check_out(args.out)
    if not 1 <= args.frames <= args.T:
        raise GenladderError(f"--frames must be in 1..T={args.T}, got {args.frames}")
    schedule = ScheduleConfig(kind=args.schedule, T=args.T).build()
    split = load_data_split(DataConfig(dataset=args.dataset, data_dir=args.data_dir), "test", limit=args.n)
    if len(split.images) < args.n:
        raise GenladderError(f"asked for {args.n} test images but the test set holds {len(split.images)}")
    x0 = to_signed(split.images)  # (n, C, H, W) in [−1, 1], as the diffusion models see them
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed))
    steps = [round((i + 1) * args.T / args.frames) - 1 for i in range(args.frames)]  # evenly spaced, last T − 1
    columns = [x0]
    for t in steps:
        # Ho et al. 2020, eq. 4 / Luo 2022, eq. 64: x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε
        columns.append(schedule.q_sample(x0, torch.full((args.n,), t, dtype=torch.long), eps))
    table = (torch.stack(columns, dim=1).clamp(-1, 1) + 1) / 2  # (n, frames + 1, C, H, W) in [0, 1]
    titles = ["x0"] + [f"t={t}\nᾱ={float(schedule.alpha_bar[t]):.3f}" for t in steps]
    title = f"q(x_t | x0), {args.schedule} β, T = {args.T} (t counts from 0)"
    return save_image_table(table, titles, out, title=title)


COMMANDS = {
    "sample": sample_command,
    "reconstruct": reconstruct_command,
    "interpolate": interpolate_command,
    "trajectory": trajectory_command,
    "guidance-sweep": guidance_sweep_command,
    "latent-map": latent_map_command,
    "noising": noising_command,
}
