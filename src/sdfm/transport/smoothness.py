"""Mass errors along smooth functions of the data: the error modes chi2 hardly sees.

chi2(m || b) weighs every atom alike. A potential can pass chi2 <= 0.05 (per-atom errors of about 20%)
and still send 6% too much noise to the outer half of the data, or too little to one cluster of a
mixture: large-scale modes that the samples of a flow model show. This module groups the atoms by
smooth functions of y and compares each group's mass with its weight:

- ``radius``: quartiles of |y - mean|;
- ``pc1``, ``pc2``: quartiles along the top two principal directions;
- ``clusters``: the cells of a k-means of the atoms (up to 16 clusters).

The error of group G is e_G = m_G - b_G. Its floor is what the chi2 of the same potential implies if
the per-atom errors were independent, plus the noise of the measurement itself:
sigma_G^2 = chi2 * sum_{j in G} b_j^2 + b_G (1 - b_G) / M (M noise samples). A group whose error is
several sigma_G away from 0 is a smooth bias, not noise; the solver keeps going until none is
(``ratio`` <= 3 in every family: the largest of about 28 standard normal values exceeds 3 with
probability of a few percent).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from sdfm.transport.clustering import kmeans

#: quantiles per family of the radius and principal-direction groups
QUANTILES = 4
#: k-means clusters of the ``clusters`` family (at most; N / 32 for small N)
CLUSTERS = 16
#: atoms behind the principal directions (an even stride of them for larger N)
PCA_SAMPLE = 16384


@dataclass(frozen=True)
class SmoothError:
    """The worst group of one family.

    Attributes:
        family: "radius", "pc1", "pc2" or "clusters".
        group: index of the worst group within the family.
        relative_error: (m_G - b_G) / b_G of that group (signed).
        floor: sigma_G / b_G, the relative error chi2 and the measurement noise explain.
        ratio: |relative_error| / floor (the worst over the family's groups).
    """

    family: str
    group: int
    relative_error: float
    floor: float
    ratio: float

    def as_dict(self) -> dict:
        return asdict(self)


#: above this dimension the top principal directions come from a subspace iteration (never a d x d
#: matrix: at d = 4,000 its eigh took 21 s of a 23 s solve of 50 atoms, and at d = 150,000 it would
#: not fit in memory)
EXACT_PCA_MAX_DIM = 256


def _principal_directions(chunks, n: int, d: int, mean, weights, k: int = 2, iterations: int = 12):
    """The top-``k`` principal directions [d, k] of (an even stride of at most PCA_SAMPLE) atoms.

    d <= EXACT_PCA_MAX_DIM: eigenvectors of the weighted covariance. Above: a block subspace
    iteration (k + 4 columns from a fixed seed, ``iterations`` streamed passes, then Rayleigh-Ritz),
    O(n d) memory and time per pass. Where the top eigenvalues nearly tie the directions may differ
    within their span, which is all the grouping needs."""
    device = weights.device
    stride = max(1, n // PCA_SAMPLE)

    def sample():
        for start, stop, y in chunks():
            first = (-start) % stride
            yield y[first::stride] - mean, weights[start + first : stop : stride, None]

    if d <= EXACT_PCA_MAX_DIM:
        cov = torch.zeros(d, d, dtype=torch.float64, device=device)
        for z, w in sample():
            cov += (z * w).T @ z
        _, evecs = torch.linalg.eigh(cov)
        return evecs[:, -min(k, d) :].flip(1)

    def times_cov(v):  # C v without forming C
        out = torch.zeros_like(v)
        for z, w in sample():
            out += z.T @ (w * (z @ v))
        return out

    q = min(k + 4, d)
    gen = torch.Generator(device=device).manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d, q, generator=gen, dtype=torch.float64, device=device)).Q
    for _ in range(iterations):
        basis = torch.linalg.qr(times_cov(basis)).Q
    small = basis.T @ times_cov(basis)
    _, evecs = torch.linalg.eigh(0.5 * (small + small.T))
    return basis @ evecs[:, -k:].flip(1)


class SmoothGroups:
    """Group labels of the atoms for each family (built once per problem)."""

    def __init__(self, labels: dict[str, torch.Tensor], weights: torch.Tensor):
        self.labels = labels
        self.weights = weights
        self.sizes = {k: int(v.max()) + 1 for k, v in labels.items()}
        self.group_weights = {k: self._sum(k, weights) for k in labels}
        self.group_sq_weights = {k: self._sum(k, weights * weights) for k in labels}

    def _sum(self, family: str, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.sizes[family], dtype=torch.float64, device=v.device)
        return out.index_add_(0, self.labels[family], v.to(torch.float64))

    @classmethod
    def build(cls, chunks, n: int, d: int, mean: torch.Tensor, weights: torch.Tensor, *, generator=None):
        """From streamed atom chunks (callable returning (start, stop, y [m, d] float64) chunks)."""
        device = weights.device
        top = _principal_directions(chunks, n, d, mean, weights)
        radius = torch.empty(n, dtype=torch.float64, device=device)
        coords = torch.empty(n, top.shape[1], dtype=torch.float64, device=device)
        for start, stop, y in chunks():
            z = y - mean
            radius[start:stop] = z.norm(dim=1)
            coords[start:stop] = z @ top
        labels = {"radius": _weighted_quantile_groups(radius, weights)}
        for i in range(top.shape[1]):
            labels[f"pc{i + 1}"] = _weighted_quantile_groups(coords[:, i], weights)
        k = max(2, min(CLUSTERS, n // 32))
        if n >= 2 * k:
            labels["clusters"] = kmeans(chunks, n, k, generator=generator, device=device).labels.to(device)
        return cls(labels, weights)

    def errors(self, mass: torch.Tensor, chi2: float, num_samples: int) -> list[SmoothError]:
        """The worst group of each family for a marginal estimate ``mass`` [n] from ``num_samples``
        noise samples and the potential's chi2."""
        return self.group_errors({k: self._sum(k, mass) for k in self.labels}, chi2, num_samples)

    def group_errors(self, group_mass: dict, chi2: float, num_samples: int) -> list[SmoothError]:
        """The same from the group masses of each family."""
        out = []
        chi2 = max(float(chi2), 0.0)
        for family in self.labels:
            m = group_mass[family]
            b = self.group_weights[family]
            var = chi2 * self.group_sq_weights[family] + b * (1.0 - b) / max(num_samples, 1)
            floor = var.clamp_min(1e-300).sqrt()
            ratio = (m - b).abs() / floor
            g = int(ratio.argmax())
            out.append(
                SmoothError(
                    family=family,
                    group=g,
                    relative_error=float((m[g] - b[g]) / b[g]),
                    floor=float(floor[g] / b[g]),
                    ratio=float(ratio[g]),
                )
            )
        return out


class SmoothMonitor:
    """Running group residuals of the training batches: a cheap, high-sample view of the smooth errors.

    The iterate's mass along smooth functions changes slowly, so the group masses of many recent
    training batches (an exponential window of about ``window`` samples) estimate the averaged
    potential's smooth errors with far more samples than a chi2 measurement draws.
    """

    def __init__(self, groups: SmoothGroups, window: float):
        self.groups = groups
        self.window = float(window)
        self.residual = {k: torch.zeros_like(v) for k, v in groups.group_weights.items()}
        self.weight = 0.0  # the window's total weight (in batches)
        self.samples = 0.0  # the window's effective number of samples

    def observe(self, counts: torch.Tensor, batch: int) -> None:
        """Adds one batch's assignment counts [n]."""
        keep = math.exp(-batch / self.window)
        mass = counts / batch
        for family, r in self.residual.items():
            r.mul_(keep).add_(self.groups._sum(family, mass) - self.groups.group_weights[family])
        self.weight = keep * self.weight + 1.0
        self.samples = keep * self.samples + batch

    def errors(self, chi2: float) -> list[SmoothError]:
        """The worst group per family of the window's mean residual (floors as in
        :meth:`SmoothGroups.errors`, with the window's samples as the measurement)."""
        if self.weight <= 0:
            return []
        mass = {k: self.groups.group_weights[k] + r / self.weight for k, r in self.residual.items()}
        return self.groups.group_errors(mass, chi2, int(self.samples))


def worst_ratio(errors: list[SmoothError]) -> float:
    """The largest ratio over the families (0 without groups)."""
    return max((e.ratio for e in errors), default=0.0)


def _weighted_quantile_groups(
    values: torch.Tensor, weights: torch.Tensor, q: int = QUANTILES
) -> torch.Tensor:
    """Labels 0..q-1 of equal total weight along ``values`` (ties stay together)."""
    order = torch.argsort(values)
    cum = torch.cumsum(weights[order], 0)
    cum = cum / cum[-1]
    group_sorted = torch.clamp((cum * q - 1e-9).floor().long(), 0, q - 1)
    labels = torch.empty_like(group_sorted)
    labels[order] = group_sorted
    return labels


def format_errors(errors: list[SmoothError]) -> str:
    """One line: each family's worst relative error and its ratio to the floor."""
    if not errors:
        return "no smooth groups"
    parts = [f"{e.family} {100 * e.relative_error:+.2f}% ({e.ratio:.1f}x floor)" for e in errors]
    worst = max(errors, key=lambda e: e.ratio)
    ok = "" if not math.isfinite(worst.ratio) else f"; worst {worst.family}"
    return ", ".join(parts) + ok
