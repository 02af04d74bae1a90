"""genladder: the ladder of generative models (AE -> VAE -> CVAE -> DDPM -> guided DDPM) in PyTorch."""

from __future__ import annotations

__version__ = "0.4.0"


def load(path, weights: str = "auto", device: str = "auto"):
    """A ``genladder.pipeline.Pipeline`` from a run folder or one model file: ``.sample(…)`` for every rung,
    ``.encode``/``.decode`` for AE/VAE/CVAE, ``.model`` the network in eval mode (EMA weights when the run has
    them)."""
    from genladder.pipeline import load

    return load(path, weights=weights, device=device)


def __getattr__(name: str):
    if name == "Pipeline":  # imported on first use: `import genladder` stays light
        from genladder.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'genladder' has no attribute {name!r}")


__all__ = ["Pipeline", "__version__", "load"]
