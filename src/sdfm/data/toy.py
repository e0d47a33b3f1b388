"""Generated datasets: 2-D toys and a d-dimensional Gaussian mixture (no download, seeded)."""

from __future__ import annotations

import math

import numpy as np


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def checkerboard(n: int, *, seed: int = 0) -> np.ndarray:
    """Uniform on the 8 dark squares of a 4x4 checkerboard on [-4, 4]^2: [n, 2] float32."""
    rng = _rng(seed)
    out = np.empty((0, 2))
    while out.shape[0] < n:
        p = rng.uniform(-4.0, 4.0, size=(2 * n, 2))
        keep = (np.floor(p[:, 0] / 2) + np.floor(p[:, 1] / 2)) % 2 == 0
        out = np.concatenate([out, p[keep]])
    return out[:n].astype(np.float32)


def eight_gaussians(n: int, *, seed: int = 0, radius: float = 4.0, std: float = 0.5) -> np.ndarray:
    """Eight Gaussians evenly spaced on a circle of the given radius: [n, 2] float32."""
    rng = _rng(seed)
    angles = 2 * math.pi * rng.integers(0, 8, size=n) / 8
    centers = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    return (centers + std * rng.normal(size=(n, 2))).astype(np.float32)


def moons(n: int, *, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Two interleaving half circles (scaled by 2, centred): [n, 2] float32."""
    rng = _rng(seed)
    upper = rng.random(n) < 0.5
    t = math.pi * rng.random(n)
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x - 0.5, y - 0.25], 1) * 2.0
    return (pts + noise * 2.0 * rng.normal(size=(n, 2))).astype(np.float32)


def spirals(n: int, *, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    """Two interleaved spirals: [n, 2] float32."""
    rng = _rng(seed)
    t = np.sqrt(rng.random(n)) * 3 * math.pi
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * np.stack([t * np.cos(t), t * np.sin(t)], 1) / 2.5
    return (pts + noise * rng.normal(size=(n, 2))).astype(np.float32)


def gaussian_mixture(
    n: int,
    *,
    d: int = 16,
    k: int = 8,
    seed: int = 0,
    separation: float = 3.0,
    std: float = 1.0,
    sample_seed=None,
) -> tuple[np.ndarray, np.ndarray]:
    """k isotropic Gaussians in R^d with means ~ N(0, separation^2 I): points [n, d], labels [n].

    The means come from ``seed``; the points from the same stream, or from ``sample_seed`` when given
    (fresh draws from the same mixture, e.g. held-out data)."""
    rng = _rng(seed)
    means = separation * rng.normal(size=(k, d))
    if sample_seed is not None:
        rng = _rng(sample_seed)
    labels = rng.integers(0, k, size=n)
    x = means[labels] + std * rng.normal(size=(n, d))
    return x.astype(np.float32), labels.astype(np.int64)
