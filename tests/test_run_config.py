"""The typed run description: strict reading, the migration of old config.json files, what a run answers, and
the one resolver from preset and flags."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from genladder.cli import build_parser
from genladder.diffusion import DiffusionObjectiveConfig, ScheduleConfig
from genladder.errors import GenladderError
from genladder.objectives import ClassifierObjectiveConfig
from genladder.presets import DIFFUSION_PRESETS
from genladder.resolve import resolve_run_config
from genladder.run_config import CONFIG_VERSION, ModelDescription, RunConfig, migrate
from genladder.rungs import MODEL_KINDS, rung
from genladder.runs import load_run, read_run_config, run_training

# config.json as genladder 0.4.0 wrote it (before config_version), cut from a real cpu-fast run.
VERSION_1_CDDPM = {
    "kind": "cddpm", "preset": "cpu-fast", "genladder_version": "0.1.0",
    "model": {"arch": "default", "in_channels": 1, "image_size": 32, "num_classes": 10, "widths": [32, 64, 64],
              "blocks_per_level": 1, "attention_resolutions": [], "num_heads": 4, "dropout": 0.0, "norm_groups": 8,
              "patch_size": 1},
    "objective": {"schedule": {"T": 1000, "beta_1": 0.0001, "beta_T": 0.02, "cosine_s": 0.008, "kind": "cosine",
                               "prediction": "v"}},
    "data": {"channels": 1, "class_names": [str(k) for k in range(10)], "data_dir": None, "dataset": "mnist",
             "image_size": 32, "limit": None, "resize": "pad", "test_limit": None, "test_share": None},
    "train": {"adam_beta2": 0.99, "batch_size": 128, "channels_last": True, "checkpoint_every": 172,
              "compile": False, "ema_decay": 0.999, "ema_half_life_images": None, "epochs": 5, "grad_clip": 1.0,
              "keep_checkpoints": 1000, "log_every": 50, "lr": 0.002, "lr_schedule": "cosine", "optimizer": "adamw",
              "precision": "fp32", "preview_count": 64, "seed": 0, "steps": 860, "time_budget": None,
              "warmup_images": 25600, "weight_decay": 0.0},
}


def _resolved(kind: str, **given) -> RunConfig:
    return resolve_run_config({"kind": kind, **given})


class TestStrictReading:
    # (the latent rung needs a trained autoencoder run: tests/test_latent.py round-trips its config)
    @pytest.mark.parametrize("kind", [kind for kind in MODEL_KINDS if not rung(kind).latent])
    def test_round_trip(self, kind):
        config = _resolved(kind)
        again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config and again.to_dict() == config.to_dict()
        assert config.to_dict()["config_version"] == CONFIG_VERSION
        assert isinstance(config.model, rung(kind).model_config)
        assert isinstance(config.objective, rung(kind).objective_config)

    @pytest.mark.parametrize("section, key, message", [
        ("train", "lrr", "unknown train setting 'lrr' (did you mean 'lr'?)"),
        ("data", "limt", "unknown data setting 'limt' (did you mean 'limit'?)"),
        ("model", "widht", "unknown model setting 'widht'"),
        ("objective", "label_dropuot", "unknown objective setting 'label_dropuot' (did you mean 'label_dropout'?)"),
    ])
    def test_an_unknown_key_is_named(self, section, key, message):
        values = _resolved("cddpm", preset="cpu-fast").to_dict()
        values[section][key] = 1
        with pytest.raises(GenladderError, match=r"^c\.json: " + message.replace("(", r"\(").replace(")", r"\)")
                           .replace("?", r"\?")):
            RunConfig.from_dict(values, source="c.json")

    @pytest.mark.parametrize("section, key, value, message", [
        ("train", "batch_size", "16", "TrainConfig.batch_size must be int"),
        ("model", "widths", 32, "UNetConfig.widths must be tuple"),
        ("objective", "label_dropout", "0.1", "DiffusionObjectiveConfig.label_dropout must be float"),
        ("data", "limit", 1.5, "DataConfig.limit must be int"),
    ])
    def test_a_mistyped_value_is_named(self, section, key, value, message):
        values = _resolved("cddpm").to_dict()
        values[section][key] = value
        with pytest.raises(GenladderError, match="c.json: " + message):
            RunConfig.from_dict(values, source="c.json")

    def test_an_unknown_entry_and_a_nested_typo(self):
        values = _resolved("cddpm").to_dict()
        with pytest.raises(GenladderError, match="unknown entry 'colour'"):
            RunConfig.from_dict({**values, "colour": 1})
        values["objective"]["schedule"]["tee"] = 5
        with pytest.raises(GenladderError, match=r"unknown ScheduleConfig fields \['tee'\]"):
            RunConfig.from_dict(values)

    def test_the_configs_are_frozen(self):
        config = _resolved("cddpm")
        with pytest.raises(AttributeError):
            config.kind = "ddpm"
        with pytest.raises(AttributeError):
            config.objective.label_dropout = 0.5


class TestMigration:
    def test_version_1_reads_with_the_defaults_its_readers_filled_in(self):
        config = RunConfig.from_dict(VERSION_1_CDDPM)
        assert config.objective.label_dropout == 0.15  # genladder 0.4.0 read a missing label_dropout as 0.15
        assert config.objective.schedule == ScheduleConfig(kind="cosine", T=1000, prediction="v")
        assert config.facts.class_names == tuple(str(k) for k in range(10))
        assert config.to_dict()["objective"]["label_dropout"] == 0.15  # written out from now on

    def test_migration_leaves_its_input_alone_and_is_idempotent(self):
        before = json.dumps(VERSION_1_CDDPM, sort_keys=True)
        once = migrate(VERSION_1_CDDPM)
        assert json.dumps(VERSION_1_CDDPM, sort_keys=True) == before
        assert migrate(once) == once and once["config_version"] == CONFIG_VERSION

    def test_an_old_classifier_run_shifted_only(self):
        values = _resolved("classifier").to_dict()
        del values["config_version"]
        values["objective"] = {"max_shift": 2}  # written before the handwriting augmentation existed
        assert RunConfig.from_dict(values).objective == ClassifierObjectiveConfig(augment="shift")

    def test_a_newer_layout_is_refused(self):
        with pytest.raises(GenladderError, match="written by a newer genladder .config_version 3"):
            RunConfig.from_dict({**VERSION_1_CDDPM, "config_version": 3})

    def test_a_run_folder_of_version_1_loads_and_resumes(self, tmp_path, mini_mnist):
        config = _resolved("cddpm", preset="cpu-fast", widths="8,8", steps=2, batch_size=8, limit=64, test_limit=32,
                           data_dir=str(mini_mnist), checkpoint_every=1)
        run_dir = tmp_path / "old"
        run_training(config, run_dir, show_progress=False)
        assert read_run_config(run_dir) == config  # config.json is exactly RunConfig.to_dict()
        stored = json.loads((run_dir / "config.json").read_text())
        del stored["config_version"], stored["objective"]["label_dropout"]  # as genladder 0.4.0 wrote it
        (run_dir / "config.json").write_text(json.dumps(stored))
        assert read_run_config(run_dir).objective.label_dropout == 0.15
        assert load_run(run_dir).num_classes == 10
        shutil.rmtree(run_dir / "checkpoints" / sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1])
        run_training(read_run_config(run_dir), run_dir, resume=True, show_progress=False)


class TestWhatARunAnswers:
    @pytest.mark.parametrize("kind, classes, conditional, value_range, prediction", [
        ("ae", 0, False, (0.0, 1.0), None), ("vae", 0, False, (0.0, 1.0), None),
        ("cvae", 10, True, (0.0, 1.0), None), ("ddpm", 0, False, (-1.0, 1.0), "v"),
        ("cddpm", 10, True, (-1.0, 1.0), "v"), ("classifier", 10, False, (0.0, 1.0), None),
    ])
    def test_answers(self, kind, classes, conditional, value_range, prediction):
        config = _resolved(kind)
        assert (config.num_classes, config.conditional, config.value_range, config.prediction) == (
            classes, conditional, value_range, prediction)
        assert config.image_shape == (1, 32, 32)
        assert (config.schedule is not None) == rung(kind).diffusion
        assert _resolved(kind, preset="cpu-fast").prediction == "v" if rung(kind).diffusion else True

    def test_a_model_file_describes_itself(self):
        config = _resolved("cddpm", preset="cpu-fast")
        description = ModelDescription.from_dict(config.description().to_dict())
        assert description == config.description() and description.prediction == "v"
        assert isinstance(description.objective, DiffusionObjectiveConfig)


class TestOneResolver:
    def test_the_cli_prints_what_the_library_resolves(self, capsys):
        from genladder.cli import main

        assert main(["train", "cddpm", "--preset", "cpu-fast", "--steps", "7", "--dry-run"]) == 0
        printed = json.loads(capsys.readouterr().out)
        expected = _resolved("cddpm", preset="cpu-fast", steps=7).to_dict()
        printed.pop("genladder_version"), expected.pop("genladder_version")
        assert printed == expected

    @pytest.mark.parametrize("preset, decay", [("tutorial", 0.999), ("default", 0.9995), ("small", 0.999),
                                               ("cpu-fast", 0.999)])
    def test_the_presets_half_lives_are_their_old_decays_at_batch_128(self, preset, decay):
        from genladder.training.loop import ema_decay_per_step

        train = _resolved("cddpm", preset=preset).train
        assert ema_decay_per_step(train, 128) == pytest.approx(decay, abs=1e-6)
        # 0.5^(B/h): twice the batch, the decay squared — the same average over images
        assert ema_decay_per_step(train, 256) == pytest.approx(ema_decay_per_step(train, 128) ** 2, rel=1e-12)

    def test_an_explicit_ema_decay_replaces_the_presets_half_life(self):
        preset = _resolved("cddpm", preset="cpu-fast").train
        assert (preset.ema_decay, preset.ema_half_life_images) == (None, 88_700)
        train = _resolved("cddpm", preset="cpu-fast", ema_decay=0.99).train
        assert (train.ema_decay, train.ema_half_life_images) == (0.99, None)

    def test_a_config_file_with_a_flag_over_it(self, tmp_path):
        path = tmp_path / "run.json"
        path.write_text(json.dumps(_resolved("cddpm", preset="cpu-fast").to_dict()))
        config = resolve_run_config({"config": str(path), "lr": 1e-4, "label_dropout": 0.2})
        assert (config.train.lr, config.objective.label_dropout, config.preset) == (1e-4, 0.2, "cpu-fast")

    def test_each_flag_default_is_what_the_presets_give(self):
        """``train --help`` states, for each optimisation flag, the value each diffusion preset resolves to."""
        train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
        helps = {a.dest: " ".join(a.help.split()) for a in train._actions if a.help}
        for key in ("lr", "lr_schedule", "warmup_images", "optimizer", "adam_beta2", "ema_half_life_images"):
            for preset in DIFFUSION_PRESETS:
                value = getattr(_resolved("cddpm", preset=preset).train, key)
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                assert f"{preset} {shown}" in helps[key] or f"ddpm/cddpm {shown}" in helps[key], (key, preset)
            own = getattr(_resolved("vae").train, key)
            shown = "none" if own is None else f"{own:g}" if isinstance(own, float) else str(own)
            assert f"autoencoders {shown}" in helps[key], key

    def test_every_train_field_is_a_flag_or_fixed(self):
        train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
        flags = {a.dest for a in train._actions}
        fixed = {"channels_last", "preview_count"}  # set by the program, not the user
        from genladder.training.loop import TrainConfig

        assert {f.name for f in fields(TrainConfig)} - flags == fixed


def test_the_walk_of_a_training_config_enters_each_module_once():
    """CLI -> resolve -> run_config -> runs.run_training -> training.loop: the config is resolved once, typed,
    and the loop receives a TrainConfig (not a dict it re-parses)."""
    import inspect

    from genladder import cli, runs

    assert "resolve_run_config(given)" in inspect.getsource(cli._train)
    source = inspect.getsource(runs.run_training)
    assert 'config["' not in source and "from_dict(config[" not in source
    assert Path(inspect.getfile(runs)).read_text().count("TrainConfig.from_dict(") == 1  # resume only
