"""Properties of a learned flow: curvature of its ODE paths and the transport cost of its map."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdfm.samplers import integrate


@dataclass(frozen=True)
class PathStats:
    """Curvature E_t E|v(t, x_t) - (x1 - x0)|^2 along the integrated paths (0 for straight paths),
    transport cost E|x1 - x0|^2 of the map x0 -> x1, and the NFE used."""

    curvature: float
    transport_cost: float
    nfe: int


@torch.no_grad()
def path_stats(model, x0: torch.Tensor, *, steps: int = 32, method: str = "rk4", cond=None) -> PathStats:
    """Integrates the flow from x0 [n, d] with ``steps`` fixed steps and measures, at each grid time
    t_k (k < steps), |v(t_k, x_{t_k}) - (x1 - x0)|^2 averaged over samples and times — the
    curvature of the paper (section 6) — with x1 the integrated endpoint."""
    res = integrate(model, x0, steps=steps, method=method, cond=cond, trajectory=True)
    x1 = res.x
    chord = x1 - x0
    total, nfe = 0.0, res.nfe
    for k in range(steps):
        t = torch.full((x0.shape[0],), float(res.times[k]), dtype=x0.dtype, device=x0.device)
        v = model(res.trajectory[k], t, cond)
        nfe += 1
        total += float((v - chord).square().sum(1).mean())
    return PathStats(curvature=total / steps, transport_cost=float(chord.square().sum(1).mean()), nfe=nfe)
