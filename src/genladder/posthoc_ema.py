"""Post-hoc EMA: choose the length of the weights' average after training, from the run's kept snapshots.

Karras et al. 2024 ("Analyzing and improving the training dynamics of diffusion models", sec. 3) show that the
best EMA length is found only by trying several, and that any EMA profile can be rebuilt after training from
stored snapshots. They store two power-function EMAs and solve a least-squares problem; here the snapshots are
the raw weights of the kept checkpoints (``train --checkpoint-every N --keep-checkpoints 1000``), which needs no
change to training. Between two snapshots the weights are taken to be the later one's (a step function of the
training images τ), so the average of θ(τ) under a profile p(τ) is

    θ̂ = Σ_i m_i θ_i,   m_i = the profile's mass on (τ_{i−1}, τ_i]   (the first snapshot also takes (0, τ_0]),

which is exact when a snapshot is kept at every step and tested against a step-by-step EMA. Two profiles:

* ``half_life_images`` — the training loop's exponential EMA (decay 2^(−b/h) per step of b images, half-life h);
  its mass on (τ_{i−1}, τ_i] is 2^(−(T−τ_i)/h) − 2^(−(T−τ_{i−1})/h), with T the last snapshot's images;
* ``sigma_rel`` — Karras et al.'s power function p(τ) ∝ τ^γ on (0, T] (their sec. 3), whose width relative to
  the training length is σ_rel = √((γ + 1) / ((γ + 2)² (γ + 3))) (its standard deviation over T); its mass is
  (τ_i^{γ+1} − τ_{i−1}^{γ+1}) / T^{γ+1}. It grows with the run, which an exponential EMA of fixed half-life does
  not.

No library does this over genladder's checkpoint folders, so it is written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from genladder.checkpoint import (
    CHECKPOINTS,
    is_complete_checkpoint,
    read_json,
    read_model_file,
    safetensors_bytes,
    write_folder,
)
from genladder.errors import GenladderError

POSTHOC_PREFIX = "posthoc_"  # folder names beside the step_N checkpoints; the checkpoint machinery ignores them
MAX_SIGMA_REL = 12 ** -0.5  # γ = 0: σ_rel = 1/√12 ≈ 0.2887, a uniform average over the whole run


@dataclass(frozen=True)
class Snapshot:
    """One kept checkpoint: its folder and the training images seen when it was written."""

    folder: Path
    images_seen: int


def gamma_of_sigma_rel(sigma_rel: float) -> float:
    """The power-function exponent γ ≥ 0 with relative width ``sigma_rel`` (Karras et al. 2024, sec. 3), by
    bisection: σ_rel(γ) falls monotonically from 1/√12 at γ = 0 towards 0."""
    if not 0 < sigma_rel <= MAX_SIGMA_REL:
        raise GenladderError(f"--sigma-rel must be in (0, {MAX_SIGMA_REL:.4f}] (1/√12: γ = 0), got {sigma_rel}")

    def width(gamma: float) -> float:
        return ((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) ** 0.5

    low, high = 0.0, 1e9
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if width(middle) > sigma_rel else (low, middle)
    return (low + high) / 2


def snapshot_masses(images: list[int], *, half_life_images: float | None = None,
                    sigma_rel: float | None = None) -> list[float]:
    """Each snapshot's share m_i of the average (the module's docstring); ``images`` ascending, the shares sum
    to 1. Exactly one of ``half_life_images`` and ``sigma_rel`` is given."""
    if (half_life_images is None) == (sigma_rel is None):
        raise GenladderError("give exactly one of --half-life-images and --sigma-rel")
    if not images or any(b <= a for a, b in zip(images, images[1:], strict=False)) or images[0] <= 0:
        raise GenladderError("the snapshots' training images must be positive and increasing")
    end = float(images[-1])
    if half_life_images is not None:
        if not half_life_images > 0:
            raise GenladderError(f"--half-life-images must be positive, got {half_life_images}")
        # cumulative mass of (0, τ]: the share of the EMA at T still carried by weights from before τ
        cumulative = [2.0 ** (-(end - tau) / half_life_images) for tau in images]
    else:
        power = gamma_of_sigma_rel(sigma_rel) + 1
        cumulative = [(tau / end) ** power for tau in images]
    return [cumulative[0]] + [b - a for a, b in zip(cumulative, cumulative[1:], strict=False)]


def kept_snapshots(run_dir: str | Path) -> list[Snapshot]:
    """The run's complete step_N checkpoints, by training images."""
    root = Path(run_dir) / CHECKPOINTS
    if not (Path(run_dir) / "config.json").is_file():
        raise GenladderError(f"{run_dir} is not a genladder run folder (no config.json)")
    folders = [path for path in root.iterdir() if is_complete_checkpoint(path)] if root.is_dir() else []
    snapshots = sorted((Snapshot(path, int(read_json(path / "trainer_state.json")["images_seen"]))
                        for path in folders), key=lambda snapshot: snapshot.images_seen)
    if len(snapshots) < 2:
        raise GenladderError(f"{run_dir} keeps {len(snapshots)} checkpoint(s); a post-hoc EMA needs the snapshots "
                             "along the run: train with --keep-checkpoints 1000 and a --checkpoint-every that "
                             "keeps a few per EMA length")
    return snapshots


def profile_name(half_life_images: float | None = None, sigma_rel: float | None = None) -> str:
    """The folder name of a profile's average: ``posthoc_sigma_rel_0.100`` or ``posthoc_half_life_88700``."""
    if sigma_rel is not None:
        return f"{POSTHOC_PREFIX}sigma_rel_{sigma_rel:.3f}"
    return f"{POSTHOC_PREFIX}half_life_{half_life_images:g}"


def posthoc_ema(run_dir: str | Path, *, half_life_images: float | None = None,
                sigma_rel: float | None = None) -> Path:
    """Average the run's kept raw weights under one profile; write it as ``checkpoints/posthoc_…/``.

    The folder holds ``ema.safetensors`` (the average, a model file that ``genladder.load`` reads),
    ``model.safetensors`` and ``trainer_state.json`` (the newest snapshot's, so that ``genladder evaluate RUN
    --checkpoint posthoc_…`` and ``genladder sample`` treat it as a checkpoint whose EMA is the post-hoc one) and
    ``posthoc.json`` (the profile and each snapshot's share). Written to a temporary folder, then renamed.
    """
    snapshots = kept_snapshots(run_dir)
    masses = snapshot_masses([s.images_seen for s in snapshots], half_life_images=half_life_images,
                             sigma_rel=sigma_rel)
    average: dict[str, torch.Tensor] = {}
    description: dict = {}
    for snapshot, mass in zip(snapshots, masses, strict=True):
        state, description = read_model_file(snapshot.folder / "model.safetensors")
        for name, tensor in state.items():
            if not tensor.is_floating_point():  # counters, e.g. BatchNorm's batches seen: the newest's
                average[name] = tensor
                continue
            average[name] = average.get(name, torch.zeros_like(tensor, dtype=torch.float64)) + mass * tensor.double()
    newest = snapshots[-1].folder
    average = {name: tensor.to(state[name].dtype) for name, tensor in average.items()}  # the newest's dtypes
    record = {"half_life_images": half_life_images, "sigma_rel": sigma_rel,
              "gamma": gamma_of_sigma_rel(sigma_rel) if sigma_rel is not None else None,
              "snapshots": [{"checkpoint": s.folder.name, "images_seen": s.images_seen, "share": m}
                            for s, m in zip(snapshots, masses, strict=True)]}
    final = Path(run_dir) / CHECKPOINTS / profile_name(half_life_images, sigma_rel)
    files = {"ema.safetensors": safetensors_bytes(average, description),
             "model.safetensors": (newest / "model.safetensors").read_bytes(),
             "trainer_state.json": (newest / "trainer_state.json").read_bytes(),
             "posthoc.json": (json.dumps(record, indent=2) + "\n").encode()}
    try:
        write_folder(final, files)
    except OSError as error:
        raise GenladderError(f"could not write {final}: {error.strerror or error}") from None
    return final
