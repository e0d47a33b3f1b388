"""One dimension: the semidiscrete problem is solved by quantiles, not by stochastic ascent.

This covers every problem whose atoms lie on one line y_j = mean + z_j u (``problem.line``, u a unit
vector): 1-D targets, any two distinct targets, a chain embedded in d > 1 dimensions. The score
<x, y_j - mean> + h_j = <x, u> z_j + h_j then depends on x through <x, u> only, which is N(0, 1) for
the standard Gaussian source: the problem is exactly the 1-D one for the atoms z_j.

In 1-D the Laguerre cells of sorted distinct atoms y_(1) < ... < y_(n) are consecutive intervals, and
the optimal boundary between y_(k) and y_(k+1) is the quantile t_k = F^{-1}(b_(1) + ... + b_(k)) of the
source. The scores x y_(k) + h_(k) of neighbours meet at t_k, so h_(k+1) = h_(k) - t_k (y_(k+1) - y_(k)).

- Standard Gaussian source: F^{-1} is the normal quantile function, the potential is exact and its chi2
  is computed in closed form (up to float64 rounding; no noise is drawn).
- Any other source: the quantiles are those of M fresh samples (the sample-average problem, chi2 about
  n / M); M doubles until chi2 measured on independent samples meets the tolerance.

The stochastic solver needs thousands of samples per atom here: cells form one long chain, whose
smooth modes its per-cell steps reduce only by slow diffusion (condition number ~ n^2).
"""

from __future__ import annotations

import math

import torch

from sdfm.transport.semidiscrete.problem import SemidiscreteProblem, converged


def _sorted_atoms(problem: SemidiscreteProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """(order [n], sorted positions z_j = <y_j - mean, u> [n] float64) of the atoms on the line."""
    z = torch.empty(problem.n, dtype=torch.float64, device=problem.device)
    for start, stop, y in problem.atom_chunks(problem.chunk(1)):
        z[start:stop] = (y - problem.mean) @ problem.line
    order = torch.argsort(z)
    return order, z[order]


def iterate_from_boundaries(z_sorted: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """h of the sorted atoms [n] whose neighbouring cells meet at ``boundaries`` [n - 1]."""
    steps = boundaries * (z_sorted[1:] - z_sorted[:-1])
    return torch.cat([steps.new_zeros(1), -torch.cumsum(steps, 0)])


def gaussian_masses(z_sorted: torch.Tensor, h_sorted: torch.Tensor) -> torch.Tensor:
    """Exact N(0, 1) mass of each sorted atom's cell [n] for the scores x z_k + h_k (cells that the
    upper envelope skips get 0)."""
    n = z_sorted.shape[0]
    # Upper envelope of the lines x z_k + h_k (slopes increasing): a monotone stack.
    hull: list[int] = []
    zs, hs = z_sorted.tolist(), h_sorted.tolist()
    for k in range(n):
        while len(hull) >= 2:
            a, c = hull[-2], hull[-1]
            if (hs[a] - hs[k]) * (zs[c] - zs[a]) <= (hs[a] - hs[c]) * (zs[k] - zs[a]):
                hull.pop()  # line c is below the envelope of a and k everywhere
            else:
                break
        hull.append(k)
    idx = torch.tensor(hull, dtype=torch.long, device=z_sorted.device)
    cuts = (h_sorted[idx[:-1]] - h_sorted[idx[1:]]) / (z_sorted[idx[1:]] - z_sorted[idx[:-1]])
    cdf = 0.5 * torch.erfc(-cuts / math.sqrt(2.0))
    edges = torch.cat([cdf.new_zeros(1), cdf, cdf.new_ones(1)])
    mass = torch.zeros(n, dtype=torch.float64, device=z_sorted.device)
    mass[idx] = torch.diff(edges)
    return mass


def solve_1d(problem: SemidiscreteProblem, tol: float | None, gaussian: bool):
    """(h [n], chi2, stderr, converged) of the 1-D problem (eps = 0)."""
    order, z = _sorted_atoms(problem)
    b = problem.b[order]
    cum = torch.cumsum(b, 0)[:-1].clamp(0.0, 1.0)
    if gaussian:
        # The normal quantile function; cumulative weights are clamped away from 0 and 1, where the
        # quantile is infinite (float64 rounding of the cumulative sum).
        p = cum.clamp(1e-300, 1.0 - 1e-16)
        boundaries = math.sqrt(2.0) * torch.special.erfinv(2.0 * p - 1.0)
        h_sorted = iterate_from_boundaries(z, boundaries)
        mass = gaussian_masses(z, h_sorted)
        chi2 = float((mass.square() / b).sum() - 1.0)
        return _unsort(h_sorted, order), max(chi2, 0.0), 0.0, converged(max(chi2, 0.0), 0.0, tol)
    m = max(4096, math.ceil(4.0 * problem.n / (tol if tol is not None else 0.05)))
    while True:
        x = problem.draw(m).to(torch.float64) @ problem.line
        boundaries = _quantiles(x, cum)
        h = _unsort(iterate_from_boundaries(z, boundaries), order)
        chi2, se = problem.measure(h, tol)
        if converged(chi2, se, tol) or tol is None or m >= (1 << 26):
            return h, chi2, se, converged(chi2, se, tol)
        m *= 2


def _quantiles(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Empirical quantiles of the samples x [M] at probabilities p (linear interpolation)."""
    xs = torch.sort(x).values
    pos = p * (xs.shape[0] - 1)
    lo = pos.floor().long().clamp(0, xs.shape[0] - 1)
    hi = (lo + 1).clamp(max=xs.shape[0] - 1)
    frac = pos - lo.to(pos.dtype)
    return xs[lo] + frac * (xs[hi] - xs[lo])


def _unsort(h_sorted: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    h = torch.empty_like(h_sorted)
    h[order] = h_sorted
    return h
