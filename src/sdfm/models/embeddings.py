"""Embeddings of time and class labels."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalTimeEmbedding(nn.Module):
    """t [n] in [0, 1] -> [n, dim]: sin/cos features at geometric frequencies (Vaswani et al.),
    with t scaled by 1000 as in diffusion U-Nets so that the frequencies resolve small steps."""

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = 1000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim: expected an even number >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = (self.scale * t.float())[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class LabelEmbedding(nn.Module):
    """Class labels [n] -> [n, dim]; index ``num_classes`` is the "no label" token (for label dropout
    and classifier-free guidance). ``None`` labels and the label -1 (``sdfm.samplers.NULL_LABEL``)
    embed as the no-label token."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor | None, n: int, device) -> torch.Tensor:
        if labels is None:
            labels = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long)
        labels = torch.where(labels == -1, self.num_classes, labels)
        if bool(((labels < 0) | (labels > self.num_classes)).any()):
            raise ValueError(
                f"cond: labels must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}"
            )
        return self.table(labels)
