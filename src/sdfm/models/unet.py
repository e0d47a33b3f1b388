"""A small U-Net velocity field for images, taking and returning flat vectors [n, C*H*W]."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sdfm.checks import check_float, check_int
from sdfm.models.embeddings import Conditioning, rename_legacy_keys
from sdfm.models.mlp import MAX_DIM, MAX_PARAMETERS


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNetVelocity`.

    Attributes:
        image_shape: (C, H, W); H and W must be divisible by 2^(len(mults) - 1).
        base: channels at the first level (width).
        mults: channel multiplier per level; each level after the first halves the resolution.
        num_res_blocks: residual blocks per level.
        attention: self-attention in the bottleneck.
        num_classes: number of class labels (None = unconditional).
        dropout: dropout inside the residual blocks.
        cond_dim: size of continuous condition vectors z (None = none); exclusive with num_classes.
        mean_flow: also embed the interval r - t (a mean-flow model u(x, t, r)).
        time_scale: factor on t in the time embeddings (None: 1000, or 1 for mean-flow models;
            see :func:`sdfm.models.embeddings.resolve_time_scale`).
    """

    image_shape: tuple[int, int, int]
    base: int = 32
    mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention: bool = True
    num_classes: int | None = None
    dropout: float = 0.0
    cond_dim: int | None = None
    mean_flow: bool = False
    time_scale: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        object.__setattr__(self, "mults", tuple(int(m) for m in self.mults))
        if len(self.image_shape) != 3 or min(self.image_shape) < 1 or max(self.image_shape) > 1 << 15:
            raise ValueError(f"image_shape: expected (C, H, W) in [1, 32768], got {self.image_shape}")
        w = "unet"
        check_int("dim", self.dim, low=1, high=MAX_DIM, where=w)
        check_int("base", self.base, low=1, high=4096, where=w)
        if not 1 <= len(self.mults) <= 8 or not all(1 <= m <= 64 for m in self.mults):
            raise ValueError(f"unet: mults: expected 1..8 multipliers in [1, 64], got {self.mults}")
        check_int("num_res_blocks", self.num_res_blocks, low=1, high=64, where=w)
        check_int("num_classes", self.num_classes, low=1, high=1 << 24, none=True, where=w)
        check_int("cond_dim", self.cond_dim, low=1, high=MAX_DIM, none=True, where=w)
        check_float("dropout", self.dropout, low=0, high=1, where=w)
        check_float("time_scale", self.time_scale, low=0, low_open=True, none=True, where=w)
        widest = self.base * max(self.mults)
        params = 18 * widest * widest * self.num_res_blocks * len(self.mults)
        if params > MAX_PARAMETERS:
            raise ValueError(f"unet: about {params:.3g} parameters; sdfm builds at most {MAX_PARAMETERS:.3g}")
        factor = 2 ** (len(self.mults) - 1)
        _, h, w = self.image_shape
        if h % factor or w % factor:
            raise ValueError(
                f"image_shape: H and W ({h}x{w}) must be divisible by {factor} for {len(self.mults)} levels "
                f"(mults={self.mults}); use fewer levels"
            )

    @property
    def dim(self) -> int:
        return math.prod(self.image_shape)

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads if channels % heads == 0 else 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class UNetVelocity(nn.Module):
    """v(x [n, C*H*W], t [n], cond | None, r [n] | None) -> [n, C*H*W]: a DDPM-style U-Net (residual
    blocks with
    time/label embedding, strided-conv downsampling, nearest upsampling, skip connections)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c_img = config.image_shape[0]
        emb_dim = 4 * config.base
        self.embed = Conditioning.from_config(config, emb_dim, config.base)
        self._register_load_state_dict_pre_hook(rename_legacy_keys)
        chans = [config.base * m for m in config.mults]
        self.inp = nn.Conv2d(c_img, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips = [chans[0]]
        c = chans[0]
        for level, ch in enumerate(chans):
            for _ in range(config.num_res_blocks):
                self.down.append(_ResBlock(c, ch, emb_dim, config.dropout))
                c = ch
                skips.append(c)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = _ResBlock(c, c, emb_dim, config.dropout)
        self.mid_attn = _Attention(c) if config.attention else nn.Identity()
        self.mid2 = _ResBlock(c, c, emb_dim, config.dropout)
        self.up = nn.ModuleList()
        for level, ch in reversed(list(enumerate(chans))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(_ResBlock(c + skips.pop(), ch, emb_dim, config.dropout))
                c = ch
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, c_img, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n = x.shape[0]
        if x.dim() != 2 or x.shape[1] != self.config.dim:
            raise ValueError(
                f"x: expected [n, {self.config.dim}] (image {self.config.image_shape}), got {list(x.shape)}"
            )
        emb = self.embed(t, cond, r, n, x.device)
        h = self.inp(x.reshape(n, *self.config.image_shape))
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h).reshape(n, -1).to(x.dtype)
