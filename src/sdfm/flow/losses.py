"""The conditional flow-matching loss on plain tensors (no knowledge of how pairs were made)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdfm.flow.paths import interpolate, target_velocity


@dataclass(frozen=True)
class LossStats:
    """Detached statistics of one loss evaluation, as 0-d tensors on the batch's device (no host
    sync per step: the trainer reads them only when it logs)."""

    loss: torch.Tensor
    transport_cost: torch.Tensor  # mean over the batch of |x1 - x0|^2 (the eval report's transport cost)


def transport_cost(velocity: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |x1 - x0|^2 for target velocities ``x1 - x0`` [n, ...] (detached, float32)."""
    v = velocity.detach().float()
    return v.reshape(v.shape[0], -1).pow(2).sum(1).mean()


def flow_matching_loss(
    model, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
) -> tuple[torch.Tensor, LossStats]:
    """Mean over the batch and dimensions of |v(x_t, t, cond) - (x1 - x0)|^2.

    Args:
        model: velocity field ``v(x [n, d], t [n], cond) -> [n, d]``.
        x0, x1: paired noise and data [n, d]; t: times [n] in [0, 1]; cond: labels [n] or None.

    Returns:
        The scalar loss (differentiable) and its :class:`LossStats`.
    """
    xt = interpolate(x0, x1, t)
    target = target_velocity(x0, x1)
    v = model(xt, t, cond)
    if v.shape != target.shape:
        raise ValueError(f"model: returned shape {list(v.shape)}, expected {list(target.shape)}")
    loss = (v.float() - target.float()).pow(2).mean()
    stats = LossStats(loss=loss.detach(), transport_cost=transport_cost(target))
    return loss, stats
