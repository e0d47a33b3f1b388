"""Certified float32 pairing: the float32 argmax proven row by row, the rest re-scored in float64, so
``LaguerreCells.assign`` equals the float64 brute-force argmax (ties to the smallest index)."""

import math

import pytest
import torch

from sdfm.transport import LaguerreCells
from sdfm.transport._stream import block_top
from sdfm.transport.certified import ScoreCertificate, score_coefficient


def gen(seed):
    return torch.Generator().manual_seed(seed)


def brute_force(x, y, g):
    """float64 argmax_j <x, y_j> + g_j - |y_j|^2 / 2 (ties to the first), in chunks of queries."""
    y64, g64 = y.to(torch.float64), g.to(torch.float64)
    bias = g64 - 0.5 * y64.square().sum(1)
    return torch.cat([(xb.to(torch.float64) @ y64.T + bias).argmax(1) for xb in x.split(4096)])


def circle(n=3000, radius=2.0, seed=0):
    """Atoms on a circle: neighbouring scores differ by about |x| R dtheta^2 / 2, below float32's
    resolution of the scores (BENCHMARKS.md section 27)."""
    theta = torch.rand(n, generator=gen(seed)) * 2 * math.pi
    return torch.stack([theta.cos(), theta.sin()], 1) * radius


def float32_only(cells, x):
    """The plain float32 argmax (what pairing returned before the certificate)."""
    keys = cells._keys(x.device, torch.float32)
    return keys.scorer.argmax(x, keys.bias)[0]


@pytest.mark.parametrize("pruning", ["off", "on"])
def test_assign_equals_float64_argmax_where_float32_does_not(pruning):
    y = circle()
    g = torch.zeros(3000, dtype=torch.float64)  # equal norms: the cells are the angular sectors
    x = torch.randn(20_000, 2, generator=gen(1))
    cells = LaguerreCells(y, g, pruning=pruning)
    truth = brute_force(x, y, g)
    assert torch.equal(cells.assign(x), truth)
    # not vacuous: float32 scores alone pick another atom for hundreds of these queries
    assert int((float32_only(cells, x) != truth).sum()) > 100
    counts = cells.column_sums(x)[0]
    assert torch.equal(counts, torch.bincount(truth, minlength=3000).to(torch.float64))


def test_float64_targets_far_from_the_origin():
    """float64 targets are rounded to float32 before the centre is subtracted: their own rounding
    enters the bound, and the pairing stays the float64 one."""
    r = torch.cat([circle(2000, radius=1.0, seed=3), torch.zeros(2000, 2)], 1).to(torch.float64)
    offset = torch.full((4,), 3e3, dtype=torch.float64)
    y = r + offset
    # g_j = <offset, r_j>: the scores are the centred circle's plus a row constant (angular sectors)
    g = r @ offset + 0.01 * torch.randn(2000, generator=gen(4), dtype=torch.float64)
    x = torch.randn(8000, 4, generator=gen(5))
    cells = LaguerreCells(y, g, pruning="off")
    truth = brute_force(x, y, g)
    assert int((float32_only(cells, x) != truth).sum()) > 30
    assert torch.equal(cells.assign(x), truth)


def test_exact_duplicates_go_to_the_smallest_index():
    y = torch.randn(500, 8, generator=gen(6))
    y = torch.cat([y, y[:200]])  # 200 atoms twice: ties in float64 too
    g = 0.2 * torch.randn(500, generator=gen(7), dtype=torch.float64)
    g = torch.cat([g, g[:200]])
    x = torch.randn(5000, 8, generator=gen(8))
    got = LaguerreCells(y, g, chunk_size=128).assign(x)  # copies in other chunks than their atoms
    # a GEMM may round the two copies of an atom apart (in float64 too): the reference maps copies
    # to their first index instead of trusting the brute force's tie-breaking
    want = brute_force(x, y, g)
    assert torch.equal(got, torch.where(want >= 500, want - 500, want))
    cells = LaguerreCells(y, g, chunk_size=128)
    keys = cells._keys(x.device, torch.float32)
    _, best, second = keys.scorer.argmax(x, keys.bias, top2=True)
    tied = keys.certificate.uncertain(x, best, second)
    assert int(tied.sum()) > 500  # the rows in a copied atom's cell cannot be certified: float64


def test_class_conditional_pairing_is_certified():
    y = circle(2400, seed=9)
    classes = torch.arange(2400) % 3
    g = torch.zeros(2400, dtype=torch.float64)
    x = torch.randn(9000, 2, generator=gen(10))
    query = torch.randint(0, 3, (9000,), generator=gen(11))
    for pruning in ("off", "on"):
        got = LaguerreCells(y, g, classes=classes, pruning=pruning, chunk_size=256).assign(x, classes=query)
        for c in range(3):
            rows, members = query == c, torch.nonzero(classes == c).squeeze(1)
            want = members[brute_force(x[rows], y[members], g[members])]
            assert torch.equal(got[rows], want), (pruning, c)


def test_float32_score_error_is_within_the_bound():
    """The bound the certificate rests on, element by element, for float32 and float64 targets far
    from the origin and biases of very different sizes (the masked -1e30 of merged copies too)."""
    for d, offset, dtype in [(3, 0.0, torch.float32), (64, 50.0, torch.float64), (784, 1e3, torch.float64)]:
        y = (torch.randn(700, d, generator=gen(d), dtype=torch.float64) + offset).to(dtype)
        bias64 = torch.randn(700, generator=gen(d + 1), dtype=torch.float64) * 10.0 ** torch.arange(
            700
        ).remainder(7)
        bias64[::97] = -1e30
        center = y.to(torch.float64).mean(0)
        cert = ScoreCertificate.build(y, center, torch.float32, chunk=128)
        x = torch.randn(300, d, generator=gen(d + 2)) * 3
        c32 = center.to(torch.float32)
        s = torch.addmm(bias64.to(torch.float32), x, (y.to(torch.float32) - c32).T)
        t = x.to(torch.float64) @ (y.to(torch.float64) - c32.to(torch.float64)).T + bias64
        xn = x.to(torch.float64).norm(dim=1, keepdim=True)
        bound = cert.scale * (s.abs().to(torch.float64) + 2 * xn * cert.key_norm)
        bound += 1.1 * 2.0**-24 * xn * cert.raw_norm
        err = (s.to(torch.float64) - t).abs()
        assert bool((err <= bound).all()), (d, float((err / bound).max()))
        assert float((err / bound).max()) > 1e-4  # the bound is not absurdly loose
    assert score_coefficient(64) == pytest.approx(
        1.1 * (65 * 2.0**-24 / (1 - 65 * 2.0**-24) + 2 * 2.0**-24) + 4 * 2.0**-53
    )
    with pytest.raises(ValueError, match="dimension"):
        score_coefficient(1 << 23)


def test_two_level_block_reduction_equals_the_plain_one():
    """block_top's strided groups give the largest value and its first column, the second-largest
    value (the largest again when it appears twice) and the first other column holding it, as
    max / a masked max do; with many ties across and within groups, and blocks whose width is not a
    multiple of the group count (a tail merged on its own)."""

    def plain(block, second):
        v1, i1 = block.max(dim=1)
        if not second:
            return v1, i1, None, None
        rest = block.scatter(1, i1[:, None], float("-inf"))
        v2, i2 = rest.max(dim=1)
        return v1, i1, v2, i2 if second == "index" else None

    g = gen(12)
    for trial in range(60):
        n, m = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(400, 3000, (1,), generator=g))
        values = [torch.randn(n, m, generator=g), torch.randint(0, 4, (n, m), generator=g).float()]
        values.append(torch.randint(0, 3000, (n, m), generator=g).to(torch.float64))
        block = values[trial % 3]
        for second in (None, "score", "index"):
            copy = block.clone()
            got, want = block_top(copy, second), plain(block, second)
            assert torch.equal(copy, block)  # left as it was
            for a, b in zip(got, want, strict=True):
                assert (a is None) == (b is None)
                assert a is None or torch.equal(a, b), (trial, n, m, second)


def test_one_target_is_certain_and_float64_queries_are_certified_too():
    y = torch.randn(1, 3, generator=gen(15))
    cells = LaguerreCells(y, torch.zeros(1, dtype=torch.float64))
    x = torch.randn(10, 3, generator=gen(16))
    assert torch.equal(cells.assign(x), torch.zeros(10, dtype=torch.long))
    keys = cells._keys(x.device, torch.float32)
    _, best, second = keys.scorer.argmax(x, keys.bias, top2=True)
    assert not bool(keys.certificate.uncertain(x, best, second).any())
    assert cells.rescored == (0, 10)
    # float64 queries: float64 scores, certified in float64 (copies tie: the smallest index)
    base = torch.randn(300, 5, generator=gen(17), dtype=torch.float64)
    y = torch.cat([base, base])
    g = torch.zeros(600, dtype=torch.float64)
    x64 = torch.randn(3000, 5, generator=gen(18), dtype=torch.float64)
    cells = LaguerreCells(y, g, chunk_size=100)
    got = cells.assign(x64)
    assert torch.equal(got, brute_force(x64, base, g[:300]))
    assert cells.rescored == (3000, 3000)  # every row ties with a copy


def test_float32_queries_switch_to_float64_scores_where_most_rows_tie():
    """On the circle most float32 rows cannot be certified: after such a call the next FLOAT64_CALLS
    calls score in float64 (the same cells, faster there), then float32 is tried again."""
    from sdfm.transport.assign import FLOAT64_CALLS

    y = circle()
    g = torch.zeros(3000, dtype=torch.float64)
    cells = LaguerreCells(y, g, pruning="off")
    x = torch.randn(4000, 2, generator=gen(19))
    truth = brute_force(x, y, g)
    assert torch.equal(cells.assign(x), truth)
    assert cells.rescored[0] > 0.5 * 4000 and cells._float64_calls == FLOAT64_CALLS
    assert torch.equal(cells.assign(x), truth)  # in float64 now: few rows to re-score
    assert cells.rescored[0] < 0.01 * 4000 and cells._float64_calls == FLOAT64_CALLS - 1
    # typical data stay in float32
    typical = LaguerreCells(torch.randn(2000, 8, generator=gen(20)), torch.zeros(2000, dtype=torch.float64))
    typical.assign(torch.randn(4000, 8, generator=gen(21)))
    assert typical._float64_calls == 0 and typical.rescored[0] < 0.05 * 4000


@pytest.mark.parametrize("streamed", [False, True])
def test_the_solvers_measurements_count_the_float64_argmax(streamed):
    """SemidiscreteProblem.hard_exact: float32 scores certified, near ties re-scored in float64 against
    the exact atoms (not the solver's rounded float32 copy), equal to a float64 brute force. Streamed:
    float64 targets at an offset of 500 with 300 copies, read through the representatives' rows and
    cast to float32 before centring (float32 alone is then wrong on about half of the rows)."""
    from sdfm.transport import SemidiscreteSolver
    from sdfm.transport.semidiscrete.problem import SemidiscreteProblem

    y = circle()
    if streamed:
        y = torch.cat([y, y[:300]]).to(torch.float64) + 500.0
    solver = SemidiscreteSolver(memory_limit=1 if streamed else 1 << 30)
    problem = SemidiscreteProblem(solver, y, None, gen(22), None)
    assert problem.certifies and problem.streamed == streamed
    assert 2900 < problem.n < 3000  # (copies, and a few atoms closer than float32 resolves, merge)
    h = 1e-6 * torch.randn(problem.n, generator=gen(23), dtype=torch.float64)  # about the ties' gaps
    x = problem.draw(20_000)
    exact, scored = problem.hard_exact(x, h)
    atoms = y[problem.rows].to(torch.float64) - problem.mean
    truth = torch.cat([(xb.to(torch.float64) @ atoms.T + h).argmax(1) for xb in x.split(4096)])
    assert torch.equal(exact, truth)
    assert int((scored != truth).sum()) > 100  # float32's own argmax is wrong on these rows


def test_a_float32_solve_goes_on_in_float64_where_its_counts_are_off(capsys):
    """On the circle the float32 cells are not the exact ones: a float32 solve used to stop at
    chi2 0.036 by its own count while the exact chi2 was 0.075 (BENCHMARKS.md section 27). The
    certified measurement sees it and the solve continues in float64 scores."""
    from sdfm.transport import SemidiscreteSolver

    y = circle()
    r = SemidiscreteSolver(tol=0.05, smooth_tol=None, max_seconds=120).solve(y, generator=gen(24))
    assert r.converged
    assert r.settings["score_precision"] == "float64" and r.settings["float64_from_step"] is not None
    # an independent chi2 over the solver's atoms (merged near duplicates paired by their group's
    # representative), unbiased: minus (atoms - 1) / samples
    groups = r.duplicates
    x = torch.randn(1 << 18, 2, generator=gen(25), dtype=torch.float64)
    index = groups.inverse[brute_force(x, y, groups.representatives_only(r.potential))]
    b = groups.weights
    m = torch.bincount(index, minlength=b.shape[0]).to(torch.float64) / x.shape[0]
    chi2 = float(((m - b).square() / b).sum()) - (b.shape[0] - 1) / x.shape[0]
    assert chi2 <= 0.05 and abs(chi2 - r.chi2) < 0.015, (chi2, r.chi2)
    from types import SimpleNamespace

    from sdfm.cli.main import _print_solve

    _print_solve(r, SimpleNamespace(tol=0.05), "g.safetensors", 3000)  # what sdfm solve prints
    assert f"float64 scores from step {r.settings['float64_from_step']}:" in capsys.readouterr().out
    # typical data keep float32 scores
    r = SemidiscreteSolver(tol=0.1).solve(torch.randn(500, 8, generator=gen(26)), generator=gen(27))
    assert r.settings["score_precision"] == "float32" and r.settings["float64_from_step"] is None


def test_measurements_with_many_near_ties_score_those_rows_densely_in_float64():
    """Tight clusters far from each other in 512-d: the float32 bound (which grows with d) proves
    few winners, so a measurement batch scores its unproven rows densely in float64 (re-scoring
    each row's candidates pair by pair took 4.5x the solve's time): still the float64 argmax."""
    from sdfm.transport import SemidiscreteSolver
    from sdfm.transport.semidiscrete.problem import DENSE_FLOAT64_ROWS, SemidiscreteProblem

    g = gen(28)
    centres = 10 * torch.randn(10, 512, generator=g)
    y = centres[torch.randint(0, 10, (2000,), generator=g)] + 0.01 * torch.randn(2000, 512, generator=g)
    problem = SemidiscreteProblem(SemidiscreteSolver(), y, None, gen(29), None)
    h = 0.1 * torch.randn(problem.n, generator=gen(30), dtype=torch.float64)
    x = problem.draw(4096)
    exact, _ = problem.hard_exact(x, h)
    index, best, second = problem.scorer.argmax(x, problem.bias(h), top2=True)
    assert float(problem._certificate.uncertain(x, best, second).double().mean()) > DENSE_FLOAT64_ROWS
    atoms = y.to(torch.float64) - problem.mean
    assert torch.equal(exact, (x.to(torch.float64) @ atoms.T + h).argmax(1))
    assert problem._scorer64 is not None  # the dense float64 path ran
