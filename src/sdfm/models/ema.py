"""Exponential moving average of model weights (on torch.optim.swa_utils.AveragedModel)."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def _ema_update(decay: float):
    """In-place EMA with warm-up: the decay used after n updates is min(decay, (1 + n) / (10 + n)),
    so short runs are not dominated by the initial weights (the usual diffusion-model practice)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        # The warm-up decay is computed on the device (no host sync per step).
        n = torch.as_tensor(num_averaged, dtype=torch.float32)
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            weights = [weight.to(device=a.device, dtype=a.dtype) for a, _ in floats]
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weights)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def make_ema(model: torch.nn.Module, decay: float = 0.999) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers); call ``ema.update_parameters(model)``
    after each optimiser step and sample from ``ema.module``. The first update copies the model."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay: expected a number in [0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)
