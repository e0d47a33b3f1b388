"""Adaptive integration (dopri5) through torchdiffeq, reporting the field evaluations it used."""

from __future__ import annotations

import torch

from sdfm.samplers.base import CountingField, SampleResult, SamplingDiverged


def integrate_adaptive(
    f: CountingField,
    x0: torch.Tensor,
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trajectory: bool = False,
    points: int = 33,
) -> SampleResult:
    """Dormand-Prince 5(4) with step-size control (``torchdiffeq.odeint``); NFE counted exactly."""
    from torchdiffeq import odeint

    k = points if trajectory else 2
    times = torch.linspace(t0, t1, k, dtype=torch.float64)
    # torchdiffeq calls func(t, y); its time tensor follows the state's dtype and device.
    try:
        states = odeint(
            lambda t, y: f(y, t),
            x0,
            times.to(device=x0.device, dtype=x0.dtype),
            method="dopri5",
            rtol=rtol,
            atol=atol,
        )
    except AssertionError as exc:  # torchdiffeq's "underflow in dt nan" when the field is not finite
        raise SamplingDiverged(f"integrate: dopri5 failed after {f.nfe} evaluations: {exc}") from exc
    if not bool(torch.isfinite(states[-1]).all()):
        raise SamplingDiverged(
            f"integrate: the samples became NaN or Inf (dopri5, {f.nfe} evaluations): the model returns "
            "non-finite velocities (a diverged run?)"
        )
    return SampleResult(
        x=states[-1],
        nfe=f.nfe,
        trajectory=states if trajectory else None,
        times=times.float() if trajectory else None,
    )
