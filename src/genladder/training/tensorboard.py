"""TensorBoard for people who use it (``genladder train --tensorboard``): the records of ``metrics.jsonl`` as
scalars and the preview grids as images, in ``RUN_DIR/tensorboard/``.

``metrics.jsonl`` stays the run's own log; this is a second view of the same records, written by TensorBoard's
``SummaryWriter`` (torch.utils.tensorboard), an optional dependency: ``pip install 'genladder[tensorboard]'``.
A resumed run forgets what the interrupted process logged after its checkpoint, here as in ``metrics.jsonl``:
the writer's ``purge_step`` tells TensorBoard to drop those events.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from genladder.errors import GenladderError
from genladder.plotting import grid_array

TENSORBOARD_DIR = "tensorboard"
# Fields of a metrics record that are its coordinates, not quantities to plot.
_NOT_SCALARS = frozenset({"split", "step"})


def check_tensorboard() -> None:
    """A one-line error, before any work, when the optional ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports tensorboard itself)
    except ImportError as error:
        raise GenladderError("--tensorboard needs the tensorboard package: pip install 'genladder[tensorboard]' "
                             f"({error})") from None


class TensorBoardLog:
    """Scalars and sample grids of one training session, from step ``start`` on."""

    def __init__(self, run_dir: Path, start: int) -> None:
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        # Events logged after step ``start`` by an interrupted session are discarded (resume restarts there).
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR),
                                    purge_step=start + 1 if start else None)

    def record(self, record: dict) -> None:
        """A ``metrics.jsonl`` record: every finite number as ``SPLIT/NAME`` at its step (train/loss, test/loss…)."""
        for name, value in record.items():
            if name in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{record['split']}/{name}", value, record["step"])
        self.writer.flush()

    def grid(self, images: torch.Tensor, step: int, nrow: int) -> None:
        """The preview grid (images in [0, 1]) as the same tiling as ``samples/*.png``."""
        array = grid_array(images, nrow)
        self.writer.add_image("samples", array, step, dataformats="HW" if array.ndim == 2 else "HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
