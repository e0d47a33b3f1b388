"""Targets on one line: the semidiscrete problem is then one-dimensional.

If every target lies on a line y_j = a + z_j u (u a unit vector), the score <x, y_j> + h_j equals
<x, a> + <x, u> z_j + h_j: the cell of x depends on <x, u> only. The solver then solves the 1-D
problem by quantiles (:mod:`sdfm.transport.semidiscrete.exact1d`), and pairing scores such a chain of
narrow cells in float64, as it does for 1-D targets (:func:`sdfm.transport.assign.compute_dtype`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

#: tolerance of the line test, in units of the targets' rounding
ROUNDING_UNITS = 8.0
#: relative distance to the line below which targets count as on it (their 1-D solution is then
#: checked, and refined by the stochastic solver where the distance matters)
NEAR_LINE = 1e-3


def line_direction(
    chunks: Callable[[], Iterable[tuple[int, int, torch.Tensor]]],
    dtype: torch.dtype,
    rel_tol: float = NEAR_LINE,
) -> torch.Tensor | None:
    """The unit direction u [d] float64 of the line that holds every target, or None.

    Args:
        chunks: returns a fresh iterator of ``(start, stop, y[start:stop])`` float64 chunks of the
            targets (``sdfm.transport._stream.target_chunks``).
        dtype: the targets' own dtype: a target counts as on the line when its distance to it is
            within ``ROUNDING_UNITS`` roundings of that dtype (of |y_j| + |a|, plus the rounding of
            u itself, which grows with the distance along the line).
        rel_tol: also allow distances up to rel_tol times max(|y_j - a| along u, the first chunk's
            largest |y_j - a|) (nearly collinear targets).

    1-D targets: u = [1]. The line passes through the first target a, with u towards the farthest
    target of the first chunk; a first chunk of identical targets gives None. One pass over the
    targets, stopping at the first chunk off the line (so targets that are not collinear cost one
    chunk).
    """
    _, _, first = next(iter(chunks()))
    if first.shape[1] == 1:
        return torch.ones(1, dtype=torch.float64, device=first.device)
    unit = torch.finfo(torch.float64).eps
    if dtype.is_floating_point:
        unit = max(unit, torch.finfo(dtype).eps)
    anchor = first[0]
    anchor_norm = float(anchor.norm())
    offsets = (first - anchor).norm(dim=1)
    k = int(offsets.argmax())
    length = float(offsets[k])
    if length == 0.0 or not math.isfinite(length + anchor_norm):
        return None  # (overflowing norms: no line is certified; the solver reports the overflow)
    u = (first[k] - anchor) / length
    slope = (float(first[k].norm()) + anchor_norm) / length  # rounding of u, per unit along the line
    for _, _, y in chunks():
        centred = y - anchor
        t = centred @ u
        off = (centred - t[:, None] * u).norm(dim=1)
        allowed = ROUNDING_UNITS * unit * (y.norm(dim=1) + anchor_norm + slope * t.abs())
        allowed += rel_tol * t.abs().clamp(min=length)
        if not bool((off <= allowed).all()):  # (NaN, from overflow, is off the line too)
            return None
    return u
