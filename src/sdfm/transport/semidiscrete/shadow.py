"""Measurements on the training noise: chi2 of a frozen snapshot of the averaged potential, counted on
the noise batches that the steps after the snapshot draw anyway.

A snapshot taken at training sample s does not depend on the noise drawn after s, so the cells that
noise falls in under the snapshot are i.i.d. draws of the snapshot's masses, exactly as a measurement
on fresh noise would draw them (the steps' noise must then be i.i.d. too: not with quasi-random
draws, whose counts have less than multinomial variance and would bias the chi2 estimator low). The
measurement costs no noise samples, only the scores of a second potential on the same batches; the
price is the lag: the potential measured, and returned on a stop, is the average at the snapshot,
not the one the steps have reached meanwhile. The solver uses it in the large high-dimensional
regime, where the measurements on fresh noise cost 4.1-5.2 of the 18.7-19.4 samples per target of
a solve (BENCHMARKS.md sections 34 and 35).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdfm.transport.semidiscrete.problem import Check, SemidiscreteProblem

#: the planner looks at new snapshots at now * (1 + PLAN_GRID k), k < PLAN_STEPS
PLAN_GRID = 0.02
PLAN_STEPS = 150
#: an extension counts at least this many times the samples so far: each look at the same snapshot
#: is another chance for a low reading to pass, so the looks are spaced geometrically
EXTEND_GROWTH = 2.0
#: the least power of the chi2 law the planner assumes (:func:`law_power`)
POWER_MIN = 0.5


class ShadowCheck:
    """One snapshot of the averaged potential being measured on the training batches: :meth:`observe`
    each step's noise; :meth:`reading` gives the :class:`Check` once ``target`` samples are counted.

    Attributes:
        potential: the snapshot (a copy of the average when it was taken).
        at: the training samples behind the snapshot.
        target: the samples to count before the reading (the planner may raise it: an extension).
        predicted: whether another snapshot's reading, on other noise, put this one below tol by the
            power law of :func:`plan` (the stop needs it: the reading reported must not be the one that picked
            the snapshot).
    """

    def __init__(
        self, problem: SemidiscreteProblem, average: torch.Tensor, at: int, target: int, predicted: bool
    ):
        self.problem = problem
        self.potential = average.clone()
        self.at = at
        self.target = target
        self.predicted = predicted
        self.acc, self.scored = problem.counters()

    @property
    def samples(self) -> int:
        """Noise samples counted so far."""
        return self.acc.num_samples

    def observe(self, x: torch.Tensor) -> None:
        """Counts the cells of the noise batch x [B, d] under the snapshot."""
        self.problem.count(x, self.potential, self.acc, self.scored)

    def reading(self) -> Check | None:
        """The measurement once ``target`` samples are counted (None: still counting)."""
        if self.acc.num_samples < self.target:
            return None
        return self.problem.check_of(self.acc, self.scored)


@dataclass(frozen=True)
class Plan:
    """What the stop does after a reading that did not stop the solve: count the same snapshot up to
    ``extend_to`` samples, or (``extend_to`` None) take the next snapshot at ``at`` training samples
    and read it after ``window`` samples."""

    extend_to: int | None
    at: int
    window: int


def stderr_at(check: Check, samples: float, n: int) -> float:
    """The standard error that ``check``'s chi2 would have on ``samples`` samples. The U-statistic's
    variance (:func:`~sdfm.transport.diagnostics.chi2_stderr_from_counts`) is about
    2 / (n m^2) + 4 chi2 / (n m) at m samples per atom: the two terms are scaled from the check's."""
    m0 = check.samples / n
    a = 1.0 / (1.0 + 2.0 * max(check.chi2, 0.0) * m0)
    r = check.samples / samples
    return check.stderr * math.sqrt(a * r * r + (1.0 - a) * r)


def window_for(level: float, check: Check, tol: float, n: int, base: int, cap: int) -> int | None:
    """The fewest samples (from ``base``, at most ``cap``) on which a potential at chi2 ``level``
    passes, level + 2 se <= tol, with se scaled from ``check`` (None: not even at ``cap``)."""
    if not level + 2.0 * stderr_at(check, cap, n) <= tol:
        return None
    lo, hi = base, cap
    if level + 2.0 * stderr_at(check, lo, n) <= tol:
        return lo
    while hi - lo > max(1, lo // 64):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if level + 2.0 * stderr_at(check, mid, n) <= tol else (mid, hi)
    return hi


def plan(
    check: Check, at: int, now: int, *, tol: float, n: int, base: int, cap: int, power: float = 1.0
) -> Plan:
    """The next step of the stop after the reading ``check`` of the snapshot taken at ``at`` training
    samples, read at ``now``: whichever ends first by the power law of the averaged potential's chi2
    (at u training samples: check.chi2 * (at / u) ** power; :func:`law_power`): extending this
    snapshot's count until its reading would pass, or a new snapshot at the training time u >= now
    that minimises u + its window (its chi2 falls with u, and so does the count it needs)."""
    extend = window_for(check.chi2, check, tol, n, base, cap) if check.chi2 < tol else None
    if extend is not None and extend > check.samples:  # (at least EXTEND_GROWTH times the count)
        extend = min(cap, max(extend, int(EXTEND_GROWTH * check.samples)))
    end_extend = at + extend if extend is not None and extend > check.samples else math.inf
    best = (math.inf, now, cap)
    for k in range(PLAN_STEPS):
        u = int(now * (1.0 + PLAN_GRID * k))
        window = window_for(check.chi2 * (at / u) ** power, check, tol, n, base, cap)
        if window is not None and u + window < best[0]:
            best = (u + window, u, window)
    if end_extend <= best[0]:
        return Plan(extend, now, extend)
    if math.isinf(best[0]):  # (the law says not within PLAN_STEPS grid steps: measure again later)
        return Plan(None, best[1] + int(now * PLAN_GRID * PLAN_STEPS), base)
    return Plan(None, best[1], best[2])


def law_power(readings: list[tuple[int, float]]) -> float:
    """The power p of chi2 ~ (training samples)^-p fitted to the last two readings (training samples
    at the snapshot, chi2; one reading per snapshot, its last), clipped to [POWER_MIN, 1]; 1 with
    fewer readings. From h = 0 the averaged potential's chi2 falls as 1 / samples (BENCHMARKS.md
    section 17); from the lifted start the curve is flatter (p about 0.8 between 4 and 18 samples
    per target, section 34). A plan by p = 1 from the first reading comes early, and its failed
    reading (which costs no samples) calibrates p for the next."""
    if len(readings) < 2:
        return 1.0
    (u0, c0), (u1, c1) = readings[-2], readings[-1]
    if not (c0 > 0 and c1 > 0 and u1 > u0):
        return 1.0
    return min(1.0, max(POWER_MIN, math.log(c0 / c1) / math.log(u1 / u0)))
