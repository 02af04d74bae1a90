"""UNet: shapes, the tutorial's parameter count (derived), labels, gradients, config round trip, and a
tiny end-to-end run (train on 4 images → guided DDIM sampling reproduces them)."""

from __future__ import annotations

import json

import pytest
import torch

from genladder.diffusion import (
    DiffusionObjective,
    ScheduleConfig,
    as_eps_fn,
    classifier_free_guidance,
    sample_ddim,
)
from genladder.errors import GenladderError
from genladder.models.unet import UNet, UNetConfig

PRESETS = [("tutorial", 0), ("tutorial", 10), ("default", 0), ("default", 10)]



def tiny(num_classes: int = 0, **kw) -> UNetConfig:
    base = dict(widths=(16, 32), blocks_per_level=1, attention_resolutions=(8,), image_size=16,
                num_classes=num_classes, dropout=0.0)
    return UNetConfig(**{**base, **kw})


def inputs(cfg: UNetConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    labels = torch.randint(0, cfg.num_classes + 1, (batch,), generator=g) if cfg.num_classes else None
    return x, t, labels


class TestShapes:
    @pytest.mark.parametrize("preset,num_classes", PRESETS)
    def test_output_shape_matches_input(self, preset, num_classes):
        cfg = UNetConfig.preset(preset, num_classes=num_classes)
        net = UNet(cfg).eval()
        x, t, labels = inputs(cfg)
        with torch.no_grad():
            assert net(x, t, labels).shape == (2, 1, 32, 32)

    def test_three_channels_and_channels_last(self):
        cfg = tiny(in_channels=3, norm_groups=4, widths=(8, 16))
        net = UNet(cfg).eval()
        x, t, _ = inputs(cfg)
        with torch.no_grad():
            out = net(x, t)
            out_cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t)
        assert out.shape == x.shape
        torch.testing.assert_close(out_cl, out, atol=1e-5, rtol=1e-4)


class TestTutorialFidelity:
    @staticmethod
    def expected_params(widths=(64, 128, 256), c=1, num_classes=0) -> int:
        """Count the tutorial's Keras model by hand (GroupNorm has γ and β, like tfa's)."""

        def res(c_in, w):  # 1×1 conv + GN + 3×3 conv + GN
            return c_in * w + w + 2 * w + 9 * w * w + w + 2 * w

        total, c_in = 0, c
        for w in widths:  # encoder res block per level + time Dense(1→w) → Dense(w→w)
            total += res(c_in, w) + (2 * w) + (w * w + w)
            if num_classes:  # Embedding(num_classes + 1 rows: + null) → Dense(w→w)
                total += (num_classes + 1) * w + w * w + w
            c_in = w
        total += res(widths[-1], widths[-1])  # mid
        c_h = widths[-1]
        for w in reversed(widths):  # ConvTranspose 3×3 on concat(skip, h) + 2 res blocks
            total += 9 * (w + c_h) * w + w + 2 * res(w, w)
            c_h = w
        return total + res(widths[0], widths[0]) + 9 * widths[0] * c + c  # final res + 3×3 conv

    def test_parameter_count_unconditional(self):
        n = sum(p.numel() for p in UNet(UNetConfig.preset("tutorial")).parameters())
        assert n == self.expected_params() == 5_062_785  # the tutorial's ≈ 5.06 M

    def test_parameter_count_conditional(self):
        n = sum(p.numel() for p in UNet(UNetConfig.preset("tutorial", num_classes=10)).parameters())
        assert n == self.expected_params(num_classes=10)

    def test_decoder_leaves_the_skip_list_alone(self):
        # the tutorial's decoder reversed the caller's skip list in place (xs.reverse()); the list it is given
        # must come back as it went in, and decoding it twice must give the same image
        net = UNet(UNetConfig.preset("tutorial")).eval()
        widths = net.config.widths
        skips = [torch.randn(2, w, 32 >> i, 32 >> i) for i, w in enumerate(widths, start=1)]
        before = list(skips)
        with torch.no_grad():
            x = net.mid(skips[-1])
            first = net._decode_tutorial(x, skips)
            assert all(a is b for a, b in zip(skips, before, strict=True)), "the decoder reordered its input"
            assert torch.equal(first, net._decode_tutorial(x, skips))


class TestLabels:
    @pytest.mark.parametrize("arch", ["tutorial", "default"])
    def test_null_label_is_a_learned_row(self, arch):
        cfg = tiny(num_classes=3, arch=arch, attention_resolutions=() if arch == "tutorial" else (8,))
        net = UNet(cfg).eval()
        x, t, _ = inputs(cfg, batch=3)
        with torch.no_grad():
            null = net(x, t, torch.full((3,), 3))
            zero = net(x, t, torch.zeros(3, dtype=torch.long))
        assert torch.isfinite(null).all() and not torch.allclose(null, zero)

    def test_labels_are_per_sample(self):
        net = UNet(tiny(num_classes=3)).eval()
        x, t, _ = inputs(net.config, batch=3)
        labels = torch.tensor([0, 2, 3])
        with torch.no_grad():
            batched = net(x, t, labels)
            single = torch.cat([net(x[i:i + 1], t[i:i + 1], labels[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)

    def test_label_errors(self):
        x, t, _ = inputs(tiny())
        with pytest.raises(GenladderError, match="unconditional"):
            UNet(tiny())(x, t, torch.zeros(2, dtype=torch.long))
        with pytest.raises(GenladderError, match="class-conditional"):
            UNet(tiny(num_classes=3))(x, t)
        with pytest.raises(GenladderError, match="int64"):
            UNet(tiny(num_classes=3))(x, t, torch.zeros(2))

    def test_input_errors(self):
        net = UNet(tiny())
        with pytest.raises(GenladderError, match="x_t"):
            net(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))
        with pytest.raises(GenladderError, match="divisible"):
            net(torch.zeros(2, 1, 15, 15), torch.zeros(2, dtype=torch.long))
        with pytest.raises(GenladderError, match="t must"):
            net(torch.zeros(2, 1, 16, 16), torch.zeros(3, dtype=torch.long))


class TestGradients:
    @pytest.mark.parametrize("arch", ["tutorial", "default"])
    def test_every_parameter_gets_a_gradient(self, arch):
        cfg = tiny(num_classes=3, arch=arch, attention_resolutions=() if arch == "tutorial" else (8,))
        net = UNet(cfg).train()
        x, t, _ = inputs(cfg, batch=4)
        net(x, t, torch.tensor([0, 1, 2, 3])).pow(2).mean().backward()  # includes the null label 3
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


class TestConfig:
    @pytest.mark.parametrize("preset,num_classes", PRESETS)
    def test_json_round_trip_rebuilds_the_same_net(self, preset, num_classes):
        cfg = UNetConfig.preset(preset, num_classes=num_classes)
        again = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
        net = UNet(cfg)
        twin = UNet(again)
        twin.load_state_dict(net.state_dict())  # same parameter names and shapes
        assert [n for n, _ in net.named_parameters()] == [n for n, _ in twin.named_parameters()]

    @pytest.mark.parametrize("kwargs,match", [
        ({"arch": "resnet"}, "arch"),
        ({"widths": (16, 20)}, "norm_groups"),
        ({"widths": ()}, "widths"),
        ({"attention_resolutions": (5,)}, "feature size"),
        ({"num_heads": 3}, "num_heads"),
        ({"image_size": 18, "widths": (8, 16, 32), "attention_resolutions": ()}, "divisible"),
        ({"arch": "tutorial"}, "tutorial"),  # tutorial has no attention
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": -1}, "num_classes"),
    ])
    def test_bad_config_raises(self, kwargs, match):
        with pytest.raises(GenladderError, match=match):
            UNetConfig(**kwargs)

    def test_unknown_key_and_preset(self):
        with pytest.raises(GenladderError, match="unknown"):
            UNetConfig.from_dict({"arch": "default", "depth": 3})
        with pytest.raises(GenladderError, match="preset"):
            UNetConfig.preset("huge")


def training_images(size: int = 16) -> torch.Tensor:
    """Four fixed ±1 shapes with global structure (left half, top half, disc, centred cross): (4, 1, S, S)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    shapes = [xx < size // 2, yy < size // 2, (xx - c) ** 2 + (yy - c) ** 2 < (size / 3.2) ** 2,
              ((xx - c).abs() < size / 8) | ((yy - c).abs() < size / 8)]
    return torch.stack(shapes).float()[:, None] * 2 - 1


class TestEndToEnd:
    @pytest.mark.parametrize("prediction,spacing", [("eps", "trailing"), ("v", "karras")])
    def test_tiny_conditional_unet_memorises_and_guided_ddim_reproduces(self, prediction, spacing):
        """UNet + DiffusionObjective (label dropout) + CFG wrapper + DDIM, all together; an ε-network with
        the trailing spacing and a v-network (the cpu-fast recipe's target) with the Karras spacing.

        Catches: wrong ε/v target or q_sample, labels ignored or misrouted, guidance/sampler sign errors,
        a broken skip path, a wrong v → ε conversion. An untrained or label-blind chain gives MSE ≈ 1
        (images differ by ≥ 1.0).
        """
        torch.manual_seed(0)
        images = training_images()
        cfg = UNetConfig(widths=(32, 32, 32), blocks_per_level=1, attention_resolutions=(4,), image_size=16,
                         num_classes=4, dropout=0.0)
        net = UNet(cfg)
        schedule = ScheduleConfig(kind="cosine", T=100).build()
        objective = DiffusionObjective(schedule, prediction=prediction, label_dropout=0.15, num_classes=4)
        steps = 300
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        batch, labels = images.repeat(8, 1, 1, 1), torch.arange(4).repeat(8)
        g = torch.Generator().manual_seed(0)
        first = None
        for _ in range(steps):
            loss, metrics = objective(net, batch, labels, generator=g)
            first = metrics["loss"] if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
            lr_decay.step()
        assert metrics["loss"] < 0.1 * first

        net.eval()
        wanted = torch.arange(4).repeat(4)  # 4 samples of each image
        x_T = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(100))
        eps_fn = as_eps_fn(classifier_free_guidance(net, wanted, 2.0, null_label=4), schedule, prediction)
        samples = sample_ddim(eps_fn, schedule, x_T, steps=20, spacing=spacing)
        mse = ((samples[:, None] - images[None]) ** 2).mean(dim=(2, 3, 4))  # (16, 4)
        assert (mse[torch.arange(16), wanted] < 0.1).all(), mse[torch.arange(16), wanted]
        assert torch.equal(mse.argmin(dim=1), wanted)
