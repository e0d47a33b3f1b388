"""Source (noise) distributions of the semidiscrete problem."""

from __future__ import annotations

import torch


def standard_normal(
    n: int,
    d: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The default source of sdfm: n samples [n, d] of N(0, I_d)."""
    return torch.randn(n, d, generator=generator, device=device, dtype=dtype)


def draw(noise, n: int, d: int, *, generator, device, dtype) -> torch.Tensor:
    """Calls a noise sampler and checks what it returned."""
    x = noise(n, d, generator=generator, device=device, dtype=dtype)
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (n, d):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"noise: the sampler must return a tensor of shape [{n}, {d}], got {shape}")
    return x.to(device=device, dtype=dtype)
