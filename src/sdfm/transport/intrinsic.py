"""Intrinsic dimension of a point cloud, by the TwoNN estimator (Facco et al., Sci. Rep. 2017).

For each point, mu = r2 / r1 is the ratio of the distances to its second and first nearest neighbours.
If the density is locally uniform on a manifold of dimension m, mu follows a Pareto law with exponent
m, whose maximum-likelihood estimate is ``m = (n - 1) / sum(log mu)``. It needs no scale and no
neighbourhood size, and sees the dimension of the data at the scale of the nearest-neighbour distances:
a 2-D checkerboard embedded in 64 dimensions by a rotation reads 2.0, a 16-cluster mixture of rank-16
Gaussians in 64 dimensions about 12, scikit-learn's digits about 9.

The solver uses it to pick its regime (``SemidiscreteSolver(anneal="auto")``): on a low-dimensional
point cloud the Laguerre cells form a mesh where per-cell steps move mass only by slow diffusion, so
the entropic annealing and small steps pay; in high intrinsic dimension every cell borders many
others and the hard phase alone converges faster.
"""

from __future__ import annotations

import torch

#: points the estimate uses at most (a fixed-seed random subsample: O(sample^2 d) work)
SAMPLE = 2048
#: the fixed seed of the subsample, so that the estimate (and a solve that uses it) is reproducible
SEED = 20170912


def sample_rows(n: int, sample: int = SAMPLE, seed: int = SEED) -> torch.Tensor:
    """The sorted indices (CPU) of the fixed-seed random subsample of at most ``sample`` of n points."""
    if n <= sample:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:sample].sort().values


def intrinsic_dimension(points: torch.Tensor, *, sample: int = SAMPLE, seed: int = SEED) -> float:
    """TwoNN estimate of the intrinsic dimension of ``points`` [n, d] (any device; float64 inside).

    Uses a random subsample of at most ``sample`` points (:func:`sample_rows`, fixed ``seed``);
    coincident points count once. Returns ``float(d)`` when fewer than three distinct points remain
    (no ratio to estimate from).
    """
    if points.ndim != 2:
        raise ValueError(f"points: expected a 2-D array [n, d], got shape {tuple(points.shape)}")
    if points.shape[0] > sample:
        points = points[sample_rows(points.shape[0], sample, seed).to(points.device)]
    # coincident points are one point (their distance would come out as rounding, not 0)
    return _twonn(torch.unique(points.to(torch.float64), dim=0))


def _twonn(y: torch.Tensor) -> float:
    d = y.shape[1]
    if y.shape[0] < 3:
        return float(d)
    sq = y.square().sum(1)
    dist2 = (sq[:, None] + sq[None, :] - 2.0 * (y @ y.T)).clamp_min_(0.0)
    dist2.fill_diagonal_(float("inf"))
    near = dist2.topk(2, dim=1, largest=False).values
    ok = near[:, 0] > 0
    if int(ok.sum()) < 3:
        return float(d)
    log_mu = 0.5 * torch.log(near[ok, 1] / near[ok, 0])
    total = float(log_mu.sum())
    if not total > 0:  # every point's two nearest neighbours equidistant (a lattice): no information
        return float(d)
    return (int(ok.sum()) - 1) / total
