"""Minibatch OT: the exact assignment against POT's emd, Sinkhorn against POT's log-domain Sinkhorn."""

import math

import numpy as np
import ot
import pytest
import torch

from sdfm.transport import cost_matrix, exact_assignment, sample_plan_rows, sinkhorn
from tests.conftest import gen


def test_cost_matrix_is_half_squared_distance():
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(cost_matrix(x, y), 0.5 * torch.cdist(x, y) ** 2)


@pytest.mark.parametrize("n,d", [(1, 2), (17, 2), (64, 10)])
def test_exact_assignment_is_a_permutation_with_emd_cost(n, d):
    x0 = torch.randn(n, d, generator=gen(n), dtype=torch.float64)
    x1 = torch.randn(n, d, generator=gen(n + 1), dtype=torch.float64) + 2
    perm = exact_assignment(x0, x1)
    assert sorted(perm.tolist()) == list(range(n))
    ours = float(0.5 * ((x0 - x1[perm]) ** 2).sum(1).mean())
    c = cost_matrix(x0, x1).numpy()
    u = np.full(n, 1.0 / n)
    assert ours == pytest.approx(float(ot.emd2(u, u, c)), rel=1e-10, abs=1e-12)


def test_exact_assignment_refuses_bad_shapes():
    with pytest.raises(ValueError, match="x1"):
        exact_assignment(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="x0"):
        exact_assignment(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        exact_assignment(torch.full((4, 2), float("nan")), torch.randn(4, 2))


def test_sinkhorn_matches_pot_and_marginals():
    x0 = torch.randn(40, 3, generator=gen(0), dtype=torch.float64)
    x1 = torch.randn(30, 3, generator=gen(1), dtype=torch.float64) * 2
    res = sinkhorn(x0, x1, 0.5, relative=False, tol=1e-10, max_iter=20000)
    plan = res.log_plan.exp()
    torch.testing.assert_close(plan.sum(1), torch.full((40,), 1 / 40, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(plan.sum(0), torch.full((30,), 1 / 30, dtype=torch.float64), atol=1e-9, rtol=0)
    c = cost_matrix(x0, x1).numpy()
    ref = ot.bregman.sinkhorn_log(
        np.full(40, 1 / 40), np.full(30, 1 / 30), c, 0.5, stopThr=1e-12, numItermax=20000
    )
    np.testing.assert_allclose(plan.numpy(), ref, atol=1e-9)


def test_sinkhorn_relative_eps_and_errors():
    x0, x1 = torch.randn(20, 2, generator=gen(0)), torch.randn(20, 2, generator=gen(1))
    res = sinkhorn(x0, x1, 0.1)
    centred = cost_matrix(x0 - x0.mean(0), x1 - x1.mean(0))
    assert res.eps == pytest.approx(0.1 * float(centred.std()), rel=1e-5)
    # the plan and the relative eps do not depend on where the clouds sit; f, g are in the given units
    far = sinkhorn(x0.double(), x1.double() + 1e6, 0.1, tol=1e-9, max_iter=5000)
    near = sinkhorn(x0.double(), x1.double(), 0.1, tol=1e-9, max_iter=5000)
    assert far.eps == pytest.approx(near.eps, rel=1e-6)
    torch.testing.assert_close(far.log_plan.exp(), near.log_plan.exp(), atol=1e-6, rtol=0)
    c = cost_matrix(x0.double(), x1.double())
    log_plan = (near.f[:, None] + near.g[None, :] - c) / near.eps - math.log(20 * 20)
    torch.testing.assert_close(log_plan, near.log_plan, atol=1e-8, rtol=0)
    with pytest.warns(RuntimeWarning, match="far from converged"):
        sinkhorn(x0, x1, 0.001, max_iter=20)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(x0, x1, 0.0)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(x0, x1, -1.0)


def test_sample_plan_rows_frequencies():
    log_plan = torch.log(torch.tensor([[0.1, 0.3, 0.6], [0.5, 0.5, 0.0]], dtype=torch.float64))
    rows = log_plan.repeat(20000, 1)
    idx = sample_plan_rows(rows, gen(3)).reshape(20000, 2)
    f0 = torch.bincount(idx[:, 0], minlength=3).double() / 20000
    torch.testing.assert_close(f0, torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), atol=0.015, rtol=0)
    assert int((idx[:, 1] == 2).sum()) == 0
