"""The stop on the steps' noise (:mod:`sdfm.transport.semidiscrete.shadow`, BENCHMARKS.md section 35):
a snapshot of the averaged potential counted on the training batches that follow it, read after a
window the planner picks by the power law of the average's chi2."""

import math

import pytest
import torch

from sdfm.transport import SemidiscreteSolver, estimate_marginal
from sdfm.transport.diagnostics import chi2_from_counts
from sdfm.transport.semidiscrete.parts import probe_size
from sdfm.transport.semidiscrete.problem import Check, SemidiscreteProblem
from sdfm.transport.semidiscrete.shadow import ShadowCheck, law_power, plan, stderr_at, window_for
from tests.conftest import gen


def _problem(n=3000, d=8):
    y = torch.randn(n, d, generator=gen(0))
    return SemidiscreteProblem(SemidiscreteSolver(eval_samples=4000), y, None, gen(1), None, None)


def test_reading_counts_the_float64_argmax_of_the_observed_noise():
    problem = _problem()
    h = 0.3 * torch.randn(problem.n, generator=gen(2), dtype=torch.float64)
    shadow = ShadowCheck(problem, h, at=0, target=6000, predicted=False)
    h += 1.0  # the snapshot is a copy: later steps do not move it
    xs = [problem.draw(2500) for _ in range(3)]
    shadow.observe(xs[0])
    assert shadow.reading() is None and shadow.samples == 2500  # still counting
    for x in xs[1:]:
        shadow.observe(x)
    check = shadow.reading()
    # brute force: float64 scores of every atom, against the snapshot (h before the += 1)
    x = torch.cat(xs).to(torch.float64)
    z = problem.src.to(torch.float64) - problem.mean
    index = (x @ z.T + (h - 1.0)).argmax(1)
    counts = torch.bincount(index, minlength=problem.n)
    assert check.samples == 7500
    assert check.chi2 == pytest.approx(chi2_from_counts(counts), rel=1e-12, abs=1e-12)


def test_stderr_scaling_and_windows():
    n = 100_000
    check = Check(0.12, 0.011, 45_000)
    assert stderr_at(check, 45_000, n) == pytest.approx(0.011)
    # the 1 / m term dominates at small chi2: 4x the samples nearly quarter the error, at least halve it
    assert 0.011 / 4 < stderr_at(check, 180_000, n) < 0.011 / 2
    base, cap = 45_000, 200_000
    w = window_for(0.09, check, 0.1, n, base, cap)
    assert base <= w <= cap and 0.09 + 2 * stderr_at(check, w, n) <= 0.1
    assert 0.09 + 2 * stderr_at(check, w * 0.97, n) > 0.1  # (the fewest, to the bisection's step)
    assert window_for(0.08, check, 0.1, n, base, cap) < w  # lower chi2: a shorter window
    assert window_for(0.099, check, 0.1, n, base, cap) is None  # not even at the cap
    assert window_for(0.01, check, 0.1, n, base, cap) == base


def test_plan_takes_a_later_snapshot_when_far_and_extends_when_close():
    n, base, cap = 100_000, 45_000, 200_000
    # far above tol at 5 samples per atom: the next snapshot where the law puts chi2 low enough
    far = Check(0.24, 0.012, base)
    step = plan(far, 500_000, 545_000, tol=0.1, n=n, base=base, cap=cap)
    assert step.extend_to is None and step.at > 545_000
    level = 0.24 * 500_000 / step.at
    assert level + 2 * stderr_at(far, step.window, n) <= 0.1
    # the planned end is the earliest on the grid (a nearby snapshot time ends no sooner)
    for u in (int(step.at * 0.97), int(step.at * 1.03)):
        w = window_for(0.24 * 500_000 / u, far, 0.1, n, base, cap)
        assert w is None or u + w >= step.at + step.window - 2 * base // 64
    # a flatter law (power 0.8) plans later
    assert plan(far, 500_000, 545_000, tol=0.1, n=n, base=base, cap=cap, power=0.8).at > step.at
    # a young snapshot close below tol whose count just misses: counting on (to twice the count at
    # least) beats a new snapshot
    close = Check(0.088, 0.0075, base)
    step = plan(close, 1_300_000, 1_345_000, tol=0.1, n=n, base=base, cap=cap)
    assert step.extend_to == 2 * base
    # an old snapshot: the 2x count would end later than a new one where the law has chi2 lower
    step = plan(Check(0.088, 0.0075, 90_000), 1_300_000, 1_390_000, tol=0.1, n=n, base=base, cap=cap)
    assert step.extend_to is None and step.at + step.window < 1_300_000 + 180_000


def test_law_power_fits_two_readings_and_clips():
    assert law_power([(100, 0.3)]) == 1.0
    assert law_power([(100, 0.3), (200, 0.15)]) == pytest.approx(1.0)
    assert law_power([(100, 0.3), (200, 0.3 * 2**-0.8)]) == pytest.approx(0.8)
    assert law_power([(100, 0.3), (200, 0.29)]) == 0.5  # (noise: clipped)
    assert law_power([(100, 0.3), (200, 0.01)]) == 1.0


def _direct(**kw):
    """The large high-dimensional regime (N > 10,240, intrinsic dimension >= 7) with i.i.d. steps
    (d > 16: no quasi-random draws)."""
    y = torch.randn(12_000, 24, generator=gen(4)) * torch.linspace(0.5, 1.5, 24)
    trained = [0]
    solver = SemidiscreteSolver(tol=0.1, **kw)
    res = solver.solve(y, generator=gen(5), callback=lambda s: trained.__setitem__(0, s.train_samples))
    return y, res, trained[0]


def test_direct_solve_measures_on_the_steps_noise():
    y, res, trained = _direct()
    assert res.converged and res.settings["measured_on_training"]
    # no noise was drawn for a measurement: only the steps and the start's probe
    assert res.samples == trained + probe_size(len(y))
    assert sum(h.chi2 is not None for h in res.history) >= 2  # (readings, though no measurement noise)
    # the returned snapshot is below tol by an independent count
    est = estimate_marginal(y, res.potential, num_samples=1 << 18, generator=gen(6), with_cost=False)
    assert est.chi2 <= 0.1 + 3 * est.chi2_stderr
    assert abs(est.chi2 - res.chi2) <= 3 * math.hypot(est.chi2_stderr, res.chi2_stderr)


def test_option_off_and_quasi_random_steps_measure_on_fresh_noise():
    y, res, trained = _direct(measure_on_training=False, max_steps=60)
    assert not res.settings["measured_on_training"]
    assert res.samples >= trained + probe_size(len(y)) + res.chi2_samples
    # quasi-random steps (d <= 16) count with less than multinomial variance: never on them
    y = torch.randn(12_000, 12, generator=gen(7))
    res = SemidiscreteSolver(tol=0.1, max_steps=40).solve(y, generator=gen(8))
    assert res.settings["quasi_random"] and not res.settings["measured_on_training"]
