"""Several processes, one model: what the training loop needs to run under ``torchrun``.

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or per CPU slot) and
tells each its place through environment variables: RANK (0 … WORLD_SIZE−1 over all machines),
LOCAL_RANK (on this machine), WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Without WORLD_SIZE (or with
WORLD_SIZE=1) no process group is formed and every helper here is the identity, so a plain
``genladder train`` pays nothing for this module.

With several processes:

- the backend is NCCL when the processes train on CUDA GPUs (process LOCAL_RANK on GPU
  LOCAL_RANK) and Gloo on CPUs;
- every process builds the same per-epoch permutation (a pure function of seed and epoch) and
  :class:`EpochPlan` gives each its own batch of every step: the batches of one epoch are disjoint
  and together hold every image exactly once;
- the whole objective runs inside DistributedDataParallel's ``forward`` (the autoencoder objectives
  call ``model.encode``/``decode``, which DDP would not see), so gradients are averaged over the
  processes in ``backward``; optimizer, gradient clipping and EMA then act on identical gradients
  and keep identical weights;
- process r seeds its noise with seed + r, so the processes draw different noise; each one's RNG
  state is gathered into every checkpoint under ``rank<r>.`` keys and restored on resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist

from genladder.checkpoint import rng_state
from genladder.errors import GenladderError


def is_main_process() -> bool:
    """True unless torchrun made this process a rank other than 0 (readable before any process group)."""
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class EpochPlan:
    """How one epoch's permutation is cut into steps, and each step into one batch per process.

    Step k of an epoch covers ``permutation[k·B·W : (k+1)·B·W]`` (B images per process, W
    processes) and process r takes the r-th of W contiguous parts of it. One process keeps full
    batches only, as before there were several: the last N mod B images of each epoch's shuffle are
    left out of that epoch, and every step has the same shape. Several processes use every image
    exactly once per epoch: the last step takes the rest of the permutation (N mod B·W images,
    split as evenly as possible, so batches differ by at most one image), and a rest too small to
    give every process an image joins the step before it instead (batches of B or B + 1).
    """

    num_items: int
    batch_size: int  # images per process per step
    world_size: int = 1

    def __post_init__(self) -> None:
        per_process = self.num_items // self.world_size
        if self.batch_size > per_process:
            if self.world_size == 1:
                raise GenladderError(f"batch size {self.batch_size} is larger than the {self.num_items} training "
                                     "images; lower --batch-size")
            raise GenladderError(
                f"batch size {self.batch_size} per process is larger than the {per_process} training images each "
                f"of the {self.world_size} processes gets; lower --batch-size"
            )

    @property
    def global_batch(self) -> int:
        """The effective batch of a full step: images over all processes."""
        return self.batch_size * self.world_size

    @property
    def steps(self) -> int:
        """Optimiser steps per epoch."""
        full, rest = divmod(self.num_items, self.global_batch)
        return full + 1 if self.world_size > 1 and rest >= self.world_size else full

    def _bounds(self, position: int) -> tuple[int, int]:
        start = position * self.global_batch
        last = self.world_size > 1 and position == self.steps - 1
        return start, self.num_items if last else start + self.global_batch

    def batch(self, permutation: torch.Tensor, position: int, rank: int = 0) -> torch.Tensor:
        """Indices of process ``rank``'s batch at step ``position`` (0-based) of the epoch."""
        start, end = self._bounds(position)
        if self.world_size == 1:
            return permutation[start:end]
        return torch.tensor_split(permutation[start:end], self.world_size)[rank]

    def images_in_step(self, position: int) -> int:
        """Images all processes together train on at step ``position`` of an epoch."""
        start, end = self._bounds(position)
        return end - start

    def images_seen(self, step: int) -> int:
        """Images trained on, over all processes, after ``step`` optimiser steps."""
        epoch, position = divmod(step, self.steps)
        return epoch * self._bounds(self.steps - 1)[1] + position * self.global_batch


class _ObjectiveModule(torch.nn.Module):
    """The objective as a module, so that DDP's ``forward`` (and its gradient hooks) covers all of it."""

    def __init__(self, model: torch.nn.Module, objective: Callable) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, images: torch.Tensor, labels: torch.Tensor, **options) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, images, labels, **options)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes; the default is the lone process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # "nccl" or "gloo"; None: no process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes logs, figures and checkpoints."""
        return self.rank == 0

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def wrap(self, model: torch.nn.Module, objective: Callable) -> Callable:
        """``step(images, labels) -> (loss, metrics)``: the objective on ``model``, under DDP when distributed."""
        if not self.enabled:
            return partial(objective, model)
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(_ObjectiveModule(model, objective), device_ids=device_ids)

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Every metric averaged over the processes (the same dict on all of them)."""
        if not self.enabled:
            return metrics
        names = sorted(metrics)
        values = torch.tensor([metrics[name] for name in names], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(values)
        means = dict(zip(names, (values / self.world_size).tolist(), strict=True))
        return {name: means[name] for name in metrics}

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (a stop decision all processes must share)."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=self._comm_device)
        dist.all_reduce(value)
        return value.item() > 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_rng_state(self) -> dict[str, torch.Tensor] | None:
        """Every process's RNG states as ``rank<r>.cpu`` (and ``rank<r>.cuda``) tensors, on every process.

        None for a lone process (the checkpoint then records this process's state itself).
        """
        if not self.enabled:
            return None
        own = rng_state(cuda_device=self.device if self.device.type == "cuda" else None)
        names = sorted(own)
        sizes = [own[name].numel() for name in names]
        flat = torch.cat([own[name] for name in names]).to(self._comm_device)  # uint8, same length on every rank
        gathered = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(gathered, flat)
        return {f"rank{rank}.{name}": piece.clone()
                for rank, states in enumerate(gathered)
                for name, piece in zip(names, states.cpu().split(sizes), strict=True)}

    @property
    def rng_rank(self) -> int | None:
        """Whose ``rank<r>.`` RNG states this process restores on resume (None: the lone process's)."""
        return self.rank if self.enabled else None

    def check_world_size(self, trained_with: int, run_dir: object) -> None:
        """Refuse to resume with another number of processes (it would change the data order and batch)."""
        if trained_with != self.world_size:
            how = ("one process (plain 'genladder train --resume')" if trained_with == 1
                   else f"{trained_with} processes (torchrun with --nnodes × --nproc_per_node = {trained_with})")
            raise GenladderError(
                f"{run_dir} was trained by {how} and this is {self.world_size}; resume it with the same number, "
                "since the number of processes sets the effective batch and the data order"
            )

    @contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Run the body on each machine's first process, then on the others (e.g. a download into a cache)."""
        if self.enabled and self.local_rank != 0:
            dist.barrier()
        yield
        if self.enabled and self.local_rank == 0:
            dist.barrier()


@contextmanager
def session(device: torch.device) -> Iterator[Distributed]:
    """This process's :class:`Distributed`, with a process group for the duration when torchrun started it.

    ``device`` is where a lone process trains; under torchrun a CUDA device becomes GPU LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Distributed(device=device)
        return
    if not dist.is_available():
        raise GenladderError("this torch build has no torch.distributed; run without torchrun")
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise GenladderError("WORLD_SIZE is set but RANK is not; start several processes with torchrun") from None
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GenladderError(f"process {rank} has LOCAL_RANK {local_rank} but this machine has "
                                 f"{torch.cuda.device_count()} GPUs; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend=backend)
    except (ValueError, RuntimeError) as error:  # e.g. WORLD_SIZE set by hand, without MASTER_ADDR
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GenladderError(f"process {rank} could not join the other {world_size - 1} ({first}); "
                             "start the processes with torchrun") from None
    try:
        yield Distributed(rank=rank, local_rank=local_rank, world_size=world_size, device=device, backend=backend)
    except BaseException:
        dist.destroy_process_group()  # no barrier: a peer that failed would never reach it
        raise
    # Every process reaches the end before any tears its group down. Without this, rank 0 (which hosts the
    # rendezvous store) could exit while a peer's Gloo threads still talk to it, and that peer aborted at exit
    # ("terminate called without an active exception": seen once in five CI runs of tests/test_distributed.py).
    dist.barrier()
    dist.destroy_process_group()
