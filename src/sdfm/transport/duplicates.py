"""Duplicate targets: atoms at the same position share one Laguerre cell.

With eps = 0 the semidiscrete problem is ill-posed for duplicates (their cells coincide, so no
potential can split the cell's mass between them). sdfm merges them: the solver fits one atom per
distinct position carrying the summed weight, gives every copy the same potential, and the pairing
splits each merged cell's mass among the copies in proportion to their weights
(:meth:`DuplicateGroups.spread`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
    rows = max(1, block_elements // max(d, 1))
    for start in range(0, n, rows):
        block = targets[start : start + rows].to(device="cpu", dtype=torch.float64) + 0.0  # -0.0 -> 0.0
        h = (block.view(torch.int64) * mult).sum(1)  # wraps modulo 2^64
        h ^= h >> 31
        out[start : start + block.shape[0]] = h * 0x2545F4914F6CDD1D
    return out


def find_duplicates(targets: torch.Tensor, weights: torch.Tensor | None = None) -> DuplicateGroups | None:
    """Finds exactly repeated rows of ``targets`` [N, d]; None when all rows are distinct.

    Bounded memory: rows are hashed block by block (O(N) memory, the targets may be memory-mapped);
    only rows whose hash repeats are gathered and compared exactly."""
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
    uniq_keys, inverse = torch.unique(key, return_inverse=True)
    groups = uniq_keys.shape[0]
    # Representative = first occurrence of each group.
    first = torch.full((groups,), n, dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
    # Renumber groups by first occurrence so that group ids follow the data order.
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(groups)
    w = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else weights.double().cpu()
    return DuplicateGroups(inverse=rank[inverse], representative=first[order], weights=w / w.sum())
