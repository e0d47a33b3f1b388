"""The named pieces the solver's step calls: warm starts, the annealing schedule, step sizes, per-cell
Newton scales, the optimizer's direction and the averaging of the iterates.

Each piece is small and has one job; :class:`~sdfm.transport.semidiscrete.SemidiscreteSolver` picks them
from its settings (``warm_start``, ``preconditioner``, ``optimizer``, ``averaging``) through the tables
at the bottom of this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdfm.transport.semidiscrete import lift
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem

# -- warm starts: the first iterate h ---------------------------------------------------------------


def zero_start(problem: SemidiscreteProblem) -> torch.Tensor:
    """h = 0: every noise goes to the atom with the largest <x, y_j - mean> (the default)."""
    return torch.zeros(problem.n, dtype=torch.float64, device=problem.device)


def nearest_start(problem: SemidiscreteProblem) -> torch.Tensor:
    """g = 0 in the 1/2 |x - y|^2 convention (Voronoi cells): h = -|y - mean|^2 / 2."""
    centred = problem.sqnorm - 2 * problem.dot_mean() + problem.mean.square().sum()
    return -0.5 * centred


def gaussian_start(problem: SemidiscreteProblem) -> torch.Tensor:
    """The dual of the linear Monge map N(0, I) -> N(mean, Sigma): h = -z^T Sigma^{-1/2} z / 2."""
    return -0.5 * problem.gaussian_quadratic()


def auto_start(problem: SemidiscreteProblem) -> torch.Tensor:
    """The best of h = -lam/2 z^T Sigma^{-1/2} z, lam in {0, 1/2, 1}, by chi2 on a small batch."""
    z_quad = problem.gaussian_quadratic()
    probe = min(4 * problem.n, 1 << 16)
    best = None
    for lam in (0.0, 0.5, 1.0):
        h = -0.5 * lam * z_quad
        c = problem.chi2_batch(h, probe)
        if best is None or c < best[0]:
            best = (c, h)
    return best[1]


def radial_start(problem: SemidiscreteProblem) -> torch.Tensor:
    """The dual of the radial map that sends the noise's radius to the atoms' distances from their mean.

    The map x -> mean + T(|x|) x / |x|, T nondecreasing, is the gradient of the convex
    <mean, x> + Phi(|x|) with Phi' = T. T is the quantile matching of the standard Gaussian's radius
    (chi law with d degrees of freedom) to the atoms' distances r_j = |y_j - mean| with weights b:
    the atom k-th by distance takes the radii [s_k, s_{k+1}), s_k the chi quantile of the weight of
    the atoms before it. Its conjugate gives h_j = Phi(s_k) - s_k r_j, with
    Phi(s_k) = sum_{i<k} r_(i) (s_{i+1} - s_i). Exact for the radial part of the problem (the 1-D
    semidiscrete problem from |x| to the r_j with score s r_j + h_j), whatever the data's tails: on
    heavy-tailed data (Cauchy, log-normal) it starts the cells near their final size where h = 0
    gives all the noise to the hull atoms. Atoms at equal distances get equal h.
    """
    from scipy.special import gammaincinv  # (scipy: a core dependency)

    r = problem.centred_norms()
    order = torch.argsort(r, stable=True)
    rs = r[order]
    before = torch.cumsum(problem.b[order], 0)[:-1].clamp(0.0, 1.0 - 2.0**-53)
    chi2_quantile = gammaincinv(0.5 * problem.d, before.cpu().numpy())  # P(chi2_d / 2 <= q) = u
    s = torch.zeros_like(r)
    s[1:] = torch.as_tensor(2.0 * chi2_quantile, dtype=torch.float64, device=r.device).sqrt()
    phi = torch.zeros_like(r)
    phi[1:] = torch.cumsum(rs[:-1] * (s[1:] - s[:-1]), 0)
    h = torch.empty_like(r)
    h[order] = phi - s * rs
    return h


def lifted_start(problem: SemidiscreteProblem) -> torch.Tensor:
    """A coarse problem on k-means clusters of the atoms, solved and lifted to each atom with its
    coarse cell's Gaussian map (:mod:`~sdfm.transport.semidiscrete.lift`)."""
    return lift.lifted_start(problem)[0]


#: the starts by name ("best", the default, picks one of "zero", "radial", "lifted" in select_start)
WARM_STARTS = {
    "zero": zero_start,
    "lifted": lifted_start,
    "radial": radial_start,
    "nearest": nearest_start,
    "gaussian": gaussian_start,
    "auto": auto_start,
}

#: "best" chose the radial start: the annealing's score scale is at most this many times the mean gap
#: at the radial start (the gap at h = 0 is the hull's, thousands of the cells' own gaps on heavy tails)
RADIAL_SCALE_CAP = 3.0


def probe_size(n: int) -> int:
    """Noise samples of the probe batch that measures the start's score scale."""
    return min(4096, max(256, 4 * n))


def _mean_gap(problem: SemidiscreteProblem, best: torch.Tensor, second: torch.Tensor | None) -> float:
    if problem.n < 2:
        return 1.0
    gap = (best - second).to(torch.float64)
    return max(float(gap.mean()), 1e-30)


def gap_scale(problem: SemidiscreteProblem, h: torch.Tensor) -> float:
    """The mean gap between the best and second-best score on a probe batch: the global score scale."""
    x = problem.draw(probe_size(problem.n))
    _, best, second = problem.hard(x, h, top2=True)
    return _mean_gap(problem, best, second)


def radial_applies(problem: SemidiscreteProblem) -> bool:
    """Whether "best" weighs the radial start: the Gaussian source, d >= 2, the hard problem."""
    return problem.gaussian and problem.d >= 2 and problem.eps_abs == 0 and problem.n >= 2


def select_start(
    problem: SemidiscreteProblem, kind: str, direct: bool = False
) -> tuple[torch.Tensor, float, str, dict | None]:
    """(first iterate h, the global score scale, the start used, the lift's summary or None) for
    ``warm_start=kind``.

    "best" scores one probe batch (the one that measures the score scale) at h = 0 and at the
    radial start, and keeps the one whose counts have the lower chi2. h = 0 wins on
    high-dimensional data (its hull holds nearly every atom); the radial start on low-dimensional
    and heavy-tailed data, where it also caps the score scale at ``RADIAL_SCALE_CAP`` times its own
    mean gap. With h = 0 chosen, the draws and the scale are those of ``warm_start="zero"``.
    In the large high-dimensional regime (``direct``, hard problems) "best" weighs the lifted start
    instead of the radial one (:mod:`~sdfm.transport.semidiscrete.lift`).
    """
    if kind == "lifted" or (
        kind == "best" and direct and problem.eps_abs == 0 and problem.collective is None
    ):
        return _lifted_or_zero(problem, kind)
    if kind == "radial" and not problem.gaussian:
        raise ValueError(
            "warm_start: 'radial' matches the radius of the standard Gaussian source (chi law); "
            "with another noise use 'best' or 'zero'"
        )
    if kind != "best":
        h = WARM_STARTS[kind](problem)
        return h, gap_scale(problem, h), kind, None
    zero = zero_start(problem)
    x = problem.draw(probe_size(problem.n))
    index, best, second = problem.hard(x, zero, top2=True)
    scale = _mean_gap(problem, best, second)
    if not radial_applies(problem):
        return zero, scale, "zero", None
    radial = radial_start(problem)
    with problem.off_the_record():
        index_r, best_r, second_r = problem.hard(x, radial, top2=True)
    if problem.chi2_of_index(index_r) < problem.chi2_of_index(index):
        return radial, min(scale, RADIAL_SCALE_CAP * _mean_gap(problem, best_r, second_r)), "radial", None
    return zero, scale, "zero", None


def _lifted_or_zero(problem: SemidiscreteProblem, kind: str):
    """The lifted start and its probe's mean gap; for "best", h = 0 where the probe's counts have the
    lower chi2 at h = 0 (a safeguard: on the data of the large regime the lift starts hundreds of times
    lower)."""
    h, summary = lift.lifted_start(problem)
    x = problem.draw(probe_size(problem.n))
    index, best, second = problem.hard(x, h, top2=True)
    if kind == "best":
        zero = zero_start(problem)
        with problem.off_the_record():
            index_0, best_0, second_0 = problem.hard(x, zero, top2=True)
        if problem.chi2_of_index(index_0) < problem.chi2_of_index(index):
            return zero, _mean_gap(problem, best_0, second_0), "zero", summary
    return h, _mean_gap(problem, best, second), "lifted", summary


# -- the annealing schedule -------------------------------------------------------------------------


class AnnealSchedule:
    """Geometric eps schedule of the entropic annealing phase; ``eps`` becomes None when it is over.

    eps falls from ``start`` to ``end`` over ``length`` noise samples per atom.
    """

    def __init__(self, start: float, end: float, length: float, num_atoms: int):
        self.eps: float | None = start
        self.end = end
        self.decay = math.log(end / start) / (length * num_atoms)

    def update(self, batch: int) -> None:
        self.eps *= math.exp(self.decay * batch)
        if self.eps <= self.end * (1 + 1e-9):
            self.eps = None


# -- step sizes -------------------------------------------------------------------------------------


def capped(lr: float, noise_level: float | None, expected):
    """The step size lr, capped at noise_level * expected (None: no cap), ``expected`` being a cell's
    expected count per batch, batch * b_j: the float batch / n for uniform weights, else a tensor [n]
    (one step size per cell).

    A step moves each cell by lr times its relative counting error, whose variance is 1 / expected, so
    the cap bounds the iterate's noise (too noisy iterates average badly: the coupling is far from
    linear in h). Per cell, a cell of weight far below 1 / n gets the smaller step its rarer counts
    need."""
    if noise_level is None:
        return lr
    if isinstance(expected, torch.Tensor):
        return (noise_level * expected).clamp(max=lr)
    return min(lr, noise_level * expected)


def decayed(lr: float, step: int, power: float) -> float:
    """lr (1 + step / 100)^-power (power 0: constant)."""
    return lr if power <= 0 else lr * (1.0 + step / 100.0) ** (-power)


# -- preconditioners: the step scale of each cell ---------------------------------------------------


class CellScales:
    """Per-cell Newton scale: the running mean gap between the best and second-best score of the noise
    that falls in the cell (d m_j / d h_j ~ m_j / gap_j), so one step size fits small and large cells
    whatever the units of the data. Exponentially weighted (decay 0.99 per step), with a prior of one
    sample at the global scale."""

    needs_gaps = True

    def __init__(self, n: int, scale0: float, device):
        self.scale0 = scale0
        self.gap_sum = torch.zeros(n, dtype=torch.float64, device=device)
        self.gap_count = torch.zeros_like(self.gap_sum)

    def update(
        self, index: torch.Tensor, best: torch.Tensor, second: torch.Tensor, second_index=None
    ) -> None:
        """One batch's winners, best and second-best scores (``second_index``, the runner-ups, is
        used by :class:`AdaptiveCellScales` only)."""
        gap = (best - second).to(torch.float64)
        self.gap_sum.mul_(0.99).index_add_(0, index, gap)
        self.gap_count.mul_(0.99).index_add_(0, index, torch.ones_like(gap))

    def scale(self) -> torch.Tensor:
        # Posterior mean of the cell's gap with a prior of one sample at the global scale.
        return (self.gap_sum + self.scale0) / (self.gap_count + 1.0)

    def reset(self) -> None:
        """Forget the gaps measured at eps > 0 (the hard cells differ)."""
        self.gap_sum.zero_()
        self.gap_count.zero_()


class AdaptiveCellScales(CellScales):
    """Per-cell scales that follow the cell (``preconditioner="adaptive"``).

    Two changes to :class:`CellScales`. The prior's weight decays like the samples' (0.99 per step),
    so a cell that empties keeps the scale it last measured instead of returning to the global gap
    measured at the start (which, for the two atoms of a near-duplicate pair or for the small cells of
    heavy-tailed data, is many times their own and throws them in and out of the noise). And where a
    cell won no sample of the batch, the gaps of the samples it was runner-up for count for it (where
    the step's scan gives runner-ups): how far its h is from winning them, the scale an empty cell
    needs to regain mass. A cell that won samples counts only their gaps: the runner-up gaps measure
    its larger neighbours' depth, and on a far outlier beside them they made the step about 3 times
    the cell's Newton scale, so that its mass swung from empty to several times its weight from one
    step to the next.
    """

    def __init__(self, n: int, scale0: float, device):
        super().__init__(n, scale0, device)
        self.prior_weight = 1.0

    def update(
        self, index: torch.Tensor, best: torch.Tensor, second: torch.Tensor, second_index=None
    ) -> None:
        super().update(index, best, second)
        self.prior_weight *= 0.99
        if second_index is not None:
            valid = second_index >= 0
            won = torch.zeros(self.gap_sum.shape[0], dtype=torch.bool, device=index.device)
            won[index] = True
            valid = valid & ~won[second_index.clamp_min(0)]  # (a cell that won samples has their gaps)
            gap = (best - second).to(torch.float64)[valid]
            self.gap_sum.index_add_(0, second_index[valid], gap)
            self.gap_count.index_add_(0, second_index[valid], torch.ones_like(gap))

    def scale(self) -> torch.Tensor:
        w = self.prior_weight
        return (self.gap_sum + self.scale0 * w) / (self.gap_count + w)

    def reset(self) -> None:
        super().reset()
        self.prior_weight = 1.0


class GlobalScale:
    """One scale for every cell: the mean gap at the start."""

    needs_gaps = False

    def __init__(self, n: int, scale0: float, device):
        self.scale0 = scale0

    def update(self, index, best, second, second_index=None) -> None:
        pass

    def scale(self) -> float:
        return self.scale0

    def reset(self) -> None:
        pass


PRECONDITIONERS = {"cell": CellScales, "adaptive": AdaptiveCellScales, "global": GlobalScale}


# -- optimizers: the direction of a step from the relative mass residual -----------------------------


class SGD:
    """The preconditioned gradient itself."""

    def __init__(self, n: int, device):
        pass

    def direction(self, residual: torch.Tensor, step: int) -> torch.Tensor:
        return residual


class Adam:
    """Adam (0.9, 0.999) on the preconditioned gradient (for comparisons)."""

    def __init__(self, n: int, device):
        self.mom = torch.zeros(n, dtype=torch.float64, device=device)
        self.sq_avg = torch.zeros_like(self.mom)

    def direction(self, residual: torch.Tensor, step: int) -> torch.Tensor:
        k = step + 1
        self.mom.mul_(0.9).add_(residual, alpha=0.1)
        self.sq_avg.mul_(0.999).addcmul_(residual, residual, value=0.001)
        return (self.mom / (1 - 0.9**k)) / ((self.sq_avg / (1 - 0.999**k)).sqrt() + 1e-8)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


# -- averaging of the iterates ----------------------------------------------------------------------


@dataclass(frozen=True)
class Averaging:
    """h_avg += w_k (h - h_avg) after the k-th averaged step (the first average is h itself).

    kind: "poly" (w_k = (p + 1) / (k + p + 1): polynomial-decay averaging, whose window grows with k so
    the sampling noise keeps falling, with no floor as with a fixed EMA), "uniform" (Polyak, w_k = 1/k),
    "ema" (w_k = 1 - decay) or "none" (the last iterate).
    """

    kind: str = "poly"
    power: float = 2.0
    ema_decay: float = 0.99

    def update(self, average: torch.Tensor | None, h: torch.Tensor, k: int) -> torch.Tensor:
        if average is None or self.kind == "none":
            return h.clone()
        if self.kind == "poly":
            w = (self.power + 1.0) / (k + self.power + 1.0)
        elif self.kind == "uniform":
            w = 1.0 / k
        else:
            w = 1.0 - self.ema_decay
        return average + w * (h - average)
