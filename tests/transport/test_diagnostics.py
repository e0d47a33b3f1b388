"""chi2 / total variation / usage / cost against exact values and simulation."""

import math

import pytest
import torch

from sdfm.transport import (
    assign,
    chi2_from_counts,
    chi2_from_sums,
    estimate_marginal,
    total_variation,
    transport_cost,
    tv_sampling_floor,
    usage_counts,
    usage_histogram,
)
from tests.conftest import gen


def test_chi2_from_counts_is_unbiased():
    """E[chi2_hat] = sum_j m_j^2 / b_j - 1 exactly, for multinomial counts with marginal m."""
    m = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    b = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2], dtype=torch.float64)
    exact = float((m * m / b).sum() - 1)
    g = gen(0)
    vals = []
    for _ in range(4000):
        idx = torch.multinomial(m, 10, replacement=True, generator=g)  # tiny batches: bias shows
        vals.append(chi2_from_counts(torch.bincount(idx, minlength=5), b))
    vals = torch.tensor(vals)
    se = float(vals.std() / math.sqrt(len(vals)))
    assert abs(float(vals.mean()) - exact) < 4 * se
    # the plug-in estimator sum (c/M)^2/b - 1 is biased upwards by (N-1)/M-ish: make sure we differ
    plug = []
    for _ in range(500):
        idx = torch.multinomial(m, 10, replacement=True, generator=g)
        c = torch.bincount(idx, minlength=5).double() / 10
        plug.append(float((c * c / b).sum() - 1))
    assert float(torch.tensor(plug).mean()) - exact > 0.2


def test_chi2_soft_is_unbiased():
    """Soft rows s_i drawn from a fixed distribution: E[chi2_hat] = sum_j E[s_j]^2 / b_j - 1."""
    g = gen(1)
    rows = torch.softmax(torch.randn(7, 4, generator=g, dtype=torch.float64) * 2, dim=1)
    b = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    mean_row = rows.mean(0)
    exact = float((mean_row**2 / b).sum() - 1)
    vals = []
    for _ in range(3000):
        pick = rows[torch.randint(0, 7, (6,), generator=g)]
        vals.append(chi2_from_sums(pick.sum(0), (pick**2).sum(0), 6, b))
    vals = torch.tensor(vals)
    assert abs(float(vals.mean()) - exact) < 4 * float(vals.std() / math.sqrt(len(vals)))


def test_estimate_marginal_on_exact_1d_cells():
    """1-D: the cells of a potential are intervals with exact Gaussian masses."""
    y = torch.tensor([[-2.0], [-0.5], [0.3], [1.0], [2.5]], dtype=torch.float64)
    g = torch.tensor([0.5, -0.2, 0.1, 0.0, -0.3], dtype=torch.float64)
    h = g - 0.5 * y[:, 0] ** 2
    # boundaries between consecutive cells: x * y_j + h_j = x * y_k + h_k
    bnd = -(h[1:] - h[:-1]) / (y[1:, 0] - y[:-1, 0])
    assert torch.all(bnd[1:] > bnd[:-1])  # every cell non-empty
    cdf = 0.5 * (1 + torch.erf(bnd / math.sqrt(2)))
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    mass = torch.diff(torch.cat([zero, cdf, one]))
    exact = float((mass**2 * 5).sum() - 1)
    est = estimate_marginal(y, g, num_samples=400_000, generator=gen(2), dtype=torch.float64)
    assert abs(est.chi2 - exact) < 4 * est.chi2_stderr + 1e-3
    torch.testing.assert_close(est.mass, mass, atol=4e-3, rtol=0)
    assert est.chi2_stderr < 0.02
    tv = 0.5 * float((mass - 0.2).abs().sum())
    assert abs(est.total_variation - tv) < 0.01
    # cost: E 1/2 (x - y_{j(x)})^2 against a direct computation with float64 samples
    x = torch.randn(200_000, 1, generator=gen(3), dtype=torch.float64)
    j = assign(x, y, g)
    assert abs(est.cost - float(transport_cost(x, y, j).mean())) < 0.02


def test_tv_sampling_floor_matches_simulation():
    n, m = 50, 2000
    b = torch.full((n,), 1.0 / n, dtype=torch.float64)
    g = gen(4)
    tvs = []
    for _ in range(400):
        idx = torch.randint(0, n, (m,), generator=g)
        tvs.append(total_variation(torch.bincount(idx, minlength=n).double() / m, b))
    floor = tv_sampling_floor(m, n)
    assert abs(sum(tvs) / len(tvs) - floor) < 0.01 * floor + 1e-3
    # non-uniform weights
    w = torch.linspace(1, 3, n, dtype=torch.float64)
    w = w / w.sum()
    tvs = []
    for _ in range(400):
        idx = torch.multinomial(w, m, replacement=True, generator=g)
        tvs.append(total_variation(torch.bincount(idx, minlength=n).double() / m, w))
    assert abs(sum(tvs) / len(tvs) - tv_sampling_floor(m, w)) < 0.02 * tv_sampling_floor(m, w)


def test_usage_histogram_and_counts():
    index = torch.tensor([0, 0, 1, 3, 3, 3, 3, 3])
    counts = usage_counts(index, 4)
    assert counts.tolist() == [2, 1, 0, 5]
    hist, edges = usage_histogram(index, 4, bins=4, max_ratio=4.0)
    # ratios count / (8 * 1/4) = [1, 0.5, 0, 2.5]
    assert hist.tolist() == [2, 1, 1, 0] or hist.tolist() == [2, 1, 0, 1]
    assert hist.sum().item() == 4 and edges[0] == 0 and edges[-1] == 4


def test_transport_cost_brute_force():
    x = torch.randn(10, 3, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)
    idx = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    ref = 0.5 * ((x - y[idx]) ** 2).sum(1)
    torch.testing.assert_close(transport_cost(x, y, idx), ref)


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_estimate_marginal_perfect_coupling_has_zero_chi2(eps):
    """A single target takes all mass: chi2 = 0 exactly for hard and soft."""
    y = torch.tensor([[1.0, 2.0]])
    est = estimate_marginal(y, torch.zeros(1), eps=eps, num_samples=1000, generator=gen(0))
    assert abs(est.chi2) < 1e-9 and est.total_variation < 1e-12
