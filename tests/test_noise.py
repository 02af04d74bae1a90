"""One seed per image: the same seed gives the same images at any batch size and in any split of a request."""

from __future__ import annotations

import pytest
import torch

from genladder.diffusion import DiffusionObjectiveConfig, ScheduleConfig
from genladder.errors import GenladderError
from genladder.models import AutoencoderConfig
from genladder.models.unet import UNet, UNetConfig
from genladder.noise import MAX_SEED, image_generators, image_seed, random_integers, standard_normal
from genladder.run_config import ModelDescription
from genladder.rungs import build_model
from genladder.sampling import SamplerConfig, generate


@pytest.fixture(scope="module")
def cddpm():
    torch.manual_seed(0)
    model = UNet(UNetConfig(widths=(8, 16), blocks_per_level=1, attention_resolutions=(), image_size=8,
                            num_classes=3, dropout=0.0)).eval()
    config = ModelDescription("cddpm", model.config,
                              DiffusionObjectiveConfig(schedule=ScheduleConfig(kind="cosine", T=50, prediction="v"),
                                                       label_dropout=0.1))
    return model, config


class TestSeeds:
    def test_every_seed_index_pair_gets_its_own_stream(self):
        seeds = {image_seed(s, i) for s in (0, 1, 2, MAX_SEED) for i in range(1000)}
        # torch's CPU generator reads only 32 bits of a seed, so distinct streams need distinct 32-bit seeds
        assert len(seeds) == 4000 and max(seeds) < 2**32
        first = [standard_normal((1, 3), image_generators(s, 1)) for s in (0, 1)]
        assert not torch.equal(*first)

    @pytest.mark.parametrize("seed, index", [(-1, 0), (MAX_SEED + 1, 0), (0, -1), (0, 2**32)])
    def test_out_of_range_refused(self, seed, index):
        with pytest.raises(GenladderError, match="must lie in"):
            image_seed(seed, index)

    def test_noise_of_image_b_comes_from_generator_b(self):
        batch = standard_normal((3, 2, 2), image_generators(5, 3))
        alone = standard_normal((1, 2, 2), image_generators(5, 1, first=2))
        assert torch.equal(batch[2:], alone) and not torch.equal(batch[0], batch[1])
        with pytest.raises(GenladderError, match="2 generators for a batch of 3"):
            standard_normal((3, 2), image_generators(0, 2))

    def test_integers_of_image_b_come_from_generator_b(self):
        batch = random_integers(1000, 3, image_generators(5, 3))
        assert torch.equal(batch[2:], random_integers(1000, 1, image_generators(5, 1, first=2)))
        assert batch.dtype == torch.int64 and len(set(batch.tolist())) == 3 and 0 <= batch.min() <= batch.max() < 1000
        draws = random_integers(4, 4000, torch.Generator().manual_seed(0))
        assert torch.bincount(draws, minlength=4).min() > 900  # uniform: 1,000 expected each, ± 30
        with pytest.raises(GenladderError, match="2 generators for a batch of 3"):
            random_integers(5, 3, image_generators(0, 2))


class TestGenerate:
    # DDIM with η = 1 draws fresh noise at every step, so every stream is read many times, not only for x_T
    @pytest.mark.parametrize("sampler", [SamplerConfig(sampler="ddim", steps=6, eta=1.0, guidance=1.0),
                                         SamplerConfig(sampler="dpmpp", steps=6, guidance=1.0)])
    def test_batch_size_does_not_change_the_images(self, cddpm, sampler):
        model, config = cddpm
        labels = torch.arange(7) % 3
        whole = generate(model, config, 7, sampler, labels=labels, seed=3)
        for batch_size in (1, 3):
            sampler.batch_size = batch_size
            torch.testing.assert_close(generate(model, config, 7, sampler, labels=labels, seed=3), whole)

    def test_a_split_request_gives_the_whole_requests_images(self, cddpm):
        # what each process of a sharded request draws: its own range of image indices
        model, config = cddpm
        sampler = SamplerConfig(sampler="ddim", steps=6, eta=1.0, guidance=1.0, batch_size=4)
        labels = torch.arange(7) % 3
        whole = generate(model, config, 7, sampler, labels=labels, seed=3)
        parts = [generate(model, config, 3, sampler, labels=labels[:3], seed=3),
                 generate(model, config, 4, sampler, labels=labels[3:], seed=3, first_index=3)]
        torch.testing.assert_close(torch.cat(parts), whole)
        assert not torch.allclose(generate(model, config, 7, sampler, labels=labels, seed=4), whole)


def test_vae_prior_samples_follow_their_own_seeds():
    torch.manual_seed(0)
    model = build_model("vae", AutoencoderConfig.preset("vae", width=8, latent_dim=4).to_dict()).eval()
    with torch.no_grad():
        five = model.sample(5, generator=image_generators(1, 5))
        last_two = model.sample(2, generator=image_generators(1, 2, first=3))
    torch.testing.assert_close(five[3:], last_two)
