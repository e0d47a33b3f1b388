"""The lifted warm start (:mod:`sdfm.transport.semidiscrete.lift`): a coarse problem on k-means
clusters, solved and lifted to each atom with its coarse cell's Gaussian map.

Checked against closed forms: with one cluster the coarse cell is the whole space, and the lift is
the dual of the linear Monge map N(0, I) -> N(mean, S), h = -z^T S^{-1/2} z / 2 (``gaussian_start``),
also when S is used on its top directions and an isotropic rest. Then against h = 0 by an
independent float64 count, and in the solver: the default picks it in the large high-dimensional
regime (and h = 0 where the lift is worse), and it converges where it is asked for."""

import pytest
import torch

from sdfm.transport import SemidiscreteSolver
from sdfm.transport.semidiscrete import lift, parts
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem
from tests.conftest import gen


def _problem(y, weights=None, **options):
    return SemidiscreteProblem(SemidiscreteSolver(**options), y, weights, gen(1), None, None)


def _chi2_free(y: torch.Tensor, h: torch.Tensor, samples: int = 1 << 17) -> float:
    """chi2(m || uniform), m counted by a float64 argmax of <x, y_j> + h_j on fresh noise."""
    noise = torch.Generator().manual_seed(12345)
    counts = torch.zeros(y.shape[0], dtype=torch.float64)
    for _ in range(samples // 8192):
        x = torch.randn(8192, y.shape[1], generator=noise, dtype=torch.float64)
        counts += torch.bincount((x @ y.T + h).argmax(1), minlength=y.shape[0]).double()
    m, b = counts / samples, 1.0 / y.shape[0]
    return float(((m - b) ** 2 / b).sum()) - (y.shape[0] - 1) / samples


def _quadratic(h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return h - (b * h).sum()


@pytest.mark.parametrize("rank", [None, 3])
def test_one_cluster_lifts_to_the_gaussian_map(monkeypatch, rank):
    # one cluster: its coarse cell is all of the noise (mean 0, covariance I), so the lift is
    # -1/2 z^T S^{-1/2} z. With rank 3 the atoms' covariance has 3 large directions and an isotropic
    # rest, which the top-3 span and the isotropic penalty represent exactly.
    d, n = 8, 3000
    scales = torch.tensor([3.0, 2.0, 1.5] + [0.5] * (d - 3), dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(0), dtype=torch.float64))
    y = (torch.randn(n, d, generator=gen(1), dtype=torch.float64) * scales) @ q.T + 2.0
    monkeypatch.setattr(lift, "LIFT_DRAWS", 1 << 16)
    if rank is not None:
        monkeypatch.setattr(lift, "LIFT_RANK", rank)
    problem = _problem(y)
    h, summary = lift.lifted_start(problem, clusters=1)
    assert summary["clusters"] == 1 and summary["draws"] == 1 << 16
    expected = parts.gaussian_start(problem)
    h, expected = _quadratic(h, problem.b), _quadratic(expected, problem.b)
    # the noise covariance is estimated from 65,536 draws: about 1% relative error on the quadratic
    assert (h - expected).abs().max() < 0.03 * expected.abs().max()
    assert torch.corrcoef(torch.stack([h, expected]))[0, 1] > 0.999


def _mixture(n: int, d: int, k: int, rank: int, seed: int = 0) -> torch.Tensor:
    """n points of k Gaussians of the given rank in d dimensions (unit-norm-ish means)."""
    g = gen(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    bases = torch.linalg.qr(torch.randn(k, d, rank, generator=g, dtype=torch.float64))[0]
    comp = torch.randint(0, k, (n,), generator=g)
    coords = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return means[comp] + torch.einsum("ndr,nr->nd", bases[comp], coords)


def test_lift_clusters_grow_with_n_and_share_the_draws(monkeypatch):
    # K = n / 100 within [256, 1,024] (and at most n / 8 atoms per cluster in lifted_start); past
    # 256 clusters the draws are shared: LIFT_DRAWS * 256 in all
    assert [lift.lift_clusters(n) for n in (1_000, 30_000, 100_000, 10**6)] == [256, 300, 1000, 1024]
    monkeypatch.setattr(lift, "LIFT_DRAWS", 64)
    y = _mixture(4000, 16, 8, 4)
    problem = _problem(y)
    h_fine, fine = lift.lifted_start(problem, clusters=1000)  # (n / 8 = 500 clusters at most)
    assert fine["clusters"] == 4000 // lift.LIFT_MIN_ATOMS and fine["draws"] == 64 * lift.LIFT_CLUSTERS
    h_coarse, coarse = lift.lifted_start(problem, clusters=32)
    assert coarse["clusters"] == 32 and coarse["draws"] == 64 * 32
    # more Gaussian pieces approximate the map better: a lower chi2 by an independent count
    centred = y - problem.mean
    assert _chi2_free(centred, h_fine) < 0.8 * _chi2_free(centred, h_coarse)  # (0.75 against 1.18)


def test_lifted_start_starts_far_below_zero_on_clustered_data():
    y = _mixture(4000, 16, 8, 4)
    problem = _problem(y)
    h, _ = lift.lifted_start(problem, clusters=32)
    centred = y - problem.mean
    lifted, zero = _chi2_free(centred, h), _chi2_free(centred, torch.zeros(len(y), dtype=torch.float64))
    assert lifted < 0.05 * zero
    assert lifted < 2.0


def test_lift_keeps_weights_and_merged_atoms():
    # weighted atoms with exact copies: the copies merge (their weights add), the lift runs on the
    # distinct atoms and returns a potential per target with equal values on copies
    y = _mixture(600, 6, 4, 3, seed=2)
    y = torch.cat([y, y[:50]])
    w = torch.rand(len(y), generator=gen(3), dtype=torch.float64) + 0.5
    res = SemidiscreteSolver(warm_start="lifted", tol=None, max_steps=1).solve(y, w, generator=gen(4))
    assert res.settings["warm_start_used"] == "lifted" and res.settings["lift"]["clusters"] >= 1
    assert torch.equal(res.potential[600:], res.potential[:50])


def test_default_takes_the_lift_in_the_large_high_dimensional_regime():
    # N > 10,240 and intrinsic dimension >= 7: no annealing, and "best" weighs the lifted start
    y = _mixture(12_000, 16, 4, 12, seed=5).float()
    res = SemidiscreteSolver(tol=None, max_steps=3).solve(y, generator=gen(6))
    s = res.settings
    assert s["annealed"] is False and s["intrinsic_dimension"] >= 7
    assert s["warm_start_used"] == "lifted" and s["average_power_used"] == 0.5
    assert (
        s["lift"]["clusters"] == lift.LIFT_CLUSTERS
        and s["lift"]["draws"] == lift.LIFT_DRAWS * lift.LIFT_CLUSTERS
    )
    zero = SemidiscreteSolver(tol=None, max_steps=3, warm_start="zero").solve(y, generator=gen(6))
    assert zero.settings["warm_start_used"] == "zero" and zero.settings["lift"] is None
    assert zero.settings["average_power_used"] == 1.0


def test_best_falls_back_to_zero_where_the_lift_is_worse(monkeypatch):
    y = _mixture(2000, 16, 4, 12, seed=7).float()
    problem = _problem(y)
    bad = torch.randn(problem.n, generator=gen(8), dtype=torch.float64) * 1e3
    monkeypatch.setattr(lift, "lifted_start", lambda p: (bad, {"clusters": 0}))
    h, _, used, summary = parts.select_start(problem, "best", direct=True)
    assert used == "zero" and torch.equal(h, torch.zeros_like(h)) and summary == {"clusters": 0}
    h, _, used, _ = parts.select_start(_problem(y), "lifted")
    assert used == "lifted" and torch.equal(h, bad)


def test_explicit_lifted_start_converges_with_another_source():
    # a non-Gaussian source (uniform on a cube): the coarse solve and the cells' moments use it
    def uniform(n, d, *, generator=None, device=None, dtype=torch.float32):
        return (torch.rand(n, d, generator=generator, device=device, dtype=dtype) - 0.5) * 3.0

    y = _mixture(400, 3, 3, 2, seed=9)
    res = SemidiscreteSolver(warm_start="lifted", tol=0.05).solve(y, generator=gen(10), noise=uniform)
    assert res.converged and res.settings["warm_start_used"] == "lifted"
    assert res.chi2 <= 0.05


def test_large_clusters_are_read_in_blocks(monkeypatch):
    # a cluster is read ROW_BLOCK coordinates at a time (its covariance summed over the blocks): tiny
    # blocks give the same start as one block, up to the rounding of the sums (which the eigenvectors
    # of the clusters' covariances carry to about 1e-5 of the start here)
    y = _mixture(1500, 6, 3, 4, seed=11)
    starts = []
    for block in (lift.ROW_BLOCK, 6 * 7):
        monkeypatch.setattr(lift, "ROW_BLOCK", block)
        starts.append(lift.lifted_start(_problem(y), clusters=4)[0])
    scale = float(starts[0].abs().max())
    assert float((starts[0] - starts[1]).abs().max()) < 1e-4 * scale
