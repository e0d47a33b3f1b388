"""Pairing noise with data through a dual potential: exact streamed argmax and Gumbel-max sampling.

Convention (PAPER.md section 2): cost c(x, y) = 1/2 |x - y|^2 and potential g, so the Laguerre cell of
``x`` is ``argmax_j <x, y_j> + g_j - |y_j|^2 / 2`` (a maximum inner product search) and, for eps > 0,
``j ~ softmax_j(log b_j + (g_j - c(x, y_j)) / eps)``.

Scores are computed on targets centred at their mean, ``<x, y_j - mean> + g_j - |y_j|^2 / 2``: this
drops the per-row constant ``<x, mean>`` (the argmax and the softmax are unchanged) and keeps float32
exact enough for data far from the origin.
"""

from __future__ import annotations

import torch

from sdfm.transport import _checks
from sdfm.transport._stream import (
    chunk_size_for,
    full_precision,
    stream_argmax,
    stream_logsumexp,
    stream_softmax_columns,
    target_chunks,
)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is scored in float32 (exact argmax)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def center_and_sqnorms(
    targets: torch.Tensor, *, device: torch.device, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the targets [d] and squared norms |y_j|^2 [N], both float64 on ``device``, streamed."""
    n_targets, d = targets.shape
    total = torch.zeros(d, dtype=torch.float64, device=device)
    sq = torch.empty(n_targets, dtype=torch.float64, device=device)
    for start, stop, y in target_chunks(targets, chunk, device=device, dtype=torch.float64):
        total += y.sum(0)
        sq[start:stop] = y.square().sum(1)
    return total / n_targets, sq


def dot_bias(
    targets: torch.Tensor, potential: torch.Tensor, *, device: torch.device, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre [d] and ``g_j - |y_j|^2 / 2`` [N] (float64): the bias of the centred MIPS scores."""
    center, sq = center_and_sqnorms(targets, device=device, chunk=chunk)
    bias = potential.to(device=device, dtype=torch.float64) - 0.5 * sq
    return center, bias


class _Prepared:
    """Validated inputs and the centred, shifted score bias shared by the public functions."""

    def __init__(self, x, targets, potential, eps, weights, chunk_size):
        self.targets = _checks.as_targets(targets)
        n_targets, d = self.targets.shape
        x = _checks.as_queries(x, d)
        potential = _checks.as_potential(potential, n_targets)
        self.eps = _checks.check_eps(eps)
        self.weights = _checks.as_weights(weights, n_targets)
        chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
        self.dtype = compute_dtype(x)
        self.x = x.to(self.dtype)
        self.chunk = chunk_size_for(self.x.shape[0], n_targets, d, chunk_size)
        center, self.bias64 = dot_bias(self.targets, potential, device=self.x.device, chunk=self.chunk)
        self.center64 = center
        self.center = center.to(self.dtype)
        # Scores are alpha <x, y - mean> + bias: alpha = 1 / eps and bias = (g - |y|^2/2)/eps + log b.
        self.alpha = 1.0 if self.eps == 0 else 1.0 / self.eps
        scaled = self.bias64
        if self.eps > 0:
            n = torch.tensor(float(n_targets), dtype=torch.float64)
            log_b = -torch.log(n) if self.weights is None else torch.log(self.weights)
            scaled = scaled / self.eps + log_b.to(self.x.device)
        # Shift by a constant (argmax and softmax unchanged) so the cast keeps its precision.
        self.shift = scaled.max()
        self.bias = (scaled - self.shift).to(self.dtype)

    def kwargs(self) -> dict:
        return {"chunk": self.chunk, "center": self.center, "alpha": self.alpha}


def assign(
    x: torch.Tensor,
    targets: torch.Tensor,
    potential: torch.Tensor,
    *,
    eps: float = 0.0,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Pairs each noise sample with a target through the dual potential.

    eps = 0: the exact Laguerre cell ``argmax_j <x, y_j> + g_j - |y_j|^2 / 2`` (equal to the
    brute-force argmax up to ties). eps > 0: an exact sample from
    ``softmax_j(log b_j + (g_j - 1/2 |x - y_j|^2) / eps)`` by Gumbel-max. Both are streamed over
    chunks of targets, so at most one [n, chunk] score block exists at a time (two for eps > 0: the
    scores and their Gumbel noise).

    Duplicate targets are ties (their cells coincide): use
    :meth:`sdfm.transport.DuplicateGroups.spread` on the result to split their mass by weight.

    Args:
        x: noise samples [n, d] (float32 or float64; lower precisions are scored in float32).
        targets: data points [N, d], on any device (chunks are moved to ``x.device``).
        potential: dual potential g [N] in the 1/2 |x - y|^2 convention (float64 recommended).
        eps: absolute entropic regularisation (>= 0), in cost units.
        weights: target weights b [N] (positive; normalised). Only used when eps > 0.
        generator: randomness for eps > 0 (on ``x.device``).
        chunk_size: targets per chunk (default: a [n, chunk] block of about 4M elements).

    Returns:
        int64 index [n] of the paired targets, on ``x.device``.
    """
    p = _Prepared(x, targets, potential, eps, weights, chunk_size)
    with full_precision(p.x.device):
        index, _, _ = stream_argmax(
            p.x, p.targets, p.bias, **p.kwargs(), gumbel=False if p.eps == 0 else generator
        )
    return index


def marginal(
    x: torch.Tensor,
    targets: torch.Tensor,
    potential: torch.Tensor,
    *,
    eps: float = 0.0,
    weights: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Target marginal of the coupling estimated from noise samples: m_hat [N] (float64, sums to 1).

    eps = 0: the histogram of cells / n. eps > 0: the mean of the softmax rows (Rao-Blackwellised).
    ``weights - marginal(...)`` is the stochastic gradient of the semi-dual (PAPER.md section 2).
    """
    p = _Prepared(x, targets, potential, eps, weights, chunk_size)
    n = p.x.shape[0]
    with full_precision(p.x.device):
        if p.eps == 0:
            index, _, _ = stream_argmax(p.x, p.targets, p.bias, **p.kwargs())
            counts = torch.bincount(index, minlength=p.targets.shape[0]).to(torch.float64)
            return counts / n
        sums, _, _ = stream_softmax_columns(p.x, p.targets, p.bias, **p.kwargs())
    return sums / n


def c_transform(
    x: torch.Tensor,
    targets: torch.Tensor,
    potential: torch.Tensor,
    *,
    eps: float = 0.0,
    weights: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The (c, eps)-transform g^{c,eps}(x) [n] (float64), streamed.

    eps = 0: ``min_j 1/2 |x - y_j|^2 - g_j``; eps > 0:
    ``-eps log sum_j b_j exp((g_j - 1/2 |x - y_j|^2) / eps)``. The semi-dual objective is
    ``F(g) = mean(c_transform(x, ...)) + <b, g>``.
    """
    p = _Prepared(x, targets, potential, eps, weights, chunk_size)
    x64 = p.x.to(torch.float64)
    # c(x, y_j) - g_j = |x|^2/2 - <x, mean> - (<x, y_j - mean> + g_j - |y_j|^2/2)
    base = 0.5 * x64.square().sum(1) - x64 @ p.center64
    with full_precision(p.x.device):
        if p.eps == 0:
            _, best, _ = stream_argmax(p.x, p.targets, p.bias, **p.kwargs())
            return base - (best.to(torch.float64) + p.shift)
        lse = stream_logsumexp(p.x, p.targets, p.bias, **p.kwargs())
    return base - p.eps * (lse.to(torch.float64) + p.shift)
