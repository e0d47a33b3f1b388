"""Near duplicates: atoms closer than the scores resolve are merged like exact duplicates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import pdist, squareform

from sdfm.couplings import SemidiscreteCoupling
from sdfm.transport import SemidiscreteSolver, assign, find_duplicates
from sdfm.transport.duplicates import RESOLUTION_FACTOR, resolution_radius
from tests.conftest import gen, twins


def _reference_groups(y: torch.Tensor, radius: float) -> np.ndarray:
    """Connected components of the pairs within radius, by brute force (scipy)."""
    close = squareform(pdist(y.double().numpy())) <= radius
    return connected_components(close, directed=False)[1]


def _same_partition(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    pairs = {(int(x), int(y)) for x, y in zip(a, b, strict=True)}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("d", [1, 2, 5, 40])
def test_near_duplicates_match_brute_force(d):
    """Planted pairs and triples at distances on both sides of the radius, exact copies among them:
    the groups are the brute-force components of the pairs within the radius."""
    g = gen(d)
    y = torch.randn(600, d, generator=g, dtype=torch.float64)
    radius = 1e-3
    for i in range(0, 200, 2):  # pairs at 0.1 to 10 radii: about half of them within
        direction = torch.randn(d, generator=g, dtype=torch.float64)
        y[300 + i // 2] = y[i] + direction / direction.norm() * radius * 10 ** (2 * (i / 200) - 1)
    y[500:510] = y[200:210]  # exact copies
    y[510:520] = y[200:210] + 0.3 * radius / d**0.5  # ... and a near copy of each (a triple)
    got = find_duplicates(y, radius=radius)
    ref = _reference_groups(y, radius)
    assert got is not None and _same_partition(got.inverse.numpy(), ref)
    assert got.num_duplicates == 600 - len(set(ref.tolist())) >= 70  # 20 in triples, ~half the pairs
    assert torch.equal(got.inverse[got.representative], torch.arange(got.num_groups))
    # radius 0: exact copies only, as before
    exact = find_duplicates(y)
    assert exact.num_duplicates == 10 and _same_partition(exact.inverse.numpy(), _reference_groups(y, 0.0))


def test_a_chain_of_close_pairs_is_split():
    """Points 0.6 radius apart on a line link into one chain; groups must stay within 2 radii of
    their first point, so the chain is cut into pieces."""
    radius = 1e-2
    y = torch.zeros(50, 3, dtype=torch.float64)
    y[:, 0] = 0.6 * radius * torch.arange(50)
    y = torch.cat([y, torch.randn(20, 3, generator=gen(1), dtype=torch.float64) + 5])
    got = find_duplicates(y, radius=radius)
    assert got is not None and got.num_groups < 70
    first = y[got.representative[got.inverse]]
    assert float((y - first).norm(dim=1).max()) <= 2 * radius
    assert torch.equal(got.inverse[50:], torch.unique(got.inverse[50:]))  # the far points alone


def test_resolution_radius():
    y = torch.randn(1000, 16, generator=gen(2)) * 3 + 100  # far from the origin: centred scale
    centre = (y.double().amax(0) + y.double().amin(0)) / 2
    extent = float((y.double() - centre).norm(dim=1).max())
    expected = RESOLUTION_FACTOR * 2.0**-24 * 4 * extent
    assert resolution_radius(y, torch.float32) == pytest.approx(expected, rel=1e-12)
    assert resolution_radius(y, torch.float64) == pytest.approx(expected * 2.0**-29, rel=1e-12)
    assert resolution_radius(torch.ones(5, 3), torch.float32) == 0.0  # all identical: nothing to merge


def _coupling_chi2(y: torch.Tensor, result, n: int = 1 << 18) -> float:
    """chi2 of the coupling's pairs per atom, counted on fresh noise (float64 data)."""
    coupling = SemidiscreteCoupling.from_result(y.double(), result)
    x = torch.randn(n, y.shape[1], generator=gen(9), dtype=torch.float64)
    counts = torch.bincount(coupling.pair(x, generator=gen(10)).index, minlength=y.shape[0])
    m, w = counts.double() / n, 1.0 / y.shape[0]
    return float(((m - w) ** 2 / w).sum()) - (y.shape[0] - 1) / n


def test_pairs_below_the_score_resolution_are_solved():
    """500 points and a copy of each 1e-6 away in 2-D: float32 scores cannot split a pair's cell, so
    the solve used to stall at chi2 ~ 88; merged, it converges and pairs each twin half the time."""
    y = twins(500, 2, 1e-6)
    r = SemidiscreteSolver(tol=0.05, max_steps=1500).solve(y, generator=gen(0))
    assert r.converged and r.duplicates is not None and r.duplicates.num_groups == 500
    assert r.settings["merge_radius"] == resolution_radius(y, torch.float32)
    assert torch.equal(r.duplicates.inverse, torch.cat([torch.arange(500), torch.arange(500)]))
    # independent: the merged cells' mass by a float64 count, and the coupling's pairs per atom
    x = torch.randn(1 << 18, 2, generator=gen(8), dtype=torch.float64)
    merged = torch.bincount(assign(x, y[:500].double(), r.potential[:500].double()), minlength=500)
    m = merged.double() / x.shape[0]
    assert float(((m - 1 / 500) ** 2 * 500).sum()) - 499 / x.shape[0] < 0.08
    assert _coupling_chi2(y, r) < 0.08


def test_pairs_above_the_radius_stay_apart():
    """Twins 40 radii apart are distinct atoms: nothing merged, the solve unchanged."""
    y = twins(200, 2, 1.0)
    radius = resolution_radius(y, torch.float32)
    y[200:] = y[:200] + 40 * radius * torch.nn.functional.normalize(torch.randn(200, 2, generator=gen(3)))
    assert find_duplicates(y, radius=radius) is None


def _far_data_with_near_copies():
    """200 atoms of extent ~3,000 in 2-D and near copies of 50 of them at 0.3 merge radii: a copy's
    own cell at its atom's potential would be moved by about |y| times the distance."""
    y = 1000 * torch.randn(200, 2, generator=gen(21), dtype=torch.float64)
    radius = resolution_radius(y.float(), torch.float32)
    step = torch.randn(50, 2, generator=gen(22), dtype=torch.float64)
    copies = y[:50] + 0.3 * radius * step / step.norm(dim=1, keepdim=True)
    return torch.cat([y, copies]), radius


def test_a_merged_groups_cell_is_its_representatives():
    y, _ = _far_data_with_near_copies()
    r = SemidiscreteSolver(tol=0.1).solve(y.float(), generator=gen(23))
    groups = r.duplicates
    assert groups is not None and groups.num_groups == 200
    rep, yd = groups.representative, y.float().double()
    x = torch.randn(20000, 2, generator=gen(24), dtype=torch.float64)
    scores = x @ yd[rep].T + r.potential[rep] - 0.5 * (yd[rep] ** 2).sum(1)
    expected = scores.argmax(1)  # brute force over the solver's atoms (group numbers)
    assert torch.equal(r.potential, r.potential[rep][groups.inverse])  # copies share their atom's g
    coupling = SemidiscreteCoupling(yd, r.potential, duplicates=groups)
    got = groups.inverse[coupling.pair(x, generator=gen(25)).index]
    assert torch.equal(got, expected)
    # without the representatives, the copies' own cells take mass from their neighbours
    assert (groups.inverse[assign(x, yd, r.potential)] != expected).sum() > 20


def test_a_class_conditional_coupling_pairs_merged_groups_by_their_representative():
    from sdfm.transport import solve_per_class

    y, _ = _far_data_with_near_copies()
    labels = torch.cat([torch.arange(200) % 2, torch.arange(50) % 2])  # copies in their atom's class
    res = solve_per_class(SemidiscreteSolver(tol=0.1), y.float(), labels, generator=gen(27))
    groups = res.duplicates
    assert groups is not None and groups.num_groups == 200
    yd = y.float().double()
    coupling = SemidiscreteCoupling.from_result(yd, res)
    assert coupling.conditional
    pairs = coupling.sample(20000, generator=gen(28))
    assert bool((labels[pairs.index] == pairs.cond).all())
    # brute force: the argmax over the class's representatives (the solver's atoms)
    x0, c = pairs.x0.double(), pairs.cond
    scores = x0 @ yd.T + res.potential - 0.5 * yd.square().sum(1)
    is_rep = torch.zeros(250, dtype=torch.bool)
    is_rep[groups.representative] = True
    scores[(c[:, None] != labels[None, :]) | ~is_rep[None, :]] = float("-inf")
    assert torch.equal(groups.inverse[pairs.index], groups.inverse[scores.argmax(1)])
