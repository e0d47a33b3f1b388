"""Distances between sample sets [n, d] and [m, d]: exact W2 (POT), energy distance, MMD."""

from __future__ import annotations

import math

import torch


def _as_float64(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [n, d] array, got shape {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    return t


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_float64(x, "x"), _as_float64(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y: dimension {y.shape[1]} differs from x's {x.shape[1]}")
    return x, y


def _subsample(x: torch.Tensor, k: int, generator) -> torch.Tensor:
    if x.shape[0] <= k:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:k]]


def wasserstein2(x, y, *, max_samples: int = 5000, generator: torch.Generator | None = None) -> float:
    """Exact W2 = (min over couplings of E|X - Y|^2)^(1/2) between the empirical measures (POT's
    network-simplex ``ot.emd2``), on at most ``max_samples`` points of each set drawn without
    replacement (exact for sets that small; cost O(n^3) beyond)."""
    from sdfm.extras import require

    ot = require("ot", "exact W2")

    x, y = _pair(x, y)
    x, y = _subsample(x, max_samples, generator), _subsample(y, max_samples, generator)
    cost = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square().numpy()
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64).numpy()
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64).numpy()
    return math.sqrt(max(0.0, float(ot.emd2(a, b, cost, numItermax=10_000_000))))


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor, fn, block: int = 2048) -> float:
    total = 0.0
    for i in range(0, a.shape[0], block):
        dist = torch.cdist(a[i : i + block], b, compute_mode="donot_use_mm_for_euclid_dist")
        total += float(fn(dist).sum())
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x, y, *, max_samples: int = 20_000, generator: torch.Generator | None = None) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistics: 0 for identical sets; a
    metric between distributions, Szekely & Rizzo), streamed in blocks."""
    x, y = _pair(x, y)
    x, y = _subsample(x, max_samples, generator), _subsample(y, max_samples, generator)
    ident = lambda dist: dist  # noqa: E731
    return 2 * _mean_pairwise(x, y, ident) - _mean_pairwise(x, x, ident) - _mean_pairwise(y, y, ident)


def mmd_rbf(
    x,
    y,
    *,
    bandwidth: float | None = None,
    max_samples: int = 20_000,
    generator: torch.Generator | None = None,
) -> float:
    """Squared MMD with the Gaussian kernel exp(-|a - b|^2 / (2 h^2)) (V-statistics: 0 for identical
    sets). ``bandwidth`` h defaults to the median distance between the pooled samples (on <= 2000)."""
    x, y = _pair(x, y)
    x, y = _subsample(x, max_samples, generator), _subsample(y, max_samples, generator)
    if bandwidth is None:
        pool = _subsample(torch.cat([x, y]), 2000, generator)
        dist = torch.cdist(pool, pool)
        bandwidth = float(dist[dist > 0].median()) if bool((dist > 0).any()) else 1.0
    if not bandwidth > 0:
        raise ValueError(f"bandwidth: expected a number > 0, got {bandwidth}")

    def kernel(dist):
        return torch.exp(-dist.square() / (2 * bandwidth**2))

    return _mean_pairwise(x, x, kernel) + _mean_pairwise(y, y, kernel) - 2 * _mean_pairwise(x, y, kernel)


def psnr(x, ref, data_range: float) -> float:
    """Mean over images of the peak signal-to-noise ratio 10 log10(range^2 / MSE_i) in dB, for paired
    rows x, ref [n, d] in data units (``data_range``: max minus min of the pixel scale, e.g. 16 for
    scikit-learn's digits)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    if x.shape != ref.shape or x.dim() != 2:
        raise ValueError(
            f"x, ref: expected two [n, d] arrays of one shape, got {list(x.shape)}, {list(ref.shape)}"
        )
    if not data_range > 0:
        raise ValueError(f"data_range: expected a number > 0, got {data_range!r}")
    mse = (x - ref).pow(2).mean(dim=1).clamp_min(1e-20)
    return float((10.0 * torch.log10(data_range**2 / mse)).mean())
