"""Checkpoint files: exact round trips, the file set, atomic pointer updates, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genladder.checkpoint import (
    latest_checkpoint,
    load_training_state,
    model_file_bytes,
    read_model_file,
    save_checkpoint,
)
from genladder.errors import GenladderError
from genladder.models import AutoencoderConfig
from genladder.objectives import vae_loss
from genladder.rungs import build_model


def trained_vae():
    torch.manual_seed(0)
    config = AutoencoderConfig.preset("cvae", width=8, latent_dim=4)
    model = build_model("cvae", config.to_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss, _ = vae_loss(model, torch.rand(4, 1, 32, 32), torch.arange(4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer, {"kind": "cvae", "model": config.to_dict(), "objective": {}}


def test_round_trip_is_exact(tmp_path):
    model, optimizer, description = trained_vae()
    folder = save_checkpoint(tmp_path, step=3, model=model, description=description, optimizer=optimizer,
                             trainer_state={"epoch": 0})
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json"]
    assert json.loads((tmp_path / "latest.json").read_text()) == {"checkpoint": "step_0000003", "step": 3}

    state, stored = read_model_file(folder / "model.safetensors")
    assert stored["kind"] == "cvae" and stored["model"] == description["model"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    rebuilt = build_model("cvae", stored["model"])
    rebuilt.load_state_dict(state)
    labels = torch.arange(3)
    a = model.sample(3, labels, generator=torch.Generator().manual_seed(1))
    b = rebuilt.sample(3, labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)

    fresh = torch.optim.Adam(rebuilt.parameters(), lr=0.5)
    trainer_state = load_training_state(folder, fresh)
    assert trainer_state == {"epoch": 0, "step": 3}
    original, restored = optimizer.state_dict(), fresh.state_dict()
    assert restored["param_groups"] == original["param_groups"]  # lr 1e-3 again, betas a tuple
    for index, entry in original["state"].items():
        for key, value in entry.items():
            assert torch.equal(restored["state"][index][key], value)


def test_keeps_newest_and_replaces_same_step(tmp_path):
    model, optimizer, description = trained_vae()
    for step in (1, 2, 3, 3):
        save_checkpoint(tmp_path, step=step, model=model, description=description, optimizer=optimizer,
                        trainer_state={}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_0000002", "step_0000003"]
    assert latest_checkpoint(tmp_path).name == "step_0000003"


def test_no_pickles_anywhere(tmp_path):
    model, optimizer, description = trained_vae()
    folder = save_checkpoint(tmp_path, step=1, model=model, description=description, optimizer=optimizer,
                             trainer_state={})
    # every file must be one of the two formats we write, read by a reader that cannot run code: a raw
    # pickle (b"\x80") and torch.save's zip (b"PK") are both refused, as is anything else
    from safetensors import safe_open

    for path in folder.iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert path.suffix == ".safetensors", f"{path.name} is neither JSON nor safetensors"
            with safe_open(str(path), framework="pt") as handle:
                assert list(handle.keys()) or handle.metadata() is not None, f"{path.name} is empty"


class TestBadFiles:
    def test_not_safetensors(self, tmp_path):
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"not a model")
        with pytest.raises(GenladderError, match="not a readable safetensors file"):
            read_model_file(path)

    def test_foreign_safetensors(self, tmp_path):
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({"w": torch.zeros(2)}, path)
        with pytest.raises(GenladderError, match="not a genladder model file"):
            read_model_file(path)

    def test_future_format_version(self, tmp_path, monkeypatch):
        import genladder.checkpoint as checkpoint

        model, _, description = trained_vae()
        monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 99)
        data = model_file_bytes(model, description)
        monkeypatch.undo()
        path = tmp_path / "model.safetensors"
        path.write_bytes(data)
        with pytest.raises(GenladderError, match="format version 99 is not supported"):
            read_model_file(path)

    def test_no_checkpoint_at_all(self, tmp_path):
        (tmp_path / "latest.json").write_text('{"checkpoint": "step_0000009"}')
        with pytest.raises(GenladderError, match="holds no complete checkpoint.*--resume"):
            latest_checkpoint(tmp_path)


def saved_run(tmp_path, steps=(3, 5)):
    model, optimizer, description = trained_vae()
    for step in steps:
        save_checkpoint(tmp_path, step=step, model=model, description=description, optimizer=optimizer,
                        trainer_state={"epoch": 0}, keep=5)
    return model, optimizer


class TestPointerFallback:
    @pytest.mark.parametrize("pointer", [None, "{broken", "[]", '{"checkpoint": 5}', '{"checkpoint": "../../etc"}',
                                         '{"checkpoint": "step_0000009"}', "dir"])
    def test_bad_pointer_falls_back_to_newest_complete(self, tmp_path, capsys, pointer):
        saved_run(tmp_path)
        latest = tmp_path / "latest.json"
        latest.unlink()
        if pointer == "dir":
            latest.mkdir()
        elif pointer is not None:
            latest.write_text(pointer)
        assert latest_checkpoint(tmp_path).name == "step_0000005"
        if pointer is not None:
            assert "using the newest complete checkpoint" in capsys.readouterr().err

    def test_incomplete_and_temporary_folders_are_skipped(self, tmp_path):
        saved_run(tmp_path)
        root = tmp_path / "checkpoints"
        (root / "step_0000005" / "rng.safetensors").unlink()  # tampered: no longer complete
        (root / "step_0000009.tmp-123").mkdir()  # an interrupted write
        (tmp_path / "latest.json").unlink()
        assert latest_checkpoint(tmp_path).name == "step_0000003"


class TestChecksum:
    def test_flipped_bit_is_caught(self, tmp_path):
        model, _, description = trained_vae()
        data = bytearray(model_file_bytes(model, description))
        data[-3] ^= 0x40  # inside the last tensor's bytes
        path = tmp_path / "model.safetensors"
        path.write_bytes(bytes(data))
        with pytest.raises(GenladderError, match="checksum mismatch"):
            read_model_file(path)

    def test_every_safetensors_file_of_a_checkpoint_is_checked(self, tmp_path):
        from genladder.checkpoint import CHECKSUM_KEY, DIGEST_FIELD, read_safetensors

        saved_run(tmp_path, steps=(3,))
        folder = tmp_path / "checkpoints" / "step_0000003"
        assert DIGEST_FIELD in json.loads(read_safetensors(folder / "model.safetensors")[1]["genladder"])
        for name in ("optimizer.safetensors", "rng.safetensors"):
            assert list(read_safetensors(folder / name)[1]) == [CHECKSUM_KEY], name
        data = bytearray((folder / "optimizer.safetensors").read_bytes())
        data[-1] ^= 1
        (folder / "optimizer.safetensors").write_bytes(bytes(data))
        model, _, _ = trained_vae()
        with pytest.raises(GenladderError, match="optimizer.safetensors: checksum mismatch"):
            load_training_state(folder, torch.optim.Adam(model.parameters()))

    def test_damaged_checksum_key_is_not_a_way_around_the_check(self, tmp_path):
        from genladder.checkpoint import CHECKSUM_KEY, read_safetensors, safetensors_bytes

        data = safetensors_bytes({"w": torch.arange(4.0)})
        damaged = data.replace(CHECKSUM_KEY.encode(), b"genladdex.sha256")  # one flipped header byte
        (tmp_path / "rng.safetensors").write_bytes(damaged)
        with pytest.raises(GenladderError, match="unexpected metadata 'genladdex.sha256'"):
            read_safetensors(tmp_path / "rng.safetensors")

    def test_file_without_checksum_still_loads(self, tmp_path):
        from safetensors.torch import save

        model, _, description = trained_vae()
        meta = {"genladder": json.dumps({"format_version": 1, **description})}
        path = tmp_path / "model.safetensors"
        path.write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}, metadata=meta))
        state, _ = read_model_file(path)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def _hangs_guard(seconds=10):
    """Turn a blocking read into a test failure instead of a stuck test run."""
    import signal

    def fail(*_):
        raise AssertionError("read blocked")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


class TestHostileFiles:
    def test_fifo_weight_file_is_refused_without_blocking(self, tmp_path):
        import os
        import signal

        path = tmp_path / "model.safetensors"
        os.mkfifo(path)
        _hangs_guard()
        try:
            with pytest.raises(GenladderError, match="special file"):
                read_model_file(path)
        finally:
            signal.alarm(0)

    def test_sparse_giant_and_device_are_refused_before_reading(self, tmp_path, monkeypatch):
        import genladder.checkpoint as checkpoint

        path = tmp_path / "model.safetensors"
        with open(path, "wb") as handle:
            handle.truncate(100 * 2**30)  # 100 GB, sparse: nothing on disk
        with pytest.raises(GenladderError, match="bytes, more than"):
            read_model_file(path)
        monkeypatch.setattr(checkpoint, "MAX_WEIGHT_BYTES", 2**20)
        with pytest.raises(GenladderError, match="special file"):
            read_model_file("/dev/zero")

    @pytest.mark.parametrize("text, message", [
        ("[]", "expected a JSON object, found list"),
        ("{}", "'step' must be int"),
        ('{"step": "38"}', "'step' must be int"),
        ('{"step": NaN}', "not valid JSON"),
        ('{"step": 1e999}', "not valid JSON"),
        ('{"step": ' + "9" * 5000 + "}", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"step": 3, "optimizer": []}', "'optimizer' must be dict"),
        ('{"step": 3, "optimizer": {"param_groups": {}}}', "param_groups' must be list"),
        (b"\xff\xfe", "not valid JSON"),
    ])
    def test_corrupted_trainer_state(self, tmp_path, text, message):
        saved_run(tmp_path, steps=(3,))
        folder = tmp_path / "checkpoints" / "step_0000003"
        path = folder / "trainer_state.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        model, _, _ = trained_vae()
        with pytest.raises(GenladderError, match=message):
            load_training_state(folder, torch.optim.Adam(model.parameters()))

    def test_json_that_is_a_folder_a_fifo_or_huge(self, tmp_path):
        import os
        import signal

        from genladder.checkpoint import read_json

        (tmp_path / "dir.json").mkdir()
        with pytest.raises(GenladderError, match="found a folder"):
            read_json(tmp_path / "dir.json")
        os.mkfifo(tmp_path / "fifo.json")
        _hangs_guard()
        try:
            with pytest.raises(GenladderError, match="special file"):
                read_json(tmp_path / "fifo.json")
        finally:
            signal.alarm(0)
        with open(tmp_path / "huge.json", "wb") as handle:
            handle.truncate(2**34)
        with pytest.raises(GenladderError, match="more than"):
            read_json(tmp_path / "huge.json")
        (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
        with pytest.raises(GenladderError, match="symlink loop"):
            read_json(tmp_path / "loop.json")


class TestWriteErrors:
    def test_disk_full_names_the_file(self):
        from genladder.checkpoint import write_synced

        with pytest.raises(GenladderError, match="cannot write /dev/full: no space left on device"):
            write_synced(Path("/dev/full"), b"x" * 10)

    def test_missing_folder_names_the_file(self, tmp_path):
        from genladder.checkpoint import atomic_write_json

        with pytest.raises(GenladderError, match="cannot write .*nowhere"):
            atomic_write_json(tmp_path / "nowhere" / "latest.json", {})
