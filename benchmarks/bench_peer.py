"""The peer of the diffusion cases: diffusers' ``UNet2DModel`` and schedulers at a matching size.

The peer runs the loops of diffusers' own examples (``examples/unconditional_image_generation/
train_unconditional.py`` for training, ``DDIMPipeline``/``DDPMPipeline.__call__`` for sampling),
with classifier-free guidance added as its conditional pipelines do it. Only imported when
diffusers is installed (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def peer_available() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


def unet2d_kwargs(unet_config: dict) -> dict:
    """``UNet2DModel`` arguments matching one of our U-Nets: widths, blocks, attention, groups, classes.

    Level i of our net works at image_size / (p·2**i) pixels (p the patch size) and gets
    self-attention when that size is listed; the mid block attends when the bottom level does. The
    default arch injects the time embedding by scale-and-shift (diffusers'
    ``resnet_time_scale_shift="scale_shift"``). With patches the peer sees the p×p-unshuffled image
    (``PatchedPeer``). The tutorial arch has no diffusers twin (raw-t embedding, a pool after every
    level): the peer keeps its widths and block count with diffusers' blocks. The class embedding
    has one extra row, the null label.
    """
    p = unet_config.get("patch_size", 1)
    widths, size = list(unet_config["widths"]), unet_config["image_size"] // p
    attention = set(unet_config.get("attention_resolutions", ()))
    sizes = [size // 2**i for i in range(len(widths))]
    attended = [s in attention for s in sizes]
    heads = unet_config.get("num_heads", 4)
    attn_width = next((w for w, a in zip(widths, attended, strict=True) if a), widths[-1])
    num_classes = unet_config.get("num_classes", 0)
    return {
        "sample_size": size,
        "in_channels": unet_config["in_channels"] * p * p,
        "out_channels": unet_config["in_channels"] * p * p,
        "block_out_channels": tuple(widths),
        "layers_per_block": unet_config["blocks_per_level"],
        "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attended),
        "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attended)),
        "add_attention": attended[-1],
        "attention_head_dim": attn_width // heads,
        "norm_num_groups": unet_config.get("norm_groups", 8),
        "dropout": unet_config.get("dropout", 0.0),
        "resnet_time_scale_shift": "scale_shift" if unet_config.get("arch") == "default" else "default",
        "num_class_embeds": num_classes + 1 if num_classes else None,
    }


class PatchedPeer(torch.nn.Module):
    """``UNet2DModel`` between a p×p pixel-unshuffle and its inverse, as our ``patch_size`` net runs."""

    def __init__(self, unet, patch_size: int) -> None:
        super().__init__()
        self.unet, self.patch_size = unet, patch_size

    def forward(self, sample: torch.Tensor, timestep, class_labels=None):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        out = self.unet(F.pixel_unshuffle(sample, self.patch_size), timestep, class_labels=class_labels).sample
        return UNet2DOutput(sample=F.pixel_shuffle(out, self.patch_size))  # (B, C, H, W)


def build_peer(unet_config: dict) -> torch.nn.Module:
    """The peer network for one of our U-Net configs: ``UNet2DModel``, patched when ours is."""
    import diffusers

    unet = diffusers.UNet2DModel(**unet2d_kwargs(unet_config))
    p = unet_config.get("patch_size", 1)
    return PatchedPeer(unet, p) if p > 1 else unet


def _beta_kwargs(schedule: dict) -> dict:
    if schedule["kind"] == "cosine":  # Nichol & Dhariwal 2021, β clipped at 0.999 (s = 0.008 in both)
        return {"num_train_timesteps": schedule["T"], "beta_schedule": "squaredcos_cap_v2"}
    return {"num_train_timesteps": schedule["T"], "beta_schedule": "linear",
            "beta_start": schedule["beta_1"], "beta_end": schedule["beta_T"]}


def make_scheduler(sampler: str, schedule: dict):
    """The diffusers scheduler equivalent to our sampler (the settings tests/test_samplers.py checks)."""
    import diffusers

    betas = _beta_kwargs(schedule)
    if sampler == "ddim":
        return diffusers.DDIMScheduler(**betas, timestep_spacing="trailing", clip_sample=True)
    if sampler == "dpmpp":
        return diffusers.DPMSolverMultistepScheduler(**betas, algorithm_type="dpmsolver++", solver_order=2,
                                                     timestep_spacing="trailing", final_sigmas_type="zero",
                                                     lower_order_final=True)
    return diffusers.DDPMScheduler(**betas, variance_type="fixed_large", clip_sample=True)


class PeerTrainer:
    """diffusers' training step: add_noise, ε-MSE, Adam, gradient clipping, ``EMAModel`` (train_unconditional.py).

    Label dropout to the null class is ours (diffusers' example is unconditional); its cost is nil.
    """

    def __init__(self, unet_config: dict, objective: dict, train: dict, device: torch.device, wrap=lambda m: m):
        import diffusers
        from diffusers.training_utils import EMAModel

        torch.manual_seed(train.get("seed", 0))
        self.model = build_peer(unet_config).to(device)
        self.model.to(memory_format=torch.channels_last if train.get("channels_last", True)
                      else torch.contiguous_format)
        self.call = wrap(self.model)
        self.scheduler = diffusers.DDPMScheduler(**_beta_kwargs(objective["schedule"]))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train["lr"])
        self.ema = EMAModel(self.model.parameters(), decay=train["ema_decay"]) if train.get("ema_decay") else None
        self.grad_clip = train.get("grad_clip")
        self.num_classes = unet_config.get("num_classes", 0)
        self.label_dropout = objective.get("label_dropout", 0.0)
        self.model.train()

    def _loss(self, model, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B = x0.shape[0]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), device=x0.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        class_labels = None
        if self.num_classes:
            drop = torch.rand(B, device=x0.device) < self.label_dropout
            class_labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return F.mse_loss(model(x_t, t, class_labels=class_labels).sample.float(), noise)

    def step(self, x0: torch.Tensor, labels: torch.Tensor) -> float:
        loss = self._loss(self.call, x0, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        return loss.item()

    def forward_backward(self, x0: torch.Tensor, labels: torch.Tensor) -> None:
        """For FLOP counting: the plain module's loss and backward, no update."""
        self._loss(self.model, x0, labels).backward()
        self.optimizer.zero_grad(set_to_none=True)


def peer_sample(model, scheduler, shape: tuple[int, ...], steps: int | None, guidance: float,
                labels: torch.Tensor | None, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """diffusers' pipeline loop: set_timesteps, then unet → scheduler.step per timestep.

    Guidance as diffusers' conditional pipelines: one forward of [x; x] with [c; ∅], then
    ε_∅ + s·(ε_c − ε_∅) with guidance_scale s = 1 + w (our w).
    """
    device = next(model.parameters()).device
    scheduler.set_timesteps(steps if steps is not None else scheduler.config.num_train_timesteps)
    x = torch.randn(shape, generator=generator, device=device)
    with torch.inference_mode():
        for t in scheduler.timesteps:
            if labels is None:
                out = model(x, t).sample.float()  # fp32 for the scheduler, also under bf16 autocast
            elif guidance:
                both = torch.cat([labels, torch.full_like(labels, null_label)])  # (2B,): [c; ∅]
                cond, uncond = model(torch.cat([x, x]), t, class_labels=both).sample.float().chunk(2)
                out = uncond + (1.0 + guidance) * (cond - uncond)
            else:
                out = model(x, t, class_labels=labels).sample.float()
            x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x
