"""The latent rung's data: a trained autoencoder run checked and loaded, its latents' scale, and the training
digits encoded once into ``latents.safetensors`` in the run folder.

The autoencoder is frozen, so every digit's latent is fixed: encoding the training set once (at the start of
a run; a resume reads the file) makes each step a step of the U-Net alone. The shift and scale of each latent
channel are measured on the training digits' latents before the run starts and written into config.json
(Rombach et al. 2022, §G: "we rescale the latents to unit standard deviation"; Stable Diffusion's 0.18215 is
such a factor; here one per channel, as an autoencoder's channels can differ threefold in spread).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from genladder.checkpoint import atomic_write_bytes
from genladder.data import to_unit
from genladder.errors import GenladderError
from genladder.training.loop import TrainingData

LATENTS_FILE = "latents.safetensors"
STATISTICS_IMAGES = 10_000  # training digits whose latents set the mean and the scale
BATCH = 500


def load_autoencoder(run_dir: str | Path, load_run, checkpoint: str | None = None):
    """A trained ae/vae/cvae run with a spatial latent, loaded by ``load_run`` (genladder.runs.load_run: passed
    in, as genladder.runs calls this module), or a one-line error saying why not."""
    from genladder.rungs import kinds

    run = load_run(run_dir, checkpoint_name=checkpoint)
    if not run.config.rung.codes:
        names = kinds(codes=True)
        raise GenladderError(f"--autoencoder {run_dir} is a {run.kind} run; the latent rung needs an "
                             f"{', '.join(names[:-1])} or {names[-1]} run (trained with --latent-channels)")
    if run.config.model.latent_channels is None:
        raise GenladderError(f"--autoencoder {run_dir} has a dense {run.config.model.latent_dim}-number code; train "
                             "one with a spatial latent: genladder train vae --latent-channels 4")
    if not hasattr(run.config, "data"):
        raise GenladderError(f"--autoencoder needs the autoencoder's run folder (its data), not a model file: "
                             f"{run_dir}")
    return run


def check_same_data(autoencoder, data) -> None:
    """The autoencoder must have been trained on the data the latent rung trains on (the same dataset, size, grey
    levels)."""
    theirs, ours = autoencoder.config.data, data
    if theirs.binarize is not None:
        raise GenladderError(f"the autoencoder was trained on {theirs.binarized_label} digits; the latent rung models "
                             "grey-level images: train it on an autoencoder of grey-level digits")
    if (theirs.dataset, theirs.resize) != (ours.dataset, ours.resize):
        raise GenladderError(f"the autoencoder was trained on {theirs.dataset} ({theirs.resize}); this run's data is "
                             f"{ours.dataset} ({ours.resize}): train the latent rung on the autoencoder's data")


@torch.no_grad()
def _in_batches(encode, images: torch.Tensor, labels: torch.Tensor | None, device="cpu") -> torch.Tensor:
    """``encode(x in [0, 1], labels)`` over uint8 images (N, C, H, W), BATCH at a time, gathered on the CPU."""
    parts = []
    for start in range(0, len(images), BATCH):
        x = to_unit(images[start : start + BATCH]).to(device)
        y = labels[start : start + BATCH].to(device) if labels is not None else None
        parts.append(encode(x, y).float().cpu())
    return torch.cat(parts)


def latent_statistics(autoencoder, images: torch.Tensor, labels: torch.Tensor | None
                      ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(means, standard deviations) of each latent channel over the first STATISTICS_IMAGES training digits and
    all positions: their codes (the posterior mean of a VAE) as (N, C, h, w)."""
    from genladder.rungs import encode_mean

    codes = _in_batches(lambda x, y: encode_mean(autoencoder.kind, autoencoder.model, x, y),
                        images[:STATISTICS_IMAGES], labels[:STATISTICS_IMAGES] if labels is not None else None)
    channels = codes.double().view(len(codes), autoencoder.config.model.latent_channels, -1).transpose(0, 1)
    per_channel = channels.flatten(1)  # (C, N·h·w)
    return tuple(per_channel.mean(1).tolist()), tuple(per_channel.std(1).tolist())


def latent_training_data(run_dir: str | Path, config, model, pixels: TrainingData, resume: bool, load_run,
                         write: bool = True) -> TrainingData:
    """The run's training and test digits as scaled latents (N, c, h, w): encoded now with the autoencoder of
    ``config.model`` (its weights loaded into ``model.autoencoder``) and written to ``latents.safetensors``, or,
    on resume, read from it. ``write``: this process writes the file (the main one under torchrun)."""
    path = Path(run_dir) / LATENTS_FILE
    if resume:
        try:
            stored = load(path.read_bytes())
        except (OSError, SafetensorError) as error:
            raise GenladderError(f"{path} cannot be read ({str(error)[:80]}); the run cannot resume without its "
                                 "encoded digits: start it again in a new folder") from None
        train, test = stored["train"], stored["test"]
    else:
        autoencoder = load_autoencoder(config.model.autoencoder_run, load_run, config.model.autoencoder_checkpoint)
        model.autoencoder.load_state_dict(autoencoder.model.state_dict())
        model.autoencoder.to(next(model.parameters()).device)
        device = next(model.parameters()).device  # the LatentGenerator's frozen encoder, scaled latents (N, c, h, w)
        train = _in_batches(model.encode, pixels.train_images, pixels.train_labels, device)
        test = _in_batches(model.encode, pixels.test_images, pixels.test_labels, device)
        if write:
            atomic_write_bytes(path, save({"train": train.contiguous(), "test": test.contiguous()}))
    if len(train) != len(pixels.train_images) or len(test) != len(pixels.test_images):
        raise GenladderError(f"{path} holds {len(train)}/{len(test)} digits, not the run's "
                             f"{len(pixels.train_images)}/{len(pixels.test_images)}; start the run again")
    return TrainingData(train_images=train, train_labels=pixels.train_labels, test_images=test,
                        test_labels=pixels.test_labels, to_model_range=lambda z: z)

