"""The TwoNN intrinsic-dimension estimate and the solver regime it picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdfm.data import load_dataset
from sdfm.transport import SemidiscreteSolver, intrinsic_dimension
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem
from sdfm.transport.semidiscrete.solver import (
    AVERAGE_POWER,
    AVERAGE_POWER_DIRECT,
    AVERAGE_POWER_LIFTED,
    NOISE_LEVEL,
    NOISE_LEVEL_DIRECT,
    _Iteration,
)


def _embedded(n: int, k: int, d: int = 64, seed: int = 0) -> torch.Tensor:
    """n standard Gaussian points of dimension k, rotated into d dimensions."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return torch.from_numpy(rng.standard_normal((n, k)) @ q[:k])


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_twonn_reads_the_dimension_of_an_embedded_gaussian(k):
    # the ambient dimension is 64 whatever k; the estimate sees k (TwoNN is unbiased for a locally
    # uniform density; its relative standard error on 2,048 points is about 2%)
    est = intrinsic_dimension(_embedded(5000, k))
    assert abs(est - k) < 0.15 * k


def test_twonn_on_a_rotated_checkerboard_reads_two():
    y = torch.from_numpy(load_dataset("checkerboard:n=4000").x).double()
    q, _ = torch.linalg.qr(
        torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    assert abs(intrinsic_dimension(y) - 2) < 0.3
    assert abs(intrinsic_dimension(y @ q[:2]) - intrinsic_dimension(y)) < 1e-9  # rotation invariant


def test_twonn_skips_duplicates_and_degenerate_input():
    y = _embedded(600, 3)
    doubled = torch.cat([y, y[:300]])  # 300 points have a twin at distance 0: counted once
    assert intrinsic_dimension(doubled) == intrinsic_dimension(y)
    assert intrinsic_dimension(torch.zeros(5, 7)) == 7.0  # no distinct neighbours: the ambient d
    assert intrinsic_dimension(torch.randn(2, 4)) == 4.0
    with pytest.raises(ValueError, match=r"points: expected a 2-D array \[n, d\], got shape \(3,\)"):
        intrinsic_dimension(torch.randn(3))


def _regime(y, **kw):
    solver = SemidiscreteSolver(**kw)
    run = _Iteration(
        solver, SemidiscreteProblem(solver, y, None, torch.Generator().manual_seed(0), None), 0.0
    )
    return run.direct(), run._intrinsic


def test_regime_large_high_dimensional_only():
    high = _embedded(12_000, 16).float()  # the annealing step is capped above N = 10,240
    direct, dim = _regime(high)
    assert direct and 12 < dim < 17
    # the same intrinsic dimension at N <= 10,240: the annealing step is not capped, nothing changes
    assert not _regime(high[:10_000])[0]
    # a large set of intrinsic dimension 2, embedded in 64 dimensions: the annealing's regime
    assert not _regime(_embedded(12_000, 2).float())[0]
    # the annealing cap switched off: the annealing never costs more per sample, so it stays
    assert not _regime(high, anneal_noise_level=None)[0]


def test_regime_sets_annealing_and_step_and_is_recorded():
    y = _embedded(12_000, 16).float()
    kw = {"tol": None, "max_steps": 3}
    auto = SemidiscreteSolver(**kw).solve(y, generator=torch.Generator().manual_seed(1))
    assert auto.settings["annealed"] is False
    assert auto.settings["noise_level_used"] == NOISE_LEVEL_DIRECT
    assert 12 < auto.settings["intrinsic_dimension"] < 17
    forced = SemidiscreteSolver(anneal=True, noise_level=0.3, **kw).solve(
        y, generator=torch.Generator().manual_seed(1)
    )
    assert forced.settings["annealed"] is True and forced.settings["noise_level_used"] == 0.3
    low = SemidiscreteSolver(**kw).solve(y[:2000], generator=torch.Generator().manual_seed(1))
    assert low.settings["annealed"] is True and low.settings["intrinsic_dimension"] is None


def test_regime_sets_averaging_power_and_coarse_correction_at_any_n():
    """The large high-dimensional regime averages with power 1 (0.5 from the lifted start, its default)
    and keeps the coarse-space correction beyond smooth_max_n; elsewhere power 2, and no correction
    beyond smooth_max_n."""
    y = _embedded(12_000, 16).float()
    kw = {"tol": None, "max_steps": 8, "smooth_max_n": 1000}
    gen = torch.Generator
    for start, power in (("zero", AVERAGE_POWER_DIRECT), ("best", AVERAGE_POWER_LIFTED)):
        states = []
        direct = SemidiscreteSolver(warm_start=start, **kw).solve(
            y, generator=gen().manual_seed(1), callback=lambda st, states=states: states.append(st)
        )
        assert direct.settings["annealed"] is False
        assert direct.settings["warm_start_used"] == ("zero" if start == "zero" else "lifted")
        assert direct.settings["average_power_used"] == power
        assert direct.settings["coarse_used"] is True
        assert direct.settings["average_power"] is None  # the option as given
        # the power-p average: the k-th step's iterate enters with weight (p + 1) / (k + p + 1)
        assert [st.num_averaged for st in states] == list(range(1, 9))
        for k in range(2, 9):
            prev, cur = states[k - 2], states[k - 1]
            expected = prev.average + (power + 1.0) / (k + power + 1.0) * (cur.potential - prev.average)
            torch.testing.assert_close(cur.average, expected)
    assert AVERAGE_POWER_DIRECT == 1.0 and AVERAGE_POWER_LIFTED == 0.5
    forced = SemidiscreteSolver(average_power=2.0, coarse_size=0, **kw).solve(
        y, generator=gen().manual_seed(1)
    )
    assert forced.settings["average_power_used"] == 2.0 and forced.settings["coarse_used"] is False
    low = SemidiscreteSolver(anneal=False, **kw).solve(y[:3000], generator=gen().manual_seed(1))
    assert low.settings["average_power_used"] == AVERAGE_POWER == 2.0
    assert low.settings["coarse_used"] is False  # N = 3,000 > smooth_max_n, not the direct regime
    ema = SemidiscreteSolver(averaging="ema", **kw).solve(y, generator=gen().manual_seed(1))
    assert ema.settings["average_power_used"] is None


def test_regime_noise_level_default_on_small_problems():
    y = _embedded(3000, 16).float()
    res = SemidiscreteSolver(tol=None, max_steps=2, anneal=False).solve(
        y, generator=torch.Generator().manual_seed(2)
    )
    assert res.settings["noise_level_used"] == NOISE_LEVEL
    with pytest.raises(ValueError, match="noise_level"):
        SemidiscreteSolver(noise_level=0.0)


def test_stop_measurement_extends_only_while_undecided_below_tol_and_up_to_its_cap():
    y = _embedded(500, 3).float()
    solver = SemidiscreteSolver(eval_samples=1024)
    h = torch.zeros(500, dtype=torch.float64)

    def check(tol, extend):  # a fresh problem with the same seed: the first 1024 draws are the same
        problem = SemidiscreteProblem(solver, y, None, torch.Generator().manual_seed(3), None)
        return problem.check(h, tol, extend=extend)

    first = check(None, 3000)
    assert first.samples == 1024  # no tol: nothing to decide
    assert check(1e-6, 3000).samples == 1024  # clearly above tol: decided
    below, above = first.chi2 + first.stderr, first.chi2 - first.stderr  # undecided either way
    # an estimate below tol but within two standard errors: the stop test draws more, up to its cap
    assert check(below, 3000).samples in (2048, 3000)  # 1024 -> 2048 (-> 3000 if still undecided)
    assert check(below, False).samples == 1024
    # an estimate above tol: a final verdict extends (True), the stop test does not (it cannot pass)
    assert check(above, 3000).samples == 1024
    assert check(above, True).samples > 1024
