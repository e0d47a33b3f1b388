"""SemidiscreteSolver: closed forms, independent chi2 checks, weights, duplicates, scaling, errors."""

import math

import pytest
import torch

from sdfm.data import load_dataset
from sdfm.transport import SemidiscreteSolver, assign, estimate_marginal
from tests.conftest import gen


def normal_cdf(t):
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


def boundaries_1d(y, g):
    """Cell boundaries of a 1-D potential on sorted atoms: x y_j + h_j = x y_k + h_k."""
    order = torch.argsort(y[:, 0])
    ys = y[order, 0].double()
    h = g[order] - 0.5 * ys**2
    return order, -(h[1:] - h[:-1]) / (ys[1:] - ys[:-1])


@pytest.mark.parametrize("weighted", [False, True])
def test_1d_closed_form_gaussian_quantiles(weighted):
    """In 1-D the cells are intervals between Gaussian quantiles of the cumulative weights."""
    torch.manual_seed(0)
    n = 20
    y = torch.randn(n, 1) * 2 + 1
    w = torch.rand(n, dtype=torch.float64) + 0.5 if weighted else None
    res = SemidiscreteSolver(tol=3e-4).solve(y, w, generator=gen(1))
    assert res.converged and res.potential.dtype == torch.float64
    order, bnd = boundaries_1d(y, res.potential)
    b = torch.full((n,), 1.0 / n, dtype=torch.float64) if w is None else w / w.sum()
    cum = torch.cumsum(b[order], 0)[:-1]
    # exact masses of the cells against the weights: chi2 computed in closed form
    cdf = normal_cdf(bnd)
    mass = torch.diff(
        torch.cat([torch.zeros(1, dtype=torch.float64), cdf, torch.ones(1, dtype=torch.float64)])
    )
    exact_chi2 = float((mass**2 / b[order]).sum() - 1)
    assert exact_chi2 < 6e-4
    assert float((cdf - cum).abs().max()) < 0.2 / n


def test_1d_closed_form_uniform_source():
    """A custom noise sampler: U[-1, 1] in 1-D gives cells at the uniform quantiles."""
    n = 15
    y = torch.linspace(-3, 5, n)[:, None] ** 3 / 10

    def uniform(m, d, *, generator, device, dtype):
        return torch.rand(m, d, generator=generator, device=device, dtype=dtype) * 2 - 1

    res = SemidiscreteSolver(tol=1e-3).solve(y, generator=gen(2), noise=uniform)
    _, bnd = boundaries_1d(y, res.potential)
    expected = -1 + 2 * torch.arange(1, n, dtype=torch.float64) / n
    assert res.converged
    assert float((bnd - expected).abs().max()) < 0.25 * (2 / n)


def independent_chi2(y, res, w=None, eps=0.0, n=300_000, **kw):
    return estimate_marginal(
        y,
        res.potential,
        eps=eps,
        weights=w,
        num_samples=n,
        generator=gen(99),
        duplicates=res.duplicates,
        with_cost=False,
        **kw,
    )


def test_2d_default_converges_and_is_reproducible():
    from sdfm.data.toy import checkerboard

    y = torch.from_numpy(checkerboard(400, seed=1))
    res = SemidiscreteSolver().solve(y, generator=gen(3))
    assert res.converged and res.chi2 + 2 * res.chi2_stderr <= 0.05
    assert independent_chi2(y, res).chi2 < 0.06
    again = SemidiscreteSolver().solve(y, generator=gen(3))
    torch.testing.assert_close(res.potential, again.potential)
    assert [e.samples for e in res.history] == sorted(e.samples for e in res.history)
    assert any(e.chi2 is not None for e in res.history)


def test_nonuniform_weights():
    torch.manual_seed(4)
    y = torch.randn(300, 3)
    w = torch.rand(300, dtype=torch.float64) ** 2 + 0.05
    res = SemidiscreteSolver().solve(y, w, generator=gen(5))
    assert res.converged
    est = independent_chi2(y, res, w)
    assert est.chi2 < 0.06
    # heavy atoms get proportionally more mass
    b = w / w.sum()
    assert float((est.mass - b).abs().sum()) < 0.5 * float((b - 1 / 300).abs().sum())


def test_duplicates_are_merged_and_split_by_weight():
    torch.manual_seed(6)
    base = torch.randn(150, 2)
    y = torch.cat([base, base[:40], base[:10]])  # 40 atoms twice or three times
    res = SemidiscreteSolver().solve(y, generator=gen(7))
    assert res.duplicates is not None and res.duplicates.num_duplicates == 50
    assert res.converged
    g = res.potential
    torch.testing.assert_close(g[150:190], g[:40])
    torch.testing.assert_close(g[190:], g[:10])
    est = independent_chi2(y, res)
    assert est.chi2 < 0.06
    # pairing then spreading gives every copy its own share
    x = torch.randn(200_000, 2, generator=gen(8))
    idx = res.duplicates.spread(assign(x, y, g), generator=gen(9))
    counts = torch.bincount(idx, minlength=200).double() / 200_000
    assert abs(float(counts[:10].sum() + counts[190:].sum()) - 20 / 200) < 0.01
    assert abs(float(counts[0] - counts[190])) < 0.004


def test_entropic_eps_relative():
    torch.manual_seed(10)
    y = torch.randn(200, 4) * 3
    res = SemidiscreteSolver(eps=0.1).solve(y, generator=gen(11))
    assert res.eps > 0 and res.converged
    assert res.settings["eps_abs"] == res.eps
    est = independent_chi2(y, res, eps=res.eps)
    assert est.chi2 < 0.06
    # absolute eps is taken as given
    res_abs = SemidiscreteSolver(eps=0.5, relative_eps=False, max_steps=5, tol=None).solve(
        y, generator=gen(12)
    )
    assert res_abs.eps == 0.5


def test_single_target():
    res = SemidiscreteSolver().solve(torch.tensor([[3.0, -1.0]]))
    assert res.potential.shape == (1,) and res.converged and res.chi2 == 0.0


@pytest.mark.parametrize("transform", ["pixels255", "far"])
def test_badly_scaled_and_offset_data(transform):
    """Units and offsets do not matter: pixel values in [0, 255] or data 1000 away from 0."""
    from sdfm.data.bundled import digits
    from sdfm.data.toy import checkerboard

    if transform == "pixels255":
        y = torch.from_numpy(digits()[0][:300] * 255.0 / 16.0)
    else:
        y = torch.from_numpy(checkerboard(300, seed=2)) + 1000.0
    res = SemidiscreteSolver().solve(y, generator=gen(13))
    assert res.converged
    assert independent_chi2(y, res).chi2 < 0.06


def test_stops_on_step_and_time_budgets():
    y = torch.randn(500, 2)
    res = SemidiscreteSolver(max_steps=7, tol=None).solve(y, generator=gen(14))
    assert res.steps == 7 and not res.converged
    res = SemidiscreteSolver(max_seconds=0.5, tol=None, max_steps=None).solve(y, generator=gen(15))
    assert res.seconds < 5.0 and not res.converged


def _annealed_only(y, batch, **extra):
    """The iterate at the end of the annealing phase (no hard step, no averaging) and its chi2."""
    steps = math.ceil(10.0 * y.shape[0] / batch)  # anneal_length 10 samples per atom
    solver = SemidiscreteSolver(anneal=True, anneal_batch_size=batch, max_steps=steps, tol=None, **extra)
    return solver.solve(y, generator=gen(21))


def test_annealing_step_cap_bounds_the_noise_at_large_n_over_batch():
    # N / anneal batch = 94 (as N = 96,000 with the default batch of 1024): the uncapped step leaves a
    # noisy annealed potential; the cap 3 * batch / N keeps its chi2 several times lower.
    y = torch.from_numpy(load_dataset("gmm:d=8,k=8,n=3000").x)
    capped = _annealed_only(y, 32)
    uncapped = _annealed_only(y, 32, anneal_noise_level=None)
    assert capped.chi2 * 3 < uncapped.chi2


def test_annealing_step_cap_does_not_bind_at_small_n_over_batch():
    # N / batch <= 10 (every N <= 10,240 at the default batch): lr_anneal 0.3 <= 3 * batch / N, so the
    # capped and uncapped solves are the same computation, bit for bit.
    y = torch.from_numpy(load_dataset("gmm:d=8,k=8,n=320").x)
    capped = _annealed_only(y, 32)
    uncapped = _annealed_only(y, 32, anneal_noise_level=None)
    assert torch.equal(capped.potential, uncapped.potential)
    assert capped.chi2 == uncapped.chi2


def test_warm_start_from_previous_potential():
    y = torch.randn(300, 3)
    first = SemidiscreteSolver().solve(y, generator=gen(16))
    again = SemidiscreteSolver().solve(y, generator=gen(17), init=first.potential)
    assert again.converged and again.samples < first.samples


@pytest.mark.parametrize(
    "field, value",
    [
        ("eps", -0.1),
        ("tol", 0.0),
        ("batch_size", 0),
        ("lr", -1.0),
        ("averaging", "bogus"),
        ("warm_start", "x"),
        ("ema_decay", 1.0),
        ("max_seconds", -3.0),
        ("anneal_noise_level", 0.0),
        ("anneal_noise_level", math.inf),
    ],
)
def test_bad_settings(field, value):
    with pytest.raises(ValueError, match=field):
        SemidiscreteSolver(**{field: value})


def test_no_stopping_rule_refused():
    with pytest.raises(ValueError, match="never stop"):
        SemidiscreteSolver(tol=None, max_steps=None, max_seconds=None)


@pytest.mark.parametrize(
    "targets, weights, match",
    [
        (torch.full((5, 2), math.nan), None, "targets"),
        (torch.zeros(0, 2), None, "targets"),
        (torch.zeros(5, 2, 2), None, "targets"),
        (torch.randn(5, 2), torch.ones(4), "weights"),
        (torch.randn(5, 2), -torch.ones(5), "weights"),
    ],
)
def test_bad_solve_inputs(targets, weights, match):
    with pytest.raises(ValueError, match=match):
        SemidiscreteSolver(max_steps=3).solve(targets, weights)


def test_bad_noise_sampler():
    def bad(n, d, *, generator, device, dtype):
        return torch.zeros(n, d + 1)

    with pytest.raises(ValueError, match="noise"):
        SemidiscreteSolver(max_steps=3).solve(torch.randn(5, 2), noise=bad)


# --- class-conditional potentials -------------------------------------------------------------------


def test_per_class_1d_closed_form():
    """Within each class the 1-D cells are the Gaussian quantiles of that class's weights."""
    from sdfm.transport import solve_per_class

    g = gen(21)
    y = torch.randn(30, 1, generator=g, dtype=torch.float64) * 2
    classes = torch.tensor([0] * 12 + [2] * 18)
    w = torch.rand(30, generator=g, dtype=torch.float64) + 0.5
    res = solve_per_class(SemidiscreteSolver(tol=3e-4), y, classes, w, generator=gen(22))
    assert res.converged and set(res.chi2_per_class) == {0, 2}
    b = w / w.sum()
    torch.testing.assert_close(
        res.class_probs, torch.tensor([float(b[:12].sum()), 0.0, float(b[12:].sum())], dtype=torch.float64)
    )
    for sl in (slice(0, 12), slice(12, 30)):
        yc, gc, bc = y[sl], res.potential[sl], b[sl] / b[sl].sum()
        order, bnd = boundaries_1d(yc, gc)
        cum = torch.cumsum(bc[order], 0)[:-1]
        assert float((normal_cdf(bnd) - cum).abs().max()) < 0.2 / yc.shape[0]
    assert res.chi2 == pytest.approx(
        sum(float(res.class_probs[c]) * v for c, v in res.chi2_per_class.items())
    )


def test_per_class_marginals_checked_with_masked_pairing():
    from sdfm.data.toy import checkerboard
    from sdfm.transport import assign, solve_per_class

    y = torch.from_numpy(checkerboard(600, seed=4))
    classes = (y[:, 0] > 0).long() + 2 * (y[:, 1] > 0).long()  # four quadrant classes
    res = solve_per_class(SemidiscreteSolver(), y, classes, generator=gen(5))
    assert res.converged and res.chi2 + 2 * res.chi2_stderr <= 0.05 + 1e-12
    # independent check: noise classes drawn from p(c), paired within the class by the masked argmax
    m = 400_000
    xc = torch.multinomial(res.class_probs, m, replacement=True, generator=gen(6))
    idx = assign(torch.randn(m, 2, generator=gen(7)), y, res.potential, classes=xc, target_classes=classes)
    assert bool((classes[idx] == xc).all())
    counts = torch.bincount(idx, minlength=600).double()
    for c in range(4):
        sel = classes == c
        mc = counts[sel] / counts[sel].sum()
        bc = torch.full((int(sel.sum()),), 1.0 / float(sel.sum()), dtype=torch.float64)
        chi2 = float((mc**2 / bc).sum() - 1) - (bc.numel() - 1) / float(counts[sel].sum())  # debiased
        assert chi2 < 0.07, (c, chi2)


def test_per_class_shared_eps_and_duplicates():
    from sdfm.transport import relative_eps_scale, solve_per_class

    y = torch.randn(40, 2, generator=gen(8))
    y[5] = y[3]  # a duplicate inside class 0
    classes = torch.tensor([0] * 20 + [1] * 20)
    res = solve_per_class(SemidiscreteSolver(eps=0.1), y, classes, generator=gen(9))
    assert res.eps == pytest.approx(0.1 * relative_eps_scale(y))
    assert all(r.eps == res.eps for r in res.per_class.values())
    assert res.duplicates is not None and res.duplicates.num_duplicates == 1
    assert int(res.duplicates.inverse[3]) == int(res.duplicates.inverse[5])
    assert int(res.duplicates.representative[res.duplicates.inverse[25]]) == 25
    with pytest.raises(ValueError, match="classes"):
        solve_per_class(SemidiscreteSolver(), y, classes[:5])
