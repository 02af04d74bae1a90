"""Reproducible noise for sampling: one random stream per image.

Image i of a request made with ``seed`` draws all of its noise — the starting x_T (or the VAE's z) and every
fresh noise term of an ancestral sampler — from its own generator, seeded from the pair (seed, i). So the same
seed gives the same images whatever the batch size, and a request split over several processes (each drawing
its own range of indices) gives the images one process would have drawn (EDM's generate.py does the same
with one seed per image). One shared generator, by contrast, hands batch 2 whatever batch 1 left of the stream.
"""

from __future__ import annotations

import torch

from genladder.errors import GenladderError

MAX_SEED = 2**63 - 1
MAX_IMAGES = 2**32

Generators = torch.Generator | list[torch.Generator] | None


def _mix64(value: int) -> int:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijection of 64-bit words that scatters nearby ones."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image ``index`` of a request with ``seed``.

    torch's CPU generator keeps only the low 32 bits of its seed (mt19937's 32-bit initialisation: seeds 5
    and 5 + 2³² draw the same numbers), so the pair must fit in 32 bits. The request's images take
    consecutive seeds from an offset scattered by ``seed``: within one request they never repeat, and two
    requests' ranges of n images overlap with probability about 2n / 2³².
    """
    if not 0 <= seed <= MAX_SEED:
        raise GenladderError(f"a sampling seed must lie in [0, {MAX_SEED}], got {seed}")
    if not 0 <= index < MAX_IMAGES:
        raise GenladderError(f"an image index must lie in [0, {MAX_IMAGES}), got {index}")
    return (_mix64(seed) + index) % MAX_IMAGES


def image_generators(seed: int, count: int, first: int = 0, device: torch.device | str = "cpu"
                     ) -> list[torch.Generator]:
    """Generators for images ``first`` … ``first + count − 1`` of a request with ``seed``."""
    return [torch.Generator(device=device).manual_seed(image_seed(seed, first + i)) for i in range(count)]


def _per_item(count: int, generator: Generators, device: torch.device | str, draw) -> torch.Tensor:
    """``draw(n, generator, device)`` -> n items (batch first): all ``count`` from one generator, or item b alone
    from ``generator[b]`` (the same values a batch of one would get), gathered on ``device``."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return draw(count, generator, gen_device).to(device)
    if len(generator) != count:
        raise GenladderError(f"got {len(generator)} generators for a batch of {count}")
    return torch.cat([draw(1, g, g.device).to(device) for g in generator])


def standard_normal(shape: tuple[int, ...], generator: Generators, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) noise of ``shape`` (batch first): from one generator, or item b from ``generator[b]``."""
    return _per_item(shape[0], generator, device,
                     lambda n, g, where: torch.randn((n, *shape[1:]), generator=g, device=where, dtype=dtype))


def random_integers(high: int, count: int, generator: Generators, device: torch.device | str = "cpu") -> torch.Tensor:
    """``count`` integers uniform in [0, high): from one generator, or item b from ``generator[b]`` (as
    ``standard_normal``; a VAE's VampPrior picks each image's component this way)."""
    return _per_item(count, generator, device, lambda n, g, where: torch.randint(high, (n,), generator=g, device=where))
