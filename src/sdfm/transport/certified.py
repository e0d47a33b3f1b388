"""Certified float32 argmax: float32 scores, a proof per row that the winner is the float64 one, and
float64 re-scoring of the rows without it.

A float32 score of target j is ``s_j = fl(bias32_j + <x, z32_j>)`` with ``z32_j`` the target cast to
float32 with the float32 centre subtracted, and its exact value ``t_j = bias_j + <x, y_j - c32>``
(the exact centred score, shifted by the row constant ``<x, c - c32>``, which changes no argmax nor
gap). The float32 dot product of length d plus the bias is a sum of d + 1 rounded terms in any order,
so (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5, with the bias's and the
key's own rounding)

    |s_j - t_j| <= c (|s_j| + 2 |x| |z_j|) + u' |x| |y_j|,    c = 1.1 (gamma_{d+1} + 2u),

with u = 2^-24, gamma_k = k u / (1 - k u), and u' = 1.1 u when the targets are not exact in float32
(float64 targets are rounded before the centre is subtracted; 0 otherwise). With the row's best float32
score s_1 and runner-up s_2 (over every other target), every t_j, j != winner, is at most
``s_2 + c |s_2| + E`` and the winner's t is at least ``s_1 - c |s_1| - E`` (E = 2 c |x| max|z| +
u' |x| max|y|: the bound grows with |s|, so the runner-up bounds every other target). When the
first is above the second, the float32 winner is the float64 one; other rows (near ties, equal
targets) are scored again (:func:`exact_argmax`: every target whose upper bound reaches the best
lower bound is re-scored in float64 pair by pair, with the same arithmetic for equal targets, which
a GEMM does not promise, and ties go to the smallest index). The result is the float64 argmax, ties
to the smallest index, at the cost of a float32 top-2 scan and of the few rows re-scored (0.04-2% on
typical data, BENCHMARKS.md section 28). The same certificate in float64 (u = 2^-53) makes float64
scores tie-exact too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sdfm.transport._stream import ROW_BLOCK, score_blocks, target_chunks

#: unit roundoff of the score dtypes
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def score_coefficient(d: int, dtype: torch.dtype = torch.float32) -> float:
    """c of the module's bound, 1.1 (gamma_{d+1} + 2u), for a score of d products and a bias in
    ``dtype`` (plus 4 float64 roundoffs: the certificate's own float64 arithmetic)."""
    u = UNIT_ROUNDOFF[dtype]
    k = (d + 1) * u
    if k >= 0.5:
        raise ValueError(f"{dtype} scores of dimension {d} have no useful error bound")
    return 1.1 * (k / (1 - k) + 2 * u) + 4 * UNIT_ROUNDOFF[torch.float64]


@dataclass(frozen=True)
class ScoreCertificate:
    """What one set of targets needs to certify the argmaxes of scores in one dtype.

    scale: c of the module's bound. unit: the score dtype's roundoff. key_norm: an upper bound of
    max |y_j - center| as scored (keys cast, then centred). raw_norm: an upper bound of max |y_j|
    when the targets are rounded to the score dtype (float64 targets scored in float32; else 0).
    """

    scale: float
    unit: float
    key_norm: float
    raw_norm: float

    @classmethod
    def build(cls, targets: torch.Tensor, center64: torch.Tensor, dtype: torch.dtype, *, chunk: int):
        """One streamed float64 pass over ``targets`` [N, d] (any device and dtype) for scores in
        ``dtype`` (float32 or float64)."""
        d, u = targets.shape[1], UNIT_ROUNDOFF[dtype]
        key_sq, raw_sq = 0.0, 0.0
        for _, _, y in target_chunks(targets, chunk, device=center64.device, dtype=torch.float64):
            key_sq = max(key_sq, float((y - center64).square().sum(1).max()))
            raw_sq = max(raw_sq, float(y.square().sum(1).max()))
        exact = dtype == torch.float64 or targets.dtype in (torch.float32, torch.float16, torch.bfloat16)
        raw = 0.0 if exact else raw_sq**0.5 * (1 + 2.0**-20)
        # |z as scored| <= |z|(1 + u) + u |y| + the centre's rounding: a relative 2^-20 and 2u |y|
        key = key_sq**0.5 * (1 + 2.0**-20) + 2 * u * raw_sq**0.5
        return cls(scale=score_coefficient(d, dtype), unit=u, key_norm=key, raw_norm=raw)

    def margins(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(c, slack [n] float64): a score s of a query of x [n, d] is within c |s| + slack of its
        exact value."""
        xnorm = x.to(torch.float64).norm(dim=1) * (1 + 2.0**-20)
        return self.scale, xnorm * (2 * self.scale * self.key_norm + 1.1 * self.unit * self.raw_norm)

    def uncertain(self, x: torch.Tensor, best: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Rows [n] (bool) whose winner is not proven to be the exact one, from the queries x [n, d]
        and their best and second-best scores [n] (in the certificate's dtype)."""
        c, slack = self.margins(x)
        b, s = best.to(torch.float64), second.to(torch.float64)
        low = b - c * b.abs() - slack
        # a runner-up of -inf (one target) leaves the winner certain; NaN or overflow never passes
        high = torch.where(torch.isneginf(s), s, s + c * s.abs() + slack)
        return ~(low > high)


def exact_argmax(
    x: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor,
    bias64: torch.Tensor,
    center: torch.Tensor | None,
    center64: torch.Tensor,
    certificate: ScoreCertificate,
    *,
    chunk: int,
    subset: torch.Tensor | None = None,
    atoms: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """argmax_j <x, y_j - center> + bias_j in float64 with exact ties: positions [n] among the
    targets scanned (``targets``, or ``targets[subset]``, whose ``bias`` / ``bias64`` these are;
    ties to the smallest position) and the best float64 scores [n].

    Scores every target once more in x's dtype (``bias`` and ``center`` in that dtype, as the scan
    had them; ``center`` None: the targets are centred already), keeps each target whose upper
    bound (``certificate``) reaches its row's best lower bound, then scores those again in float64
    one pair at a time (an elementwise product and sum: copies of a target get equal scores, which
    GEMM blocks do not promise) and takes the largest, the smallest position among equal ones.
    The float64 operands are ``atoms(positions)`` (the exact centred targets [k, d] in float64) or,
    by default, the kept rows of ``targets`` gathered, cast and centred by ``center64``: no float64
    copy of all targets is made."""
    if x.shape[0] > ROW_BLOCK:
        kw = dict(chunk=chunk, subset=subset, atoms=atoms)
        parts = [
            exact_argmax(xb, targets, bias, bias64, center, center64, certificate, **kw)
            for xb in x.split(ROW_BLOCK)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    n = x.shape[0]
    c = certificate.scale + 3 * certificate.unit  # and the rounding of s +- err in x's dtype
    xnorm = x.to(torch.float64).norm(dim=1) * (1 + 2.0**-20)
    slack = (xnorm * (2 * c * certificate.key_norm + 1.1 * certificate.unit * certificate.raw_norm)).to(
        x.dtype
    )
    lower = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    rows, cols = [], []
    for start, _, block in score_blocks(x, targets, bias, chunk=chunk, center=center, subset=subset):
        err = block.abs().mul_(c).add_(slack[:, None])
        lower = torch.maximum(lower, (block - err).amax(dim=1))
        r, k = (block.add_(err) >= lower[:, None]).nonzero(as_tuple=True)
        rows.append(r)
        cols.append(k + start)
    rows, cols = torch.cat(rows), torch.cat(cols)
    if atoms is None:
        picked = cols.to(targets.device) if subset is None else subset[cols.to(subset.device)]
        keys = targets[picked].to(device=x.device, dtype=torch.float64) - center64
    else:
        keys = atoms(cols)
    exact = (x[rows].to(torch.float64) * keys).sum(1) + bias64[cols]
    row_max = torch.full((n,), float("-inf"), dtype=torch.float64, device=x.device)
    row_max.scatter_reduce_(0, rows, exact, reduce="amax")
    winner = exact == row_max[rows]
    index = torch.full((n,), bias64.shape[0], dtype=torch.long, device=x.device)
    index.scatter_reduce_(0, rows[winner], cols[winner], reduce="amin")
    return index, row_max
