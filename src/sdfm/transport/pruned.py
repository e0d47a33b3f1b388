"""Exact argmax that skips whole clusters of atoms: pruned search for low-dimensional or clustered data.

The atoms (keys ``z_j = y_j - center``) are grouped by k-means into K clusters, each with a centre
``c_k`` and a radius ``r_k = max_{j in k} |z_j - c_k|``. No atom of cluster k scores more than either
of two bounds, and the search takes the smaller:

    Cauchy-Schwarz:  <x, z_j> + bias_j <= <x, c_k> + |x| r_k + max_{j in k} bias_j
    distance:        <x, z_j> + bias_j  = |x|^2/2 - |x - z_j|^2/2 + a_j
                                       <= |x|^2/2 - max(0, |x - c_k| - r_k)^2/2 + max_{j in k} a_j

with ``a_j = bias_j + |z_j|^2/2`` (for the potential's bias this is g_j plus a linear function of
z_j; the distance form keeps the curvature of the score that the first bound loses). From 2 to
:data:`SHIFT_MAX_DIM` dimensions the search uses instead the distance bound with the potential's
linear trend within each cluster taken out: for any vector ``beta_k``,

    shifted:         <x, z_j> + bias_j <= |x + beta_k|^2/2 - <beta_k, c_k> + A_k
                                          - max(0, |x + beta_k - c_k| - r_k)^2/2,
                     A_k = max_{j in k} a_j - <beta_k, z_j - c_k>,

with ``beta_k`` the least-squares slope of a_j over z_j - c_k (refit when the potential changes: a
few passes over N d numbers). A solved potential tilts a_j across each cluster, by about the noise
that the cluster's cells receive, and the unshifted bounds pay that tilt in full: on the 2-D
checkerboard with a solved potential the search scores 1.3-2.3% of the atoms instead of 9-12%
(BENCHMARKS.md section 32). So a
query needs to score only the clusters whose bound reaches its best (or second-best) score found so
far. A batch of queries is searched in two passes: each query scores its highest-bound cluster,
then every other cluster whose bound is at least the score found (minus a rounding margin). Skipped
clusters cannot hold the argmax, nor a tie with it, so the result is the dense scan's: the same
index (ties to the smallest index where the tied scores round alike: a GEMM may round the scores
of two copies of one atom apart in different blocks, on some CPUs), best and second-best score, up
to the last bit of the score arithmetic. The bounds follow the potential cheaply (per-cluster maxima
and sums: passes over the N atoms).

Where it pays: the bound's slack is |x| r_k, so it prunes well when clusters are small against the
score gaps between them, i.e. for low intrinsic dimension (2-D and 3-D data, curves, well-separated
clusters). For data of intrinsic dimension above about 10 (a 16-dimensional Gaussian per cluster,
isotropic Gaussians in high d) the bounds hold almost everywhere and the search scores most atoms;
:class:`Pruning` then sees that and keeps the dense scan (BENCHMARKS.md, section 13).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from sdfm.transport._stream import _block_top_plain
from sdfm.transport.clustering import kmeans

#: with ``mode="auto"``, pruning is tried from this many atoms on (below, the dense scan is as fast)
PRUNE_MIN_ATOMS = 20_000
#: with ``mode="auto"``, the dense scan is kept when a pruned search's estimated cost is above this
#: fraction of the dense scan's (see :meth:`Pruning.record`)
PRUNE_MAX_COST = 0.8
#: the fixed cost of scoring a group of queries against one cluster, in units of one atom score
#: (CPU, measured on 2 cores: about 60 us against 0.6-1 ns per atom score; BENCHMARKS.md section 13)
VISIT_COST = 1e5
#: a pruned search scores the atoms it visits at about this cost per atom relative to the dense scan
GATHER_COST = 1.5
#: with ``mode="auto"``, calls between two trials of the pruned search while the dense one is used
PRUNE_RETRY = 32
#: with ``mode="auto"``, after this many trials in a row that do not pay, pruning stops for good and
#: the bounds (a cluster-sorted copy of the atoms) are freed
PRUNE_GIVE_UP = 3
MODES = ("auto", "on", "off")
#: with ``mode="auto"``, a trial of the pruned search (the first, and each retry) searches this many
#: of the call's queries first, and the rest only if those pay (else the dense scan answers them)
PROBE_ROWS = 512
#: from 2 up to this many dimensions the bound follows the potential's linear trend within each
#: cluster (the shifted distance bound of the module docstring; its fit keeps a [K, d, d] matrix).
#: In 1-D the unshifted distance bound is as tight (the clusters are intervals), in high dimension
#: neither prunes.
SHIFT_MAX_DIM = 16
#: atoms whose bias is below this take no part in that fit (copies masked out of a coupling at -1e30)
FIT_FLOOR = -1e20
#: with ``mode="auto"``, pairing (:class:`~sdfm.transport.LaguerreCells`) prunes only when the
#: cluster-sorted copy of the keys it makes (float32) is at most this large
PRUNE_MAX_BYTES = 1 << 30


def num_clusters(n: int) -> int:
    """K = about sqrt(N) clusters (between 1 and 4,096): bounds cost n K d, a cluster n N / K d."""
    return int(min(4096, max(1, round(math.sqrt(n)))))


@dataclass(frozen=True)
class ClusterBounds:
    """The atoms sorted by cluster, with what the bounds need.

    Attributes:
        keys: [M, d] the centred keys in cluster order (compute dtype, on the search device).
        atoms: [M] int64 the position of each sorted row among the scorer's atoms.
        label: [M] int64 the cluster of each sorted row.
        offsets: K + 1 row offsets of the clusters in ``keys`` (host ints).
        centres: [K, d] float64 means of the clusters' keys. radius: [K] float64.
        sqnorm: [M] float64 |z_j|^2 of the sorted keys.
        key_norm: max |z_j| (float; for the rounding margin).
        spread_pinv: [K, d, d] float64 pseudo-inverses of the clusters' scatter matrices
            sum_j (z_j - c_k)(z_j - c_k)^T, for the shifted bound (None above SHIFT_MAX_DIM).
    """

    keys: torch.Tensor
    atoms: torch.Tensor
    label: torch.Tensor
    offsets: tuple[int, ...]
    centres: torch.Tensor
    radius: torch.Tensor
    sqnorm: torch.Tensor
    key_norm: float
    spread_pinv: torch.Tensor | None = None
    _trend_cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_clusters(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def build(
        cls,
        keys: torch.Tensor,
        *,
        center: torch.Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
        k: int | None = None,
        seed: int = 0,
    ) -> ClusterBounds:
        """k-means (on a random subsample of at most 32 K points, then every atom to its nearest
        centre) of the keys ``keys - center`` [M, d], sorted by cluster (stable: ascending atom index
        within one)."""
        m, d = keys.shape
        k = num_clusters(m) if k is None else max(1, min(int(k), m))
        chunk = max(1, (1 << 22) // max(d, k))  # also bounds the [chunk, K] distances of k-means

        gen = torch.Generator().manual_seed(seed)
        picked = torch.randperm(m, generator=gen)[: min(m, 32 * k)].sort().values
        sub = keys[picked.to(keys.device)].to(device=device, dtype=torch.float64)
        if center is not None:
            sub = sub - center.to(sub)

        def chunks():
            yield 0, sub.shape[0], sub

        centres = kmeans(chunks, sub.shape[0], k, generator=gen, device=device, iterations=8).centres
        # every atom to its nearest centre (float32 is enough: any partition gives valid bounds)
        c32 = centres.to(torch.float32)
        c_sq = c32.square().sum(1)
        label = torch.empty(m, dtype=torch.long, device=device)
        for start in range(0, m, chunk):
            z = keys[start : start + chunk].to(device=device, dtype=torch.float32)
            if center is not None:
                z = z - center.to(z)
            label[start : start + z.shape[0]] = torch.addmm(c_sq, z, c32.T, alpha=-2.0).argmin(1)
        order = torch.argsort(label, stable=True)
        counts = torch.bincount(label, minlength=k)
        kept = counts > 0
        sorted_keys = torch.empty(m, d, dtype=dtype, device=device)
        sums = torch.zeros(k, d, dtype=torch.float64, device=device)
        for start in range(0, m, chunk):
            rows = order[start : start + chunk]
            # as the dense scan computes them: cast to the compute dtype, then the centre subtracted
            z = keys[rows.to(keys.device)].to(device=device, dtype=dtype)
            z = z if center is None else z - center.to(z)
            sorted_keys[start : start + rows.shape[0]] = z
            sums.index_add_(0, label[rows], z.to(torch.float64))
        # centres and radii of the keys as scored, in float64
        centres = sums / counts.clamp_min(1)[:, None].to(torch.float64)
        radius = torch.zeros(k, dtype=torch.float64, device=device)
        sqnorm = torch.empty(m, dtype=torch.float64, device=device)
        shifted = 2 <= d <= SHIFT_MAX_DIM
        spread = torch.zeros(k, d, d, dtype=torch.float64, device=device) if shifted else None
        for start in range(0, m, chunk):
            z = sorted_keys[start : start + chunk].to(torch.float64)
            lab = label[order[start : start + chunk]]
            u = z - centres[lab]
            radius.scatter_reduce_(0, lab, u.norm(dim=1), "amax")
            sqnorm[start : start + z.shape[0]] = z.square().sum(1)
            if spread is not None:
                spread.index_add_(0, lab, u[:, :, None] * u[:, None, :])
        # drop empty clusters (renumbered in order)
        new_id = torch.cumsum(kept.to(torch.long), 0) - 1
        offsets = [0] + torch.cumsum(counts[kept], 0).tolist()
        return cls(
            keys=sorted_keys,
            atoms=order,
            label=new_id[label[order]],
            offsets=tuple(int(o) for o in offsets),
            centres=centres[kept],
            radius=radius[kept] * (1 + 1e-12) + 1e-300,
            sqnorm=sqnorm,
            key_norm=float(sqnorm.max().sqrt()),
            spread_pinv=None
            if spread is None
            else torch.linalg.pinv(spread[kept], hermitian=True, rtol=1e-10),
        )

    def search(
        self, x: torch.Tensor, bias: torch.Tensor, *, second: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, int, int]:
        """(position [n], best [n], second score or None, second position or None, atoms scored,
        clusters visited) of each query x [n, d] (compute dtype), for scores ``<x, z_j> + bias_j``;
        positions are among the scorer's atoms, ties to the smallest; ``second`` as in the dense scan
        (None, "score" or "index"). Atoms scored counts every (query, atom) score computed; clusters
        visited, the groups of queries scored against one cluster."""
        n = x.shape[0]
        bias_sorted = bias[self.atoms]
        bias64 = bias_sorted.to(torch.float64)
        x64 = x.to(torch.float64)
        sq = x64.square().sum(1)
        norm = sq.sqrt()
        if self.spread_pinv is None:
            bound, dist_max = self._bounds(x64, sq, norm, bias64)
        else:
            bound, dist_max = (
                self._shifted_bound(x64, sq, self._cached_trend(bias, bias64)),
                torch.zeros_like(sq),
            )
        state = _Best.empty(n, x.dtype, x.device, second)
        first = bound.argmax(dim=1)
        rows = torch.arange(n, device=x.device)
        scored, visits = self._score_pairs(x, bias_sorted, rows, first, state)
        threshold = (state.runner if second else state.best).to(torch.float64)
        margin = self._margin(x, norm, threshold, float(bias64.abs().max()))
        margin = margin + 1e-9 * (norm * self.key_norm + threshold.abs() + sq + dist_max.square())
        candidates = bound >= (threshold - margin)[:, None]
        candidates[rows, first] = False
        q, k = torch.nonzero(candidates, as_tuple=True)
        more, more_visits = self._score_pairs(x, bias_sorted, q, k, state)
        second_index = state.runner_index if second == "index" else None
        return (
            state.index,
            state.best,
            state.runner if second else None,
            second_index,
            scored + more,
            visits + more_visits,
        )

    def _bounds(self, x64, sq, norm, bias64) -> tuple[torch.Tensor, torch.Tensor]:
        """(The smaller of the Cauchy-Schwarz and distance bounds [n, K] of the module docstring,
        each row's largest distance to a centre [n]: its rounding). In place on two [n, K] buffers:
        these passes cost as much as the scoring at N = 10^6 in 2-D."""
        top = self._cluster_max(bias64)
        top_a = self._cluster_max(bias64 + 0.5 * self.sqnorm)
        bound = torch.addmm(top, x64, self.centres.T).addcmul_(norm[:, None], self.radius[None, :])
        dist = torch.addmm(self.centres.square().sum(1), x64, self.centres.T, alpha=-2.0)
        dist = dist.add_(sq[:, None]).clamp_min_(0.0).sqrt_()
        dist_max = dist.max(1).values
        reach = dist.sub_(self.radius).clamp_min_(0.0)  # (dist is spent)
        second_bound = reach.square_().mul_(-0.5).add_(top_a).add_(0.5 * sq[:, None])
        return torch.minimum(bound, second_bound, out=bound), dist_max

    def _cached_trend(self, bias: torch.Tensor, bias64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_trend`, kept for the last ``bias`` (pairing searches with one bias call after call).
        The cache holds that tensor, so its memory is not reused while cached: the same address,
        shape, strides and version counter mean the same values."""
        held = self._trend_cache.get("bias")
        if (
            held is not None
            and held.data_ptr() == bias.data_ptr()
            and held.shape == bias.shape
            and held.stride() == bias.stride()
            and held.dtype == bias.dtype
            and self._trend_cache["version"] == bias._version
        ):
            return self._trend_cache["trend"]
        trend = self._trend(bias64)
        self._trend_cache.update(bias=bias, version=bias._version, trend=trend)
        return trend

    def _shifted_bound(self, x64, sq, trend: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The distance bound after the potential's linear trend in each cluster is taken out
        (module docstring), inflated by its own float64 rounding (a relative 1e-9 of its terms).

        With a_j = bias_j + |z_j|^2 / 2, any vector beta_k gives, for the atoms j of cluster k,
        score_j <= |x + beta_k|^2 / 2 - <beta_k, c_k> + A_k - max(0, |x + beta_k - c_k| - r_k)^2 / 2
        with A_k = max_j a_j - <beta_k, z_j - c_k>. beta_k is the least-squares slope of a_j over
        z_j - c_k (atoms below FIT_FLOOR left out): a solved potential tilts a_j across a cluster by
        about the noise that the cluster's cells receive, which the unshifted bound pays in full
        (2-D checkerboard, 10^5 points, a solved potential: 1.27% of the atoms scored against 9.4%,
        BENCHMARKS.md section 32)."""
        beta, top = trend
        shift = beta - self.centres
        lift = (beta * self.centres).sum(1)
        b_sq, s_sq = beta.square().sum(1), shift.square().sum(1)
        constant = top - lift + 1e-9 * (top.abs() + lift.abs() + b_sq + s_sq)
        bound = torch.addmm(b_sq, x64, beta.T, alpha=2.0).add_(sq[:, None])  # |x + beta|^2
        far = torch.addmm(s_sq, x64, shift.T, alpha=2.0).add_(sq[:, None])  # |x + beta - c|^2
        bound.mul_(0.5 + 1e-9).add_(far, alpha=1e-9).add_(constant).add_(1e-9 * sq[:, None])
        reach = far.clamp_min_(0.0).sqrt_().sub_(self.radius).clamp_min_(0.0)  # (far is spent)
        return bound.addcmul_(reach, reach, value=-0.5)

    def _trend(self, bias64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(beta [K, d], A [K]) of :meth:`_shifted_bound` for the sorted atoms' bias [M] (float64)."""
        a = bias64 + 0.5 * self.sqnorm
        z = self.keys.to(torch.float64)
        fit = (a > FIT_FLOOR).to(torch.float64)
        count = torch.zeros_like(self.radius).index_add_(0, self.label, fit)
        mean = torch.zeros_like(self.radius).index_add_(0, self.label, a * fit) / count.clamp_min(1.0)
        trend = torch.zeros_like(self.centres).index_add_(
            0, self.label, z * ((a - mean[self.label]) * fit)[:, None]
        )
        beta = (self.spread_pinv @ trend[:, :, None]).squeeze(2)
        residual = a - ((z - self.centres[self.label]) * beta[self.label]).sum(1)
        return beta, self._cluster_max(residual)

    def _margin(self, x, norm, threshold, bias_max: float) -> torch.Tensor:
        """Twice the rounding error of a computed score ``<x, z_j> + bias_j`` that could reach the
        row's ``threshold`` [n] (float64): a cluster is skipped only when its bound is below the
        threshold by this much, so no skipped atom can reach or tie it.

        The error of one score is at most about (d + 4) u (|x| |z_j| + |bias_j|). Only atoms whose
        exact score is within a few |x| max|z| of the threshold matter, and their |bias_j| is at
        most B = 2 |threshold| + 3 |x| max|z|; an atom with a lower bias scores below -|threshold|
        even with its rounding. So the bias term is min(max |bias|, B): masked atoms (bias -1e30,
        copies taken out of a coupling) no longer widen the margin of every row to 1e30 u, which
        made the search score every atom."""
        reach = norm * self.key_norm
        relevant = (2.0 * threshold.abs() + 3.0 * reach).nan_to_num(posinf=bias_max).clamp_max(bias_max)
        return 2.0 * (x.shape[1] + 4) * torch.finfo(x.dtype).eps * (reach + relevant)

    def _cluster_max(self, values: torch.Tensor) -> torch.Tensor:
        top = torch.full((self.num_clusters,), float("-inf"), dtype=values.dtype, device=values.device)
        return top.scatter_reduce_(0, self.label, values, "amax")

    def _score_pairs(self, x, bias_sorted, q, k, state: _Best) -> tuple[int, int]:
        """Scores queries q against clusters k (pairs) and merges into ``state``; (atom scores
        computed, clusters visited). Each visit keeps its rows' best (and second) atom; the visits
        are merged into the state in one reduction over all of them (:meth:`_Best.absorb`), not
        one visit at a time: a per-visit merge cost about 20 small tensor operations per cluster."""
        if q.numel() == 0:
            return 0, 0
        order = torch.argsort(k, stable=True)
        q, k = q[order], k[order]
        ids, counts = torch.unique_consecutive(k, return_counts=True)
        second = "index" if state.runner is not None else None
        scored, start, found = 0, 0, []
        for cid, c in zip(ids.tolist(), counts.tolist(), strict=True):
            rows = q[start : start + c]
            start += c
            lo, hi = self.offsets[cid], self.offsets[cid + 1]
            block = torch.addmm(bias_sorted[lo:hi], x[rows], self.keys[lo:hi].T)
            # the first maximum of a block is its smallest atom (atoms ascend within a cluster)
            v1, p1, v2, p2 = _block_top_plain(block, second)
            atoms = self.atoms[lo:hi]
            found.append((rows, v1, atoms[p1]))
            if second and p2 is not None:
                found.append((rows, v2, atoms[p2]))
            scored += c * (hi - lo)
        state.absorb(*(torch.cat(part) for part in zip(*found, strict=True)))
        return scored, len(counts)


@dataclass
class _Best:
    """Running best and second-best (score, atom) per query; ties go to the smaller atom."""

    best: torch.Tensor
    index: torch.Tensor
    runner: torch.Tensor | None
    runner_index: torch.Tensor | None

    @classmethod
    def empty(cls, n, dtype, device, second) -> _Best:
        best = torch.full((n,), float("-inf"), dtype=dtype, device=device)
        index = torch.full((n,), NO_ATOM, dtype=torch.long, device=device)
        runner = torch.full_like(best, float("-inf")) if second else None
        return cls(best, index, runner, torch.full_like(index, -1) if second else None)

    def absorb(self, rows: torch.Tensor, values: torch.Tensor, atoms: torch.Tensor) -> None:
        """Merges candidates (row, score, atom) [c] into the rows' best and second best. The atoms
        of one row's candidates are distinct from each other and from the atoms it holds (each
        cluster is scored once per row), so the new best is the top candidate (higher score, then
        smaller atom) of the union, and the runner-up the top of the rest."""
        n = self.best.shape[0]
        held = self.index != NO_ATOM
        rows = torch.cat([rows, held.nonzero().squeeze(1)])
        values = torch.cat([values, self.best[held]])
        atoms = torch.cat([atoms, self.index[held]])
        if self.runner is not None:
            has = self.runner_index >= 0
            rows = torch.cat([rows, has.nonzero().squeeze(1)])
            values = torch.cat([values, self.runner[has]])
            atoms = torch.cat([atoms, self.runner_index[has]])
        self.best, self.index, top = _top_by_row(n, rows, values, atoms, NO_ATOM)
        if self.runner is not None:
            rest = ~top
            self.runner, self.runner_index, _ = _top_by_row(n, rows[rest], values[rest], atoms[rest], -1)


#: the atom of a query with no atom yet (sorts after every atom)
NO_ATOM = torch.iinfo(torch.long).max


def _top_by_row(n: int, rows, values, atoms, empty: int):
    """(value [n], atom [n], mask [c] of the candidates chosen) of each row's top candidate (higher
    value, then smaller atom); rows without candidates get -inf and atom ``empty``."""
    top = torch.full((n,), float("-inf"), dtype=values.dtype, device=values.device)
    top.scatter_reduce_(0, rows, values, "amax")
    at_top = values == top[rows]
    first = torch.full((n,), NO_ATOM, dtype=torch.long, device=values.device)
    first.scatter_reduce_(0, rows[at_top], atoms[at_top], "amin")
    chosen = at_top & (atoms == first[rows])
    return top, torch.where(first == NO_ATOM, empty, first), chosen


@dataclass
class Pruning:
    """When to search with cluster bounds instead of the dense scan, for one scorer's atoms.

    ``mode``: "on" (always), "off" (never) or "auto": on CPU devices from :data:`PRUNE_MIN_ATOMS`
    atoms on, the first argmax builds the bounds and searches with them; the dense scan takes over
    while the last pruned search's estimated cost (:meth:`record`) is above :data:`PRUNE_MAX_COST` of
    the dense scan's, with one pruned trial every :data:`PRUNE_RETRY` calls, as the potential moves
    (a trial searches :data:`PROBE_ROWS` of a large call first: :meth:`search`).
    The decision depends only on the data, the potential and the queries (counts, not timings), so a
    seeded solve repeats bit for bit. On GPUs "auto" keeps the dense scan: there the per-cluster
    kernel launches cost more than the dense matmul saves (use "on" to measure). After
    :data:`PRUNE_GIVE_UP` trials in a row that do not pay, "auto" stops trying and frees the bounds
    (high-dimensional data pay one k-means and a few trials, then nothing). ``clusters``: K (None:
    about sqrt(N)). The bounds are built on first use for the queries' device and dtype and hold a
    cluster-sorted copy of the atoms (N d in the compute dtype) while in use.
    """

    mode: str = "auto"
    clusters: int | None = None
    min_atoms: int = PRUNE_MIN_ATOMS
    max_cost: float = PRUNE_MAX_COST
    #: the last pruned search: fraction of the (query, atom) scores computed, estimated relative cost
    last_fraction: float | None = None
    last_cost: float | None = None
    #: argmax calls answered by the pruned search and by the dense scan
    pruned_calls: int = 0
    dense_calls: int = 0
    _bounds: dict = field(default_factory=dict, repr=False)
    _since_trial: int = 0
    _failed_trials: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"pruning: expected one of {MODES}, got {self.mode!r}")

    def wanted(self, num_atoms: int, device: torch.device) -> bool:
        """Whether the next argmax over ``num_atoms`` atoms should be pruned (counts the call)."""
        auto = self.mode == "auto"
        given_up = auto and self._failed_trials >= PRUNE_GIVE_UP
        if self.mode == "off" or given_up or (auto and (num_atoms < self.min_atoms or device.type != "cpu")):
            self.dense_calls += 1
            return False
        if self.mode == "on" or self.last_cost is None or self.last_cost <= self.max_cost:
            return True
        self._since_trial += 1
        if self._since_trial >= PRUNE_RETRY:
            self._since_trial = 0
            return True
        self.dense_calls += 1
        return False

    def bounds(self, keys, center, dtype, device) -> ClusterBounds:
        """The bounds for ``device`` and ``dtype``, built on first use from ``keys`` [M, d] (a tensor,
        or a callable returning it: a class's targets are gathered only then)."""
        key = (str(device), dtype)
        if key not in self._bounds:
            keys = keys() if callable(keys) else keys
            self._bounds[key] = ClusterBounds.build(
                keys, center=center, dtype=dtype, device=device, k=self.clusters
            )
        return self._bounds[key]

    def search(self, bounds: ClusterBounds, x: torch.Tensor, bias: torch.Tensor, second, dense):
        """(position, best, second score or None, second position or None) of each query x [n, d]
        through ``bounds`` (:meth:`ClusterBounds.search`), recorded. A trial of ``"auto"`` (the
        first search, or a retry after the dense scan took over) on more than 2 :data:`PROBE_ROWS`
        queries searches the first :data:`PROBE_ROWS` of them, and the others too only if that
        probe pays; else ``dense(rest)`` answers them (the same 4-tuple). So a trial on data that
        the bounds do not prune costs a probe, not a whole call at up to 2.4x the dense scan's
        cost (a 64-d Gaussian at N = 100,000). The answer is the dense scan's either way."""
        n, num_atoms = x.shape[0], bounds.atoms.shape[0]
        trial = self.mode == "auto" and (self.last_cost is None or self.last_cost > self.max_cost)
        probe = PROBE_ROWS if trial and n > 2 * PROBE_ROWS else n
        head = bounds.search(x[:probe], bias, second=second)
        self.record(head[4], head[5], probe, num_atoms, bounds.num_clusters, call_queries=n)
        if probe == n:
            return head[:4]
        if self.last_cost <= self.max_cost:
            tail = bounds.search(x[probe:], bias, second=second)[:4]
        else:
            tail = dense(x[probe:])
        return tuple(None if a is None else torch.cat([a, b]) for a, b in zip(head[:4], tail, strict=True))

    def record(
        self,
        scored: int,
        visits: int,
        num_queries: int,
        num_atoms: int,
        num_clusters: int,
        *,
        call_queries: int | None = None,
    ) -> None:
        """Notes a pruned search: its cost relative to the dense scan (n N atom scores) is estimated as
        ``(GATHER_COST * scored + VISIT_COST * visits + n K) / (n N)`` (the bounds cost about one
        atom score per cluster and query). A probe of a call of ``call_queries`` queries is scaled
        to the call: atoms scored in proportion, cluster visits too but at most 2 K (each of the
        search's two passes visits a cluster at most once)."""
        if call_queries is not None and call_queries > num_queries:
            factor = call_queries / num_queries
            scored = scored * factor
            visits = min(visits * factor, 2 * num_clusters)
            num_queries = call_queries
        dense = float(num_queries) * num_atoms
        self.last_fraction = scored / dense
        self.last_cost = (GATHER_COST * scored + VISIT_COST * visits + num_queries * num_clusters) / dense
        self.pruned_calls += 1
        self._failed_trials = self._failed_trials + 1 if self.last_cost > self.max_cost else 0
        if self.mode == "auto" and self._failed_trials >= PRUNE_GIVE_UP:
            self._bounds.clear()  # pruning is over for these atoms: free the sorted copy

    @contextlib.contextmanager
    def unscheduled(self):
        """Searches inside the block leave the schedule and the counts as they were (a probe that the
        caller does not count: the calls after it are pruned or dense as without it). The bounds
        built meanwhile are kept."""
        saved = {k: v for k, v in vars(self).items() if k != "_bounds"}
        try:
            yield
        finally:
            vars(self).update(saved)

    def summary(self) -> dict:
        """mode, calls of each kind, and the last pruned search's fraction scored and relative cost."""
        return {
            "mode": self.mode,
            "pruned_calls": self.pruned_calls,
            "dense_calls": self.dense_calls,
            "last_fraction_scored": self.last_fraction,
            "last_relative_cost": self.last_cost,
        }
