"""Tight groups: atoms far closer to each other than to the rest start from a merged solve.

Two atoms at distance r share a face whose score gap is about |x| r; the solver scales each atom's
step by its cell's gap, so a pair much closer than its neighbours moves its two potentials in steps
of that tiny size, while its *joint* mass needs moves of the neighbours' size. The pair's joint mass
then stays where the start put it and the solve stalls: 500 points with a copy of each moved by
1e-3 (a fiftieth of their spacing) in 2-D were at chi2 2.1 after 12,000 samples per target
(BENCHMARKS.md section 23).

The start that fixes it is a multi-level one: merge each tight group into one atom carrying the
group's weight (at its first member), solve that problem (its gaps are the neighbours' size), give
every member its group's potential, and solve the full problem from there. The merged solve puts the
joint masses right; the full solve then only splits each group's cell among its members, which its
small steps are made for. The result is the exact problem's, to the same tolerance.

A group is a connected set of atoms linked by nearest-neighbour pairs with r_1 < ``RATIO`` r_k (the
distance to the atom's nearest neighbour against its k-th nearest, k = ``NEIGHBOURS``): scale-free
and local. The start runs when at least ``MIN_FRACTION`` of the atoms have r_1 < ``TRIGGER_RATIO``
r_k (and, at small N, three standard deviations more than ``CURVE_FRACTION`` of them). Ordinary
data have few such atoms by chance (0-0.24% of the 2-D and higher-dimensional problems of
BENCHMARKS 21-22), samples of a curve more (about 10%: their spacings along the curve are nearly
exponential), and those are solved as before: a merged start does not help a chain of cells, whose
merged problem is as slow. The neighbour search is a k-d tree up to 4 dimensions and a dense
search above (cost N^2 d: about one noise sample per target), which runs on all atoms only when a
probe of 2,048 random atoms finds at least half the trigger's share tight (:func:`searchable`:
up to 4,194,304 atoms in d <= 4, N d up to 2^27 above).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

#: an atom is tight when its nearest neighbour is this many times closer than its k-th nearest
RATIO = 1 / 32
#: ... its k-th nearest neighbour, k =
NEIGHBOURS = 8
#: the merged start runs when at least this fraction of the atoms is tighter than TRIGGER_RATIO
MIN_FRACTION = 0.2
TRIGGER_RATIO = 1 / 64
#: ... and three standard deviations above this fraction (samples of a curve, by chance)
CURVE_FRACTION = 0.1
#: neighbours are searched with a k-d tree (scipy) up to this dimension, for up to KD_ATOMS atoms
#: (cost: BENCHMARKS.md section 23) ...
KD_DIMS = 4
KD_ATOMS = 1 << 22
#: ... and densely above it (cost N^2 d), for N d up to DENSE_ELEMENTS
DENSE_ELEMENTS = 1 << 27
#: the share of tight atoms is first estimated on this many random atoms (PROBE x N x d), and the
#: full search runs only when the estimate reaches half the trigger's fraction
PROBE = 2048
#: query rows per block of the neighbour search, and float32 scores (and atom coordinates) per tile
BLOCK = 1024
TILE = 1 << 22


@dataclass(frozen=True)
class AtomView:
    """The atoms [n, d] as the neighbour search reads them, without a copy: exact float64 rows by
    index (``rows``), and tiles of consecutive atoms (``tiles(size)``: (start, stop, atoms[start:stop])
    in any float dtype) for the float32 candidate scores, centred at ``center`` (None: as given)."""

    n: int
    d: int
    device: torch.device
    rows: Callable[[torch.Tensor], torch.Tensor]
    tiles: Callable[[int], Iterator[tuple[int, int, torch.Tensor]]]
    center: torch.Tensor | None = None

    @classmethod
    def of(cls, atoms: torch.Tensor) -> AtomView:
        """A tensor [n, d] (float64 rows, tiles sliced from it)."""

        def tiles(size: int):
            for start in range(0, atoms.shape[0], size):
                yield start, min(start + size, atoms.shape[0]), atoms[start : start + size]

        return cls(atoms.shape[0], atoms.shape[1], atoms.device, lambda i: atoms[i].to(torch.float64), tiles)

    @classmethod
    def of_problem(cls, problem) -> AtomView:
        """The solver problem's atoms, read chunk by chunk from where they are (centred at their mean)."""
        return cls(problem.n, problem.d, problem.device, problem.atoms_at, problem.atom_chunks, problem.mean)


def searchable(n: int, d: int) -> bool:
    """Whether the neighbour search of n atoms in d dimensions is affordable (cost N^2 d above
    ``KD_DIMS``; the memory is bounded by ``TILE`` scores whatever N)."""
    return n <= KD_ATOMS if d <= KD_DIMS else n * d <= DENSE_ELEMENTS


def neighbour_distances(
    atoms: torch.Tensor | AtomView, k: int, queries: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distances [m, k] (float64, ascending) of the atoms ``queries`` [m] (default: all) of
    ``atoms`` [n, d] (distinct; a tensor or an :class:`AtomView`) to their k nearest other atoms,
    and those atoms' indices [m, k] (on the atoms' device).

    Up to ``KD_DIMS`` dimensions a k-d tree (scipy's cKDTree); above, candidates ranked by float32
    scores <y_i, y_j> - |y_j|^2 / 2 (k + 5 of them), tile by tile of at most ``TILE`` scores, with
    distances computed exactly in float64."""
    view = atoms if isinstance(atoms, AtomView) else AtomView.of(atoms)
    n = view.n
    queries = torch.arange(n) if queries is None else queries.cpu()
    if view.d <= KD_DIMS:
        points = view.rows(torch.arange(n, device=view.device))
        points = (points if view.center is None else points - view.center).detach().to("cpu", torch.float64)
        points = points.numpy()
        tree = cKDTree(points)
        dist, index = tree.query(points[queries.numpy()], k=k + 1, workers=torch.get_num_threads())
        out = torch.from_numpy(dist[:, 1:]), torch.from_numpy(index[:, 1:]).long()
        return out[0].to(view.device), out[1].to(view.device)
    dist = torch.empty(queries.shape[0], k, dtype=torch.float64, device=view.device)
    index = torch.empty(queries.shape[0], k, dtype=torch.long, device=view.device)
    for start in range(0, queries.shape[0], BLOCK):
        rows = queries[start : start + BLOCK].to(view.device)
        exact = view.rows(rows)
        cand = _candidates(view, exact, min(n, k + 5))
        d = (exact[:, None, :] - view.rows(cand.reshape(-1)).reshape(*cand.shape, -1)).norm(dim=2)
        d = d.masked_fill(cand == rows[:, None], torch.inf)  # not its own neighbour (distinct atoms)
        d, order = d.sort(dim=1)
        dist[start : start + BLOCK] = d[:, :k]
        index[start : start + BLOCK] = cand.gather(1, order)[:, :k]
    return dist, index


def _candidates(view: AtomView, exact: torch.Tensor, take: int) -> torch.Tensor:
    """The ``take`` atoms [m, take] with the largest float32 scores <q, z_j> - |z_j|^2 / 2 for the
    rows ``exact`` [m, d] (z: the atoms centred at the view's centre), over tiles of the atoms."""
    centre = view.center

    def centred(y: torch.Tensor) -> torch.Tensor:
        return (y if centre is None else y.to(torch.float64) - centre).to(torch.float32)

    q = centred(exact)
    best_val = best_idx = None
    # at most TILE scores [m, size] and TILE coordinates [size, d] per tile (a last block of few rows
    # would otherwise read millions of atoms at once)
    for start, _, y in view.tiles(max(take, TILE // max(q.shape[0], view.d))):
        z = centred(y)
        scores = torch.addmm(z.square().sum(1), q, z.T, beta=-0.5)
        val, idx = scores.topk(min(take, z.shape[0]), dim=1)
        idx += start
        if best_val is not None:
            val, idx = torch.cat([best_val, val], 1), torch.cat([best_idx, idx], 1)
            val, pick = val.topk(min(take, val.shape[1]), dim=1)
            idx = idx.gather(1, pick)
        best_val, best_idx = val, idx
    return best_idx


def _tight_share(dist: torch.Tensor) -> torch.Tensor:
    """[m] bool: the atoms whose nearest neighbour is ``TRIGGER_RATIO`` closer than their k-th."""
    return (dist[:, 0] < TRIGGER_RATIO * dist[:, -1]).cpu()


def trigger_count(n: int) -> float:
    """How many of n atoms must be tighter than ``TRIGGER_RATIO`` for the merged start: a fifth,
    and three standard deviations above the tenth that samples of a curve have by chance (small N)."""
    return max(
        MIN_FRACTION * n, CURVE_FRACTION * n + 3 * math.sqrt(CURVE_FRACTION * (1 - CURVE_FRACTION) * n)
    )


def tight_groups(problem) -> torch.Tensor | None:
    """Group labels [n] (int64) of the atoms when ``MIN_FRACTION`` of them are tight, else None
    (also where the start does not apply: fewer than k + 2 atoms, or a search too costly)."""
    n, d = problem.n, problem.d
    if n < NEIGHBOURS + 2 or not searchable(n, d):
        return None
    atoms = AtomView.of_problem(problem)
    if n > 2 * PROBE:  # a cheap estimate first: most data have no tight groups
        probe = torch.randperm(n, generator=torch.Generator().manual_seed(0x5DF))[:PROBE]
        share = float(_tight_share(neighbour_distances(atoms, NEIGHBOURS, probe)[0]).double().mean())
        if share < MIN_FRACTION / 2:
            return None
    dist, index = neighbour_distances(atoms, NEIGHBOURS)
    if int(_tight_share(dist).sum()) < trigger_count(n):
        return None
    tight = (dist[:, 0] < RATIO * dist[:, -1]).cpu()
    i = torch.nonzero(tight).squeeze(1)
    j = index[:, 0].cpu()[i]
    graph = coo_matrix((np.ones(i.shape[0]), (i.numpy(), j.numpy())), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return torch.from_numpy(labels).long()


def merged_start(
    solver, problem, labels: torch.Tensor, generator, noise, stop_on_interrupt: bool = False
) -> tuple[torch.Tensor, dict]:
    """The iterate h [n] for the full solve from the solve of the merged problem, and a summary
    (with ``"interrupted"`` where ``stop_on_interrupt`` ended the merged solve early)."""
    groups = int(labels.max()) + 1
    first = torch.full((groups,), problem.n, dtype=torch.long)
    first.scatter_reduce_(0, labels, torch.arange(problem.n), reduce="amin")
    weights = torch.zeros(groups, dtype=torch.float64).index_add_(0, labels, problem.b.cpu())
    rows = first if problem.rows is None else problem.rows.cpu()[first]  # the groups' first targets
    targets = problem.src[rows.to(problem.src.device)].to(problem.device, torch.float64)
    merged = solver.solve(
        targets, weights=weights, generator=generator, noise=noise, stop_on_interrupt=stop_on_interrupt
    )
    problem.samples += merged.samples
    g = merged.potential.to(problem.device, torch.float64)[labels.to(problem.device)]
    h = g - 0.5 * problem.sqnorm
    summary = {
        "groups": groups,
        "merged_atoms": int(problem.n - groups),
        "samples": merged.samples,
        "chi2": merged.chi2,
        "converged": merged.converged,
    }
    if "interrupted" in merged.settings:
        summary["interrupted"] = merged.settings["interrupted"]
    return h - (problem.b * h).sum(), summary
