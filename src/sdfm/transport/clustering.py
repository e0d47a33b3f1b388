"""k-means of the targets, streamed: the coarse structure the solver's coarse-space correction, the
smooth-error diagnostics and the pruned exact search are built on.

Lloyd's algorithm runs on a subsample (at most ``sample`` points, k-means++ seeding); the nearest
centres of every point are then found in one streamed pass, so the cost is O(N k d). Distances are
computed ``BLOCK_ELEMENTS`` at a time (32 MiB), so the memory does not grow with N or k (blocks of
the whole subsample took 0.8 GiB at N = 10^6 with k = 1,000: BENCHMARKS.md section 33).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

#: distances per block of Lloyd's assignment step (32 MiB in float64)
BLOCK_ELEMENTS = 1 << 22

#: (start, stop, points[start:stop] float64) chunks covering the N points
Chunks = Callable[[], Iterator[tuple[int, int, torch.Tensor]]]


@dataclass(frozen=True)
class Clustering:
    """k centres and the nearest of them for every point.

    Attributes:
        centres: [k, d] float64.
        nearest: [N, m] int64, the m nearest centres of each point (nearest first).
        sq_dist: [N, m] float64, the squared distances to them.
    """

    centres: torch.Tensor
    nearest: torch.Tensor
    sq_dist: torch.Tensor

    @property
    def labels(self) -> torch.Tensor:
        """The nearest centre of each point [N]."""
        return self.nearest[:, 0]

    @property
    def num_clusters(self) -> int:
        return int(self.centres.shape[0])


def _sq_dist(points: torch.Tensor, centres: torch.Tensor, centre_sq: torch.Tensor, buffer: torch.Tensor):
    """Squared distances [m, k] of m points to the centres, in the first m rows of ``buffer``: the same
    arithmetic as (|x|^2 - 2 <x, c>) + |c|^2 (clamped at 0), in place. A fresh [m, k] block per call
    made the allocator keep every block of a pass (glibc serves blocks just under its 32 MiB mmap
    threshold from its heap): k-means of 100,000 x 64 points with k = 1,000 peaked at 890 MiB, and
    now at 307 MiB."""
    out = buffer[: points.shape[0]]
    torch.matmul(points, centres.T, out=out)
    return out.mul_(-2.0).add_(points.square().sum(1, keepdim=True)).add_(centre_sq).clamp_min_(0.0)


def kmeans(
    chunks: Chunks,
    num_points: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    device=None,
    neighbours: int = 1,
    iterations: int = 10,
    sample: int = 65536,
) -> Clustering:
    """k-means of N points given as streamed chunks (float64), with the ``neighbours`` nearest centres of
    every point.

    Args:
        chunks: a callable returning an iterator of (start, stop, points[start:stop]) over all points.
        num_points: N. k: number of centres (at most N). generator: randomness of the subsample and
        of the seeding (CPU). iterations: Lloyd iterations on the subsample. sample: subsample size.
    """
    k = max(1, min(int(k), num_points))
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if num_points <= sample:
        picked = torch.arange(num_points)
    else:
        picked = torch.sort(torch.randperm(num_points, generator=gen)[:sample]).values
    sub = _gather(chunks, picked, device)
    centres = _seed(sub, k, gen)
    rows = max(1, BLOCK_ELEMENTS // k)  # [rows, k] distances at a time: memory bounded whatever k
    buffer = torch.empty(min(rows, num_points), k, dtype=torch.float64, device=centres.device)
    for _ in range(iterations):
        centre_sq = centres.square().sum(1)
        label = torch.cat([_sq_dist(part, centres, centre_sq, buffer).argmin(1) for part in sub.split(rows)])
        sums = torch.zeros_like(centres).index_add_(0, label, sub)
        count = torch.bincount(label, minlength=k).to(sub.dtype)
        alive = count > 0
        centres[alive] = sums[alive] / count[alive, None]
    m = max(1, min(int(neighbours), k))
    nearest = torch.empty(num_points, m, dtype=torch.long, device=centres.device)
    sq = torch.empty(num_points, m, dtype=torch.float64, device=centres.device)
    centre_sq = centres.square().sum(1)
    for start, _, y in chunks():
        for lo in range(0, y.shape[0], rows):
            part = y[lo : lo + rows].to(centres.device, torch.float64)
            val, idx = _sq_dist(part, centres, centre_sq, buffer).topk(m, dim=1, largest=False)
            sq[start + lo : start + lo + val.shape[0]] = val
            nearest[start + lo : start + lo + val.shape[0]] = idx
    return Clustering(centres, nearest, sq)


def _gather(chunks: Chunks, picked: torch.Tensor, device) -> torch.Tensor:
    """The points at the sorted indices ``picked`` [s] (float64)."""
    parts = []
    pos = 0
    for start, stop, y in chunks():
        hi = pos
        while hi < picked.shape[0] and int(picked[hi]) < stop:
            hi += 1
        if hi > pos:
            rows = (picked[pos:hi] - start).to(y.device)
            parts.append(y[rows])
            pos = hi
    out = torch.cat(parts).to(torch.float64)
    return out if device is None else out.to(device)


def _seed(points: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (greedy-free: one candidate per centre). The distances to each new centre
    are computed in two reused buffers: a fresh [n, d] temporary per centre made this 8x slower (at
    65,536 x 64 points, K = 1,000: 20 s against 2.3 s), with the same arithmetic and result."""
    n = points.shape[0]
    first = int(torch.randint(0, n, (1,), generator=gen))
    centres = [points[first]]
    dist = (points - points[first]).square().sum(1)
    buffer, new = torch.empty_like(points), torch.empty_like(dist)
    for _ in range(1, k):
        total = float(dist.sum())
        if total <= 0:  # fewer distinct points than k: repeat one (its cluster stays empty)
            centres.append(points[int(torch.randint(0, n, (1,), generator=gen))])
            continue
        probs = (dist / total).cpu()
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        centres.append(points[nxt])
        torch.sub(points, points[nxt], out=buffer).square_()
        torch.minimum(dist, torch.sum(buffer, 1, out=new), out=dist)
    return torch.stack(centres).clone()
