"""Fixed-step ODE samplers with one signature: ``step(f, x, t, dt) -> x_next`` and an exact NFE
(and ``meanflow``, the few-step sampler of mean-flow models, with the same signature).

``f(x, t)`` is the velocity field with a scalar time; :func:`integrate` wraps a model
``v(x [n, d], t [n], cond)`` and integrates from t0 = 0 (noise) to t1 = 1 (data).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdfm.samplers.adaptive import integrate_adaptive
from sdfm.samplers.base import CountingField, SampleResult, SamplingDiverged

Field = Callable[[torch.Tensor, float], torch.Tensor]


def euler(f: Field, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    """Forward Euler: 1 evaluation."""
    return x + dt * f(x, t)


def midpoint(f: Field, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    """Explicit midpoint (RK2): 2 evaluations."""
    k1 = f(x, t)
    return x + dt * f(x + 0.5 * dt * k1, t + 0.5 * dt)


def heun(f: Field, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    """Heun's method (explicit trapezoid, RK2): 2 evaluations."""
    k1 = f(x, t)
    k2 = f(x + dt * k1, t + dt)
    return x + 0.5 * dt * (k1 + k2)


def rk4(f: Field, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    """Classical Runge-Kutta of order 4: 4 evaluations."""
    k1 = f(x, t)
    k2 = f(x + 0.5 * dt * k1, t + 0.5 * dt)
    k3 = f(x + 0.5 * dt * k2, t + 0.5 * dt)
    k4 = f(x + dt * k3, t + dt)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def meanflow(f: Field, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    """One mean-flow jump x_{t+dt} = x_t + dt u(x_t, t, t + dt): 1 evaluation of a model of the
    average velocity (built with ``mean_flow=True``, :mod:`sdfm.flow.meanflow`); exact for a perfect
    model, whatever dt."""
    return x + dt * f(x, t, r=t + dt)


#: name -> (step function, evaluations per step)
SAMPLERS: dict[str, tuple[Callable, int]] = {
    "euler": (euler, 1),
    "midpoint": (midpoint, 2),
    "heun": (heun, 2),
    "rk4": (rk4, 4),
    "meanflow": (meanflow, 1),
}


def default_method(mean_flow: bool) -> str:
    """The sampler a model is used with unless asked otherwise: ``meanflow`` jumps for mean-flow
    models, ``euler`` for velocity fields."""
    return "meanflow" if mean_flow else "euler"


#: every sampler name accepted by :func:`integrate`, the adaptive one included
SOLVERS = (*SAMPLERS, "dopri5")


def _check(x0: torch.Tensor, steps: int, method: str) -> None:
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
        raise ValueError(f"x0: expected a tensor [n, d], got {getattr(x0, 'shape', type(x0).__name__)}")
    if method not in SOLVERS:
        raise ValueError(f"method: expected one of {list(SOLVERS)}, got {method!r}")
    if method != "dopri5" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")


@torch.no_grad()
def integrate(
    model,
    x0: torch.Tensor,
    *,
    steps: int = 8,
    method: str = "euler",
    cond: torch.Tensor | None = None,
    t0: float = 0.0,
    t1: float = 1.0,
    trajectory: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trajectory_points: int = 33,
    guidance: float | None = None,
) -> SampleResult:
    """Integrates dx/dt = model(x, t, cond) from x0 at t0 to t1.

    Args:
        model: velocity field ``v(x [n, d], t [n], cond) -> [n, d]``.
        x0: starting points [n, d] (noise for t0 = 0).
        steps: number of uniform steps (fixed-step methods; ignored by dopri5).
        method: ``euler`` (NFE = steps), ``midpoint``/``heun`` (2 steps), ``rk4`` (4 steps),
            ``meanflow`` (jumps of a mean-flow model, NFE = steps), or ``dopri5`` (adaptive through
            torchdiffeq with ``rtol``/``atol``; NFE as counted).
        cond: labels [n] passed to the model, or None.
        trajectory: also return the states at each step ([steps + 1, n, d]; for dopri5 at
            ``trajectory_points`` uniform times).
        guidance: classifier-free guidance scale w (needs ``cond`` and a model trained with label
            dropout): v_null + w (v_cond - v_null); None or 1 = no guidance. NFE then counts the
            two branches.
    """
    _check(x0, steps, method)
    f = CountingField(model, cond, guidance)
    if method == "dopri5":
        return integrate_adaptive(
            f, x0, t0=t0, t1=t1, rtol=rtol, atol=atol, trajectory=trajectory, points=trajectory_points
        )
    step, _ = SAMPLERS[method]
    dt = (t1 - t0) / steps
    x = x0
    states = [x0] if trajectory else None
    first_bad = torch.zeros((), dtype=torch.long, device=x0.device)  # first step with NaN / Inf (no sync)
    for k in range(steps):
        x = step(f, x, t0 + k * dt, dt)
        first_bad = torch.where(
            (first_bad == 0) & ~torch.isfinite(x).all(), torch.full_like(first_bad, k + 1), first_bad
        )
        if states is not None:
            states.append(x)
    bad = int(first_bad)
    if bad:
        raise SamplingDiverged(
            f"integrate: the samples became NaN or Inf at step {bad} of {steps} ({method}, t = "
            f"{t0 + bad * dt:.4g}): the model returns non-finite velocities (a diverged run?)"
        )
    times = torch.linspace(t0, t1, steps + 1) if trajectory else None
    return SampleResult(x=x, nfe=f.nfe, trajectory=torch.stack(states) if states else None, times=times)
