"""Experimental: the guidance correction (arXiv 2509.25519) for classifier-free guidance.

Guidance integrates v = w v_c + (1 - w) v_u (v_c conditional, v_u unconditional). Its samples are NOT
distributed as the geometric mixture p_c^w p_u^(1 - w) it aims at (except in special cases such as equal
Gaussians). Along a trajectory x_t of the guided ODE, with the Tweedie identity of the linear path
(t = 0 noise) grad log p_t(x) = (t v_t(x) - x) / (1 - t), the log-ratio of the mixture to the density of
the guided samples obeys

    d/dt L_t = w (w - 1) t / (1 - t) |v_c - v_u|^2,     L_0 = 0,

(derivation: d/dt log p_t(x_t) = -div v_p + (v - v_p) . grad log p_t for each flow; the divergences cancel
in the mixture, and v - v_c = (1 - w)(v_u - v_c), v - v_u = w (v_c - v_u)). The paper writes the weight
with (1 - t) / t: that is the same formula in the convention where t = 1 is noise. So exp(L_1) is an
importance weight: draw ``particles`` guided trajectories per sample and keep one with probability
softmax(L_1). The weights assume exact velocity fields and the eps = 0 Tweedie identity; verified on
Gaussians in tests/test_guidance.py (the resampled moments approach the closed-form mixture).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdfm.samplers.base import CountingField
from sdfm.samplers.fixed import SAMPLERS


@dataclass(frozen=True)
class CorrectedSamples:
    """Resampled samples x [n, d], the network evaluations per sample (all particles, both branches),
    the log weights [n, particles] and the effective sample size per sample [n]."""

    x: torch.Tensor
    nfe: int
    log_weights: torch.Tensor
    ess: torch.Tensor


@torch.no_grad()
def corrected_guidance(
    model,
    x0: torch.Tensor,
    cond: torch.Tensor,
    guidance: float,
    *,
    steps: int = 32,
    method: str = "euler",
    generator: torch.Generator | None = None,
) -> CorrectedSamples:
    """Guided sampling with the trajectory-resampling correction.

    Args:
        model: ``v(x, t, cond)`` trained with label dropout (the null label -1 is the unconditional branch).
        x0: noise [n, particles, d]: ``particles`` trajectories per output sample.
        cond: labels [n] (one per output sample; its particles share it).
        guidance: the scale w (w = 1: no guidance, all weights equal).
        steps, method: fixed-step scheme (``euler``, ``midpoint``, ``heun``, ``rk4``); the weight integral
            uses the left-point rule on the same grid (the integrand vanishes at t = 0).
        generator: randomness of the resampling.
    """
    if x0.dim() != 3:
        raise ValueError(f"x0: expected [n, particles, d], got {list(x0.shape)}")
    n, r, d = x0.shape
    if cond is None or cond.shape != (n,):
        raise ValueError(f"cond: expected labels [{n}], got {None if cond is None else list(cond.shape)}")
    if method not in SAMPLERS or method == "meanflow":
        raise ValueError(f"method: expected one of euler, midpoint, heun, rk4, got {method!r}")
    w = float(guidance)
    f = CountingField(model, cond.reshape(n, 1).expand(n, r).reshape(-1), guidance=w)

    def field(x, t):
        v_c, v_u = f.branches(x, t)
        return v_u + w * (v_c - v_u)

    step, _ = SAMPLERS[method]
    x = x0.reshape(n * r, d)
    log_w = torch.zeros(n * r, dtype=torch.float64, device=x.device)
    dt = 1.0 / steps
    for k in range(steps):
        t = k * dt
        v_c, v_u = f.branches(x, t)
        # left-point rule for the weight (the integrand vanishes at t = 0)
        log_w += w * (w - 1) * t / (1 - t) * dt * (v_c - v_u).double().pow(2).sum(dim=1)
        if method == "euler":  # the step reuses the two branches just evaluated
            x = x + dt * (v_u + w * (v_c - v_u))
        else:
            x = step(field, x, t, dt)
    log_w = log_w.reshape(n, r)
    probs = torch.softmax(log_w, dim=1)
    pick = torch.multinomial(probs.float(), 1, generator=generator).squeeze(1)
    ess = 1.0 / probs.pow(2).sum(dim=1)
    out = x.reshape(n, r, d)[torch.arange(n, device=x.device), pick]
    # per output sample: its r particles, both branches
    return CorrectedSamples(x=out, nfe=f.nfe * r, log_weights=log_w, ess=ess)
