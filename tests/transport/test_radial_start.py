"""The radial warm start and the default start's choice (``warm_start="best"``).

The radial start is the dual of the quantile map from the noise's radius to the atoms' distances from
their mean; it is checked against a brute-force count of sampled radii. The default weighs it against
h = 0 on one probe batch: heavy-tailed 2-D data (Cauchy), which h = 0 does not solve, take the radial
start; high-dimensional data keep h = 0 with the very same draws as ``warm_start="zero"``."""

import pytest
import torch

from sdfm.transport import SemidiscreteSolver
from sdfm.transport.semidiscrete import parts
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem
from tests.conftest import gen


def _problem(y, weights=None, **options):
    return SemidiscreteProblem(SemidiscreteSolver(**options), y, weights, gen(1), None, None)


def _cauchy(n: int, d: int = 2) -> torch.Tensor:
    u = torch.rand(n, d, generator=gen(0), dtype=torch.float64)
    return torch.tan(torch.pi * (u - 0.5))


def _chi2_free(y: torch.Tensor, g: torch.Tensor, samples: int = 1 << 17) -> float:
    """chi2(m || uniform), m counted by a float64 argmax of <x, y_j> + g_j - |y_j|^2 / 2 on fresh noise."""
    noise = torch.Generator().manual_seed(12345)
    shift = g.double() - 0.5 * (y * y).sum(1)
    counts = torch.zeros(y.shape[0], dtype=torch.float64)
    for _ in range(samples // 8192):
        x = torch.randn(8192, y.shape[1], generator=noise, dtype=torch.float64)
        counts += torch.bincount((x @ y.T + shift).argmax(1), minlength=y.shape[0]).double()
    m, b = counts / samples, 1.0 / y.shape[0]
    return float(((m - b) ** 2 / b).sum()) - (y.shape[0] - 1) / samples


@pytest.mark.parametrize("d", [2, 5])
def test_radial_start_sends_each_radius_to_its_atom(d):
    # the radial part of the problem: s = |x|, x ~ N(0, I_d), goes to argmax_j s r_j + h_j; with the
    # radial start every atom must get its weight (counted here on 2^20 sampled radii)
    y = _cauchy(40, d) if d == 2 else torch.randn(40, d, generator=gen(2), dtype=torch.float64)
    w = torch.rand(40, generator=gen(3), dtype=torch.float64) + 0.2
    problem = _problem(y, w)
    h = parts.radial_start(problem)
    r = (y - problem.mean).norm(dim=1)
    s = torch.randn(1 << 20, d, generator=gen(4), dtype=torch.float64).norm(dim=1)
    counts = torch.bincount((s[:, None] * r + h).argmax(1), minlength=40).double() / s.shape[0]
    assert torch.allclose(counts, problem.b, atol=4e-3 * problem.b.max().item() + 2e-3)
    assert (counts - problem.b).abs().max() < 5 * (problem.b.max() / s.shape[0]) ** 0.5 + 1e-4


def test_radial_start_gives_equal_distances_equal_potentials():
    angles = torch.arange(8, dtype=torch.float64) * (torch.pi / 4)
    ring = torch.stack([angles.cos(), angles.sin()], 1)
    y = torch.cat([ring, 3 * ring])  # mean 0: two distances, eight atoms each
    h = parts.radial_start(_problem(y))
    assert torch.allclose(h[:8], h[0].expand(8)) and torch.allclose(h[8:], h[8].expand(8))
    assert h[8] < h[0]  # the outer ring starts its cells further out


def test_default_start_solves_heavy_tailed_2d_data():
    # Cauchy atoms (extent ~500): from h = 0 the hull atoms take all the noise and the solve needs
    # about 400 steps (1,570 samples per target); the radial start converges within 150, confirmed by
    # an independent count
    y = _cauchy(300)
    best = SemidiscreteSolver(tol=0.05, max_steps=150).solve(y, generator=gen(0))
    assert best.settings["warm_start_used"] == "radial"
    assert best.converged and best.samples / 300 <= 600
    assert _chi2_free(y, best.potential) < 0.07
    zero = SemidiscreteSolver(tol=0.05, max_steps=150, warm_start="zero").solve(y, generator=gen(0))
    assert zero.settings["warm_start_used"] == "zero"
    assert not zero.converged and zero.chi2 > 0.1


def test_default_start_keeps_zero_in_high_dimension_bit_for_bit():
    # in 32-d the hull holds nearly every atom and h = 0 wins the probe: same draws, same result
    y = (
        torch.randn(200, 32, generator=gen(5))
        + 3 * torch.randn(4, 32, generator=gen(6))[torch.arange(200) % 4]
    )
    best = SemidiscreteSolver(max_steps=60, tol=None).solve(y, generator=gen(0))
    zero = SemidiscreteSolver(max_steps=60, tol=None, warm_start="zero").solve(y, generator=gen(0))
    assert best.settings["warm_start_used"] == "zero"
    assert torch.equal(best.potential, zero.potential)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_the_probe_search_leaves_the_pruning_schedule_alone(mode):
    # the radial start's probe is scored off the record: the pruning's counts and last cost (what
    # decides whether the next search is pruned) are those of a solve without it
    y = torch.randn(3000, 2, generator=gen(7))
    problem = _problem(y, pruning=mode)
    x = problem.draw(512)
    zero = torch.zeros(problem.n, dtype=torch.float64)
    problem.hard(x, zero)
    before = problem.pruning_summary()
    with problem.off_the_record():
        index, _, _ = problem.hard(x, parts.radial_start(problem))
    assert problem.pruning_summary() == before
    problem.hard(x, zero)
    assert problem.pruning_summary() != before  # outside the block the calls count
    scores = x.double() @ (y.double() - problem.mean).T + parts.radial_start(problem)
    assert torch.equal(index, scores.argmax(1))


def test_radial_start_is_not_weighed_for_other_sources():
    def uniform(n, d, *, generator=None, device=None, dtype=None):
        return torch.rand(n, d, generator=generator, device=device, dtype=dtype) - 0.5

    r = SemidiscreteSolver(max_steps=5, tol=None).solve(_cauchy(50), generator=gen(0), noise=uniform)
    assert r.settings["warm_start_used"] == "zero"
    with pytest.raises(ValueError, match="warm_start"):
        SemidiscreteSolver(warm_start="radius")
    with pytest.raises(ValueError, match="warm_start: 'radial'"):
        SemidiscreteSolver(max_steps=5, warm_start="radial").solve(
            _cauchy(50), generator=gen(0), noise=uniform
        )
