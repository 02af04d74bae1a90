"""The front door from Python: ``genladder.load(path)`` gives a ``Pipeline`` that samples (and encodes and
decodes where the rung can), whatever the rung — the role of diffusers' ``DiffusionPipeline``.

    import genladder
    pipe = genladder.load("runs/cddpm")                 # a run folder, or one model file in it
    digits = pipe.sample(labels=[0, 1, 2], guidance=1)  # (3, 1, 32, 32) in [0, 1]
    codes = genladder.load("runs/vae").encode(images)   # AE/VAE/CVAE: images in [0, 1] -> codes

The CLI's ``sample`` verb and the web demo draw through ``sample_images``, the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

import torch

from genladder.errors import GenladderError
from genladder.noise import image_generators
from genladder.rungs import decode_image, encode_mean, kinds, rung
from genladder.runs import Run, load_run_or_model_file, pick_device
from genladder.sampling import SamplerConfig, generate

DEFAULT_COUNT = 64  # images drawn when neither n nor labels say how many
Labels = int | Sequence[int] | torch.Tensor | None


@torch.no_grad()
def sample_images(run: Run, n: int, labels: torch.Tensor | None, sampler: SamplerConfig | None = None,
                  seed: int = 0, progress: bool = False, callback: Callable | None = None) -> torch.Tensor:
    """n new images in [0, 1], (n, C, H, W), from a loaded run; ``labels`` (n,) int64 for a conditional one.

    Image i draws its noise from its own generator seeded from (``seed``, i) (genladder.noise). ``sampler`` is
    read by the diffusion and flow rungs only; ``callback(i, t, x_t, x0_hat)`` after every solver step.
    """
    if not rung(run.kind).iterative:
        if sampler is not None and sampler.guidance:
            raise GenladderError("--guidance applies to the guided rungs (cddpm, cflow) only")
        device = next(run.model.parameters()).device
        batch_size = sampler.batch_size if sampler is not None else SamplerConfig().batch_size
        parts = []
        for start in range(0, n, batch_size):  # batches bound the decoder's memory; the seeds are per image
            count = min(batch_size, n - start)
            part_labels = labels[start : start + count] if labels is not None else None
            parts.append(run.model.sample(count, labels=part_labels,
                                          generator=image_generators(seed, count, start, device)))
        return torch.cat(parts)
    images = generate(run.model, run.config, n, sampler or SamplerConfig(), labels=labels, seed=seed,
                      progress=progress, callback=callback)
    return (images + 1) / 2


class Pipeline:
    """A trained rung of the ladder, ready to use: ``sample``, and ``encode``/``decode`` for AE/VAE/CVAE.

    ``model`` is the network (eval mode), ``config`` the run's typed configuration (genladder.run_config; for a
    lone model file its ModelDescription: kind, model and objective), ``checkpoint`` where the weights came
    from, ``weights`` "ema" or "model".
    """

    def __init__(self, run: Run) -> None:
        self.run = run

    kind = property(lambda self: self.run.kind)
    rung = property(lambda self: rung(self.run.kind))  # what this rung can do (genladder.rungs)
    model = property(lambda self: self.run.model)
    config = property(lambda self: self.run.config)
    checkpoint = property(lambda self: self.run.checkpoint)
    weights = property(lambda self: self.run.weights)
    num_classes = property(lambda self: self.run.num_classes)
    conditional = property(lambda self: self.run.conditional)
    device = property(lambda self: next(self.run.model.parameters()).device)

    def __repr__(self) -> str:
        return f"Pipeline({self.kind}, {self.checkpoint}, {self.weights} weights, on {self.device})"

    def to(self, device: str | torch.device) -> Pipeline:
        """Move the network to ``device`` ("cpu", "cuda", "cuda:1", …); returns the pipeline."""
        self.run.model.to(pick_device(str(device)))
        return self

    def sample(self, n: int | None = None, labels: Labels = None, *, guidance: float = 0.0, sampler: str | None = None,
               steps: int | None = 20, seed: int = 0, eta: float = 0.0, variance: str = "beta",
               spacing: str = "karras", guidance_interval: tuple[float, float] | None = None, batch_size: int = 100,
               progress: bool = False) -> torch.Tensor:
        """New images in [0, 1], shape (n, C, H, W).

        ``labels`` (conditional rungs): one class as an int (``n`` of it), a list or an int64 tensor (one per
        image); without labels a conditional rung draws the classes in turn (0, 1, …). The sampler options
        (``guidance`` w of classifier-free guidance, ``sampler`` ddpm/ddim/dpmpp for diffusion and euler/heun/
        midpoint for flow, None for the family's default, ``steps``; None with ddpm is the full chain, …) are those
        of ``genladder sample`` and apply to the diffusion and flow rungs only. The same ``seed`` gives the same
        images at any ``batch_size``.
        """
        chosen = {"guidance": guidance, "sampler": sampler, "steps": steps, "eta": eta, "variance": variance,
                  "spacing": spacing, "guidance_interval": guidance_interval}
        if not self.rung.iterative:
            defaults = {f.name: f.default for f in fields(SamplerConfig)} | {"steps": 20}
            changed = [name for name, value in chosen.items() if value != defaults[name]]
            if changed:
                raise GenladderError(f"{changed[0]}= applies to the diffusion and flow rungs (ddpm, cddpm, flow, "
                                     f"cflow); a {self.kind} samples its prior in one step")
            config = None
        else:
            config = SamplerConfig(**chosen, batch_size=batch_size)
        n, label_tensor = self._labels(n, labels)
        return sample_images(self.run, n, label_tensor, config, seed=seed, progress=progress)

    def encode(self, images: torch.Tensor, labels: Labels = None) -> torch.Tensor:
        """Images in [0, 1], (B, C, H, W), to their codes: z for an AE, the posterior mean for a VAE/CVAE
        (``pipe.model.encode`` gives a VAE's full posterior, mean and log-variance)."""
        images = self._images(images, "encode")
        _, label_tensor = self._labels(len(images), labels, required=self.rung.conditional)
        with torch.no_grad():
            return encode_mean(self.kind, self.model, images.to(self.device), label_tensor)

    def decode(self, codes: torch.Tensor, labels: Labels = None) -> torch.Tensor:
        """Codes (B, latent…) to the images they decode to, in [0, 1]."""
        self._needs_codes("decode")
        if not isinstance(codes, torch.Tensor) or not codes.is_floating_point():
            raise GenladderError("decode takes a floating-point tensor of codes (B, …)")
        _, label_tensor = self._labels(len(codes), labels, required=self.rung.conditional)
        with torch.no_grad():
            return decode_image(self.kind, self.model, codes.to(self.device), label_tensor)

    def _needs_codes(self, verb: str) -> None:
        if not self.rung.codes:
            names = kinds(codes=True)
            raise GenladderError(f"{verb} needs an {', '.join(names[:-1])} or {names[-1]}; a {self.kind} has no codes")

    def _images(self, images: torch.Tensor, verb: str) -> torch.Tensor:
        self._needs_codes(verb)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise GenladderError(f"{verb} takes floating-point images in [0, 1] of shape (B, C, H, W)")
        return images

    def _labels(self, n: int | None, labels: Labels, required: bool = False) -> tuple[int, torch.Tensor | None]:
        """(how many images, their labels as an int64 tensor on the model's device, or None), validated."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise GenladderError(f"n must be a whole number >= 1, got {n!r}")
        if not self.conditional:
            if labels is not None:
                raise GenladderError(f"this {self.kind} is unconditional: it takes no labels")
            return (n or DEFAULT_COUNT), None
        if labels is None:
            if required:
                raise GenladderError(f"a {self.kind} needs the labels of its images")
            count = n or DEFAULT_COUNT
            return count, (torch.arange(count) % self.num_classes).to(self.device)
        if isinstance(labels, bool):
            raise GenladderError(f"labels must be class numbers, got {labels!r}")
        if isinstance(labels, int):
            tensor = torch.full((n or 1,), labels, dtype=torch.long)
        else:
            try:
                tensor = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError):
                raise GenladderError(f"labels must be an int, a list of ints or an int64 tensor, got {labels!r}"
                                     ) from None
            if tensor.dim() != 1 or (tensor.numel() and tensor.is_floating_point()) or tensor.dtype == torch.bool:
                raise GenladderError("labels must be an int, a list of ints or a 1-d integer tensor")
            tensor = tensor.long()
            if n is not None and n != len(tensor):
                raise GenladderError(f"n = {n} but {len(tensor)} labels were given; give one label per image")
        if not len(tensor):
            raise GenladderError("no labels given: pass at least one")
        if int(tensor.min()) < 0 or int(tensor.max()) >= self.num_classes:
            raise GenladderError(f"labels must be in 0..{self.num_classes - 1}, got {tensor.tolist()[:10]}")
        return len(tensor), tensor.to(self.device)


def load(path: str | Path, weights: str = "auto", device: str = "auto") -> Pipeline:
    """A ``Pipeline`` from a run folder (its newest checkpoint; EMA weights when it has them, or
    ``weights="model"``) or from one model file (``…/checkpoints/step_…/ema.safetensors``: each carries its
    own configuration)."""
    return Pipeline(load_run_or_model_file(path, weights=weights, device=device))
