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
Should ``latest.json`` itself be lost or garbled, the newest complete ``step_N`` folder is used.

Every safetensors file carries the SHA-256 of its tensors in its metadata (``genladder.sha256``),
checked on load, so a flipped bit on disk is an error instead of a silently wrong model. Files
written before the checksum existed load without the check.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from genladder.errors import GenladderError
from genladder.safe_io import expect_type, os_error_message, parse_json, read_bounded_bytes, read_json_object

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
CHECKSUM_KEY = "genladder.sha256"  # the metadata key of the checksum in optimizer/RNG files
DIGEST_FIELD = "tensors_sha256"  # ...and its field inside a model file's "genladder" description
CHECKPOINT_NAME = re.compile(r"step_\d{7,}")  # a complete checkpoint folder; temporary ones carry a suffix
REQUIRED_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json")
MAX_WEIGHT_BYTES = 16 * 2**30  # no genladder network comes near this; a bigger file is corruption


def _available_memory() -> int | None:
    """MemAvailable in bytes (Linux), or None where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    """Write and fsync one file; a full disk or a permission error is a one-line error naming it."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise GenladderError(os_error_message(error, path)) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_synced(tmp, data)
        try:
            os.replace(tmp, path)
        except OSError as error:
            raise GenladderError(os_error_message(error, path)) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. the folder is not writable: the error above already names the file
            pass
    _fsync_dir(path.parent)


def atomic_write_json(path: str | Path, value: dict) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> dict:
    """A small JSON object file (config, pointer, trainer state), checked: see ``genladder.safe_io``."""
    return read_json_object(path)


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (independent of file layout)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def safetensors_bytes(state: dict[str, torch.Tensor], description: dict | None = None) -> bytes:
    """A safetensors file of ``state`` carrying the tensors' checksum (in ``description`` when given).

    The metadata is always a single key: safetensors writes its metadata map in an arbitrary order,
    and two identical runs must write identical bytes.
    """
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
    digest = tensor_digest(state)
    if description is None:
        metadata = {CHECKSUM_KEY: digest}
    else:
        metadata = {"genladder": json.dumps({**description, DIGEST_FIELD: digest}, sort_keys=True)}
    return save_safetensors_bytes(state, metadata=metadata)


def check_digest(path: Path, state: dict[str, torch.Tensor], stored: object) -> None:
    """Compare a stored checksum with the tensors read (None: a file from before checksums, not checked)."""
    if stored is not None and stored != tensor_digest(state):
        raise GenladderError(f"{path}: checksum mismatch, the file is corrupted (its tensors changed after it was "
                             "written); use another checkpoint")


def read_safetensors(path: str | Path, what: str = "safetensors file") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a safetensors file, after size, type and checksum checks; one-line errors."""
    path = Path(path)
    available = _available_memory()
    limit = MAX_WEIGHT_BYTES if available is None else min(MAX_WEIGHT_BYTES, available)
    data = read_bounded_bytes(path, limit, what)
    try:
        state = load_safetensors_bytes(data)
        # safetensors keeps the metadata in a JSON header after an 8-byte length.
        header_length = int.from_bytes(data[:8], "little")
        header = parse_json(data[8 : 8 + header_length], path)
    except (SafetensorError, ValueError, UnicodeDecodeError, GenladderError) as error:
        reason = str(error).splitlines()[0][:160]
        raise GenladderError(f"{path}: not a readable safetensors file ({reason})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    unknown = sorted(set(metadata) - {"genladder", CHECKSUM_KEY})
    if unknown:  # genladder writes only these keys: another is a foreign file or a damaged header hiding the checksum
        raise GenladderError(f"{path}: not a genladder file (unexpected metadata {unknown[0][:40]!r}; a damaged "
                             "header?)")
    stored = metadata.get(CHECKSUM_KEY)
    text = metadata.get("genladder")
    if stored is None and isinstance(text, str):
        described = parse_json(text, path)
        stored = described.get(DIGEST_FIELD) if isinstance(described, dict) else None
    check_digest(path, state, stored)
    return state, metadata


def plain_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module under a ``torch.compile`` or DistributedDataParallel wrapper (saved without prefixes)."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def model_file_bytes(module: torch.nn.Module, description: dict) -> bytes:
    """Serialise a module's state dict with ``description`` (kind, configs) in the file's metadata."""
    return safetensors_bytes(plain_module(module).state_dict(), {"format_version": FORMAT_VERSION, **description})


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a model file written by ``model_file_bytes``: (state dict, description)."""
    path = Path(path)
    state, metadata = read_safetensors(path, "model file")
    text = metadata.get("genladder")
    description = parse_json(text, path) if isinstance(text, str) else None
    if not isinstance(description, dict):
        raise GenladderError(f"{path}: not a genladder model file (no 'genladder' metadata)")
    description.pop(DIGEST_FIELD, None)
    for key in ("kind", "model"):
        expect_type(description.get(key), str if key == "kind" else dict, f"{path}: metadata '{key}'")
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
    try:
        return _save_checkpoint(run_dir, step, model, description, optimizer, trainer_state, ema, keep, rng)
    except OSError as error:  # mkdir/rename: a full disk or a read-only folder, named
        raise GenladderError(os_error_message(error)) from None


def _save_checkpoint(run_dir, step, model, description, optimizer, trainer_state, ema, keep, rng) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    optimizer_tensors, optimizer_rest = _optimizer_tensors(optimizer)
    files = {
        "model.safetensors": model_file_bytes(model, description),
        "optimizer.safetensors": safetensors_bytes(optimizer_tensors),
        "rng.safetensors": safetensors_bytes(rng if rng is not None else rng_state()),
        "trainer_state.json": json.dumps({**trainer_state, "step": step, "optimizer": optimizer_rest}).encode(),
    }
    if ema is not None:
        files["ema.safetensors"] = model_file_bytes(ema, description)
    final = root / name
    write_folder(final, files)
    atomic_write_json(Path(run_dir) / LATEST, {"checkpoint": name, "step": step})
    _prune(root, keep=keep, newest=name)
    return final


def write_folder(final: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes) as the folder ``final``, atomically: into a temporary sibling, every file
    fsynced, then renamed into place. An existing ``final`` (the same step saved again after a resume) is moved
    aside first and deleted after, so a crash leaves either the old folder or the new one."""
    tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for filename, data in files.items():
        write_synced(tmp / filename, data)
    _fsync_dir(tmp)
    if final.exists():
        stale = final.parent / f"{final.name}.old-{os.getpid()}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _prune(root: Path, *, keep: int, newest: str) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and leftovers of interrupted writes."""
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and "." not in p.name)
    for path in complete[: max(0, len(complete) - keep)]:
        if path.name != newest:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.iterdir():
        if ".tmp-" in path.name or ".old-" in path.name:
            shutil.rmtree(path, ignore_errors=True)


def is_complete_checkpoint(path: Path) -> bool:
    """A ``step_N`` folder (not a temporary one) holding every file a checkpoint writes."""
    return (CHECKPOINT_NAME.fullmatch(path.name) is not None and path.is_dir()
            and all((path / name).is_file() for name in REQUIRED_FILES))


def newest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint folder with the highest step, or None."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    try:
        candidates = [path for path in root.iterdir() if is_complete_checkpoint(path)]
    except OSError:
        return None
    return max(candidates, key=lambda path: int(path.name.removeprefix("step_")), default=None)


def find_checkpoint(run_dir: str | Path, report: bool = True) -> Path | None:
    """The checkpoint to resume or load from: the one ``latest.json`` names, else the newest complete one.

    ``latest.json`` missing, garbled or pointing at a missing folder (a crash, a full disk or a hand
    edit) falls back to the newest complete ``step_N`` folder, said on stderr when ``report``.
    None when the run holds no complete checkpoint at all.
    """
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    problem = None
    if pointer.exists() or pointer.is_symlink():
        try:
            name = read_json(pointer).get("checkpoint")
            if not isinstance(name, str) or CHECKPOINT_NAME.fullmatch(name) is None:
                raise GenladderError(f"{pointer}: 'checkpoint' must name a step_N folder, got {str(name)[:40]!r}")
            path = run_dir / CHECKPOINTS / name
            if is_complete_checkpoint(path):
                return path
            problem = f"{pointer} points at {path}, which is missing or incomplete"
        except GenladderError as error:
            problem = str(error)
    fallback = newest_complete_checkpoint(run_dir)
    if fallback is not None and problem is not None and report:
        print(f"genladder: {problem}; using the newest complete checkpoint, {fallback}", file=sys.stderr)
    return fallback


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The folder of the newest complete checkpoint of a run (see ``find_checkpoint``), or a one-line error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenladderError(f"run folder {run_dir} does not exist")
    path = find_checkpoint(run_dir)
    if path is None:
        raise GenladderError(f"{run_dir} holds no complete checkpoint (killed before the first one?); "
                             f"'genladder train --resume {run_dir}' starts it again from step 0")
    return path


def read_trainer_state(checkpoint: Path) -> dict:
    """``trainer_state.json`` with the types resume relies on checked (a wrong type is corruption)."""
    path = checkpoint / "trainer_state.json"
    state = read_json(path)
    step = expect_type(state.get("step"), int, f"{path}: 'step'")
    if step < 0:
        raise GenladderError(f"{path}: 'step' must be at least 0, got {step}")
    for key, kinds in (("train_seconds", (int, float)), ("ema_updates", int), ("world_size", int),
                       ("epoch", int), ("images_seen", int), ("total_steps", int)):
        if key in state:
            expect_type(state[key], kinds, f"{path}: '{key}'")
    optimizer = expect_type(state.get("optimizer"), dict, f"{path}: 'optimizer'")
    groups = expect_type(optimizer.get("param_groups"), list, f"{path}: 'optimizer.param_groups'")
    for group in groups:
        expect_type(group, dict, f"{path}: an optimizer param group")
    scalars = expect_type(optimizer.get("scalars", {}), dict, f"{path}: 'optimizer.scalars'")
    for index, values in scalars.items():
        if not index.isdigit():
            raise GenladderError(f"{path}: optimizer scalars are keyed by parameter index, got {index[:20]!r}")
        expect_type(values, dict, f"{path}: 'optimizer.scalars.{index}'")
    return state


def load_training_state(
    checkpoint: Path, optimizer: torch.optim.Optimizer, restore_rng: bool = True, rank: int | None = None,
    cuda_device: torch.device | None = None,
) -> dict:
    """Restore the optimizer (and the RNG) from a checkpoint folder; return its trainer state.

    ``rank``: in a distributed run, restore the RNG states recorded for that process (``rank<r>.``
    keys; its GPU's state into ``cuda_device``).
    """
    state = read_trainer_state(checkpoint)
    optimizer_tensors = read_safetensors(checkpoint / "optimizer.safetensors", "optimizer state")[0]
    rng = read_safetensors(checkpoint / "rng.safetensors", "random-number state")[0]
    try:
        bad_key = next((key for key in optimizer_tensors if not re.fullmatch(r"state\.\d+\.\w+", key)), None)
        if bad_key is not None:
            raise ValueError(f"unexpected tensor {bad_key[:40]!r}")
        optimizer.load_state_dict(_optimizer_state_dict(optimizer_tensors, state.pop("optimizer")))
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise GenladderError(f"{checkpoint}: the optimizer state does not fit this model ({reason})") from None
    if "cpu" not in rng and rank is None:
        raise GenladderError(f"{checkpoint / 'rng.safetensors'}: no CPU random-number state")
    if rank is not None:
        prefix = f"rank{rank}."
        rng = {key.removeprefix(prefix): value for key, value in rng.items() if key.startswith(prefix)}
        if "cpu" not in rng:
            raise GenladderError(f"{checkpoint}: no random-number state for process {rank}; resume with the "
                                 "number of processes the run was trained with")
    if restore_rng:
        try:
            _restore_rng(rng, cuda_device)
        except (RuntimeError, TypeError) as error:  # a tensor of the wrong dtype or size
            reason = str(error).splitlines()[0][:160]
            raise GenladderError(f"{checkpoint / 'rng.safetensors'}: not a random-number state ({reason})") from None
    return state
