"""Measure one case under one variant: training, every sampling row, and the diffusers peer beside them."""

from __future__ import annotations

import torch

from genladder.data import to_signed
from genladder.rungs import is_diffusion

from bench_cases import Case, Sampling, Settings, Variant, case_config, compile_in_process, samplings
from bench_machine import OtherLoad, PeakMemory, median_seconds
from bench_ours import (
    BatchCursor,
    class_labels,
    count_gflop,
    decoder_gflop_per_image,
    evaluations_per_image,
    forward_gflop_per_image,
    make_trainer,
    sample_fn,
    synthetic_data,
    train_gflop_per_image,
    train_step,
)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _train_figures(seconds: float, batch: int, gflop_per_image: float, peak_gflops: float, peak_mb) -> dict:
    images_per_s = batch / seconds
    gflops = images_per_s * gflop_per_image
    return {"batch_size": batch, "step_seconds": seconds, "images_per_s": images_per_s,
            "gflop_per_image": gflop_per_image, "gflop_per_s": gflops, "share_of_peak": gflops / peak_gflops,
            "peak_mb": peak_mb}


def _sampling_figures(sampling: Sampling, seconds: float, n: int, evals: int, gflop_per_eval: float,
                      peak_gflops: float, peak_mb) -> dict:
    gflops = n * evals * gflop_per_eval / seconds
    return {"label": sampling.label, "sampler": sampling.sampler, "steps": sampling.steps,
            "guidance": sampling.guidance, "evaluations_per_image": evals, "images": n, "seconds": seconds,
            "images_per_s": n / seconds, "evaluations_per_s": n * evals / seconds, "gflop_per_s": gflops,
            "share_of_peak": gflops / peak_gflops, "peak_mb": peak_mb}


def _sample_timed(draw_at, steps: int | None, settings: Settings, device: torch.device) -> tuple[float, float | None]:
    """Median seconds of a sampler call, and the memory it adds; warm-up calls run at ≤ 2 steps."""
    warm = draw_at(min(steps, 2) if steps is not None else 2)
    for _ in range(settings.sample_warmup):
        warm()
    with PeakMemory(device) as memory:
        seconds, _ = median_seconds(draw_at(steps), warmup=0, repeats=settings.sample_repeats, device=device)
    return seconds, memory.mb


def run_case(case: Case, variant: Variant, settings: Settings, device: torch.device, peak_gflops: float,
             with_peer: bool) -> dict:
    """All figures of ``case`` under ``variant`` as a JSON-able dict (see bench.py for the layout)."""
    load = OtherLoad()
    if variant.compiles:
        compile_in_process()
    config = case_config(case, settings.train_batch, variant.train_overrides)
    kind, model_config = case.kind, config["model"]
    T = config["objective"]["schedule"]["T"] if is_diffusion(kind) else 0
    rows, notes = samplings(case, T, settings)
    if variant.name != "eager" and kind in ("vae", "cvae"):
        notes.append(f"{variant.name}: prior sampling calls model.sample, which this variant leaves as it is")
    batch = settings.train_batch
    images, labels = synthetic_data(model_config, 4 * batch, device)

    # 1. Training: build as loop.train does (the variant's TrainConfig switches included), warm up, time steps.
    cursor = BatchCursor(len(images), batch, seed=0, device=device)
    with PeakMemory(device) as memory:
        trainer = make_trainer(kind, config, device)
        seconds, _ = median_seconds(lambda: train_step(trainer, images, labels, cursor.next()),
                                    warmup=settings.train_warmup, repeats=settings.train_steps, device=device)
    model = trainer.model
    forward_gflop = forward_gflop_per_image(kind, model, model_config, device)
    train_gflop = train_gflop_per_image(trainer, images, labels)
    result = {"case": case.name, "kind": kind, "preset": case.preset, "variant": variant.name,
              "params": _params(model), "gflop_per_image": {"forward": forward_gflop, "train": train_gflop},
              "train": _train_figures(seconds, batch, train_gflop, peak_gflops, memory.mb), "sampling": [],
              "peer": None, "notes": notes}
    trainer = None  # free its optimiser state and activations before sampling

    # 2. Sampling: eval mode and the default memory format, as `genladder sample` loads a run.
    model.eval().to(memory_format=torch.contiguous_format)
    call = variant.wrap(model)
    n = settings.sample_batch
    per_eval = decoder_gflop_per_image(model, device) if kind in ("vae", "cvae") else forward_gflop
    for sampling in rows:
        target = model if sampling.sampler == "prior" else call
        seconds, peak_mb = _sample_timed(
            lambda steps, s=sampling, m=target: sample_fn(kind, config, m, s, n, device, steps=steps),
            sampling.steps if sampling.sampler != "prior" else None, settings, device)
        result["sampling"].append(_sampling_figures(sampling, seconds, n, evaluations_per_image(sampling, T),
                                                    per_eval, peak_gflops, peak_mb))
    del model, call

    # 3. The peer at a matching size, same batch, same rows.
    if with_peer and is_diffusion(kind):
        result["peer"] = run_peer(case, config, variant, settings, device, peak_gflops, rows, images, labels)
        peer_train = result["peer"]["train"]["images_per_s"]
        result["train"]["peer_ratio"] = result["train"]["images_per_s"] / peer_train
        for ours, theirs in zip(result["sampling"], result["peer"]["sampling"], strict=True):
            ours["peer_ratio"] = ours["evaluations_per_s"] / theirs["evaluations_per_s"]
        peer_gflop = result["peer"]["gflop_per_image"]["forward"]
        if abs(peer_gflop / forward_gflop - 1) > 0.1:
            notes.append(f"the peer costs {peer_gflop:.3g} GFLOP per evaluation against our {forward_gflop:.3g} "
                         "(no diffusers twin of this net): compare '% of peak' more than images/s")
    result["other_cores"] = load.cores()
    return result


def run_peer(case: Case, config: dict, variant: Variant, settings: Settings, device: torch.device,
             peak_gflops: float, rows: list[Sampling], images: torch.Tensor, labels: torch.Tensor) -> dict:
    """diffusers ``UNet2DModel`` + schedulers measured like ours (``bench_peer``)."""
    from bench_peer import PeerTrainer, make_scheduler, peer_sample, unet2d_kwargs

    model_config, batch = config["model"], settings.train_batch
    memory_format = torch.channels_last if config["train"]["channels_last"] else torch.contiguous_format
    cursor = BatchCursor(len(images), batch, seed=0, device=device)

    def batch_at(index):
        return to_signed(images[index]).contiguous(memory_format=memory_format), labels[index]

    with PeakMemory(device) as memory:
        trainer = PeerTrainer(model_config, config["objective"], config["train"], device, wrap=variant.wrap)
        seconds, _ = median_seconds(lambda: trainer.step(*batch_at(cursor.next())), warmup=settings.train_warmup,
                                    repeats=settings.train_steps, device=device)
    model = trainer.model
    x0, y = batch_at(torch.arange(4, device=device))
    train_gflop = count_gflop(lambda: trainer.forward_backward(x0, y)) / len(x0)
    num_classes = model_config.get("num_classes", 0)
    with torch.inference_mode():
        model.eval()
        t = torch.zeros(2, dtype=torch.long, device=device)
        cl = torch.zeros(2, dtype=torch.long, device=device) if num_classes else None
        forward_gflop = count_gflop(lambda: model(x0[:2].contiguous(), t, class_labels=cl)) / 2
    trainer = None  # free its optimiser state and activations before sampling
    model.to(memory_format=torch.contiguous_format)
    call = variant.wrap(model)
    shape = (settings.sample_batch, model_config["in_channels"], model_config["image_size"],
             model_config["image_size"])
    grid = class_labels(shape[0], device)
    T = config["objective"]["schedule"]["T"]
    sampling_rows = []
    for sampling in rows:
        scheduler = make_scheduler(sampling.sampler, config["objective"]["schedule"])

        def draw_at(steps, s=sampling, scheduler=scheduler):
            generator = torch.Generator(device=device).manual_seed(0)
            return lambda: peer_sample(call, scheduler, shape, steps, s.guidance, grid if num_classes else None,
                                       num_classes, generator)

        seconds_s, peak_mb = _sample_timed(draw_at, sampling.steps, settings, device)
        sampling_rows.append(_sampling_figures(sampling, seconds_s, shape[0], evaluations_per_image(sampling, T),
                                               forward_gflop, peak_gflops, peak_mb))
    return {"name": "diffusers UNet2DModel", "unet2d_kwargs": unet2d_kwargs(model_config),
            "params": _params(model), "gflop_per_image": {"forward": forward_gflop, "train": train_gflop},
            "train": _train_figures(seconds, batch, train_gflop, peak_gflops, memory.mb), "sampling": sampling_rows}
