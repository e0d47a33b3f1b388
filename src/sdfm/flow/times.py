"""Time samplers for training: ``sampler(n, generator=, device=, dtype=) -> t [n]`` in [0, 1]."""

from __future__ import annotations

import torch


def uniform(n: int, *, generator=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """t ~ U[0, 1]."""
    return torch.rand(n, generator=generator, device=device, dtype=dtype)


def logit_normal(
    n: int, *, generator=None, device="cpu", dtype=torch.float32, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """t = sigmoid(z), z ~ N(mean, std^2) (Esser et al. 2024): more weight on intermediate times."""
    z = torch.randn(n, generator=generator, device=device, dtype=dtype)
    return torch.sigmoid(mean + std * z)


#: name -> sampler
TIME_SAMPLERS = {"uniform": uniform, "logit-normal": logit_normal}


def get_time_sampler(name: str):
    """The time sampler registered under ``name`` (ValueError naming the choices otherwise)."""
    if name not in TIME_SAMPLERS:
        raise ValueError(f"time_sampler: expected one of {sorted(TIME_SAMPLERS)}, got {name!r}")
    return TIME_SAMPLERS[name]
