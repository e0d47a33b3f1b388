"""Duplicate targets: atoms at the same position share one Laguerre cell.

With eps = 0 the semidiscrete problem is ill-posed for duplicates (their cells coincide, so no
potential can split the cell's mass between them). sdfm merges them: the solver fits one atom per
distinct position carrying the summed weight, gives every copy the same potential, and the pairing
splits each merged cell's mass among the copies in proportion to their weights
(:meth:`DuplicateGroups.spread`).

Near duplicates are as bad in floating point: two atoms closer than the scores' rounding cannot be
told apart by any potential the solver can represent (their scores differ by about <x, y_i - y_j>,
below the score's last bits), so their split is rounding noise and the solve never converges.
``find_duplicates(..., radius=r)`` also merges atoms within distance r of each other (linked pairs,
each group within 2 r of its first member); the solver passes :func:`resolution_radius`, 64 times
the score's resolution. The merged coupling is exact for the targets moved by at most
2 r each: far below anything a flow model resolves.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: near duplicates: atoms closer than this many times the score's resolution are merged
#: (:func:`resolution_radius`; pairs a few resolutions apart stall the float32 solve, BENCHMARKS.md
#: section 23)
RESOLUTION_FACTOR = 64
#: near duplicates are searched on a grid over this many random projections of the targets
GRID_DIMS = 3
#: ... comparing each target with at most this many targets per adjacent grid cell
MAX_CANDIDATES = 64
#: the potential of the copies that :meth:`DuplicateGroups.representatives_only` takes out of the
#: assignment (finite: potentials are checked for NaN and Inf; far below any score in float32)
MASKED = -1e30


@dataclass(frozen=True)
class DuplicateGroups:
    """Groups of identical targets.

    Attributes:
        inverse: [N] int64, the group of each target (groups are numbered 0..G-1).
        representative: [G] int64, the first target index of each group.
        weights: [N] float64, the normalised target weights.
    """

    inverse: torch.Tensor
    representative: torch.Tensor
    weights: torch.Tensor
    _layouts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_groups(self) -> int:
        return int(self.representative.shape[0])

    @property
    def num_duplicates(self) -> int:
        """Number of targets that repeat an earlier one."""
        return int(self.inverse.shape[0]) - self.num_groups

    def group_weights(self) -> torch.Tensor:
        """[G] float64: the merged weight of each group."""
        out = torch.zeros(self.num_groups, dtype=torch.float64, device=self.weights.device)
        return out.index_add_(0, self.inverse.to(self.weights.device), self.weights)

    def _layout(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Copies grouped together (order), their cumulative weights, each group's first position,
        size and total weight: derived once per device, reused by every :meth:`spread`."""
        key = str(device)
        if key not in self._layouts:
            inverse = self.inverse.to(device)
            w = self.weights.to(device)
            order = torch.argsort(inverse, stable=True)
            sorted_groups = inverse[order]
            cum = torch.cumsum(w[order], 0)
            starts = torch.searchsorted(sorted_groups, torch.arange(self.num_groups, device=device))
            sizes = torch.bincount(sorted_groups, minlength=self.num_groups)
            self._layouts[key] = (inverse, order, cum, starts, sizes, self.group_weights().to(device))
        return self._layouts[key]

    def representatives_only(self, potential: torch.Tensor) -> torch.Tensor:
        """The potential [N] (float64) with every copy but its group's representative (the atom the
        solver fitted) set to MASKED, so that a hard assignment over all targets returns the
        representative for the whole group's cell; :meth:`spread` then splits it by weight.

        Exact copies share their cell anyway. Near duplicates (merged within the resolution radius)
        do not: at its atom's g, a copy scores <x - y_atom, y_copy - y_atom> above the atom, about
        |y| times the radius, and the union of the copies' cells is not the group's (a 3,000-point
        Cauchy set: chi2 0.090 over the groups where the solver's atoms measure 0.024)."""
        g = potential.detach().to(torch.float64).clone()
        copy = torch.ones(g.shape[0], dtype=torch.bool, device=g.device)
        copy[self.representative.to(g.device)] = False
        return g.masked_fill_(copy, MASKED)

    def spread(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replaces each paired index by a copy of the same group drawn with probability ∝ weight.

        Exact whatever copy ``assign`` returned for the tie. Runs in O(n log N) per call (the
        grouping is prepared once per device); the randomness is drawn on ``index.device`` from
        ``generator``.
        """
        inverse, order, cum, starts, sizes, totals = self._layout(index.device)
        group = inverse[index]
        first = starts[group]
        before = torch.where(first > 0, cum[(first - 1).clamp_min(0)], torch.zeros_like(cum[first]))
        u = torch.rand(index.shape, generator=generator, dtype=torch.float64, device=index.device)
        pos = torch.searchsorted(cum, before + u * totals[group], right=True)
        # Clamp to the group (guards against round-off at the group's upper edge).
        pos = torch.minimum(torch.maximum(pos, first), first + sizes[group] - 1)
        return order[pos]


def _row_hashes(targets: torch.Tensor, block_elements: int = 1 << 21) -> torch.Tensor:
    """A 64-bit hash of every row [N] (int64), streamed over row blocks: equal rows hash equally
    (-0.0 and 0.0 too); distinct rows collide with probability about 2^-64 per pair."""
    n, d = targets.shape
    gen = torch.Generator().manual_seed(0x5DF)
    mult = torch.randint(1, 1 << 62, (d,), generator=gen, dtype=torch.int64) * 2 + 1  # odd
    out = torch.empty(n, dtype=torch.int64)
    rows = _block_rows(d, block_elements)
    for start in range(0, n, rows):
        block = targets[start : start + rows].to(device="cpu", dtype=torch.float64) + 0.0  # -0.0 -> 0.0
        h = (block.view(torch.int64) * mult).sum(1)  # wraps modulo 2^64
        h ^= h >> 31
        out[start : start + block.shape[0]] = h * 0x2545F4914F6CDD1D
    return out


def _block_rows(d: int, block_elements: int = 1 << 21) -> int:
    return max(1, block_elements // max(d, 1))


def resolution_radius(targets: torch.Tensor, dtype: torch.dtype) -> float:
    """The distance below which two atoms' scores cannot be told apart in ``dtype``.

    ``RESOLUTION_FACTOR`` unit roundoffs of ``dtype`` times sqrt(d) times the targets' largest
    distance from the centre of their bounding box: the score <x, y> of a standard Gaussian x
    rounds off by about that many roundoffs of sqrt(d) |y|, while two atoms' scores differ by about
    <x, y_i - y_j>, of size |y_i - y_j|. Two passes over row blocks."""
    n, d = targets.shape
    lo = torch.full((d,), math.inf, dtype=torch.float64)
    hi = torch.full((d,), -math.inf, dtype=torch.float64)
    rows = _block_rows(d)
    for start in range(0, n, rows):
        block = targets[start : start + rows].to(device="cpu", dtype=torch.float64)
        lo = torch.minimum(lo, block.amin(0))
        hi = torch.maximum(hi, block.amax(0))
    top = float((hi - lo).max()) if n else 0.0
    if not 0 < top < math.inf:  # one point, or non-finite targets (rejected later): nothing to merge
        return 0.0
    centre, extent = (lo + hi) / 2, 0.0
    for start in range(0, n, rows):
        block = targets[start : start + rows].to(device="cpu", dtype=torch.float64) - centre
        extent = max(extent, float((block / top).norm(dim=1).max()))  # scaled: |y| ~ 1e200 is finite
    return RESOLUTION_FACTOR * torch.finfo(dtype).eps / 2 * math.sqrt(d) * extent * top


def _exact_keys(targets: torch.Tensor) -> torch.Tensor | None:
    """[N] int64 labels, equal exactly for equal rows; None when every row is distinct.

    Rows are hashed block by block; only rows whose hash repeats are gathered and compared."""
    n = targets.shape[0]
    hashes = _row_hashes(targets)
    _, hash_group, hash_count = torch.unique(hashes, return_inverse=True, return_counts=True)
    candidates = torch.nonzero(hash_count[hash_group] > 1).squeeze(1)
    if candidates.numel() == 0:
        return None
    rows = targets[candidates.to(targets.device)].cpu()
    uniq, within = torch.unique(rows, dim=0, return_inverse=True)
    if uniq.shape[0] == candidates.numel():  # hash collisions of distinct rows only
        return None
    key = torch.arange(n)
    key[candidates] = n + within
    return key


def _distances(targets: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[m] float64 distances between rows a[i] and b[i] of ``targets``, in row blocks."""
    out = torch.empty(a.shape[0], dtype=torch.float64)
    rows = _block_rows(targets.shape[1])
    for s in range(0, a.shape[0], rows):
        ya = targets[a[s : s + rows].to(targets.device)].to(device="cpu", dtype=torch.float64)
        yb = targets[b[s : s + rows].to(targets.device)].to(device="cpu", dtype=torch.float64)
        out[s : s + rows] = (ya - yb).norm(dim=1)
    return out


def _near_pairs(
    targets: torch.Tensor, rows: torch.Tensor, radius: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (i, k) into ``rows`` of every pair of those targets within ``radius`` (i < k).

    The rows are projected on ``GRID_DIMS`` random orthonormal directions (all d if fewer) and
    binned on a grid of cell side ``radius``: a pair within ``radius`` has no projection further
    apart than that, so it lies in the same or adjacent cells, and only those are compared in full
    (few at a radius far below the data's spacing). Each row is compared with at most
    ``MAX_CANDIDATES`` rows per adjacent cell (a bound on the work where a cell is crowded; the
    crowd is still linked through its members)."""
    d = targets.shape[1]
    k = min(d, GRID_DIMS)
    gen = torch.Generator().manual_seed(0x5DF)
    basis = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]
    proj = torch.empty(rows.shape[0], k, dtype=torch.float64)
    step = _block_rows(d)
    for start in range(0, rows.shape[0], step):
        block = targets[rows[start : start + step].to(targets.device)]
        proj[start : start + step] = block.to(device="cpu", dtype=torch.float64) @ basis
    cells = torch.floor((proj - proj.amin(0)) / radius).long()
    mult = torch.randint(1, 1 << 62, (k,), generator=gen, dtype=torch.int64) * 2 + 1

    def key(c: torch.Tensor) -> torch.Tensor:
        h = (c * mult).sum(1)  # wraps modulo 2^64; a collision only adds candidates
        return h ^ (h >> 29)

    keys = key(cells)
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    found_i, found_k = [], []
    for offset in itertools.product((-1, 0, 1), repeat=k):
        target = key(cells + torch.tensor(offset, dtype=torch.long))
        lo = torch.searchsorted(sorted_keys, target)
        count = (torch.searchsorted(sorted_keys, target, right=True) - lo).clamp_max(MAX_CANDIDATES)
        pos = torch.repeat_interleave(torch.arange(rows.shape[0]), count)
        if pos.numel() == 0:
            continue
        shift = torch.arange(pos.shape[0]) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        other = order[lo[pos] + shift]
        ahead = other > pos  # each pair once
        pos, other = pos[ahead], other[ahead]
        keep = _distances(targets, rows[pos], rows[other]) <= radius
        found_i.append(pos[keep])
        found_k.append(other[keep])
    if not found_i:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    pairs = torch.unique(torch.stack([torch.cat(found_i), torch.cat(found_k)]), dim=1)
    return pairs[0], pairs[1]


def _near_components(targets: torch.Tensor, rows: torch.Tensor, radius: float) -> torch.Tensor:
    """[m] component labels of ``rows`` linked by pairs within ``radius``; a component that spreads
    beyond 2 radius of its first row (a chain of close pairs) is split greedily: each row joins the
    first earlier leader within ``radius`` or leads a group of its own."""
    m = rows.shape[0]
    i, k = _near_pairs(targets, rows, radius)
    if i.numel() == 0:
        return torch.arange(m)
    graph = coo_matrix((np.ones(i.shape[0]), (i.numpy(), k.numpy())), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    labels = torch.from_numpy(labels).long()
    lead = torch.full((int(labels.max()) + 1,), m, dtype=torch.long)
    lead.scatter_reduce_(0, labels, torch.arange(m), reduce="amin")
    grouped = torch.nonzero(lead[labels] != torch.arange(m)).squeeze(1)
    spread = _distances(targets, rows[grouped], rows[lead[labels[grouped]]]) > 2 * radius
    for comp in torch.unique(labels[grouped[spread]]).tolist():
        members = torch.nonzero(labels == comp).squeeze(1)
        leaders: list[int] = []
        for j in members.tolist():
            near = [q for q in leaders if float(_distances(targets, rows[[j]], rows[[q]])[0]) <= radius]
            if near:
                labels[j] = labels[near[0]]
            else:
                leaders.append(j)
                labels[j] = m + j  # a fresh label
    return labels


def find_duplicates(
    targets: torch.Tensor, weights: torch.Tensor | None = None, *, radius: float = 0.0
) -> DuplicateGroups | None:
    """Finds repeated rows of ``targets`` [N, d]; None when all rows are distinct.

    With ``radius`` > 0, rows within that distance of each other are merged too (see the module
    docstring; groups stay within 2 ``radius`` of their first row). Bounded memory: rows are
    hashed and projected block by block (O(N) memory, the targets may be memory-mapped); only rows
    whose hash repeats, or whose projections lie within ``radius``, are gathered and compared."""
    n = targets.shape[0]
    key = _exact_keys(targets)
    if radius > 0:
        base = torch.arange(n) if key is None else key
        _, inverse = torch.unique(base, return_inverse=True)
        firsts = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long)
        firsts.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
        key = _near_components(targets, firsts, radius)[inverse]
    if key is None:
        return None
    uniq_keys, inverse = torch.unique(key, return_inverse=True)
    groups = uniq_keys.shape[0]
    if groups == n:
        return None
    # Representative = first occurrence of each group.
    first = torch.full((groups,), n, dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
    # Renumber groups by first occurrence so that group ids follow the data order.
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(groups)
    w = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else weights.double().cpu()
    return DuplicateGroups(inverse=rank[inverse], representative=first[order], weights=w / w.sum())
