"""Chains of narrow cells. Targets on one line in d > 1: detected, solved as the 1-D problem they
are (checked on fresh noise; refined by the stochastic solver where the off-line distance matters),
and paired in float64. Curves: the step control lowers lr until the iterates average well."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from sdfm.transport import LaguerreCells, SemidiscreteSolver, assign, estimate_marginal
from sdfm.transport._stream import target_chunks
from sdfm.transport.collinear import line_direction


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _line(n: int, d: int, *, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """n sorted-normal positions along a random unit direction u in d dimensions, offset from 0."""
    g = _gen(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u /= u.norm()
    t = 1.7 * torch.randn(n, generator=g, dtype=torch.float64) + 0.4
    offset = 3.0 * torch.randn(d, generator=g, dtype=torch.float64)
    return (offset + t[:, None] * u).to(dtype), u


def _direction(y: torch.Tensor, rel_tol: float = 0.0) -> torch.Tensor | None:
    chunks = partial(target_chunks, y, 64, device=y.device, dtype=torch.float64)
    return line_direction(chunks, y.dtype, rel_tol)


def test_line_direction_detects_lines_only():
    y, u = _line(500, 8)
    got = _direction(y)
    assert got is not None and abs(float(got @ u)) > 1 - 1e-12
    assert _direction(y.float()) is not None  # float32 rounding of a line is still a line
    assert _direction(y.float().double()) is None  # ... but not at float64's precision
    assert _direction(y.float().double(), rel_tol=1e-3) is not None  # unless nearly on it is enough
    bent = y.clone()
    bent[-1] += 1e-2 * torch.randn(8, generator=_gen(1), dtype=torch.float64)
    assert _direction(bent) is None and _direction(bent, rel_tol=1e-3) is None
    assert _direction(torch.ones(10, 3, dtype=torch.float64)) is None  # one point, no direction
    assert _direction(torch.randn(5, 1, dtype=torch.float64)).tolist() == [1.0]


@pytest.mark.parametrize("d", [2, 16])
def test_collinear_targets_solved_as_1d(d):
    """1,000 atoms on a line: the stochastic solver alone needs thousands of samples per target; the
    1-D solution pairs every noise as the 1-D problem of the projections does."""
    y, u = _line(1000, d)
    r = SemidiscreteSolver(tol=0.05).solve(y, generator=_gen())
    assert r.settings["method"] == "exact_1d" and r.settings["collinear"] and r.converged
    assert r.steps == 0 and r.samples / 1000 < 50  # the check's samples only
    # independent reference: the 1-D solve of the positions along u, paired in 1-D
    z = (y @ u)[:, None]
    r1 = SemidiscreteSolver(tol=0.05).solve(z, generator=_gen())
    assert r1.settings["method"] == "exact_1d" and not r1.settings["collinear"]
    x = torch.randn(20_000, d, generator=_gen(4), dtype=torch.float64)
    assert torch.equal(assign(x, y, r.potential), assign((x @ u)[:, None], z, r1.potential))
    est = estimate_marginal(y, r.potential, num_samples=1 << 19, generator=_gen(6), with_cost=False)
    assert est.chi2 < 0.01 + 3 * est.chi2_stderr


def test_nearly_collinear_targets_start_from_the_line():
    """A line with noise 1e-3 across it: the 1-D solution is the start and the stochastic solver
    refines it (7x faster than without the line, BENCHMARKS 19)."""
    g = _gen(2)
    t = torch.randn(1000, 1, generator=g)
    y = torch.cat([1.7 * t, 1e-3 * torch.randn(1000, 1, generator=g)], 1)
    r = SemidiscreteSolver(tol=0.05).solve(y, generator=_gen())
    assert r.settings["collinear"] and r.settings["line_start"] and r.converged
    assert r.samples / 1000 < 2000, r.samples / 1000
    est = estimate_marginal(y, r.potential, num_samples=1 << 19, generator=_gen(6), with_cost=False)
    assert est.chi2 < 0.05 + 3 * est.chi2_stderr


def test_two_atoms_in_any_dimension_are_exact():
    y = torch.tensor([[0.0, 1.0, 2.0], [4.0, -1.0, 0.5]])
    r = SemidiscreteSolver(tol=0.01).solve(y, generator=_gen())
    assert r.settings["method"] == "exact_1d" and r.converged
    x = torch.randn(1 << 18, 3, generator=_gen(3), dtype=torch.float64)
    share = assign(x, y, r.potential).double().mean()
    assert abs(float(share) - 0.5) < 4 * 0.5 / 2**9


def test_collinear_chain_paired_in_float64():
    """10,000 atoms on a line in 2-D: float32 scores moved the narrow cells' boundaries (BENCHMARKS 19:
    chi2 0.42 of the exact potential from rounding alone); the cells now score them in float64."""
    y64, _ = _line(10_000, 2)
    g = SemidiscreteSolver().solve(y64, generator=_gen()).potential  # exact, narrow cells
    y = y64.float()
    cells = LaguerreCells(y, g)
    assert cells.collinear
    assert not LaguerreCells(torch.randn(100, 2), torch.zeros(100)).collinear
    x = torch.randn(8192, 2, generator=_gen(3))  # float32 queries
    got = cells.assign(x)
    bias = g - 0.5 * y.double().square().sum(1)
    want = (x.double() @ y.double().T + bias).argmax(1)
    assert torch.equal(got, want)
    # the float32 scores this replaces pick other atoms (the test can tell them apart)
    centred = y.double() - y.double().mean(0)
    f32 = (x @ centred.float().T + (bias + y.double().mean(0) @ y.double().T).float()).argmax(1)
    assert int((f32 != want).sum()) > 10, int((f32 != want).sum())


def test_step_control_solves_a_helix_and_leaves_easy_problems_alone():
    """1,000 points on a helix in 3-D. With every runner-up gap in the cells' step scales the iterate
    stayed too noisy to average at the default step (chi2 0.17 after 13,000 samples per target) and the
    step control halved lr; now the default converges at its lr. With a step about 3x too large the
    iterate is that noisy again (not converged without the control), and the control halves lr."""
    t = torch.randn(1000, 1, generator=_gen(0))
    y = torch.cat([torch.cos(3 * t), torch.sin(3 * t), 0.3 * t], 1)
    default = SemidiscreteSolver(tol=0.05).solve(y, generator=_gen())
    assert default.converged and default.samples / 1000 < 2000, default.samples / 1000
    large = {"lr": 1.0, "noise_level": 2.0}
    r = SemidiscreteSolver(tol=0.05, **large).solve(y, generator=_gen())
    assert r.converged and r.settings["lr_scale"] < 1.0
    assert r.samples / 1000 < 6000, r.samples / 1000
    loose = SemidiscreteSolver(tol=0.05, max_steps=r.steps, lr_control=False, **large)
    loose = loose.solve(y, generator=_gen())
    assert not loose.converged
    est = estimate_marginal(y, r.potential, num_samples=1 << 19, generator=_gen(6), with_cost=False)
    assert est.chi2 < 0.05 + 3 * est.chi2_stderr
    g = _gen(5)
    mixture = torch.randn(1000, 2, generator=g) + 4 * torch.randn(8, 2, generator=g)[torch.arange(1000) % 8]
    easy = SemidiscreteSolver(tol=0.05).solve(mixture, generator=_gen())
    assert easy.converged and easy.settings["lr_scale"] == 1.0
