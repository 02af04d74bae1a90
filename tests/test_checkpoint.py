"""Checkpoint files: exact round trips, the file set, atomic pointer updates, and bad files."""

from __future__ import annotations

import json

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
from genladder.models import AutoencoderConfig, build_model
from genladder.objectives import vae_loss


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
    for path in folder.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"


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

    def test_pointer_to_missing_checkpoint(self, tmp_path):
        (tmp_path / "latest.json").write_text('{"checkpoint": "step_0000009"}')
        with pytest.raises(GenladderError, match="missing or incomplete"):
            latest_checkpoint(tmp_path)
        (tmp_path / "latest.json").write_text("{broken")
        with pytest.raises(GenladderError, match="not valid JSON"):
            latest_checkpoint(tmp_path)
