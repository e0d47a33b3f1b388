"""Coarse-space correction: a Newton step on a space of smooth functions of the atoms.

The per-cell step (``CellScales``) is a Jacobi iteration on the semi-dual's Hessian, the flux
Laplacian L of the cell adjacency (L_jk = -flux across the face of cells j and k: the noise mass that
moves from j to k per unit of h_k - h_j). It removes errors that vary from cell to cell quickly but
errors that vary slowly across many cells (a mass surplus on one side of the data, between the
clusters of a mixture, along a chain of cells) only by slow diffusion. chi2 weighs every atom alike
and hardly sees them; samples do.

This piece solves the Galerkin problem (P^T L P) c = P^T r on K smooth functions: P [N, K] is a
partition of unity over k-means centres of the atoms (each atom's m nearest centres with Gaussian
weights), r = b - m_hat the mass residual, and h += gamma P c. P^T L P is estimated from the noise
itself: a sample whose best and second-best atoms are j and k, with score gap u, lies near their face,
and sigmoid(u / e) sigmoid(-u / e) / e (e a fraction of the cell's mean gap) is a kernel estimate of the
face's flux density; summed over samples it estimates L. The estimate is averaged over recent steps.
Safeguards: the step is damped so that the faces seen in the last batch move by at most ``trust``
gaps and every h_j by at most ``reach`` gaps, and directions without observed flux are regularised
towards the per-cell scale. With ``face_units`` (``preconditioner="adaptive"``) a face's move is
measured in x, |dh_j - dh_k| / |y_j - y_k| against the cell's width (its mean gap over its mean
distance to its runner-ups), and the reach in the larger of the cell's gap and its coarse functions'
mass over flux: a tiny cluster far from the rest has gaps (against its own members) thousands of times
smaller than the collective move that gives it its mass, which the gap units allow a few gaps per step.
In face units the trust bound holds the 95th percentile of the batch's face moves, not the largest:
on data in many tight clusters the smooth functions vary a little across each cluster, which moves
a few of its internal faces many of their tiny widths; bounding those damps the clusters' collective
moves many times over, while the mass they trade between siblings is the per-cell step's to fix.
"""

from __future__ import annotations

import math

import torch

from sdfm.transport._stream import Top2
from sdfm.transport.clustering import kmeans
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem


class CoarseCorrection:
    """Newton correction on K smooth functions of the atoms (see the module docstring).

    Args:
        problem: the prepared problem (atoms, weights).
        size: K, the number of k-means centres (capped at N / 4).
        neighbours: m, the centres each atom's functions spread over.
        decay: per-step decay of the running flux estimate.
        bandwidth: e / (the winner cell's mean gap) of the flux kernel.
        trust: largest change of h_j - h_k per step for neighbours j, k seen in the last batch, in units
            of the cell's gap scale.
        reach: largest change of any h_j per step (about the weighted mean), in the same units.
        warmup: batches observed before the first correction (a flux estimate from one or two
            batches misses most faces in high dimension and over-corrects).
        ridge: Tikhonov term of the coarse system, relative to each function's own flux (damps
            directions the batches have barely seen).
        face_units: measure the trust bound in x and the reach in coarse mass over flux (see the
            module docstring).
        trust_quantile: with ``face_units``, the quantile of the batch's face moves that the trust
            bound holds to ``trust`` (the default's bound holds the largest one).
        generator: randomness of the k-means subsample and seeding (CPU).
    """

    def __init__(
        self,
        problem: SemidiscreteProblem,
        *,
        size: int,
        neighbours: int = 4,
        decay: float = 0.9,
        bandwidth: float = 0.3,
        trust: float = 0.5,
        reach: float = 2.0,
        warmup: int = 5,
        ridge: float = 1e-2,
        face_units: bool = False,
        trust_quantile: float = 0.95,
        generator: torch.Generator | None = None,
    ):
        self.problem = problem
        n = problem.n
        k = int(max(2, min(size, n // 4)))
        chunk = problem.chunk(1)
        clusters = kmeans(
            lambda: problem.atom_chunks(chunk),
            n,
            k,
            generator=generator,
            device=problem.device,
            neighbours=neighbours,
        )
        self.size = clusters.num_clusters
        self.cols = clusters.nearest  # [n, m]
        self.vals = _partition_of_unity(clusters.sq_dist)  # [n, m]
        self.coarse_b = self.restrict(problem.b)
        # coefficients of the constant function (it changes no mass: pinned in the solve)
        self.constant = torch.full((self.size,), self.size**-0.5, dtype=torch.float64, device=problem.device)
        self.last_pairs = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        self.decay = decay
        self.bandwidth = bandwidth
        self.trust = trust
        self.flux = None  # running estimate of P^T L P [K, K]
        self.observed = 0  # batches in the estimate
        self.warmup = warmup  # batches in the flux estimate before the first correction
        self.reach = reach
        self.ridge = ridge
        self.face_units = face_units
        self.trust_quantile = trust_quantile
        if face_units:  # running mean distance of each cell to its runner-ups, and the last batch's
            self.dist_sum = torch.zeros(n, dtype=torch.float64, device=problem.device)
            self.dist_count = torch.zeros_like(self.dist_sum)
            self.last_dist = torch.zeros(0, dtype=torch.float64, device=problem.device)

    def restrict(self, v: torch.Tensor) -> torch.Tensor:
        """P^T v [K] for v [n]."""
        out = torch.zeros(self.size, dtype=torch.float64, device=v.device)
        return out.index_add_(0, self.cols.reshape(-1), (self.vals * v[:, None]).reshape(-1))

    def prolong(self, c: torch.Tensor) -> torch.Tensor:
        """P c [n] for c [K]."""
        return (self.vals * c[self.cols]).sum(1)

    def observe(self, top2: Top2, cell_scale: torch.Tensor, batch: int) -> None:
        """Adds one batch's flux estimate (its best / second-best pairs and their score gaps)."""
        j, k = top2.index, top2.second_index
        valid = k >= 0
        j, k = j[valid], k[valid]
        self.last_pairs = (j, k)
        if self.face_units:
            self.last_dist = (self.problem.atoms_at(j) - self.problem.atoms_at(k)).norm(dim=1)
            self.dist_sum.mul_(0.99).index_add_(0, j, self.last_dist)
            self.dist_count.mul_(0.99).index_add_(0, j, torch.ones_like(self.last_dist))
        gap = (top2.best - top2.second)[valid].to(torch.float64)
        e = self.bandwidth * cell_scale[j]
        s = torch.sigmoid(gap / e)
        w = s * (1.0 - s) / e / batch
        cols = torch.cat([self.cols[j], self.cols[k]], 1)  # [E, 2m]
        vals = torch.cat([self.vals[j], -self.vals[k]], 1)
        outer = vals[:, :, None] * vals[:, None, :] * w[:, None, None]
        flat = (cols[:, :, None] * self.size + cols[:, None, :]).reshape(-1)
        size = self.size
        estimate = torch.zeros(size * size, dtype=torch.float64, device=w.device)
        estimate = estimate.index_add_(0, flat, outer.reshape(-1)).view(size, size)
        if self.flux is None:
            self.flux = estimate
        else:
            self.flux.mul_(self.decay).add_(estimate, alpha=1.0 - self.decay)
        self.observed += 1

    def step(self, residual: torch.Tensor, cell_scale: torch.Tensor) -> torch.Tensor:
        """The correction gamma P c [n] for the mass residual b - m_hat [n], with gamma <= 1 the largest
        step within the trust bounds (``trust``, ``reach``); zero before ``warmup`` batches."""
        if self.observed < self.warmup:
            return torch.zeros_like(residual)
        rc = self.restrict(residual)
        a = self.flux
        diag = torch.diagonal(a)
        scale = float(diag.mean()) if float(diag.mean()) > 0 else 1.0
        # Regularise towards the per-cell scale (directions without flux) and pin the constant (it
        # changes no mass).
        prior = self.restrict(self.problem.b / cell_scale)
        system = (
            a
            + torch.diag(self.ridge * prior + 1e-12 * scale)
            + scale * torch.outer(self.constant, self.constant)
        )
        c = _solve(system, rc)
        delta = self.prolong(c)
        delta = delta - (self.problem.b * delta).sum()
        move, reach = self._bounds(delta, cell_scale)
        # neighbours seen in the last batch move apart by at most `trust` gaps, every cell by at most
        # `reach` gaps (faces not seen in the batch are not checked by the first bound)
        worst = max(move / self.trust, float((delta.abs() / reach).max()) / self.reach)
        if not math.isfinite(worst):
            return torch.zeros_like(residual)
        return (1.0 if worst <= 1.0 else 1.0 / worst) * delta

    def _bounds(self, delta: torch.Tensor, cell_scale: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The largest move of a face seen in the last batch, in gaps (face units: in cell widths),
        and the per-atom scale of the reach bound."""
        j, k = self.last_pairs
        if not self.face_units:
            move = float(((delta[j] - delta[k]).abs() / cell_scale[j]).max()) if j.numel() else 0.0
            return move, cell_scale
        width = cell_scale / (self.dist_sum / self.dist_count.clamp_min(1e-300)).clamp_min(1e-300)
        shift = (delta[j] - delta[k]).abs() / self.last_dist.clamp_min(1e-300)
        move = float(torch.quantile(shift / width[j], self.trust_quantile)) if j.numel() else 0.0
        flux_scale = self.coarse_b / torch.diagonal(self.flux).clamp_min(1e-300)
        return move, torch.maximum(cell_scale, self.prolong(flux_scale))


def _solve(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """system^-1 rhs, computed on one CPU thread: LAPACK's multithreaded factorisation rounds
    differently with the thread count, and a solve must not depend on it (a [K, K] solve is cheap)."""
    if system.device.type != "cpu":
        return torch.linalg.solve(system, rhs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.solve(system, rhs)
    finally:
        torch.set_num_threads(threads)


def _partition_of_unity(sq_dist: torch.Tensor) -> torch.Tensor:
    """Weights [n, m] over each atom's m nearest centres: Gaussian in the squared distance, scaled so
    that the m-th nearest gets exp(-2) of the nearest's, normalised to sum 1."""
    if sq_dist.shape[1] == 1:
        return torch.ones_like(sq_dist)
    rel = sq_dist - sq_dist[:, :1]
    width = rel[:, -1:].clamp_min(1e-300)
    w = torch.exp(-2.0 * rel / width)
    return w / w.sum(1, keepdim=True)
