"""Convergence diagnostics of a semidiscrete coupling, as functions of tensors.

The marginal error of a potential is measured on fresh noise: the coupling's target marginal
m_j (mass of cell j, or mean softmax for eps > 0) against the weights b_j.

- chi2(m || b) = sum_j m_j^2 / b_j - 1, estimated without bias by the U-statistic of arXiv 2509.25519:
  ``sum_j (S_j^2 - Q_j) / (b_j M (M - 1)) - 1`` with S_j = sum_i s_ij and
  Q_j = sum_i s_ij^2 (for eps = 0, s_ij is one-hot and Q_j = S_j = count_j). Its standard error is
  the U-statistic's variance formula for hard counts (:func:`chi2_stderr_from_counts`) and a
  delete-one-group jackknife over the sample for soft rows.
- total variation 1/2 |m_hat - b|_1, biased upwards by sampling noise: :func:`tv_sampling_floor`
  is its expected value for an exact coupling with the same number of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdfm.transport import validate
from sdfm.transport.duplicates import DuplicateGroups
from sdfm.transport.sources import draw, standard_normal


def chi2_from_sums(
    sums: torch.Tensor, squares: torch.Tensor, num_samples: int, weights: torch.Tensor | None = None
) -> float:
    """Unbiased chi2 from column sums S [N] and column sums of squares Q [N] of M samples."""
    m = float(num_samples)
    if m < 2:
        raise ValueError(f"num_samples: need at least 2 samples for chi2, got {num_samples}")
    s = sums.to(torch.float64)
    q = squares.to(torch.float64)
    inv_b = float(s.shape[0]) if weights is None else 1.0 / weights.to(s.device, torch.float64)
    return float(((s * s - q) * inv_b).sum() / (m * (m - 1.0)) - 1.0)


def chi2_from_counts(counts: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Unbiased chi2 from assignment counts [N]: sum_j c_j (c_j - 1) / (b_j M (M - 1)) - 1."""
    c = counts.to(torch.float64)
    return chi2_from_sums(c, c, int(round(float(c.sum()))), weights)


def chi2_stderr_from_counts(counts: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Standard error of :func:`chi2_from_counts` from the counts [N] of M i.i.d. samples.

    The estimator is a U-statistic of order 2 with kernel h(i, i') = 1[j_i = j_i'] / b_{j_i}, so
    Var = 4 (M - 2) zeta_1 / (M (M - 1)) + 2 zeta_2 / (M (M - 1)) with
    zeta_1 = sum_j m_j^3 / b_j^2 - theta^2, zeta_2 = sum_j m_j^2 / b_j^2 - theta^2 and
    theta = sum_j m_j^2 / b_j, each moment of m estimated without bias from the counts (falling
    factorials). Far less noisy than a jackknife over a few groups."""
    c = counts.to(torch.float64)
    m = float(c.sum())
    if m < 3:
        return float("nan")
    inv_b = float(c.shape[0]) if weights is None else 1.0 / weights.to(c.device, torch.float64)
    m2 = c * (c - 1.0) / (m * (m - 1.0))  # unbiased m_j^2
    m3 = m2 * (c - 2.0) / (m - 2.0)  # unbiased m_j^3
    theta = float((m2 * inv_b).sum())
    zeta1 = max(float((m3 * inv_b * inv_b).sum()) - theta * theta, 0.0)
    zeta2 = max(float((m2 * inv_b * inv_b).sum()) - theta * theta, 0.0)
    var = (4.0 * (m - 2.0) * zeta1 + 2.0 * zeta2) / (m * (m - 1.0))
    return var**0.5


def total_variation(mass: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """1/2 |m - b|_1 for a marginal estimate ``mass`` [N] (sums to 1)."""
    m = mass.to(torch.float64)
    b = 1.0 / m.shape[0] if weights is None else weights.to(m.device, torch.float64)
    return 0.5 * float((m - b).abs().sum())


def tv_sampling_floor(num_samples: int, weights: torch.Tensor | int) -> float:
    """Expected total variation 1/2 |C/M - b|_1 of an exact hard coupling measured with M samples.

    Uses the closed form of the binomial mean absolute deviation (de Moivre):
    E|X - Mp| = 2 k C(M, k) p^k (1 - p)^(M - k + 1) with k = floor(M p) + 1.
    ``weights`` is the weight vector [N] or, for uniform weights, N.
    """
    if isinstance(weights, int):
        p = torch.full((weights,), 1.0 / weights, dtype=torch.float64)
    else:
        p = weights.to(torch.float64).cpu()
        p = p / p.sum()
    m = float(num_samples)
    k = torch.floor(m * p) + 1
    valid = k <= m
    k = torch.where(valid, k, torch.ones_like(k))
    log_mad = (
        math.log(2.0)
        + torch.log(k)
        + math.lgamma(m + 1)
        - torch.lgamma(k + 1)
        - torch.lgamma(m - k + 1)
        + k * torch.log(p)
        + (m - k + 1) * torch.log1p(-p)
    )
    mad = torch.where(valid & (p < 1), torch.exp(log_mad), torch.zeros_like(p))
    return 0.5 * float(mad.sum()) / m


def usage_counts(index: torch.Tensor, num_targets: int) -> torch.Tensor:
    """How many times each target was paired: [N] int64."""
    return torch.bincount(index.reshape(-1), minlength=num_targets)


def usage_histogram(
    index: torch.Tensor,
    num_targets: int,
    weights: torch.Tensor | None = None,
    *,
    bins: int = 20,
    max_ratio: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram over targets of the usage ratio count_j / (M b_j) (1 for a perfect coupling).

    Returns:
        counts per bin [bins] (number of targets) and bin edges [bins + 1] on [0, max_ratio]; the
        last bin also holds every ratio above ``max_ratio``.
    """
    counts = usage_counts(index, num_targets).to(torch.float64)
    b = (
        torch.full((num_targets,), 1.0 / num_targets, dtype=torch.float64)
        if weights is None
        else weights.to(torch.float64).cpu() / weights.sum().item()
    )
    ratio = (counts.cpu() / max(1, index.numel())) / b
    edges = torch.linspace(0.0, max_ratio, bins + 1, dtype=torch.float64)
    hist = torch.histc(ratio.clamp(max=max_ratio * (1 - 1e-12)), bins=bins, min=0.0, max=max_ratio)
    return hist.to(torch.long), edges


def transport_cost(x: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-pair cost 1/2 |x_i - y_index(i)|^2 [n] (float64)."""
    y = targets[index.to(targets.device)].to(device=x.device, dtype=torch.float64)
    return 0.5 * (x.to(torch.float64) - y).square().sum(1)


@dataclass(frozen=True)
class MarginalEstimate:
    """Marginal error of a coupling measured on fresh noise.

    Attributes:
        num_samples: number of noise samples M.
        mass: [N] float64, estimated target marginal m_hat (sums to 1).
        chi2: unbiased estimate of chi2(m || b).
        chi2_stderr: its standard error (analytic for eps = 0, jackknife for eps > 0).
        total_variation: 1/2 |m_hat - b|_1 (biased upwards by sampling noise).
        tv_floor: expected total variation of an exact coupling with M samples.
        cost: mean transport cost 1/2 |x - y|^2 of the coupling (None when not computed).
    """

    num_samples: int
    mass: torch.Tensor
    chi2: float
    chi2_stderr: float
    total_variation: float
    tv_floor: float
    cost: float | None = None


class MarginalAccumulator:
    """Accumulates column sums over batches in G groups: chi2 with a jackknife standard error."""

    def __init__(self, num_targets: int, weights: torch.Tensor | None, *, device, groups: int = 8):
        self.sums = torch.zeros(groups, num_targets, dtype=torch.float64, device=device)
        self.squares: torch.Tensor | None = None
        self.counts = [0] * groups
        self.weights = weights
        self._k = 0

    def add_index(self, index: torch.Tensor) -> None:
        """Adds hard assignments [M]: the samples are dealt to the groups in contiguous slices, so the
        jackknife has every group filled even from a single batch."""
        groups = len(self.counts)
        parts = torch.tensor_split(index, min(groups, max(1, index.numel())))
        for part in parts:
            g = self._k % groups
            self.sums[g] += torch.bincount(part, minlength=self.sums.shape[1]).to(torch.float64)
            self.counts[g] += part.numel()
            self._k += 1

    def add_soft(self, sums: torch.Tensor, squares: torch.Tensor, n: int) -> None:
        g = self._k % len(self.counts)
        if self.squares is None:
            self.squares = torch.zeros_like(self.sums)
        self.sums[g] += sums
        self.squares[g] += squares
        self.counts[g] += n
        self._k += 1

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def chi2(self) -> tuple[float, float]:
        """(estimate, standard error): for hard assignments the U-statistic's variance formula
        (:func:`chi2_stderr_from_counts`), for soft rows a delete-one-group jackknife."""
        sq = self.sums if self.squares is None else self.squares
        total_s, total_q, m = self.sums.sum(0), sq.sum(0), self.num_samples
        value = chi2_from_sums(total_s, total_q, m, self.weights)
        if self.squares is None:
            return value, chi2_stderr_from_counts(total_s, self.weights)
        used = [g for g, c in enumerate(self.counts) if c > 0]
        if len(used) < 2:
            return value, float("nan")
        loo = [
            chi2_from_sums(total_s - self.sums[g], total_q - sq[g], m - self.counts[g], self.weights)
            for g in used
            if m - self.counts[g] >= 2
        ]
        k = len(loo)
        mean = sum(loo) / k
        se = math.sqrt((k - 1) / k * sum((v - mean) ** 2 for v in loo))
        return value, se

    def mass(self) -> torch.Tensor:
        return self.sums.sum(0) / self.num_samples


def estimate_marginal(
    targets: torch.Tensor,
    potential: torch.Tensor,
    *,
    eps: float = 0.0,
    weights: torch.Tensor | None = None,
    num_samples: int = 1 << 20,
    batch_size: int = 8192,
    noise=standard_normal,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    duplicates: DuplicateGroups | None = None,
    with_cost: bool = True,
) -> MarginalEstimate:
    """Measures chi2, total variation and transport cost of the coupling of ``potential``.

    Draws ``num_samples`` fresh noise samples in batches and streams them through the exact
    assignment (eps = 0) or the softmax (eps > 0, whose chi2 uses the soft rows; its cost is measured
    on Gumbel-max samples).

    Args:
        targets: [N, d]; potential: [N] (1/2 |x - y|^2 convention); eps: absolute.
        duplicates: groups of identical targets; their mass is measured per group (merged cells).
        dtype: of the scores (float32 or float64; targets on one line, 1-D ones included, always use
            float64).
    """
    from sdfm.transport.assign import LaguerreCells, compute_dtype

    targets = validate.as_targets(targets)
    n_targets, d = targets.shape
    num_samples = validate.check_positive_int(num_samples, "num_samples", allow_none=False)
    batch_size = validate.check_positive_int(batch_size, "batch_size", allow_none=False)
    if num_samples < 2:
        raise ValueError(f"num_samples: need at least 2, got {num_samples}")
    device = torch.device(device) if device is not None else targets.device
    # the dense scan: an independent check of solvers that prune (sdfm.transport.pruned)
    if duplicates is not None and eps == 0:  # a group's cell is its representative's (see spread)
        potential = duplicates.representatives_only(validate.as_potential(potential, n_targets))
    cells = LaguerreCells(targets, potential, eps=eps, weights=weights, chunk_size=chunk_size, pruning="off")
    w = cells.weights
    dtype = compute_dtype(torch.empty(0, dtype=dtype), 1 if cells.collinear else d)
    # eps = 0: identical targets share one cell, so their mass is measured per group. eps > 0: the
    # softmax already splits a shared cell by weight, so per-copy masses are the right measure.
    group_of = None
    b_eff, n_eff = w, n_targets
    if duplicates is not None and cells.eps == 0:
        group_of = duplicates.inverse.to(device)
        b_eff, n_eff = duplicates.group_weights().to(device), duplicates.num_groups
    acc = MarginalAccumulator(n_eff, b_eff, device=device)
    cost_sum = 0.0
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        x = draw(noise, n, d, generator=generator, device=device, dtype=dtype)
        validate.check_finite(x, "noise")
        if cells.eps == 0:
            index = cells.assign(x)
            acc.add_index(index if group_of is None else group_of[index])
        else:
            sums, squares = cells.column_sums(x, squares=True)
            acc.add_soft(sums, squares, n)
            if with_cost:
                index = cells.assign(x, generator=generator)
        if with_cost:
            cost_sum += float(transport_cost(x, cells.targets, index).sum())
        done += n
    value, se = acc.chi2()
    mass = acc.mass()
    return MarginalEstimate(
        num_samples=done,
        mass=mass,
        chi2=value,
        chi2_stderr=se,
        total_variation=total_variation(mass, b_eff),
        tv_floor=tv_sampling_floor(done, b_eff.cpu() if b_eff is not None else n_eff),
        cost=cost_sum / done if with_cost else None,
    )
