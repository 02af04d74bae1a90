"""genladder: the ladder of generative models (AE -> VAE -> CVAE -> DDPM -> guided DDPM) in PyTorch."""

from __future__ import annotations

__version__ = "0.4.0"


def load(run_dir, weights: str = "auto", device: str = "auto"):
    """The trained model of a run folder, in eval mode (EMA weights when the run has them)."""
    from genladder.runs import load

    return load(run_dir, weights=weights, device=device)


__all__ = ["__version__", "load"]
