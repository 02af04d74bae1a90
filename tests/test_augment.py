"""Handwriting augmentation of the feature networks' training digits, and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from genladder.data.augment import AugmentConfig, augment_handwriting, elastic_displacement
from genladder.errors import GenladderError
from genladder.training.loop import TrainConfig, learning_rate


def _blob(batch: int = 1, centre=(16, 16)) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = torch.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * 2.0**2))
    return image.expand(batch, 1, 32, 32).clone()


def _centroid(images: torch.Tensor) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = images.sum((1, 2, 3))
    return torch.stack([(images[:, 0] * y).sum((1, 2)) / mass, (images[:, 0] * x).sum((1, 2)) / mass], 1)


class TestAugmentation:
    def test_probability_zero_is_the_identity_exactly(self):
        x = torch.rand(4, 1, 32, 32)
        assert torch.equal(augment_handwriting(x, AugmentConfig(probability=0.0)), x)

    def test_shift_moves_the_centroid_by_at_most_the_range(self):
        config = AugmentConfig(rotation_deg=0, scale=(1, 1), shear_deg=0, shift_px=3, elastic_px=0, probability=1)
        moved = _centroid(augment_handwriting(_blob(500), config, torch.Generator().manual_seed(0))) - 16
        assert moved.abs().max() <= 3.0 + 1e-3
        assert moved.abs().max() > 2.5  # the whole range is used
        assert moved.std(0).min() > 1.5  # uniform on [−3, 3] has std √3 ≈ 1.73: both axes move

    def test_rotation_turns_an_off_centre_blob_about_the_centre(self):
        config = AugmentConfig(rotation_deg=30, scale=(1, 1), shear_deg=0, shift_px=0, elastic_px=0, probability=1)
        out = augment_handwriting(_blob(300, centre=(16, 24)), config, torch.Generator().manual_seed(1))
        offset = _centroid(out) - 15.5  # pixel centres of a 32-wide image are symmetric about 15.5
        radius, angle = offset.norm(dim=1), torch.atan2(offset[:, 0], offset[:, 1])
        assert (radius - 8.5).abs().max() < 0.3  # rotation keeps the distance from the centre
        assert angle.abs().max() <= math.radians(30) + 0.05 and angle.abs().max() > math.radians(25)

    def test_zoom_scales_the_blob(self):
        config = AugmentConfig(rotation_deg=0, scale=(1.15, 1.15), shear_deg=0, shift_px=0, elastic_px=0,
                               probability=1)
        out = augment_handwriting(_blob(1), config)
        assert out.sum() / _blob(1).sum() == pytest.approx(1.15**2, rel=0.02)  # area grows with the square

    def test_elastic_field_has_the_requested_size_and_is_smooth(self):
        config = AugmentConfig(elastic_px=1.0, elastic_smoothness_px=4.0)
        field = elastic_displacement(200, 32, 32, config, torch.Generator().manual_seed(2)) * 16  # to pixels
        assert field.std().item() == pytest.approx(1.0, rel=0.15)
        neighbours = torch.corrcoef(torch.stack([field[:, :, :-1].flatten(), field[:, :, 1:].flatten()]))[0, 1]
        assert neighbours > 0.9  # σ = 4 px: neighbouring pixels move together, strokes bend rather than tear

    def test_every_image_gets_its_own_deformation(self):
        out = augment_handwriting(_blob(2), AugmentConfig(probability=1), torch.Generator().manual_seed(3))
        assert not torch.allclose(out[0], out[1])

    def test_bad_ranges_refused(self):
        with pytest.raises(GenladderError, match="scale"):
            AugmentConfig(scale=(1.2, 0.8))
        with pytest.raises(GenladderError, match="probability"):
            AugmentConfig(probability=1.5)
        with pytest.raises(GenladderError, match="float batch"):
            augment_handwriting(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


class TestLearningRateSchedule:
    def test_warmup_then_cosine_to_zero(self):
        config = TrainConfig(lr=1e-3, lr_schedule="cosine", warmup_images=1000)
        assert learning_rate(config, 0, 11_000) == pytest.approx(1e-6)
        assert learning_rate(config, 499, 11_000) == pytest.approx(0.5e-3)
        assert learning_rate(config, 1000, 11_000) == pytest.approx(1e-3)
        assert learning_rate(config, 6000, 11_000) == pytest.approx(0.5e-3)  # half-way: ½(1 + cos(π/2))
        assert learning_rate(config, 3500, 11_000) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
        assert learning_rate(config, 11_000, 11_000) == pytest.approx(0.0, abs=1e-12)

    def test_linear_and_constant(self):
        linear = TrainConfig(lr=2e-3, lr_schedule="linear")
        assert [learning_rate(linear, i, 100) for i in (0, 25, 100)] == pytest.approx([2e-3, 1.5e-3, 0.0])
        constant = TrainConfig(lr=2e-3)
        assert learning_rate(constant, 90, 100) == 2e-3

    def test_bad_settings_refused(self):
        with pytest.raises(GenladderError, match="lr-schedule"):
            TrainConfig(lr_schedule="step")
        with pytest.raises(GenladderError, match="weight-decay"):
            TrainConfig(weight_decay=0.1)  # Adam's coupled L2 is not what the flag means


class TestEmaHalfLife:
    def test_decay_per_step_halves_a_weight_after_the_half_life(self):
        from genladder.training.loop import ema_decay_per_step

        config = TrainConfig(ema_half_life_images=10_000, ema_decay=0.9)
        for batch in (64, 128, 512):
            decay = ema_decay_per_step(config, batch)
            assert decay ** (10_000 / batch) == pytest.approx(0.5)  # the same half-life in images at any batch
        assert ema_decay_per_step(TrainConfig(ema_decay=0.999), 128) == 0.999
        with pytest.raises(GenladderError, match="half-life"):
            TrainConfig(ema_half_life_images=0)
