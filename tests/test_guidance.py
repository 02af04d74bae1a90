"""Classifier-free guidance and the plain wrappers: one batched forward, w = 0, per-sample labels."""

from __future__ import annotations

import pytest
import torch

from genladder.diffusion import (
    NoiseSchedule,
    as_eps_fn,
    classifier_free_guidance,
    conditional,
    sample_ddim,
    unconditional,
)
from genladder.errors import GenladderError
from genladder.models.unet import UNet, UNetConfig

NULL = 3  # num_classes of the test nets



@pytest.fixture(scope="module")
def net() -> UNet:
    torch.manual_seed(0)
    cfg = UNetConfig(widths=(16, 32), blocks_per_level=1, attention_resolutions=(8,), image_size=16,
                     num_classes=NULL, dropout=0.0)
    return UNet(cfg).eval()


class Spy(torch.nn.Module):
    """Records every call; output depends on x, t and the label so mix-ups are visible."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, torch.Tensor]] = []

    def forward(self, x_t, t, labels=None):
        self.calls.append((x_t.shape[0], labels.clone()))
        return x_t * 0.5 + t.view(-1, 1, 1, 1) * 1e-3 + labels.view(-1, 1, 1, 1).float()


def batch(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g)


class TestGuidance:
    def test_w0_is_plain_conditional_and_skips_the_null_half(self, net):
        x, t = batch()
        labels = torch.tensor([0, 1, 2, 1])
        with torch.no_grad():
            assert torch.equal(classifier_free_guidance(net, labels, 0.0, NULL)(x, t), conditional(net, labels)(x, t))
        spy = Spy()
        classifier_free_guidance(spy, labels, 0.0, NULL)(x, t)
        assert [n for n, _ in spy.calls] == [4]

    def test_one_batched_forward_equals_two_separate_forwards(self, net):
        x, t = batch()
        labels, w = torch.tensor([0, 1, 2, 0]), 2.5
        with torch.no_grad():
            guided = classifier_free_guidance(net, labels, w, NULL)(x, t)
            cond = net(x, t, labels)
            uncond = net(x, t, torch.full((4,), NULL))
        # Ho & Salimans 2022, eq. 6
        torch.testing.assert_close(guided, (1 + w) * cond - w * uncond, atol=1e-5, rtol=1e-4)

    def test_single_call_with_cond_then_null_labels(self):
        spy = Spy()
        x, t = batch()
        labels = torch.tensor([2, 0, 1, 2])
        out = classifier_free_guidance(spy, labels, 1.0, NULL)(x, t)
        assert len(spy.calls) == 1
        n, seen = spy.calls[0]
        assert n == 8 and torch.equal(seen, torch.tensor([2, 0, 1, 2, NULL, NULL, NULL, NULL]))
        # Spy output = 0.5 x + 1e-3 t + label, so ε̃ = 0.5 x + 1e-3 t + (1 + w) c − w ∅
        torch.testing.assert_close(out, 0.5 * x + 1e-3 * t.view(-1, 1, 1, 1) + (2 * labels - NULL).view(-1, 1, 1, 1))

    def test_labels_are_honoured_per_sample(self, net):
        x, t = batch()
        labels = torch.tensor([2, 0, 1, 2])
        with torch.no_grad():
            together = classifier_free_guidance(net, labels, 1.5, NULL)(x, t)
            alone = torch.cat([classifier_free_guidance(net, labels[i:i + 1], 1.5, NULL)(x[i:i + 1], t[i:i + 1])
                               for i in range(4)])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)

    @pytest.mark.parametrize("prediction", ["x0", "v"])
    def test_guidance_commutes_with_prediction_conversion(self, net, prediction):
        # the ε-conversion is affine in the output and the guidance weights sum to 1
        schedule = NoiseSchedule.linear(1000)
        x, t = batch()
        labels = torch.tensor([0, 1, 2, 0])
        with torch.no_grad():
            guided_then_converted = as_eps_fn(classifier_free_guidance(net, labels, 2.0, NULL), schedule,
                                              prediction)(x, t)
            eps_c = as_eps_fn(conditional(net, labels), schedule, prediction)(x, t)
            eps_u = as_eps_fn(conditional(net, torch.full((4,), NULL)), schedule, prediction)(x, t)
        torch.testing.assert_close(guided_then_converted, 3.0 * eps_c - 2.0 * eps_u, atol=1e-4, rtol=1e-4)

    def test_guided_sampling_runs_end_to_end(self, net):
        labels = torch.arange(4) % NULL
        x_T = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        out = sample_ddim(classifier_free_guidance(net, labels, 3.0, NULL), NoiseSchedule.linear(100), x_T, steps=5)
        assert out.shape == x_T.shape and torch.isfinite(out).all()

    def test_errors(self, net):
        x, t = batch()
        with pytest.raises(GenladderError, match="guidance_weight"):
            classifier_free_guidance(net, torch.zeros(4, dtype=torch.long), -1.0, NULL)
        with pytest.raises(GenladderError, match="lie in"):
            classifier_free_guidance(net, torch.tensor([0, 4]), 1.0, NULL)
        with pytest.raises(GenladderError, match="int64"):
            conditional(net, torch.zeros(4))
        with pytest.raises(GenladderError, match="batch"):
            classifier_free_guidance(net, torch.zeros(3, dtype=torch.long), 1.0, NULL)(x, t)


class TestUnconditional:
    def test_unconditional_wrapper_calls_without_labels(self):
        cfg = UNetConfig(widths=(16, 32), blocks_per_level=1, attention_resolutions=(), image_size=16)
        net = UNet(cfg).eval()
        x, t = batch()
        with torch.no_grad():
            assert torch.equal(unconditional(net)(x, t), net(x, t))


class TestGuidanceInterval:
    def test_guided_only_inside_the_sigma_interval(self):
        from genladder.diffusion import guidance_interval, schedule_noise_level

        schedule = NoiseSchedule.cosine(1000)
        sigmas = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()
        fn = guidance_interval(lambda x, t: torch.ones_like(x), lambda x, t: torch.zeros_like(x),
                               schedule_noise_level(schedule), 0.3, 5.0)
        x = torch.zeros(2, 1, 2, 2)
        for t in (0, 100, 300, 500, 700, 900, 999):
            inside = 0.3 < float(sigmas[t]) <= 5.0
            assert fn(x, torch.full((2,), t)).mean().item() == (1.0 if inside else 0.0), t
        assert any(0.3 < float(sigmas[t]) <= 5.0 for t in (300, 500, 700))  # the test sees both cases

    def test_bad_interval_refused(self):
        from genladder.diffusion import guidance_interval
        from genladder.sampling import SamplerConfig

        with pytest.raises(GenladderError, match="interval"):
            guidance_interval(None, None, lambda t: 1.0, 2.0, 1.0)
        with pytest.raises(GenladderError, match="interval"):
            SamplerConfig(guidance_interval=(3.0, 3.0))
