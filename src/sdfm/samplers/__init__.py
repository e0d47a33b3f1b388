"""ODE samplers (layer L1): euler, midpoint, heun, rk4 (and the mean-flow jump) with one signature and
exact NFE counts, and
adaptive dopri5 through torchdiffeq. ``SAMPLERS`` is the registry of fixed-step methods."""

from sdfm.samplers.base import NULL_LABEL, CountingField, SampleResult, SamplingDiverged
from sdfm.samplers.fixed import (
    SAMPLERS,
    SOLVERS,
    default_method,
    euler,
    heun,
    integrate,
    meanflow,
    midpoint,
    rk4,
)
from sdfm.samplers.guidance import CorrectedSamples, corrected_guidance

__all__ = [
    "CorrectedSamples",
    "CountingField",
    "NULL_LABEL",
    "SAMPLERS",
    "SOLVERS",
    "SampleResult",
    "SamplingDiverged",
    "corrected_guidance",
    "default_method",
    "euler",
    "heun",
    "integrate",
    "meanflow",
    "midpoint",
    "rk4",
]
