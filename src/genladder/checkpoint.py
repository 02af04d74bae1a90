"""Checkpoints as safetensors + JSON, written atomically; no pickles anywhere.

Layout of a run folder::

    config.json                       # the resolved run configuration (model, data, training)
    latest.json                       # {"checkpoint": "step_000400"}: the newest *complete* checkpoint
    checkpoints/step_000400/
        model.safetensors             # weights; metadata["genladder"] = JSON describing the model
        ema.safetensors               # EMA weights (diffusion rungs), same metadata
        optimizer.safetensors         # optimizer tensors, flattened as "state.<i>.<name>"
        rng.safetensors               # torch RNG states (CPU, and CUDA when present; per process under torchrun)
        trainer_state.json            # step, epoch, images seen, optimizer param groups, ...

A checkpoint is written into ``step_N.tmp-<pid>/``, every file flushed and fsynced, then the folder
is renamed into place and ``latest.json`` is replaced through a temporary file. A process killed at
any instant leaves ``latest.json`` pointing at a complete checkpoint; leftovers are swept later.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from genladder.errors import GenladderError

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, value: dict) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GenladderError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GenladderError(f"{path}: not valid JSON ({error})") from None


def plain_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``torch.compile`` or DistributedDataParallel wrapper (saved without prefixes)."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def model_file_bytes(module: torch.nn.Module, description: dict) -> bytes:
    """Serialise a module's state dict with ``description`` (kind, configs) in the file's metadata."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in plain_module(module).state_dict().items()}
    meta = {"genladder": json.dumps({"format_version": FORMAT_VERSION, **description}, sort_keys=True)}
    return save_safetensors_bytes(state, metadata=meta)


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a model file written by ``model_file_bytes``: (state dict, description)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GenladderError(f"{path}: model file not found") from None
    try:
        state = load_safetensors_bytes(data)
        # safetensors keeps the metadata in a JSON header after an 8-byte length.
        header_length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_length])
        description = json.loads(header.get("__metadata__", {}).get("genladder", "null"))
    except (SafetensorError, ValueError, UnicodeDecodeError) as error:
        raise GenladderError(f"{path}: not a readable safetensors file ({error})") from None
    if not isinstance(description, dict):
        raise GenladderError(f"{path}: not a genladder model file (no 'genladder' metadata)")
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise GenladderError(
            f"{path}: format version {version} is not supported (this genladder reads {FORMAT_VERSION})"
        )
    return state, description


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors and a JSON-able remainder."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_state_dict(tensors: dict[str, torch.Tensor], remainder: dict) -> dict:
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in remainder["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in remainder["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):  # JSON turned Adam's tuple into a list
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_state(cuda_device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """This process's RNG states: "cpu", and "cuda.<i>" for every initialised GPU or "cuda" for ``cuda_device`` only.

    A distributed process passes its own GPU: asking every GPU for its state would open a CUDA
    context on each of them in each process.
    """
    tensors = {"cpu": torch.get_rng_state()}
    if cuda_device is not None:
        tensors["cuda"] = torch.cuda.get_rng_state(cuda_device)
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    return tensors


def _restore_rng(tensors: dict[str, torch.Tensor], cuda_device: torch.device | None = None) -> None:
    torch.set_rng_state(tensors["cpu"])
    if "cuda" in tensors and cuda_device is not None:
        torch.cuda.set_rng_state(tensors["cuda"], cuda_device)
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model: torch.nn.Module,
    description: dict,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    ema: torch.nn.Module | None = None,
    keep: int = 2,
    rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint for ``step`` atomically and point ``latest.json`` at it.

    ``rng``: the RNG states to record (every process's, under ``rank<r>.`` keys, in a distributed
    run); default: this process's. Keeps the newest ``keep`` checkpoints and deletes older ones (only
    after the new one is in place). Returns the checkpoint folder.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = root / name
    tmp = root / f"{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    optimizer_tensors, optimizer_rest = _optimizer_tensors(optimizer)
    files = {
        "model.safetensors": model_file_bytes(model, description),
        "optimizer.safetensors": save_safetensors_bytes(optimizer_tensors),
        "rng.safetensors": save_safetensors_bytes(rng if rng is not None else rng_state()),
        "trainer_state.json": json.dumps({**trainer_state, "step": step, "optimizer": optimizer_rest}).encode(),
    }
    if ema is not None:
        files["ema.safetensors"] = model_file_bytes(ema, description)
    for filename, data in files.items():
        with open(tmp / filename, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): move the old one aside first
        stale = root / f"{name}.old-{os.getpid()}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_json(Path(run_dir) / LATEST, {"checkpoint": name, "step": step})
    _prune(root, keep=keep, newest=name)
    return final


def _prune(root: Path, *, keep: int, newest: str) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and leftovers of interrupted writes."""
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and "." not in p.name)
    for path in complete[: max(0, len(complete) - keep)]:
        if path.name != newest:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.iterdir():
        if ".tmp-" in path.name or ".old-" in path.name:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The folder of the newest complete checkpoint of a run, or a one-line error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenladderError(f"run folder {run_dir} does not exist")
    pointer = run_dir / LATEST
    if not pointer.exists():
        raise GenladderError(f"{run_dir} holds no checkpoint (no {LATEST}); is it a genladder run folder?")
    name = read_json(pointer).get("checkpoint")
    path = run_dir / CHECKPOINTS / str(name)
    if not (path / "model.safetensors").exists():
        raise GenladderError(f"{pointer} points at {path}, which is missing or incomplete")
    return path


def load_training_state(
    checkpoint: Path, optimizer: torch.optim.Optimizer, restore_rng: bool = True, rank: int | None = None,
    cuda_device: torch.device | None = None,
) -> dict:
    """Restore the optimizer (and the RNG) from a checkpoint folder; return its trainer state.

    ``rank``: in a distributed run, restore the RNG states recorded for that process (``rank<r>.``
    keys; its GPU's state into ``cuda_device``).
    """
    state = read_json(checkpoint / "trainer_state.json")
    try:
        optimizer_tensors = load_safetensors_bytes((checkpoint / "optimizer.safetensors").read_bytes())
        rng = load_safetensors_bytes((checkpoint / "rng.safetensors").read_bytes())
    except (OSError, SafetensorError) as error:
        raise GenladderError(f"{checkpoint}: unreadable optimizer or RNG state ({error})") from None
    optimizer.load_state_dict(_optimizer_state_dict(optimizer_tensors, state.pop("optimizer")))
    if rank is not None:
        prefix = f"rank{rank}."
        rng = {key.removeprefix(prefix): value for key, value in rng.items() if key.startswith(prefix)}
        if "cpu" not in rng:
            raise GenladderError(f"{checkpoint}: no random-number state for process {rank}; resume with the "
                                 "number of processes the run was trained with")
    if restore_rng:
        _restore_rng(rng, cuda_device)
    return state
