"""The stop's measurements in the large high-dimensional regime (BENCHMARKS.md section 34).

A capped extension of a stop measurement goes on while it can still pass at the cap, on either side
of tol (``while_promising``), instead of ending once its estimate crosses above tol (which selected
readings just above tol); and the next measurement is planned by the 1 / samples law of the averaged
potential's chi2. The estimates are scripted here so that each rule is pinned exactly."""

import math

import pytest
import torch

from sdfm.transport import SemidiscreteSolver
from sdfm.transport.semidiscrete import problem as problem_module
from sdfm.transport.semidiscrete.problem import Check, SemidiscreteProblem
from sdfm.transport.semidiscrete.solver import _Iteration
from tests.conftest import gen


def _scripted(monkeypatch, readings: dict[int, tuple[float, float]]):
    """Measurements read readings[num_samples] (chi2, se) whatever the counts."""
    real = problem_module.MarginalAccumulator

    class Scripted(real):
        def chi2(self):
            return readings[self.num_samples]

    monkeypatch.setattr(problem_module, "MarginalAccumulator", Scripted)


def _problem(n=2000, d=4):
    y = torch.randn(n, d, generator=gen(0))
    return SemidiscreteProblem(SemidiscreteSolver(eval_samples=1000), y, None, gen(1), None, None)


@pytest.mark.parametrize("promising", [False, True])
def test_extension_goes_on_above_tol_only_while_promising(monkeypatch, promising):
    problem = _problem()
    # tol 0.1, cap 8,000 samples: the first reading is above tol but within two standard errors and
    # within one of the level that passes at the cap (0.1 - 2 * 0.02 / 8 + 0.02 = 0.115)
    _scripted(
        monkeypatch, {1000: (0.104, 0.02), 2000: (0.099, 0.01), 4000: (0.097, 0.005), 8000: (0.094, 0.0025)}
    )
    h = torch.zeros(problem.n, dtype=torch.float64)
    check = problem.check(h, 0.1, extend=8000, while_promising=promising)
    if promising:  # extended to the cap, where it passes: 0.094 + 2 * 0.0025 <= 0.1
        assert check.samples == 8000 and check.passes(0.1, None)
    else:  # the extension only helps below tol: it stops at the first reading
        assert check.samples == 1000 and not check.passes(0.1, None)


def test_extension_stops_once_it_cannot_pass_at_the_cap(monkeypatch):
    problem = _problem()
    # the second reading, 0.1003 +- 0.01, is within one standard error of the level that passes at
    # the cap (0.1 - 2 * 0.01 * 2000 / 8000 = 0.095): it goes on; the third, 0.1002 +- 0.005, is
    # above 0.1 - 2 * 0.005 * 4000 / 8000 + 0.005 = 0.1: futile, it stops at 4,000 samples
    _scripted(monkeypatch, {1000: (0.098, 0.02), 2000: (0.1003, 0.01), 4000: (0.1002, 0.005)})
    h = torch.zeros(problem.n, dtype=torch.float64)
    check = problem.check(h, 0.1, extend=8000, while_promising=True)
    assert check.samples == 4000 and not check.passes(0.1, None)
    # an unbounded extension (a final verdict) is not changed by the option
    _scripted(monkeypatch, {1000: (0.2, 0.01)})
    assert problem.check(h, 0.1, extend=True, while_promising=True).samples == 1000


def _direct_run():
    y = torch.randn(12_000, 12, generator=gen(2))
    solver = SemidiscreteSolver(tol=0.1)
    run = _Iteration(solver, SemidiscreteProblem(solver, y, None, gen(3), None, None), 0.0)
    assert run.direct()
    return run


def test_next_measurement_follows_the_one_over_samples_law():
    run = _direct_run()
    m = run.problem.eval_samples
    train = 200_000  # (spans above the least one, eval_samples)
    # level = tol - 2 se at twice the measurement's size: 0.1 - 0.01 = 0.09
    far = run._next_measure(train, Check(0.25, 0.01, m))
    assert far == train + train  # 0.25 / 0.09 > 2: doubling, the most
    near = run._next_measure(train, Check(0.108, 0.01, m))
    assert near == train + int((0.108 / 0.09 - 1.0) * train)
    # a standard error so large that the level would fall below tol / 2: the sqrt rule as elsewhere
    noisy = run._next_measure(train, Check(0.15, 0.06, m))
    assert noisy == train + int((math.sqrt(0.15 / 0.1) - 1.0) * train)
