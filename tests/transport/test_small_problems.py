"""Small problems (issue: the solver's cost per target must not explode at small N or in 1-D), the
exact 1-D solve, the top-2 search, the smooth-error diagnostic and the coarse-space correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdfm.transport import SemidiscreteSolver, assign, clustering, estimate_marginal
from sdfm.transport._stream import stream_top2
from sdfm.transport.clustering import kmeans
from sdfm.transport.diagnostics import chi2_from_counts, chi2_stderr_from_counts
from sdfm.transport.semidiscrete.exact1d import gaussian_masses
from sdfm.transport.smoothness import SmoothGroups, SmoothMonitor, worst_ratio


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _quantile_potential(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference 1-D solve with scipy: boundaries at normal quantiles of the cumulative weights,
    then the masses of the resulting intervals (sorted order)."""
    from scipy.stats import norm

    z = np.sort(y - y.mean())
    n = z.shape[0]
    t = norm.ppf(np.arange(1, n) / n)
    h = np.concatenate([[0.0], -np.cumsum(t * np.diff(z))])
    return z, h


def test_exact_1d_matches_normal_quantiles():
    torch.manual_seed(0)
    y = torch.sort(1.7 * torch.randn(64, 1, dtype=torch.float64) + 0.4, dim=0).values
    r = SemidiscreteSolver(tol=0.01).solve(y.float(), generator=_gen())
    assert r.settings["method"] == "exact_1d"
    assert r.samples == 0 and r.converged
    # the potential is the quantile solution (up to a constant and the 1/2|y|^2 convention)
    z, h_ref = _quantile_potential(y[:, 0].numpy())
    g = r.potential.double().numpy()
    # assignment scores x y_j + g_j - |y_j|^2/2: compare cell boundaries, which fix the potential
    yy = y[:, 0].numpy()
    h = g - 0.5 * yy**2
    order = np.argsort(yy)
    boundaries = -(np.diff(h[order])) / np.diff(yy[order])
    from scipy.stats import norm

    np.testing.assert_allclose(boundaries, norm.ppf(np.arange(1, 64) / 64), atol=2e-4)
    # and every cell gets its 1/64 of the Gaussian: the closed-form chi2 is ~0 ...
    assert r.chi2 < 1e-6
    # ... as an independent count confirms
    est = estimate_marginal(y.float(), r.potential, num_samples=1 << 20, generator=_gen(3), with_cost=False)
    assert est.chi2 < 3 * 64 / (1 << 20) + 4 * est.chi2_stderr


def test_1d_pairing_is_scored_in_float64():
    """10,000 sorted atoms in 1-D: float32 scores moved the boundaries of the narrow cells enough for
    chi2 0.21 from rounding alone; pairing and the check now score 1-D in float64."""
    z = np.random.default_rng(1).standard_normal(10_000)
    y = torch.from_numpy(np.sort(1.7 * z + 0.4)[:, None].astype(np.float32))
    r = SemidiscreteSolver().solve(y, generator=_gen())
    assert r.settings["method"] == "exact_1d" and r.settings["score_precision"] == "float64"
    est = estimate_marginal(y, r.potential, num_samples=1 << 20, generator=_gen(2), with_cost=False)
    assert est.chi2 < 0.005, est.chi2
    x = torch.randn(4096, 1, generator=_gen(3))  # float32 queries
    from sdfm.transport import assign

    got = assign(x, y, r.potential)
    scores = x.double() @ y.double().T + (r.potential - 0.5 * y.double()[:, 0] ** 2)
    assert torch.equal(got, scores.argmax(1))


def test_gaussian_masses_closed_form_and_skipped_cells():
    z = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    # boundaries at -0.5 and 1.0: h_1 = h_0 - t_0 (z_1 - z_0), h_2 = h_1 - t_1 (z_2 - z_1)
    h = torch.tensor([0.0, 0.5, -1.5], dtype=torch.float64)
    from scipy.stats import norm

    want = np.diff(norm.cdf([-np.inf, -0.5, 1.0, np.inf]))
    np.testing.assert_allclose(gaussian_masses(z, h).numpy(), want, rtol=1e-12)
    # a middle cell below the envelope of its neighbours gets no mass
    h_low = torch.tensor([0.0, -5.0, 0.0], dtype=torch.float64)
    m = gaussian_masses(z, h_low)
    assert m[1] == 0.0 and abs(float(m.sum()) - 1.0) < 1e-12


def test_exact_1d_weighted_and_heavy_tailed():
    gen = np.random.default_rng(1)
    y = torch.from_numpy(gen.standard_t(3, size=(200, 1)))
    w = torch.from_numpy(gen.uniform(0.5, 2.0, size=200))
    r = SemidiscreteSolver(tol=0.01).solve(y.float(), weights=w, generator=_gen())
    assert r.settings["method"] == "exact_1d" and r.chi2 < 1e-6
    est = estimate_marginal(
        y.float(), r.potential, weights=w, num_samples=1 << 20, generator=_gen(4), with_cost=False
    )
    assert est.chi2 < 0.01


def test_sample_quantiles_1d_for_a_custom_source():
    def uniform(n, d, *, generator=None, device=None, dtype=torch.float32):
        return torch.rand(n, d, generator=generator, device=device, dtype=dtype) * 4.0 - 2.0

    y = torch.linspace(-1.0, 1.0, 30).unsqueeze(1)
    r = SemidiscreteSolver(tol=0.02).solve(y, noise=uniform, generator=_gen())
    assert r.settings["method"] == "sample_quantiles_1d" and r.converged
    # the uniform source's exact boundaries are at -2 + 4 k / 30: check by a fresh count
    x = uniform(1 << 20, 1, generator=_gen(9))
    scores = x @ y.T + (r.potential - 0.5 * y[:, 0] ** 2)
    counts = torch.bincount(scores.argmax(1), minlength=30)
    assert chi2_from_counts(counts) < 0.02


def test_exact_1d_can_be_switched_off():
    y = torch.randn(16, 1, generator=_gen(2))
    r = SemidiscreteSolver(exact_1d=False, tol=0.05).solve(y, generator=_gen())
    assert r.settings["method"] == "stochastic" and r.samples > 0


@pytest.mark.parametrize("d", [2, 16])
def test_small_problem_samples_per_target_pinned(d):
    """64 atoms of a Gaussian mixture: at most 500 noise samples per atom (the regression this pins
    needed 82,000 per atom at 64 atoms in 1-D and thousands in low dimension)."""
    g = _gen(5)
    centres = 3.0 * torch.randn(4, d, generator=g)
    y = centres[torch.arange(64) % 4] + 0.5 * torch.randn(64, d, generator=g)
    r = SemidiscreteSolver(tol=0.05).solve(y, generator=_gen())
    assert r.converged
    assert r.samples / 64 <= 500, r.samples / 64
    est = estimate_marginal(y, r.potential, num_samples=1 << 19, generator=_gen(6), with_cost=False)
    assert est.chi2 < 0.05 + 3 * est.chi2_stderr


def test_default_batch_sizes_follow_n():
    y = torch.randn(40, 2, generator=_gen())
    r = SemidiscreteSolver(tol=0.1).solve(y, generator=_gen())
    assert r.settings["batch_size"] == 256
    assert r.settings["anneal_batch_size"] == 16
    big = SemidiscreteSolver(max_steps=1, tol=None).solve(torch.randn(5000, 2), generator=_gen())
    assert big.settings["batch_size"] == 4096 and big.settings["anneal_batch_size"] == 1024


def test_stream_top2_matches_brute_force_with_ties():
    g = _gen(7)
    x = torch.randn(300, 5, generator=g)
    y = torch.randn(500, 5, generator=g)
    y[10] = y[3]  # duplicate atoms: exact ties in every row
    bias = torch.randn(500, generator=g)
    bias[3] = bias[10] = 4.0  # the pair wins many rows
    t = stream_top2(x, y, bias, chunk=64)
    scores = x @ y.T + bias
    ref_val, ref_idx = scores.topk(2, dim=1)
    torch.testing.assert_close(t.best, ref_val[:, 0])
    torch.testing.assert_close(t.second, ref_val[:, 1])
    # ties go to the smallest index: where 3 and 10 tie for best, best is 3 and runner-up 10
    tie = t.index == 3
    assert tie.any() and (t.second_index[tie] == 10).all()
    rows = ~tie & (t.index != 10)
    assert (t.index[rows] == scores[rows].argmax(1)).all()
    masked = scores.clone()
    masked[torch.arange(300), t.index] = -math.inf
    ok = t.second_index >= 0
    assert ok.all()
    torch.testing.assert_close(masked.gather(1, t.second_index[:, None])[:, 0], t.second)


def test_stream_top2_single_target():
    t = stream_top2(torch.randn(4, 3), torch.randn(1, 3), torch.zeros(1), chunk=8)
    assert (t.index == 0).all() and (t.second_index == -1).all() and torch.isinf(t.second).all()


def test_chi2_stderr_matches_simulation():
    """The U-statistic standard error of the count chi2 against the spread over 400 replicates."""
    g = _gen(8)
    n, m = 50, 2000
    b = torch.full((n,), 1.0 / n, dtype=torch.float64)
    p = torch.distributions.Dirichlet(torch.full((n,), 20.0)).sample().double()
    values, ses = [], []
    for _ in range(400):
        idx = torch.multinomial(p, m, replacement=True, generator=g)
        c = torch.bincount(idx, minlength=n)
        values.append(chi2_from_counts(c, b))
        ses.append(chi2_stderr_from_counts(c, b))
    spread = float(np.std(values))
    assert 0.85 * spread < float(np.mean(ses)) < 1.15 * spread
    true = float((p * p / b).sum() - 1.0)
    assert abs(float(np.mean(values)) - true) < 3 * spread / 20  # unbiased


def test_kmeans_streamed_partition():
    g = _gen(9)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    y = (centres[torch.arange(300) % 3] + torch.randn(300, 2, generator=g)).double()

    def chunks():
        for s in range(0, 300, 70):
            yield s, min(300, s + 70), y[s : s + 70]

    c = kmeans(chunks, 300, 3, generator=_gen(1), neighbours=2)
    labels = c.labels
    # each true cluster maps to one k-means cluster
    for k in range(3):
        assert labels[k::3].unique().numel() == 1
    assert labels.unique().numel() == 3
    d2 = ((y[:, None, :] - c.centres[None].double()) ** 2).sum(-1)
    torch.testing.assert_close(
        c.sq_dist.double(), d2.topk(2, dim=1, largest=False).values, rtol=1e-4, atol=1e-4
    )


def test_kmeans_distances_in_bounded_blocks(monkeypatch):
    """Lloyd's steps and the final pass compute [rows, k] distances BLOCK_ELEMENTS at a time (their
    memory does not grow with the subsample or k): tiny blocks give the same clustering."""
    y = torch.randn(2000, 5, generator=_gen(3), dtype=torch.float64)

    def chunks():
        for s in range(0, 2000, 700):
            yield s, min(2000, s + 700), y[s : s + 700]

    whole = kmeans(chunks, 2000, 40, generator=_gen(1), neighbours=3, sample=1500)
    monkeypatch.setattr(clustering, "BLOCK_ELEMENTS", 7 * 40)  # blocks of 7 rows
    split = kmeans(chunks, 2000, 40, generator=_gen(1), neighbours=3, sample=1500)
    assert torch.equal(split.centres, whole.centres) and torch.equal(split.nearest, whole.nearest)
    torch.testing.assert_close(split.sq_dist, whole.sq_dist, rtol=1e-12, atol=1e-12)


def test_kmeans_seeding_is_plain_kmeans_plus_plus():
    """The seeding's reused buffers give the centres of a plain k-means++ (each next centre drawn
    with probability proportional to the squared distance to the nearest one so far), bit for bit,
    including repeated points (fewer distinct points than k)."""

    def plain(points, k, gen):
        first = int(torch.randint(0, points.shape[0], (1,), generator=gen))
        centres, dist = [points[first]], (points - points[first]).square().sum(1)
        for _ in range(1, k):
            total = float(dist.sum())
            if total <= 0:
                centres.append(points[int(torch.randint(0, points.shape[0], (1,), generator=gen))])
                continue
            nxt = int(torch.multinomial((dist / total).cpu(), 1, generator=gen))
            centres.append(points[nxt])
            dist = torch.minimum(dist, (points - points[nxt]).square().sum(1))
        return torch.stack(centres)

    for n, d, k, seed in [(3000, 7, 200, 0), (400, 64, 50, 1), (30, 2, 40, 2)]:
        y = torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)
        y = y.round() if n == 30 else y  # (30 points on a grid: repeats, fewer distinct than k)
        assert torch.equal(clustering._seed(y, k, _gen(5)), plain(y, k, _gen(5)))


def _groups(y: torch.Tensor) -> SmoothGroups:
    n, d = y.shape
    yd = y.double()

    def chunks():
        yield 0, n, yd

    return SmoothGroups.build(
        chunks, n, d, yd.mean(0), torch.full((n,), 1.0 / n, dtype=torch.float64), generator=_gen()
    )


def test_smooth_groups_flag_a_radial_bias_that_chi2_barely_sees():
    g = _gen(10)
    y = torch.randn(2000, 2, generator=g)
    groups = _groups(y)
    assert set(groups.labels) == {"radius", "pc1", "pc2", "clusters"}
    b = groups.weights
    r = (y - y.mean(0)).norm(dim=1).double()
    # 3% more mass to the outer half, 3% less to the inner: chi2 = 0.0009, far below any tolerance
    bias = torch.where(r > r.median(), 1.03, 0.97)
    mass = b * bias
    mass = mass / mass.sum()
    chi2 = float((mass * mass / b).sum() - 1.0)
    errors = groups.errors(mass, chi2, num_samples=1 << 30)
    radius = next(e for e in errors if e.family == "radius")
    assert abs(radius.relative_error) > 0.025 and radius.ratio > 10
    # per-atom noise of the same chi2, independent across atoms: no family stands out
    noise = 1.0 + 0.03 * torch.randn(2000, generator=g, dtype=torch.float64)
    mass = b * noise / (b * noise).sum()
    chi2 = float((mass * mass / b).sum() - 1.0)
    assert worst_ratio(groups.errors(mass, chi2, num_samples=1 << 30)) < 4


def test_smooth_monitor_window_mean():
    y = torch.randn(400, 3, generator=_gen(11))
    groups = _groups(y)
    mon = SmoothMonitor(groups, window=1e12)  # no forgetting: the plain mean of the batches
    counts_a = torch.bincount(torch.arange(400).repeat(2), minlength=400).double()  # exact marginal
    mon.observe(counts_a, 800)
    assert worst_ratio(mon.errors(0.0)) < 1e-6
    skew = torch.zeros(400, dtype=torch.float64)
    skew[groups.labels["radius"] == 3] = 1.0  # every sample in the outer quartile
    mon.observe(skew * 800 / skew.sum(), 800)
    radius = next(e for e in mon.errors(0.0) if e.family == "radius")
    # mean of an exact batch and an all-outer batch: the outer quartile holds 0.25/2 + 1/2 = 0.625
    assert radius.relative_error == pytest.approx(0.625 / 0.25 - 1.0, rel=1e-6)


def test_solver_reports_smooth_errors_and_stops_only_when_small():
    g = _gen(12)
    theta = 2 * math.pi * torch.rand(1000, generator=g)
    y = torch.stack([theta.cos(), theta.sin()], 1) * (3 + 0.2 * torch.randn(1000, 1, generator=g))
    r = SemidiscreteSolver(tol=0.05).solve(y, generator=_gen())
    assert r.converged
    families = {e.family for e in r.smooth_errors}
    assert {"radius", "pc1", "pc2", "clusters"} <= families
    assert worst_ratio(r.smooth_errors) <= SemidiscreteSolver().smooth_tol
    # independently: group masses from a large fresh count are within a few floors
    est = estimate_marginal(y, r.potential, num_samples=1 << 20, generator=_gen(13), with_cost=False)
    groups = _groups(y)
    assert worst_ratio(groups.errors(est.mass, est.chi2, 1 << 20)) < 5


def test_measurements_say_when_the_smooth_error_holds_the_stop():
    """A tiny far cluster (10 points at distance 30 beside 990 normal points): chi2 passes tol while the
    cluster gets too much mass; each measurement carries the smooth error that holds the stop, the
    progress bar shows it, and an independent count confirms the cluster's excess."""
    g = _gen(20)
    y = torch.cat([torch.randn(990, 2, generator=g), 30 + 0.01 * torch.randn(10, 2, generator=g)])
    # tol 0.1: chi2 passes it early on any CPU (at 0.05 whether a measurement passes within 400 steps
    # depends on the CPU's rounding of the scores)
    # the cell scales: the adaptive ones (the default) solve this cluster (test_cli.py's
    # test_solve_step_scales_option), so nothing would hold their stop; and from h = 0 (the radial
    # start of the default warm start leaves this cluster too little mass instead)
    solver = SemidiscreteSolver(max_steps=400, tol=0.1, preconditioner="cell", warm_start="zero")
    seen = []

    def keep(state):
        if state.measured is not None and state.measured.step == state.step:
            seen.append(state.measured)

    r = solver.solve(y, generator=_gen(), callback=keep)
    assert not r.converged and all(m.smooth_ratio is not None for m in seen)
    held = [m for m in seen if m.smooth_held]
    assert held and all(m.chi2 + 2 * m.stderr <= solver.tol for m in held)
    assert all(m.smooth_ratio > solver.smooth_tol for m in held)
    assert not any(m.smooth_held for m in seen if m.chi2 + 2 * m.stderr > solver.tol)
    x = torch.randn(1 << 18, 2, generator=_gen(21), dtype=torch.float64)
    far = float((assign(x, y.double(), r.potential.double()) >= 990).double().mean())
    assert far > 0.011, far  # 1% is right; 2^18 samples: standard error 0.0002

    from sdfm.progress import SolveBar
    from sdfm.transport.semidiscrete import SolverState

    bar = SolveBar(tol=solver.tol, num_targets=1000)
    try:
        bar(SolverState(potential=r.potential, measured=held[-1], step=held[-1].step))
        assert f"{held[-1].smooth_ratio:.1f} floors (holds the stop)" in str(bar.bar.postfix)
    finally:
        bar.close()


def test_coarse_correction_lowers_the_radial_error():
    """The coarse-space correction removes the smooth (radial) bias that per-cell steps leave on a
    2-D problem with many cells, measured on an independent count after the same number of samples."""
    g = _gen(14)
    y = torch.randn(2000, 2, generator=g) * torch.tensor([2.0, 1.0])
    errs = {}
    for size in (0, 256):
        r = SemidiscreteSolver(tol=None, max_steps=140, coarse_size=size, smooth_tol=None).solve(
            y, generator=_gen()
        )
        est = estimate_marginal(y, r.potential, num_samples=1 << 21, generator=_gen(15), with_cost=False)
        groups = _groups(y)
        errs[size] = max(abs(e.relative_error) for e in groups.errors(est.mass, est.chi2, 1 << 21))
    assert errs[256] < 0.7 * errs[0], errs


def test_result_independent_of_thread_count():
    y = torch.randn(300, 3, generator=_gen(16))
    old = torch.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out.append(SemidiscreteSolver(tol=0.05).solve(y, generator=_gen()).potential)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
