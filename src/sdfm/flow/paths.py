"""The linear (rectified / OT) probability path. Convention, stated once: t = 0 is noise, t = 1 data.

x_t = (1 - t) x0 + t x1,        u_t = d x_t / dt = x1 - x0.
"""

from __future__ import annotations

import torch


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t [n] (or a scalar) -> broadcastable against x [n, ...]."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"t: expected shape [{x.shape[0]}] to match x {list(x.shape)}, got {list(t.shape)}")
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t x1 for x0, x1 [n, ...] and t [n] in [0, 1]."""
    if x0.shape != x1.shape:
        raise ValueError(f"x1: shape {list(x1.shape)} differs from x0's {list(x0.shape)}")
    tt = _expand(t, x0)
    return x0 + tt * (x1 - x0)


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The conditional velocity of the linear path, u = x1 - x0 (independent of t)."""
    return x1 - x0
