"""The table of what the suite measures: cases (a model at a preset), samplings, variants, settings.

A new diffusion preset joins ``CASES`` by itself (from ``genladder.presets.DIFFUSION_PRESETS``), a new
model is one line there; a new way to run the same models (a ``TrainConfig`` switch such as
``compile`` or ``precision``) is one entry in ``VARIANTS``. Nothing else in the suite names a case.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from genladder.errors import GenladderError
from genladder.presets import DIFFUSION_PRESETS
from genladder.resolve import resolve_from_preset
from genladder.rungs import is_diffusion


@dataclass(frozen=True)
class Sampling:
    """One way to draw images: a solver at a step count and guidance weight (``generate``'s options).

    ``sampler="prior"`` is the VAE/CVAE draw z ~ N(0, I) → decoder (one decoder pass per image).
    ``steps=None`` is the full ancestral chain (T steps).
    """

    sampler: str
    steps: int | None = None
    guidance: float = 0.0

    @property
    def label(self) -> str:
        steps = "" if self.sampler == "prior" else f" {self.steps if self.steps is not None else 'T'}"
        guided = f" w={self.guidance:g}" if self.guidance else ""
        return f"{self.sampler}{steps}{guided}"


@dataclass(frozen=True)
class Case:
    """A model to measure: ``kind`` at ``preset``, with CLI-style overrides (``--widths`` → {"widths": …})."""

    kind: str
    preset: str
    overrides: dict = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.preset}"


class _Autocast(torch.nn.Module):
    """Runs the wrapped network under bf16 autocast and hands back fp32 tensors (the samplers' dtype)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, *args, **kwargs):
        device_type = next(self.network.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = self.network(*args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out


def compile_in_process() -> None:
    """Let inductor compile in this process: compile workers would count as other processes' load."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1


@dataclass(frozen=True)
class Variant:
    """How the models run: ``TrainConfig`` fields for our training step (``genladder train --compile``, …).

    Our step takes them from the run config exactly as the loop does. Sampling, which has no such
    options, and the peer get the same treatment from ``wrap``: compile and/or bf16 autocast around
    the network. The optimiser, EMA and FLOP counts always see the plain module.
    """

    name: str
    train_overrides: dict = field(hash=False)
    description: str = ""

    @property
    def compiles(self) -> bool:
        return bool(self.train_overrides.get("compile"))

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.train_overrides.get("precision") == "bf16":
            model = _Autocast(model)
        return torch.compile(model) if self.compiles else model


CASES = tuple(
    [Case(kind, preset) for kind in ("ae", "vae", "cvae") for preset in ("tutorial", "default")]
    + [Case(kind, preset) for kind in ("ddpm", "cddpm") for preset in DIFFUSION_PRESETS]
)

VARIANTS = {
    "eager": Variant("eager", {}, "fp32, plain PyTorch: `genladder train` and `genladder sample` as they run"),
    "compile": Variant("compile", {"compile": True}, "`genladder train --compile`; sampling and the peer "
                       "through torch.compile too"),
    "bf16": Variant("bf16", {"precision": "bf16"}, "`genladder train --precision bf16` (autocast); sampling and "
                    "the peer under bf16 autocast too"),
}


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one suite run (the full suite's defaults, or ``--quick``)."""

    train_batch: int = 128  # the presets' training batch (--train-batch)
    train_warmup: int = 2  # untimed steps (allocator, caches, compilation)
    train_steps: int = 5  # timed steps; the median step time gives images/s
    sample_batch: int = 16  # images per sampler call: small enough that the suite takes minutes (--sample-batch)
    sample_warmup: int = 1  # untimed sampler calls (at ≤ 2 steps)
    sample_repeats: int = 3  # timed sampler calls; median
    diffusion_steps: tuple[int, ...] = (10, 20)  # ddim/dpmpp step counts
    samplers: tuple[str, ...] = ("ddim", "dpmpp")
    guidance: float = 2.0  # cddpm: w of the guided rows (the README's figures use 2)
    full_chain_max_T: int = 100  # ancestral sampling over all T steps only up to this T
    peak_size: int = 2048  # fp32 matmul side of the machine's peak (8192 on CUDA)
    peak_repeats: int = 5
    load_window_s: float = 1.0  # pause before the run that measures other processes' load


# --quick: a smoke run in seconds that exercises every code path once; its figures mean nothing.
QUICK = Settings(train_batch=8, train_warmup=1, train_steps=2, sample_batch=4, sample_warmup=1, sample_repeats=2,
                 diffusion_steps=(5,), samplers=("dpmpp",), peak_size=1024, peak_repeats=3, load_window_s=0.5)
QUICK_CASES = ("ae-default", "cddpm-small")


def samplings(case: Case, T: int, settings: Settings) -> tuple[list[Sampling], list[str]]:
    """The sampling rows of a case, and notes on what was left out and why."""
    if case.kind == "ae":
        return [], ["no sampling rows: an AE has no prior to sample from"]
    if not is_diffusion(case.kind):
        return [Sampling("prior")], []
    weights = (0.0, settings.guidance) if case.kind == "cddpm" else (0.0,)
    rows = [Sampling(sampler, steps, w) for w in weights for sampler in settings.samplers
            for steps in settings.diffusion_steps if steps <= T]
    notes = []
    if T <= settings.full_chain_max_T:
        # unguided only: per evaluation the chain costs what the rows above cost, and it is the longest row
        rows.append(Sampling("ddpm", None, 0.0))
    else:
        notes.append(f"ddpm full chain skipped: T = {T} evaluations per image; per evaluation it costs what "
                     "ddim/dpmpp cost")
    return rows, notes


def case_config(case: Case, batch_size: int, train_overrides: dict | None = None) -> dict:
    """The run config ``genladder train KIND --preset P`` would write, as JSON, resolved by the same
    ``genladder.resolve`` as the CLI (on MNIST's shape: naming MNIST reads no file)."""
    given = {"kind": case.kind, "preset": case.preset, **case.overrides, **(train_overrides or {}),
             "batch_size": batch_size}
    return resolve_from_preset(given).to_dict()


def select_cases(patterns: str | None, quick: bool) -> list[Case]:
    """Cases whose name matches any comma-separated shell pattern (``cddpm-*``, ``*-small``, ``vae-tutorial``)."""
    if not patterns:
        names = QUICK_CASES if quick else tuple(case.name for case in CASES)
        return [case for case in CASES if case.name in names]
    chosen = []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        matches = [case for case in CASES if fnmatch.fnmatchcase(case.name, pattern)]
        if not matches:
            raise GenladderError(f"--cases {pattern!r} matches no case; known: {', '.join(c.name for c in CASES)}")
        chosen += [case for case in matches if case not in chosen]
    return chosen


def select_variants(names: str) -> list[Variant]:
    chosen = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in VARIANTS:
            raise GenladderError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        chosen.append(VARIANTS[name])
    if not chosen:
        raise GenladderError("--variants names no variant")
    return chosen
