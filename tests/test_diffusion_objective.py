"""DiffusionObjective: targets, the reported reductions, per-sample label dropout; as_eps_fn."""

from __future__ import annotations

import math

import pytest
import torch

from genladder.diffusion import DiffusionObjective, NoiseSchedule, as_eps_fn
from genladder.errors import GenladderError

SCHEDULE = NoiseSchedule.linear(1000)


class Recorder(torch.nn.Module):
    """Returns a constant output and remembers what it was called with."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = value
        self.calls: list[tuple] = []

    def forward(self, x_t, t, labels=None):
        self.calls.append((x_t.clone(), t.clone(), None if labels is None else labels.clone()))
        return torch.full_like(x_t, self.value)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class TestLoss:
    @pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
    def test_loss_is_mean_squared_error_to_the_target(self, prediction):
        x0 = images()
        model = Recorder(value=0.25)
        objective = DiffusionObjective(SCHEDULE, prediction=prediction)
        loss, metrics = objective(model, x0, None, generator=torch.Generator().manual_seed(1))
        # replay the documented draw order: t, then ε
        g = torch.Generator().manual_seed(1)
        t = torch.randint(0, 1000, (8,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x_t_seen, t_seen, labels_seen = model.calls[0]
        assert torch.equal(t_seen, t) and labels_seen is None
        torch.testing.assert_close(x_t_seen, SCHEDULE.q_sample(x0, t, eps))
        target = {"eps": eps, "x0": x0, "v": SCHEDULE.v_from_x0_eps(x0, eps, t)}[prediction]
        expected = ((0.25 - target) ** 2).mean()
        torch.testing.assert_close(loss, expected)
        assert metrics["loss"] == pytest.approx(float(expected), rel=1e-6)
        # the tutorial's reduction: sum over the 16 pixels, mean over the batch
        assert metrics["loss_sum_px"] == pytest.approx(16 * float(expected), rel=1e-5)

    def test_t_covers_the_whole_range_uniformly(self):
        model = Recorder()
        objective = DiffusionObjective(NoiseSchedule.linear(10))
        objective(model, images(5000).expand(5000, 1, 4, 4), None, generator=torch.Generator().manual_seed(2))
        counts = torch.bincount(model.calls[0][1], minlength=10).float()
        # each count ~ Binomial(5000, 0.1): sd = 21.2; allow 5 sd
        assert counts.min() > 500 - 5 * 21.2 and counts.max() < 500 + 5 * 21.2

    def test_gradient_reaches_the_model(self):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        objective = DiffusionObjective(SCHEDULE)
        loss, _ = objective(lambda x_t, t: net(x_t), images(), None)
        loss.backward()
        assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0

    def test_unconditional_ignores_labels(self):
        model = Recorder()
        DiffusionObjective(SCHEDULE)(model, images(), torch.zeros(8, dtype=torch.long))
        assert model.calls[0][2] is None


class TestLabelDropout:
    P, BATCH, BATCHES = 0.15, 64, 50

    def run(self, p: float = P, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
        model = Recorder()
        objective = DiffusionObjective(SCHEDULE, label_dropout=p, num_classes=10)
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(self.BATCH) % 10
        for _ in range(self.BATCHES):
            objective(model, images(self.BATCH), labels, generator=g)
        return [c[2] for c in model.calls], labels

    def test_rate_matches_p_and_kept_labels_are_untouched(self):
        seen, labels = self.run()
        dropped = torch.stack([s == 10 for s in seen])  # (batches, B)
        n = dropped.numel()
        sd = math.sqrt(n * self.P * (1 - self.P))
        assert abs(int(dropped.sum()) - n * self.P) < 4 * sd  # binomial, 4 sd
        for s in seen:
            keep = s != 10
            assert torch.equal(s[keep], labels[keep])

    def test_dropout_is_per_sample_not_batch_wide(self):
        seen, _ = self.run(p=0.5)
        per_batch = torch.stack([(s == 10).float().mean() for s in seen])
        # batch-wide dropout would give only 0 or 1; P(all 64 equal) = 2·0.5^64 per batch
        assert ((per_batch > 0) & (per_batch < 1)).all()

    def test_p_zero_and_one(self):
        seen0, labels = self.run(p=0.0)
        assert all(torch.equal(s, labels) for s in seen0)
        seen1, _ = self.run(p=1.0)
        assert all((s == 10).all() for s in seen1)

    def test_labels_required_when_conditional(self):
        with pytest.raises(GenladderError, match="labels"):
            DiffusionObjective(SCHEDULE, num_classes=10)(Recorder(), images(), None)


class TestConfig:
    @pytest.mark.parametrize("kwargs", [{"prediction": "score"}, {"label_dropout": 1.5}, {"num_classes": 0}])
    def test_bad_values_raise(self, kwargs):
        with pytest.raises(GenladderError):
            DiffusionObjective(SCHEDULE, **kwargs)


class TestAsEpsFn:
    @pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
    def test_perfect_network_gives_the_true_noise(self, prediction):
        x0 = images(4).double()
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        t = torch.tensor([0, 10, 500, 999])
        x_t = SCHEDULE.q_sample(x0, t, eps)
        target = DiffusionObjective(SCHEDULE, prediction=prediction).target(x0, eps, t)
        eps_fn = as_eps_fn(lambda x, tt: target, SCHEDULE, prediction)
        torch.testing.assert_close(eps_fn(x_t, t), eps)

    def test_bad_prediction(self):
        with pytest.raises(GenladderError):
            as_eps_fn(lambda x, t: x, SCHEDULE, "score")


class TestMinSNRWeighting:
    """Min-SNR-γ (Hang et al. 2023): x0-loss weight min(SNR, γ), expressed for the regressed target."""

    @pytest.mark.parametrize("prediction,factor", [("x0", lambda snr: 1.0), ("eps", lambda snr: 1 / snr),
                                                   ("v", lambda snr: 1 / (snr + 1))])
    def test_weights_follow_the_formula(self, prediction, factor):
        schedule = NoiseSchedule.cosine(1000)
        objective = DiffusionObjective(schedule, prediction=prediction, min_snr_gamma=5.0)
        t = torch.tensor([0, 100, 500, 900, 999])
        ab = schedule.alpha_bar[t].double()
        snr = ab / (1 - ab)
        expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) * torch.tensor(
            [factor(float(v)) for v in snr], dtype=torch.float64)
        assert torch.allclose(objective.loss_weight(t).double(), expected, rtol=1e-5)
        if prediction == "v":  # weights for v lie in (0, γ/(γ+1)]: easy steps are damped, none amplified
            assert float(objective.loss_weight(t).max()) <= 5 / 6 + 1e-6

    def test_weighted_loss_is_the_weighted_mean_of_per_image_errors(self):
        schedule = NoiseSchedule.cosine(100)
        objective = DiffusionObjective(schedule, prediction="eps", min_snr_gamma=1.0)
        images = torch.zeros(6, 1, 4, 4)
        model = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731  error = ε², so the loss is Σ w·mean(ε²)/B
        g = torch.Generator().manual_seed(0)
        loss, _ = objective(model, images, generator=g)
        g = torch.Generator().manual_seed(0)
        t = torch.randint(0, 100, (6,), generator=g)
        eps = torch.randn(images.shape, generator=g)
        expected = (objective.loss_weight(t) * eps.pow(2).flatten(1).mean(1)).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    def test_bad_gamma_refused(self):
        with pytest.raises(GenladderError, match="min_snr_gamma"):
            DiffusionObjective(NoiseSchedule.cosine(10), min_snr_gamma=0.0)
