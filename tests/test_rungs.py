"""The rung table: the one place that knows the rungs by name, and capabilities that match the networks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from genladder.errors import GenladderError
from genladder.rungs import MODEL_KINDS, RUNGS, build_model, kinds, rung

SRC = Path(__file__).resolve().parents[1] / "src" / "genladder"
NAMES = "|".join(MODEL_KINDS)
# a kind compared with a rung's name, or a hand-written tuple of rung names
KIND_COMPARISON = re.compile(rf"""kind\W{{0,3}}\s*(==|!=|\bin\b|\bnot in\b)\s*\(?["']({NAMES})["']""")
NAME_TUPLE = re.compile(rf"""\(\s*["']({NAMES})["']\s*,\s*["']({NAMES})["']""")
# The table itself, and the autoencoder network family's own config (its "kind" chooses among its three
# variants inside models/, below the rung level).
ALLOWED = {SRC / "rungs.py", SRC / "models" / "autoencoders.py"}


def test_no_kind_name_comparison_outside_the_table():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if KIND_COMPARISON.search(line) or NAME_TUPLE.search(line):
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not found, "ask the rung table (genladder.rungs) instead:\n" + "\n".join(found)


def test_the_grep_catches_what_it_names():
    # the two patterns above, on lines of the kind the redesign removed
    assert KIND_COMPARISON.search('if run.kind == "cddpm":') and KIND_COMPARISON.search('kind in ("vae", "cvae")')
    assert NAME_TUPLE.search('AUTOENCODERS = ("ae", "vae", "cvae")')
    assert not KIND_COMPARISON.search('if self.kind == "linear":')


class TestCapabilities:
    def test_queries(self):
        assert kinds(codes=True) == ("ae", "vae", "cvae") and kinds(diffusion=True) == ("ddpm", "cddpm")
        assert kinds(guided=True) == ("cddpm",) and kinds(generative=False) == ("classifier",)
        assert kinds(variational=True, conditional=True) == ("cvae",)
        assert rung("cvae").unconditional_twin == "vae" and rung("ddpm").unconditional_twin is None

    def test_unknown_kind(self):
        with pytest.raises(GenladderError, match="unknown model 'gan'; choose one of ae, vae"):
            rung("gan")

    @pytest.mark.parametrize("name", list(RUNGS))
    def test_flags_match_the_network(self, name):
        from genladder.models import AutoencoderConfig, ClassifierConfig
        from genladder.models.unet import UNetConfig

        spec = rung(name)
        if spec.family == "autoencoder":
            config = AutoencoderConfig.preset(name, "default", latent_dim=4 if name != "ae" else None, width=8)
        elif spec.diffusion:
            config = UNetConfig(widths=(8, 16), attention_resolutions=(), image_size=8,
                                num_classes=3 if spec.conditional else 0)
        else:
            config = ClassifierConfig()
        model = build_model(name, config.to_dict())
        assert hasattr(model, "encode") == spec.codes and hasattr(model, "decode") == spec.codes
        if spec.family == "autoencoder":
            assert bool(model.num_classes) == spec.conditional
        if spec.diffusion:
            assert bool(model.config.num_classes) == spec.conditional
