"""Tight groups of atoms start from a merged solve (sdfm.transport.semidiscrete.tight)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from sdfm.transport import SemidiscreteSolver, assign
from sdfm.transport.semidiscrete import tight
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem
from tests.conftest import gen, twins


@pytest.mark.parametrize("d", [2, 4, 12])  # k-d tree up to 4 dimensions, dense search above
def test_neighbour_distances_match_brute_force(d):
    y = twins(150, d, 1e-3, seed=d).double()
    dist, index = tight.neighbour_distances(y, 8)
    ref = cdist(y.numpy(), y.numpy())
    ref[range(300), range(300)] = float("inf")
    ref.sort(axis=1)
    torch.testing.assert_close(dist, torch.from_numpy(ref[:, :8]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((y[:, None] - y[index]).norm(dim=2), dist, rtol=1e-12, atol=1e-12)
    assert (index != torch.arange(300)[:, None]).all()
    some = torch.tensor([7, 0, 299, 150])
    sub_dist, sub_index = tight.neighbour_distances(y, 8, some)
    assert torch.equal(sub_dist, dist[some]) and torch.equal(sub_index, index[some])


def test_the_dense_search_reads_the_atoms_tile_by_tile(monkeypatch):
    """The candidates are merged over tiles of at most TILE scores, so the search's memory does not
    grow with N (a [rows, N] block took 2 GiB at N = 10^6); with tiles of 13 atoms it still equals the
    brute force, and a problem's atoms are read through the view, uncopied, to the same answer."""
    monkeypatch.setattr(tight, "TILE", 4096)
    y = twins(150, 12, 1e-3, seed=1).double()
    view = tight.AtomView.of(y)
    sizes = []

    def tiles(size):
        sizes.append(size)
        return view.tiles(size)

    dist, index = tight.neighbour_distances(dataclasses.replace(view, tiles=tiles), 8)
    ref = cdist(y.numpy(), y.numpy())
    ref[range(300), range(300)] = float("inf")
    torch.testing.assert_close(dist, torch.from_numpy(np.sort(ref, axis=1)[:, :8]), rtol=1e-12, atol=1e-12)
    assert sizes == [4096 // 300]  # one block of 300 rows, 24 tiles of 13 atoms
    some = torch.tensor([3, 100])  # a block of 2 rows reads tiles of 4096 / 12 atoms, not 4096 / 2
    few = tight.neighbour_distances(dataclasses.replace(view, tiles=tiles), 8, some)
    assert sizes[-1] == 4096 // 12 and torch.equal(few[1], index[some])
    problem = SemidiscreteProblem(SemidiscreteSolver(), y.float(), None, gen(0), None)
    atoms = problem.atoms_at(torch.arange(problem.n))
    some = torch.tensor([0, 5, 299])
    got = tight.neighbour_distances(tight.AtomView.of_problem(problem), 8, some)
    want = tight.neighbour_distances(atoms - problem.mean, 8, some)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0.0)


def _groups(y: torch.Tensor) -> torch.Tensor | None:
    solver = SemidiscreteSolver()
    return tight.tight_groups(SemidiscreteProblem(solver, y, None, gen(0), None))


def test_tight_groups_only_where_many_atoms_are_tight():
    pairs = twins(300, 3, 1e-3)
    labels = _groups(pairs)
    assert labels is not None and torch.equal(labels[:300], labels[300:])  # each twin with its twin
    assert int(labels.max()) + 1 == 300
    # ordinary data, a curve (nearly exponential spacings) and twins at a third of the spacing: no start
    t = torch.rand(2000, generator=gen(1)) * 12
    curve = torch.stack([t.cos() * t, t.sin() * t], 1)
    for y in (torch.randn(2000, 2, generator=gen(2)), torch.randn(1000, 16, generator=gen(3)), curve):
        assert _groups(y) is None
    assert _groups(twins(300, 2, 3e-2)) is None
    # small N: 4 of the 16 points of section 11's ring are that tight by chance; the margin keeps
    # the start off there
    angle = np.random.default_rng(3).uniform(0, 2 * np.pi, 16)
    radius = 3 + 0.1 * np.random.default_rng(4).standard_normal(16)
    ring = torch.from_numpy(np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1))
    dist, _ = tight.neighbour_distances(ring, tight.NEIGHBOURS)
    assert int((dist[:, 0] < tight.TRIGGER_RATIO * dist[:, -1]).sum()) >= tight.MIN_FRACTION * 16
    assert _groups(ring.float()) is None
    assert tight.trigger_count(16) > 5 and tight.trigger_count(1000) == 200


def test_large_problems_are_probed_first(monkeypatch):
    """Above 2 x PROBE atoms a random probe decides whether the full search runs: it finds the twins
    (in 2-D and in 12-D) and stops the search on ordinary data."""
    full = []
    original = tight.neighbour_distances

    def counting(atoms, k, queries=None):
        full.append(queries is None)
        return original(atoms, k, queries)

    monkeypatch.setattr(tight, "neighbour_distances", counting)
    for d in (2, 12):
        labels = _groups(twins(2500, d, 3e-4, seed=d))
        assert labels is not None and full == [False, True]
        # (labels of the problem's atoms: pairs closer than the scores resolve are one atom already)
        assert int(labels.max()) + 1 <= 0.51 * labels.shape[0]  # nearly every atom with its twin
        full.clear()
    assert _groups(torch.randn(5000, 12, generator=gen(5))) is None and full == [False]


def _chi2(y: torch.Tensor, potential: torch.Tensor, n: int = 1 << 19) -> float:
    """Independent float64 count on fresh samples."""
    x = torch.randn(n, y.shape[1], generator=gen(11), dtype=torch.float64)
    m = torch.bincount(assign(x, y.double(), potential.double()), minlength=y.shape[0]).double() / n
    w = 1.0 / y.shape[0]
    return float(((m - w) ** 2 / w).sum()) - (y.shape[0] - 1) / n


def test_jittered_copies_are_solved_from_the_merged_start():
    """200 points and a copy of each 1e-3 away (1/60 of their spacing) in 2-D: the plain solve stalls
    (each pair's joint mass moves in steps of its tiny gap) from h = 0; from the merged start it
    converges. (From the radial start of the default warm start the plain solve converges too.)"""
    y = twins(200, 2, 1e-3)
    r = SemidiscreteSolver(tol=0.05, max_steps=800).solve(y, generator=gen(0))
    used = r.settings["tight_start_used"]
    assert r.converged and used is not None and used["groups"] == 200
    # the pairs stay distinct atoms (but any closer than the scores resolve: merged for good)
    merged = 0 if r.duplicates is None else r.duplicates.num_duplicates
    assert merged <= 2 and used["merged_atoms"] == 200 - merged
    assert _chi2(y, r.potential) < 0.07
    assert r.samples / 400 < 1000
    plain = SemidiscreteSolver(tol=0.05, max_steps=800, tight_start=False, warm_start="zero")
    plain = plain.solve(y, generator=gen(0))
    assert plain.settings["tight_start_used"] is None and not plain.converged
    assert _chi2(y, plain.potential) > 0.1


def test_an_interrupt_in_the_merged_start_ends_the_solve(monkeypatch):
    """Ctrl-C while the merged problem is solved: with stop_on_interrupt the solve returns the full
    problem's potential lifted from the merged solve so far, flagged as interrupted, without running
    the full solve; without it the interrupt propagates."""
    y = twins(200, 2, 1e-3)
    draw = SemidiscreteProblem.draw_train
    calls = []

    def interrupting(self, n):
        calls.append(self.n)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return draw(self, n)

    monkeypatch.setattr(SemidiscreteProblem, "draw_train", interrupting)
    r = SemidiscreteSolver(tol=0.05, max_steps=800).solve(y, generator=gen(0), stop_on_interrupt=True)
    used = r.settings["tight_start_used"]
    assert set(calls) == {used["groups"]}  # every draw was the merged problem's: the full solve never ran
    assert r.settings["interrupted"] == "KeyboardInterrupt" and used["interrupted"] == "KeyboardInterrupt"
    assert r.potential.shape == (400,) and torch.isfinite(r.potential).all() and r.steps == 0
    # the start: each twin takes its group's potential from the merged solve
    torch.testing.assert_close(r.potential[:200], r.potential[200:], rtol=0, atol=1e-9)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        SemidiscreteSolver(tol=0.05, max_steps=800).solve(y, generator=gen(0))
