"""The ε-network of the diffusion rungs: a U-Net ``UNet(x_t, t, labels=None) -> output`` (B, C, H, W).

Two architectures share one config:

* ``arch="tutorial"`` — the tutorial's SimpleDDPMModel / SimpleCDDPMModel, kept faithful: residual
  block = 1×1 conv → GroupNorm(8) → swish → 3×3 conv → GroupNorm(8) → swish, plus the 1×1 output,
  ÷ 1.44; each encoder level is res block(s) + 2× max-pool, then the raw float t through
  Dense(w, LeakyReLU) → Dense(w) (and, if conditional, Embedding → Dense of the label) is *added*;
  decoder levels concat the skip, ConvTranspose 3×3 stride 2, then res blocks. Fixed defects:
  the decoder no longer reverses the caller's skip list in place (``xs.reverse()``), and the
  conditional model no longer reads the never-set ``self.filter_nums``.
* ``arch="default"`` — the improved net (Ho et al. 2020 / Nichol & Dhariwal 2021 style): sinusoidal
  time embedding → MLP, the time(+label) embedding injected inside every residual block as a
  GroupNorm scale-shift, SiLU, dropout, optional self-attention at listed resolutions, strided-conv
  down / nearest+conv up sampling, one skip per block.

Labels: int64 (B,), values 0…num_classes−1, and ``num_classes`` itself means "no label" (the null
label of classifier-free guidance is an extra, learned embedding row, as in k-diffusion).
``num_classes = 0`` makes the network unconditional; then ``labels`` must be None. Label dropout
is *not* done here (see ``genladder.diffusion.objective``): the forward pass is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genladder.config import config_from_dict
from genladder.errors import GenladderError

ARCHS = ("tutorial", "default")


@dataclass(frozen=True)
class UNetConfig:
    """Constructor arguments of :class:`UNet`; JSON-able through ``to_dict``/``from_dict``."""

    arch: str = "default"  # one of ARCHS
    in_channels: int = 1  # image channels; the output has the same number
    image_size: int = 32  # only used to place attention (resolutions are in pixels) and to validate
    num_classes: int = 0  # 0 ⇒ unconditional; else labels 0…num_classes−1 and num_classes = null label
    widths: tuple[int, ...] = (32, 64, 128)  # channels per level (32→16→8 px); CPU-sized, ≈ 4.1 M params
    blocks_per_level: int = 2  # res blocks per encoder level; decoder levels get one more (skip of the down)
    attention_resolutions: tuple[int, ...] = (8,)  # default arch: self-attention at these feature sizes
    num_heads: int = 4  # default arch: attention heads
    dropout: float = 0.1  # default arch: dropout inside res blocks (Ho et al. 2020 used 0.1)
    norm_groups: int = 8  # GroupNorm groups (the tutorial's 8)
    patch_size: int = 1  # default arch: pixel-unshuffle p×p patches into channels first (p = 2: 32 px → 16)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))  # JSON gives lists (frozen: set once, here)
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        if self.arch not in ARCHS:
            raise GenladderError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("in_channels", "image_size", "blocks_per_level", "num_heads", "norm_groups", "patch_size"):
            if int(getattr(self, name)) < 1:
                raise GenladderError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise GenladderError(f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if not self.widths or any(w < 1 or w % self.norm_groups for w in self.widths):
            raise GenladderError(f"widths must be positive multiples of norm_groups={self.norm_groups}, "
                                 f"got {self.widths}")
        if not 0.0 <= self.dropout < 1.0:
            raise GenladderError(f"dropout must be in [0, 1), got {self.dropout}")
        factor = 2 ** self.num_downsamples * self.patch_size
        if self.image_size % factor:
            raise GenladderError(f"image_size must be divisible by {factor} for {len(self.widths)} levels "
                                 f"of arch {self.arch!r} with patch size {self.patch_size}, got {self.image_size}")
        if self.arch == "tutorial" and (self.attention_resolutions or self.dropout or self.patch_size != 1):
            raise GenladderError("arch 'tutorial' has no attention, dropout or patches; set "
                                 "attention_resolutions=(), dropout=0 and patch_size=1")
        sizes = [self.image_size // self.patch_size // 2**i for i in range(len(self.widths))]
        for r in self.attention_resolutions:
            if r not in sizes:
                raise GenladderError(f"attention resolution {r} is not a feature size of this net {sizes}")
            if self.widths[sizes.index(r)] % self.num_heads:
                raise GenladderError(f"width {self.widths[sizes.index(r)]} at resolution {r} is not "
                                     f"divisible by num_heads={self.num_heads}")

    @property
    def num_downsamples(self) -> int:
        """2× reductions: one per level for the tutorial (pool after each), one between levels otherwise."""
        return len(self.widths) if self.arch == "tutorial" else len(self.widths) - 1

    @classmethod
    def preset(cls, name: str, num_classes: int = 0, in_channels: int = 1) -> UNetConfig:
        """'tutorial': the tutorial's net (widths 64/128/256, ≈ 5.06 M params); 'default': the improved net.

        The default (widths 32/64/128, 2 blocks per level, attention at 8×8, dropout 0.1, ≈ 4.1 M
        params) is sized for a CPU: its 32×32 level is 32 channels wide where the tutorial's is 64,
        so a training step costs less than the tutorial net's despite the deeper blocks.
        """
        if name == "tutorial":
            return cls(arch="tutorial", in_channels=in_channels, num_classes=num_classes,
                       widths=(64, 128, 256), blocks_per_level=1, attention_resolutions=(), dropout=0.0)
        if name == "default":
            return cls(arch="default", in_channels=in_channels, num_classes=num_classes)
        raise GenladderError(f"UNet preset must be one of ('tutorial', 'default'), got {name!r}")

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["widths"], d["attention_resolutions"] = list(self.widths), list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return config_from_dict(cls, data)


# ------------------------------------------------------------------------------------ tutorial blocks
class TutorialResBlock(nn.Module):
    """The tutorial's ConvResidualLayer: (swish(GN(conv3(swish(GN(r))))) + r) / 1.44 with r = conv1×1(x)."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 1)
        self.gn1 = nn.GroupNorm(groups, c_out, eps=1e-3)  # eps: tfa GroupNormalization's default
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.gn2 = nn.GroupNorm(groups, c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(x)
        h = F.silu(self.gn1(residual))
        h = F.silu(self.gn2(self.conv2(h)))
        return (h + residual) / 1.44  # the tutorial's constant, ≈ √2: keeps the sum's variance near 1


def _tutorial_embedding(c_in: int, width: int) -> nn.Sequential:
    # Keras Dense(w, activation=LeakyReLU()) → Dense(w); Keras' LeakyReLU slope defaults to 0.3
    return nn.Sequential(nn.Linear(c_in, width), nn.LeakyReLU(0.3), nn.Linear(width, width))


# ------------------------------------------------------------------------------------- default blocks
def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer position encoding of the step index (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, app. B).

    t: (B,) int or float → (B, dim) with [cos | sin] halves, frequencies 1 … 1/10000.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2·half)


class ResBlock(nn.Module):
    """GN → SiLU → conv3 → GN·(1 + scale) + shift from the embedding → SiLU → dropout → conv3, + skip.

    The scale-shift injection is improved-diffusion's ``use_scale_shift_norm`` (Nichol & Dhariwal 2021).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # 2 × (B, C_out, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, residual (Ho et al. 2020, app. B, at 16×16 there)."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)  # (B, 3, nh, hs, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # 3 × (B, nh, HW, hs)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hs)
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj(h)


class Block(nn.Module):
    """A residual block optionally followed by self-attention."""

    def __init__(self, c_in: int, c_out: int, attend: bool, cfg: UNetConfig, emb_dim: int) -> None:
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, cfg.norm_groups, cfg.dropout)
        self.attn = SelfAttention(c_out, cfg.num_heads, cfg.norm_groups) if attend else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


# ------------------------------------------------------------------------------------------ the net
class UNet(nn.Module):
    """U-Net ε-network (or x0 / v network): ``forward(x_t, t, labels=None) -> (B, C, H, W)``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        if config.arch == "tutorial":
            self._build_tutorial(config)
        else:
            self._build_default(config)

    def _build_tutorial(self, cfg: UNetConfig) -> None:
        w, g, n = cfg.widths, cfg.norm_groups, cfg.blocks_per_level
        ins = (cfg.in_channels, *w[:-1])
        self.encoders = nn.ModuleList(
            nn.Sequential(*[TutorialResBlock(ins[i] if j == 0 else w[i], w[i], g) for j in range(n)],
                          nn.MaxPool2d(2)) for i in range(len(w)))
        self.time_embeddings = nn.ModuleList(_tutorial_embedding(1, width) for width in w)
        if cfg.num_classes:  # Embedding → Dense per level; one extra row for the null label
            self.label_embeddings = nn.ModuleList(
                nn.Sequential(nn.Embedding(cfg.num_classes + 1, width), nn.Linear(width, width)) for width in w)
        self.mid = TutorialResBlock(w[-1], w[-1], g)
        decoders, c_h = [], w[-1]
        for width in reversed(w):  # concat(skip, h) → up-conv → (n + 1) res blocks
            up = nn.ConvTranspose2d(width + c_h, width, 3, stride=2, padding=1, output_padding=1)
            decoders.append(nn.Sequential(up, *[TutorialResBlock(width, width, g) for _ in range(n + 1)]))
            c_h = width
        self.decoders = nn.ModuleList(decoders)
        self.final = nn.Sequential(TutorialResBlock(w[0], w[0], g), nn.Conv2d(w[0], cfg.in_channels, 3, padding=1))

    def _build_default(self, cfg: UNetConfig) -> None:
        w0, emb_dim = cfg.widths[0], 4 * cfg.widths[0]
        self.time_mlp = nn.Sequential(nn.Linear(w0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes:  # one extra row: the learned null label (index num_classes)
            self.label_embedding = nn.Embedding(cfg.num_classes + 1, emb_dim)
        # Patches (p > 1): a lossless space-to-depth reshape, so every level runs at 1/p² the pixels;
        # the output conv predicts p² values per position and depth-to-space puts them back.
        p = cfg.patch_size
        self.patchify = nn.PixelUnshuffle(p)  # no weights: files of p = 1 nets keep their layout
        self.stem = nn.Conv2d(cfg.in_channels * p * p, w0, 3, padding=1)
        ch, skips, res = w0, [w0], cfg.image_size // p
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for i, width in enumerate(cfg.widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                blocks.append(Block(ch, width, res in cfg.attention_resolutions, cfg, emb_dim))
                ch = width
                skips.append(ch)
            self.down_blocks.append(blocks)
            if i < len(cfg.widths) - 1:
                self.downsamples.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([Block(ch, ch, res in cfg.attention_resolutions, cfg, emb_dim),
                                  Block(ch, ch, False, cfg, emb_dim)])
        self.up_blocks, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for i, width in reversed(list(enumerate(cfg.widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.blocks_per_level + 1):
                blocks.append(Block(ch + skips.pop(), width, res in cfg.attention_resolutions, cfg, emb_dim))
                ch = width
            self.up_blocks.append(blocks)
            if i > 0:
                self.upsamples.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                    nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        self.out = nn.Sequential(nn.GroupNorm(cfg.norm_groups, ch), nn.SiLU(),
                                 nn.Conv2d(ch, cfg.in_channels * p * p, 3, padding=1), nn.PixelShuffle(p))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, C, H, W); t (B,) step indices (0 = first noising step); labels (B,) int64 or None.

        Returns the network output (ε̂, x̂0 or v̂, whichever it was trained on), shape (B, C, H, W).
        """
        self._check_inputs(x_t, t, labels)
        if self.config.arch == "tutorial":
            return self._forward_tutorial(x_t, t, labels)
        return self._forward_default(x_t, t, labels)

    def _forward_tutorial(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        t_in = t.to(x.dtype)[:, None]  # (B, 1): the raw step index as a float, as in the tutorial
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x) + self.time_embeddings[i](t_in)[:, :, None, None]  # (B, w, H, W) + (B, w, 1, 1)
            if labels is not None:
                x = x + self.label_embeddings[i](labels)[:, :, None, None]  # (B, w, 1, 1)
            skips.append(x)
        return self.final(self._decode_tutorial(self.mid(skips[-1]), skips))

    def _decode_tutorial(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """The tutorial's decoder over the encoder outputs ``skips`` (shallowest first), read deepest first.

        The tutorial reversed the caller's list in place (``xs.reverse()``), so a second reader of the list
        saw it backwards; here the list is only read.
        """
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([skip, x], dim=1))  # (B, w_skip + w_h, H, W) → (B, w, 2H, 2W)
        return x

    def _forward_default(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.config.widths[0]).to(x.dtype))  # (B, 4·w0)
        if labels is not None:
            emb = emb + self.label_embedding(labels)  # (B, 4·w0)
        h = self.stem(self.patchify(x))  # (B, C·p², H/p, W/p) → (B, w0, H/p, W/p)
        hs = [h]
        for i, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, blocks in enumerate(self.up_blocks):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)  # (B, C_h + C_skip, H, W) → (B, w, H, W)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)
        return self.out(h)

    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> None:
        cfg = self.config
        if x_t.dim() != 4 or x_t.shape[1] != cfg.in_channels:
            raise GenladderError(f"x_t must have shape (B, {cfg.in_channels}, H, W), got {tuple(x_t.shape)}")
        factor = 2 ** cfg.num_downsamples * cfg.patch_size
        if x_t.shape[2] % factor or x_t.shape[3] % factor:
            raise GenladderError(f"image height and width must be divisible by {factor}, got {tuple(x_t.shape)}")
        if t.shape != (x_t.shape[0],):
            raise GenladderError(f"t must have shape ({x_t.shape[0]},), got {tuple(t.shape)}")
        if cfg.num_classes == 0 and labels is not None:
            raise GenladderError("this UNet is unconditional (num_classes=0): pass labels=None")
        if cfg.num_classes and labels is None:
            raise GenladderError(f"this UNet is class-conditional: pass labels (B,), {cfg.num_classes} = null label")
        if labels is not None and (labels.shape != (x_t.shape[0],) or labels.dtype != torch.int64):
            raise GenladderError(f"labels must be int64 of shape ({x_t.shape[0]},), "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
