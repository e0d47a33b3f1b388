"""Pruned exact search (cluster bounds): the dense scan's argmax, ties and runner-up included."""

import pytest
import torch

from sdfm.couplings import SemidiscreteCoupling
from sdfm.transport import LaguerreCells, SemidiscreteSolver, estimate_marginal
from sdfm.transport.pruned import (
    PROBE_ROWS,
    PRUNE_GIVE_UP,
    PRUNE_RETRY,
    SHIFT_MAX_DIM,
    ClusterBounds,
    Pruning,
)
from sdfm.transport.scoring import Scorer


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _problem(kind, n, d, dtype=torch.float64, seed=0):
    """Keys z [n, d] (centred), a smooth-ish bias [n] and queries x [300, d]."""
    g = gen(seed)
    if kind == "uniform":
        y = torch.rand(n, d, generator=g, dtype=torch.float64) * 4 - 2
    elif kind == "clusters":  # 6 tight, separated clusters: where bounds prune best
        centres = 6 * torch.randn(6, d, generator=g, dtype=torch.float64)
        y = centres[torch.randint(0, 6, (n,), generator=g)] + 0.3 * torch.randn(
            n, d, generator=g, dtype=torch.float64
        )
    else:  # isotropic Gaussian: the bounds prune little, the answer must still be exact
        y = torch.randn(n, d, generator=g, dtype=torch.float64)
    pot = 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.randn(300, d, generator=g, dtype=torch.float64)
    # exact duplicates of the first queries' winners at higher indices: tied best scores
    win = (x[:5] @ y.T + pot - 0.5 * y.square().sum(1)).argmax(1)
    y[n - 5 :], pot[n - 5 :] = y[win], pot[win]
    z = y - y.mean(0)
    bias = pot - 0.5 * y.square().sum(1)
    return z.to(dtype), bias.to(dtype), x.to(dtype)


def _brute(z, bias, x):
    """(index, second index) by float64 brute force, ties to the smallest index."""
    s = x.double() @ z.double().T + bias.double()
    n = s.shape[1]
    order = torch.arange(n, dtype=torch.float64)
    # lexicographic (score desc, index asc): rank by score, then by -index
    key = s * 1.0
    best = key.max(1).values
    first = torch.where(key == best[:, None], order, float("inf")).min(1).values.long()
    rest = key.scatter(1, first[:, None], float("-inf"))
    second_best = rest.max(1).values
    second = torch.where(rest == second_best[:, None], order, float("inf")).min(1).values.long()
    return first, second


@pytest.mark.parametrize(
    "kind,d", [("uniform", 2), ("uniform", 3), ("clusters", 8), ("gauss", 16), ("uniform", 1)]
)
def test_search_equals_brute_force_with_ties(kind, d):
    z, bias, x = _problem(kind, 3000, d)
    bounds = ClusterBounds.build(z, center=None, dtype=torch.float64, device=torch.device("cpu"), k=40)
    index, best, second, second_index, scored, visits = bounds.search(x, bias, second="index")
    fraction = scored / (x.shape[0] * z.shape[0])
    first, runner = _brute(z, bias, x)
    # the same answer as the brute force; where they differ, only between copies of one atom (exact
    # ties: a GEMM may round the copies' scores apart in different blocks on some CPUs)
    for got, want in ((index, first), (second_index, runner)):
        a, b = got[got != want], want[got != want]
        assert torch.equal(z[a], z[b]) and torch.equal(bias[a], bias[b])
    n = z.shape[0]
    # tied pairs: the winner and the runner-up are the original and its copy, with the same score
    assert torch.equal(z[index[:5]], z[second_index[:5]]) and not torch.equal(index[:5], second_index[:5])
    assert ((index[:5] >= n - 5) != (second_index[:5] >= n - 5)).all()
    torch.testing.assert_close(second[:5], best[:5], rtol=0, atol=1e-12)
    s = x @ z.T + bias
    torch.testing.assert_close(best, s.gather(1, first[:, None]).squeeze(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(second, s.gather(1, runner[:, None]).squeeze(1), rtol=0, atol=1e-12)
    assert 0 < fraction <= 1 and 0 < visits <= 2 * bounds.num_clusters
    if kind == "clusters":
        assert fraction < 0.35  # most clusters skipped


def test_bounds_hold_for_every_cluster():
    z, bias, x = _problem("uniform", 2000, 3)
    b = ClusterBounds.build(z, center=None, dtype=torch.float64, device=torch.device("cpu"), k=30)
    scores = x @ b.keys.T + bias[b.atoms]
    per_cluster = torch.full((300, b.num_clusters), float("-inf"), dtype=torch.float64)
    per_cluster.scatter_reduce_(1, b.label.expand(300, -1), scores, "amax")
    a = bias[b.atoms] + 0.5 * b.sqnorm
    top, top_a = b._cluster_max(bias[b.atoms]), b._cluster_max(a)
    sq = x.square().sum(1)
    cross = x @ b.centres.T
    cs = cross + top + sq.sqrt()[:, None] * b.radius
    dist = (sq[:, None] - 2 * cross + b.centres.square().sum(1)).clamp_min(0).sqrt()
    dist_bound = 0.5 * sq[:, None] + top_a - 0.5 * (dist - b.radius).clamp_min(0).square()
    assert (cs >= per_cluster - 1e-9).all() and (dist_bound >= per_cluster - 1e-9).all()
    # the distance bound is the tighter one in low d (it keeps the score's curvature)
    assert (dist_bound < cs).float().mean() > 0.5


def test_scorer_pruning_matches_dense_in_float32_and_records():
    # float32 may round identical atoms' scores differently in different matmul blocks (the dense
    # scan too), so exact duplicates are left out here (the float64 test above has them)
    z, bias, x = _problem("uniform", 5005, 2, dtype=torch.float32)
    z, bias = z[:5000], bias[:5000]
    dense = Scorer(z, 5000)
    pruned = Scorer(z, 5000, pruning=Pruning("on"))
    i0, b0, s0 = dense.argmax(x, bias, top2=True)
    i1, b1, s1 = pruned.argmax(x, bias, top2=True)
    assert torch.equal(i0, i1)
    torch.testing.assert_close(b1, b0, rtol=0, atol=1e-5)
    torch.testing.assert_close(s1, s0, rtol=0, atol=1e-5)
    t0, t1 = dense.top2(x, bias), pruned.top2(x, bias)
    assert torch.equal(t0.index, t1.index) and torch.equal(t0.second_index, t1.second_index)
    assert pruned.pruning.pruned_calls == 2 and 0 < pruned.pruning.last_fraction < 0.5
    # the Gumbel-max sample and alpha != 1 (soft scores) always take the dense scan
    pruned.argmax(x, bias, alpha=2.0)
    assert pruned.pruning.pruned_calls == 2


def test_auto_mode_keeps_the_dense_scan_where_bounds_do_not_prune():
    z, bias, x = _problem("gauss", 4000, 32, dtype=torch.float32)
    auto = Pruning("auto", min_atoms=1000)
    scorer = Scorer(z, 4000, pruning=auto)
    dense = Scorer(z, 4000)
    first = scorer.argmax(x, bias)[0]  # the trial: scores nearly everything
    assert auto.last_cost > auto.max_cost and auto.last_fraction > 0.8
    for _ in range(3):
        assert torch.equal(scorer.argmax(x, bias)[0], first)
    assert auto.pruned_calls == 1 and auto.dense_calls == 3
    assert torch.equal(first, dense.argmax(x, bias)[0])
    # a trial every PRUNE_RETRY calls; after PRUNE_GIVE_UP failed trials it stops and frees the bounds
    for _ in range(2 * PRUNE_RETRY):
        scorer.argmax(x, bias)
    assert auto.pruned_calls == PRUNE_GIVE_UP and not auto._bounds
    for _ in range(2 * PRUNE_RETRY):
        scorer.argmax(x, bias)
    assert auto.pruned_calls == PRUNE_GIVE_UP and auto.dense_calls == 3 + 4 * PRUNE_RETRY - 2
    small = Pruning("auto")  # below PRUNE_MIN_ATOMS: never built
    Scorer(z, 4000, pruning=small).argmax(x, bias)
    assert small.pruned_calls == 0 and small.dense_calls == 1 and not small._bounds
    with pytest.raises(ValueError, match="pruning"):
        Pruning("always")
    with pytest.raises(ValueError, match="pruning"):
        LaguerreCells(z, torch.zeros(4000), pruning="fast")


def test_laguerre_cells_and_coupling_pair_as_the_dense_scan():
    y = torch.rand(6000, 2, generator=gen(4)) * 4 - 2
    g = 0.05 * torch.randn(6000, generator=gen(5), dtype=torch.float64)
    x = torch.randn(2000, 2, generator=gen(6))
    on = LaguerreCells(y, g, pruning="on")
    off = LaguerreCells(y, g, pruning="off")
    assert torch.equal(on.assign(x), off.assign(x))
    torch.testing.assert_close(on.marginal(x), off.marginal(x), rtol=0, atol=0)
    torch.testing.assert_close(on.c_transform(x), off.c_transform(x), rtol=0, atol=1e-5)
    assert on.pruning_used["pruned_calls"] == 3 and off.pruning_used["pruned_calls"] == 0
    a = SemidiscreteCoupling(y, g, pruning="on").sample(500, generator=gen(7))
    b = SemidiscreteCoupling(y, g, pruning="off").sample(500, generator=gen(7))
    assert torch.equal(a.index, b.index)


def test_solver_with_pruning_reaches_the_same_potential_in_2d():
    y = torch.rand(3000, 2, generator=gen(8)) * 4 - 2
    # the cell scales: the adaptive ones (the default) also count each noise's gap for its runner-up,
    # whose near-ties round apart sooner (0.003 after 60 steps on an AMD EPYC)
    kw = {"tol": None, "max_steps": 60, "anneal": False, "preconditioner": "cell"}
    on = SemidiscreteSolver(**kw, pruning="on").solve(y, generator=gen(9))
    off = SemidiscreteSolver(**kw, pruning="off").solve(y, generator=gen(9))
    assert on.settings["pruning_used"]["pruned_calls"] > 50
    assert off.settings["pruning_used"]["pruned_calls"] == 0
    # the two searches score in different GEMM blocks: bit for bit the same steps on an Intel Xeon,
    # within 1e-4 after 60 steps on an AMD EPYC (the last bits of the scores round apart)
    torch.testing.assert_close(on.potential, off.potential, rtol=0, atol=1e-3)
    check = estimate_marginal(y, on.potential, num_samples=1 << 16, generator=gen(10))
    assert abs(check.chi2 - off.chi2) < 5 * (check.chi2_stderr + off.chi2_stderr) + 0.05


def test_solver_rejects_an_unknown_pruning_mode():
    with pytest.raises(ValueError, match="pruning"):
        SemidiscreteSolver(pruning="sometimes")


def test_class_conditional_pairing_prunes_each_class():
    y = torch.rand(8000, 2, generator=gen(11), dtype=torch.float64) * 4 - 2
    classes = (y[:, 0] > 0).long() + 2 * (y[:, 1] > 0).long()  # four classes of about 2,000
    g = 0.05 * torch.randn(8000, generator=gen(12), dtype=torch.float64)
    x = torch.randn(3000, 2, generator=gen(13), dtype=torch.float64)
    query = torch.randint(0, 4, (3000,), generator=gen(14))
    on = LaguerreCells(y, g, classes=classes, pruning="on")
    index = on.assign(x, classes=query)
    assert torch.equal(index, LaguerreCells(y, g, classes=classes, pruning="off").assign(x, classes=query))
    # masked float64 brute force: the argmax within each query's class
    scores = x @ y.T + g - 0.5 * y.square().sum(1)
    scores[classes[None, :] != query[:, None]] = float("-inf")
    assert torch.equal(index, scores.argmax(1))
    used = on.pruning_used
    assert used["pruned_calls"] == 4 and used["dense_calls"] == 0 and used["last_fraction_scored"] < 0.5


def test_masked_copies_do_not_widen_the_rounding_margin():
    # a coupling with merged copies masks them at -1e30 (DuplicateGroups.representatives_only); the
    # margin once took its bias scale from max |bias| = 1e30, so every cluster stayed a candidate
    # and the pruned search scored every atom (100,000 1-D points: 1.6x the dense scan's cost)
    y = torch.rand(20_000, 2, generator=gen(15)) * 4 - 2
    y[10_000:] = y[:10_000]  # every point twice: the copies are masked
    from sdfm.transport.duplicates import find_duplicates

    groups = find_duplicates(y)
    g = 0.05 * torch.randn(20_000, generator=gen(16), dtype=torch.float64)
    x = torch.randn(3000, 2, generator=gen(17))
    masked = groups.representatives_only(g)
    on = LaguerreCells(y, masked, pruning="on")
    index = on.assign(x)
    assert torch.equal(index, LaguerreCells(y, masked, pruning="off").assign(x))
    assert (index < 10_000).all()  # never a masked copy
    unmasked = LaguerreCells(y[:10_000], g[:10_000], pruning="on")
    assert torch.equal(unmasked.assign(x), index)
    # atoms scored per query: at most the unmasked search's twice over (the copies sit in the clusters
    # it visits), not all 20,000
    per_query = on.pruning_used["last_fraction_scored"] * 20_000
    assert per_query <= 2 * unmasked.pruning_used["last_fraction_scored"] * 10_000 < 2_000
    coupling = SemidiscreteCoupling(y, g, duplicates=groups, pruning="on")
    coupling.sample(500, generator=gen(18))
    assert coupling.cells.pruning_used["last_fraction_scored"] < 0.2


def _searched_rows(monkeypatch) -> list:
    """The number of queries of each ClusterBounds.search call, recorded."""
    rows, search = [], ClusterBounds.search

    def spy(self, x, bias, **kw):
        rows.append(int(x.shape[0]))
        return search(self, x, bias, **kw)

    monkeypatch.setattr(ClusterBounds, "search", spy)
    return rows


@pytest.mark.parametrize("kind,n,d,pays", [("gauss", 4000, 32, False), ("uniform", 40_000, 2, True)])
def test_a_trial_probes_a_few_rows_before_pruning_the_call(monkeypatch, kind, n, d, pays):
    rows = _searched_rows(monkeypatch)
    z, bias, _ = _problem(kind, n, d, dtype=torch.float32)
    x = torch.randn(5 * PROBE_ROWS, d, generator=gen(19))
    auto = Pruning("auto", min_atoms=1000)
    scorer, dense = Scorer(z, n, pruning=auto), Scorer(z, n)
    for top2 in (False, True):
        got, want = scorer.argmax(x, bias, top2=top2), dense.argmax(x, bias, top2=top2)
        assert torch.equal(got[0], want[0])
        if top2:
            torch.testing.assert_close(got[2], want[2], rtol=0, atol=1e-5)
    t_got, t_want = scorer.top2(x, bias), dense.top2(x, bias)
    assert torch.equal(t_got.index, t_want.index) and torch.equal(t_got.second_index, t_want.second_index)
    if pays:  # the probe pays: the rest of the first call is pruned too, and later calls whole
        assert rows == [PROBE_ROWS, 4 * PROBE_ROWS, 5 * PROBE_ROWS, 5 * PROBE_ROWS]
        assert auto.pruned_calls == 3 and auto.last_cost < auto.max_cost
    else:  # the probe does not pay: the dense scan answers the rest, and the next calls
        assert rows == [PROBE_ROWS] and auto.pruned_calls == 1 and auto.dense_calls == 2
        assert auto.last_cost > auto.max_cost
    # "on" never probes; a small call is searched whole
    rows.clear()
    Scorer(z, n, pruning=Pruning("on")).argmax(x, bias)
    Scorer(z, n, pruning=Pruning("auto", min_atoms=1000)).argmax(x[: 2 * PROBE_ROWS], bias)
    assert rows == [5 * PROBE_ROWS, 2 * PROBE_ROWS]


def test_class_conditional_trials_probe_too(monkeypatch):
    rows = _searched_rows(monkeypatch)
    y = torch.randn(8000, 32, generator=gen(20), dtype=torch.float64)
    classes = torch.arange(8000) % 2
    g = torch.zeros(8000, dtype=torch.float64)
    x = torch.randn(6 * PROBE_ROWS, 32, generator=gen(21), dtype=torch.float64)
    query = torch.arange(x.shape[0]) % 2
    cells = LaguerreCells(y, g, classes=classes)
    cells.pruning.min_atoms = 1000  # each class's Pruning copies it
    index = cells.assign(x, classes=query)
    assert torch.equal(index, LaguerreCells(y, g, classes=classes, pruning="off").assign(x, classes=query))
    assert rows == [PROBE_ROWS, PROBE_ROWS]  # one probe per class; the dense scan did the rest
    used = cells.pruning_used
    assert used["pruned_calls"] == 2 and used["last_relative_cost"] > 0.8


def test_a_probe_is_scaled_to_its_call():
    p = Pruning("auto")
    # 512 of 4,096 queries: atoms scored in proportion, visits at most 2 K
    p.record(512 * 100, 150, 512, 100_000, 316, call_queries=4096)
    assert p.last_fraction == pytest.approx(100 / 100_000)
    want = (1.5 * 4096 * 100 + 1e5 * min(150 * 8, 2 * 316) + 4096 * 316) / (4096 * 100_000)
    assert p.last_cost == pytest.approx(want)


def _tilted(n, d, seed, masked=0):
    """Uniform keys with the bias of a potential that tilts across clusters as a solved one does
    (g = 0.4 |y|^2 + <v, y> + noise), the last ``masked`` atoms at -1e30."""
    g = gen(seed)
    y = torch.rand(n, d, generator=g, dtype=torch.float64) * 4 - 2
    pot = 0.4 * y.square().sum(1) + y @ torch.randn(d, generator=g, dtype=torch.float64)
    pot += 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
    if masked:
        pot[-masked:] = -1e30
    z = y - y.mean(0)
    return z, pot - 0.5 * y.square().sum(1), torch.randn(300, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("d", [2, 5, SHIFT_MAX_DIM])
def test_the_shifted_bound_holds_and_follows_a_tilted_potential(d):
    z, bias, x = _tilted(4000, d, 22 + d, masked=50)
    b = ClusterBounds.build(z, center=None, dtype=torch.float64, device=torch.device("cpu"), k=40)
    assert b.spread_pinv is not None and b.spread_pinv.shape == (b.num_clusters, d, d)
    bs = bias[b.atoms]
    scores = x @ b.keys.T + bs
    true = torch.full((300, b.num_clusters), float("-inf"), dtype=torch.float64)
    true.scatter_reduce_(1, b.label.expand(300, -1), scores, "amax")
    sq = x.square().sum(1)
    shifted = b._shifted_bound(x, sq, b._trend(bs))
    plain = b._bounds(x, sq, sq.sqrt(), bs)[0]
    assert (shifted >= true).all() and (plain >= true).all()
    # the tilt is taken out: tighter than the unshifted bounds
    slack_shifted, slack_plain = (shifted - true).median(), (plain - true).median()
    assert slack_shifted < (0.5 if d == 2 else 0.9) * slack_plain


def test_the_pruned_search_is_exact_with_a_tilted_potential_and_masked_atoms():
    z, bias, x = _tilted(6000, 2, 30, masked=100)
    b = ClusterBounds.build(z, center=None, dtype=torch.float64, device=torch.device("cpu"), k=60)
    index, best, second, second_index, scored, _ = b.search(x, bias, second="index")
    first, runner = _brute(z, bias, x)
    assert torch.equal(index, first) and torch.equal(second_index, runner)
    assert scored / (300 * 6000) < 0.06  # the unshifted bounds alone: 0.10
    # the fit is kept for the same bias tensor and redone when it changes in place
    b.search(x, bias)
    held = b._trend_cache["trend"]
    b.search(x, bias)
    assert b._trend_cache["trend"] is held
    bias[:10] += 1.0
    assert torch.equal(b.search(x, bias)[0], _brute(z, bias, x)[0])
    assert b._trend_cache["trend"] is not held
    # in 1-D and above SHIFT_MAX_DIM the unshifted bounds are used
    for d in (1, SHIFT_MAX_DIM + 1):
        keys = torch.randn(500, d, generator=gen(31), dtype=torch.float64)
        plain = ClusterBounds.build(keys, center=None, dtype=torch.float64, device=torch.device("cpu"), k=10)
        assert plain.spread_pinv is None
