"""Pairing noise with data through a dual potential: exact streamed argmax and Gumbel-max sampling.

Convention (arXiv 2509.25519): cost c(x, y) = 1/2 |x - y|^2 and potential g, so the Laguerre cell of
``x`` is ``argmax_j <x, y_j> + g_j - |y_j|^2 / 2`` (a maximum inner product search) and, for eps > 0,
``j ~ softmax_j(log b_j + (g_j - c(x, y_j)) / eps)``.

Scores are computed on targets centred at their mean, ``<x, y_j - mean> + g_j - |y_j|^2 / 2``: this
drops the per-row constant ``<x, mean>`` (the argmax and the softmax are unchanged) and keeps float32
exact enough for data far from the origin.

:class:`LaguerreCells` validates the targets and prepares the score bias once (one pass over the
targets), for repeated pairing; :func:`assign`, :func:`marginal` and :func:`c_transform` are its
one-shot forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from sdfm.transport import validate
from sdfm.transport._stream import (
    LowpKeys,
    chunk_size_for,
    full_precision,
    stream_argmax,
    target_chunks,
)
from sdfm.transport.certified import ScoreCertificate, exact_argmax
from sdfm.transport.collinear import line_direction
from sdfm.transport.pruned import PRUNE_MAX_BYTES, Pruning
from sdfm.transport.scoring import Scorer
from sdfm.transport.sharding import Collective

#: float32 queries are scored in float64 for FLOAT64_CALLS calls after a call that had to re-score
#: more than this fraction of its rows in float64 (:meth:`LaguerreCells._argmax`)
RESCORE_SWITCH = 0.05
FLOAT64_CALLS = 32


def compute_dtype(x: torch.Tensor, dim: int | None = None) -> torch.dtype:
    """float64 stays float64; every other floating dtype is scored in float32 (the hard argmax then
    certified row by row, the rest re-scored in float64: :mod:`sdfm.transport.certified`), except
    one-dimensional targets (``dim == 1``: 1-D, or on one line in d > 1, see
    :mod:`sdfm.transport.collinear`), which are always scored in float64: their cells form a
    chain whose widths shrink like 1 / N while the scores stay O(1), so float32 rounding moves the
    cell boundaries (measured: chi2 0.0013 at N = 1,000 and 0.21 at N = 10,000 from rounding alone,
    against 0.0000 in float64; 0.42 at N = 10,000 on a line in 2-D). At d = 1 the extra cost is
    negligible."""
    return torch.float64 if x.dtype == torch.float64 or dim == 1 else torch.float32


def center_and_sqnorms(
    targets: torch.Tensor, *, device: torch.device, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the targets [d] and squared norms |y_j|^2 [N], both float64 on ``device``, streamed."""
    n_targets, d = targets.shape
    total = torch.zeros(d, dtype=torch.float64, device=device)
    sq = torch.empty(n_targets, dtype=torch.float64, device=device)
    for start, stop, y in target_chunks(targets, chunk, device=device, dtype=torch.float64):
        total += y.sum(0)
        sq[start:stop] = y.square().sum(1)
    return total / n_targets, sq


@dataclass(frozen=True)
class _Keys:
    """Score bias for one (device, dtype): scores are alpha <x, y - center> + bias (+ shift)."""

    scorer: Scorer  # this process's targets, centred at ``center`` [d] (compute dtype)
    center64: torch.Tensor  # [d] float64
    bias: torch.Tensor  # [N] compute dtype, shifted so that its max is 0
    shift: float  # the constant removed from the bias
    lowp: LowpKeys | None = None  # low-precision scoring only
    # hard assignment: the bound that certifies an argmax in this dtype, and the float64 bias of
    # the rows it does not certify
    certificate: ScoreCertificate | None = None
    bias64: torch.Tensor | None = None

    @property
    def center(self) -> torch.Tensor:
        return self.scorer.center


class LaguerreCells:
    """The (soft) Laguerre cells of a potential over targets, prepared once for repeated pairing.

    Args:
        targets: data points [N, d] on any device (chunks are moved to the queries' device).
        potential: dual potential g [N] in the 1/2 |x - y|^2 convention (float64 recommended).
        eps: absolute entropic regularisation (>= 0), in cost units.
        weights: target weights b [N] (positive; normalised). Only used when eps > 0.
        chunk_size: targets per score block (default: blocks of about 2M scores on the CPU, 128M
            on CUDA).
        score_dtype: None (default: float32 scores for float32 queries, float64 for float64 ones; for
            eps = 0 each float32 winner is proven by a rounding bound and the rows it cannot prove,
            near ties and copies, are re-scored in float64, so the argmax is the float64 one, ties
            to the smallest index: :mod:`sdfm.transport.certified`), or ``torch.bfloat16`` /
            ``torch.float16`` for eps = 0: scores in low precision, then every target within the
            rounding bound of the best is re-scored in float64, so the argmax stays exact (equal to
            the float64 one). Faster where low-precision matmuls are (GPUs; CPUs with AVX512-BF16
            or AMX); keeps a low-precision copy of the centred targets (N d 2 bytes per device).
        classes: class labels of the targets [N] (integers) for class-conditional pairing: then
            :meth:`assign` takes the class of every noise sample and pairs it within that class
            only (the argmax, or the Gumbel-max sample, over the targets of its class: each class's
            samples scan only that class's targets, gathered chunk by chunk, so no per-class copy
            of the data is made and a sample costs O(N_c d), not O(N d)). The potential then holds
            one sub-problem per class (see the solver for fitting it).
        collective: targets sharded across processes (:class:`~sdfm.transport.sharding.Collective`):
            each process scores only its own range of targets and the results are combined into the
            global ones (argmax, histogram, log-sum-exp), equal to the single-process ones for
            eps = 0. Every method is then a collective call: every process passes the same queries
            (gather them first if they differ) and gets the same global answer.
        pruning: the exact argmax (eps = 0, without classes) through cluster bounds that skip most
            atoms (:mod:`sdfm.transport.pruned`): "auto" (default: tried from 20,000 atoms on, on
            CPU, when the cluster-sorted copy of the targets it makes is at most 1 GiB, and kept
            while its estimated cost is below 0.8 of the dense scan's: low-dimensional data at large
            N), "on" or "off". The same
            cells as the dense scan (scores to their rounding); :attr:`pruning_used` says how it went.

    The targets and potential are validated here, once; do not modify them afterwards.
    """

    def __init__(
        self,
        targets,
        potential,
        *,
        eps: float = 0.0,
        weights=None,
        chunk_size=None,
        score_dtype=None,
        classes=None,
        collective: Collective | None = None,
        pruning: str = "auto",
    ):
        self.targets = validate.as_targets(targets)
        n_targets, d = self.targets.shape
        self.potential = validate.as_potential(potential, n_targets)
        self.eps = validate.check_eps(eps)
        self.weights = validate.as_weights(weights, n_targets)
        self.chunk_size = validate.check_positive_int(chunk_size, "chunk_size")
        self.alpha = 1.0 if self.eps == 0 else 1.0 / self.eps
        if score_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(
                f"score_dtype: expected None, torch.bfloat16 or torch.float16, got {score_dtype!r}"
            )
        if score_dtype is not None and self.eps > 0:
            raise ValueError(
                "score_dtype: low-precision scoring is exact for eps = 0 only; use None for eps > 0"
            )
        self.score_dtype = score_dtype
        self.classes = None if classes is None else validate.as_labels(classes, n_targets, "classes")
        if self.classes is not None and score_dtype is not None:
            raise ValueError("score_dtype: low-precision scoring does not support class-conditional pairing")
        self._class_cache: dict = {}
        self._cache: dict[tuple, _Keys] = {}
        self.collective = collective
        if collective is not None:
            if self.classes is not None or score_dtype is not None:
                raise ValueError("collective: sharded targets support neither classes nor score_dtype (yet)")
            if collective.world_size > n_targets:
                raise ValueError(f"collective: {collective.world_size} processes for {n_targets} targets")
        self.lo, self.hi = (0, n_targets) if collective is None else collective.shard(n_targets)
        if pruning == "auto" and (self.hi - self.lo) * d * 4 > PRUNE_MAX_BYTES:
            pruning = "off"
        self.pruning = Pruning(pruning)  # validates the mode
        self._collinear: bool | None = None
        self._float64_calls = 0  # float32 queries scored in float64 for this many more calls
        #: (rows re-scored in float64, rows) of the last hard argmax over all targets
        self.rescored: tuple[int, int] = (0, 0)

    @property
    def collinear(self) -> bool:
        """Whether the targets lie on one line (1-D targets included): their chain of cells is then
        scored in float64 (see :func:`compute_dtype`). Tested once, on first use."""
        if self._collinear is None:
            n_targets, d = self.targets.shape
            chunk = chunk_size_for(1, n_targets, d, self.chunk_size)
            device = self.targets.device
            chunks = partial(target_chunks, self.targets, chunk, device=device, dtype=torch.float64)
            self._collinear = n_targets >= 2 and line_direction(chunks, self.targets.dtype) is not None
        return self._collinear

    @property
    def num_targets(self) -> int:
        return int(self.targets.shape[0])

    @property
    def pruning_used(self) -> dict:
        """The pruning mode, argmax calls answered with and without it (class-conditional calls count
        once per class present), the last fraction scored and estimated relative cost."""
        out = self.pruning.summary()
        for key, pruning in self._class_cache.items():
            if key[0] == "pruning":
                out["pruned_calls"] += pruning.pruned_calls
                out["dense_calls"] += pruning.dense_calls
                if pruning.last_fraction is not None:
                    out["last_fraction_scored"] = pruning.last_fraction
                    out["last_relative_cost"] = pruning.last_cost
        return out

    def _keys(self, device: torch.device, dtype: torch.dtype) -> _Keys:
        key = (str(device), dtype)
        if key not in self._cache:
            n_targets, d = self.targets.shape
            chunk = chunk_size_for(1, n_targets, d, self.chunk_size)
            center, sq = center_and_sqnorms(self.targets, device=device, chunk=chunk)
            scaled = self.potential.to(device=device, dtype=torch.float64) - 0.5 * sq
            if self.eps > 0:
                if self.weights is None:
                    log_b = -torch.log(torch.tensor(float(n_targets), dtype=torch.float64))
                else:
                    log_b = torch.log(self.weights)
                scaled = scaled / self.eps + log_b.to(device)
            # Shift by a constant (argmax and softmax unchanged) so the cast keeps its precision.
            shift = scaled.max()
            bias64 = scaled - shift
            local = partial(
                Scorer,
                self.targets[self.lo : self.hi],
                n_targets,
                self.lo,
                collective=self.collective,
                chunk_size=self.chunk_size,
            )
            hard = self.eps == 0 and self.score_dtype is None
            self._cache[key] = _Keys(
                scorer=local(center=center.to(dtype), pruning=self.pruning if hard else None),
                center64=center,
                bias=bias64.to(dtype),
                shift=float(shift),
                lowp=None if self.score_dtype is None else self._lowp_keys(center, bias64, chunk, device),
                certificate=ScoreCertificate.build(self.targets, center, dtype, chunk=chunk)
                if hard
                else None,
                bias64=bias64 if hard else None,
            )
        return self._cache[key]

    def _argmax(self, x: torch.Tensor, keys: _Keys) -> torch.Tensor:
        """The exact argmax over all targets of the queries x [n, d] (eps = 0): scores with their
        rows certified, the others scored again in float64 (:mod:`sdfm.transport.certified`).

        Float32 queries are scored in float64 instead for FLOAT64_CALLS calls after a call that
        re-scored more than RESCORE_SWITCH of its rows (near ties are common: large N in 2-D,
        points on a circle, copies): the same result, faster there. The decision depends on the
        scores only, so it is the same on every process of a collective."""
        if x.dtype == torch.float32 and self._float64_calls > 0:
            self._float64_calls -= 1
            x = x.to(torch.float64)
            keys = self._keys(x.device, torch.float64)
        index, best, second = keys.scorer.argmax(x, keys.bias, top2=True)
        rows = keys.certificate.uncertain(x, best, second).nonzero().squeeze(1)
        self.rescored = (int(rows.numel()), int(x.shape[0]))
        if x.dtype == torch.float32 and rows.numel() > RESCORE_SWITCH * x.shape[0]:
            self._float64_calls = FLOAT64_CALLS
        if rows.numel():  # the same rows on every process of a collective: their scores are global
            index[rows] = keys.scorer.exact_argmax(
                x[rows], keys.bias, keys.bias64, keys.center64, keys.certificate
            )
        return index

    def _lowp_keys(self, center, bias64, chunk, device) -> LowpKeys:
        chunks = target_chunks(self.targets, chunk, device=device, dtype=torch.float64, center=center)
        return LowpKeys.build(chunks, tuple(self.targets.shape), self.score_dtype, bias64, center)

    def _query(self, x):
        x = validate.as_queries(x, self.targets.shape[1])
        x = x.to(compute_dtype(x, 1 if self.collinear else self.targets.shape[1]))
        return x, self._keys(x.device, x.dtype)

    def _query_classes(self, classes, x: torch.Tensor) -> torch.Tensor | None:
        """The query classes [n] on x's device (shape checked); None without target classes."""
        if self.classes is None:
            if classes is not None:
                raise ValueError(
                    "classes: these cells have no target classes (pass classes= when building them)"
                )
            return None
        if classes is None:
            raise ValueError("classes: class-conditional cells need the class of every noise sample")
        return validate.as_labels(classes, x.shape[0], "classes").to(x.device)

    def assign(
        self, x: torch.Tensor, generator: torch.Generator | None = None, classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cell of each noise sample x [n, d]: int64 index [n] on ``x.device``.

        eps = 0: the exact argmax (the float64 one, ties to the smallest index, whatever the query
        dtype: see ``score_dtype``). eps > 0: an exact sample from the
        softmax by Gumbel-max, with randomness from ``generator`` (on ``x.device``). With target
        classes, ``classes`` [n] gives each sample's class and the pairing stays within it.
        """
        x, keys = self._query(x)
        query = self._query_classes(classes, x)
        if self.score_dtype is not None:
            return keys.scorer.argmax_lowp(x, keys.lowp)[0]
        gumbel = False if self.eps == 0 else generator
        with full_precision(x.device):
            if query is None:
                if gumbel is False:
                    return self._argmax(x, keys)
                return keys.scorer.argmax(x, keys.bias, alpha=self.alpha, gumbel=gumbel)[0]
            # class by class, each scanning only its own targets (gathered chunk by chunk: no
            # per-class copy of the data, and O(N_c d) per sample instead of O(N d) with a mask)
            members = self._members(x.device)
            present = torch.unique(query).tolist()  # the one host sync of a class-conditional call
            missing = [c for c in present if c not in members]
            if missing:
                raise ValueError(
                    f"classes: no target has class {missing[:5]} (noise samples of a class need targets)"
                )
            index = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
            kw = {
                "chunk": keys.scorer.chunk(x.shape[0], x.device),
                "center": keys.center,
                "alpha": self.alpha,
            }
            for c in present:
                rows = torch.nonzero(query == c).squeeze(1)
                on_targets, on_x = members[c]
                if gumbel is False:
                    index[rows] = self._argmax_in_class(c, x[rows], keys, on_targets, on_x)
                    continue
                index[rows] = stream_argmax(
                    x[rows], self.targets, keys.bias[on_x], **kw, gumbel=gumbel, subset=on_targets
                )[0]
        return index

    def _argmax_in_class(self, c: int, x, keys: _Keys, on_targets, on_x) -> torch.Tensor:
        """Target indices [n] of the exact argmax over class c's targets of its queries x [n, d]
        (pruned or dense, float32 rows certified as in :meth:`_argmax`)."""
        top2 = keys.certificate is not None

        def dense(rows: torch.Tensor):
            """(positions among the class's targets, best, second or None, None) by the dense scan."""
            kw = {
                "chunk": keys.scorer.chunk(rows.shape[0], rows.device),
                "center": keys.center,
                "subset": on_targets,
            }
            return (
                *stream_argmax(rows, self.targets, keys.bias[on_x], **kw, top2=top2, positions=True),
                None,
            )

        if self._class_pruning(c).wanted(int(on_x.shape[0]), x.device):
            pos, best, second = self._pruned_in_class(c, x, keys, on_targets, on_x, top2, dense)
        else:
            pos, best, second, _ = dense(x)
        index = on_x[pos]
        if not top2:
            return index
        rows = keys.certificate.uncertain(x, best, second).nonzero().squeeze(1)
        if rows.numel():
            pos, _ = exact_argmax(
                x[rows],
                self.targets,
                keys.bias[on_x],
                keys.bias64[on_x],
                keys.center,
                keys.center64,
                keys.certificate,
                chunk=keys.scorer.chunk(int(rows.shape[0]), rows.device),
                subset=on_targets,
            )
            index[rows] = on_x[pos]
        return index

    def _class_pruning(self, c: int) -> Pruning:
        """The pruning state of class c's targets (its own cluster bounds)."""
        key = ("pruning", c)
        if key not in self._class_cache:
            self._class_cache[key] = Pruning(self.pruning.mode, min_atoms=self.pruning.min_atoms)
        return self._class_cache[key]

    def _pruned_in_class(self, c: int, x, keys: _Keys, on_targets, on_x, top2: bool, dense):
        """(positions among class c's targets of the argmax for its queries x, best score, second-best
        score or None), by cluster bounds; ``dense(rows)`` answers the rows a probe leaves over."""
        pruning = self._class_pruning(c)
        bounds = pruning.bounds(lambda: self.targets[on_targets], keys.center, x.dtype, x.device)
        pos, best, second, _ = pruning.search(bounds, x, keys.bias[on_x], "score" if top2 else None, dense)
        return pos, best, second

    def _members(self, device: torch.device) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """class -> (its target indices on the targets' device, the same on ``device``), cached."""
        key = ("members", str(device))
        if key not in self._class_cache:
            order = torch.argsort(self.classes, stable=True)
            counts = torch.bincount(self.classes).tolist()
            groups, start = {}, 0
            for c, k in enumerate(counts):
                if k:
                    idx = order[start : start + k].to(self.targets.device)
                    groups[c] = (idx, idx.to(device))
                start += k
            self._class_cache[key] = groups
        return self._class_cache[key]

    def column_sums(self, x: torch.Tensor, squares: bool = False):
        """Column sums over noise samples x [n, d] of the coupling rows s_i: S [N] and, if asked,
        Q = sum_i s_ij^2 [N] (float64). Rows are one-hot for eps = 0 (S = Q = counts) and the
        softmax for eps > 0; (S, Q) is what the unbiased chi2 estimator needs."""
        x, keys = self._query(x)
        with full_precision(x.device):
            if self.eps == 0:
                index = self._argmax(x, keys)
                counts = torch.bincount(index, minlength=self.num_targets).to(torch.float64)
                return counts, (counts if squares else None)
            sums, sq, _ = keys.scorer.softmax_columns(x, keys.bias, alpha=self.alpha, squares=squares)
        return sums, sq

    def marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Target marginal estimated from noise samples x [n, d]: m_hat [N] (float64, sums to 1).

        eps = 0: the histogram of cells / n. eps > 0: the mean of the softmax rows (Rao-Blackwellised).
        ``b - marginal(x)`` is the stochastic gradient of the semi-dual (arXiv 2509.25519).
        """
        return self.column_sums(x)[0] / x.shape[0]

    def c_transform(self, x: torch.Tensor) -> torch.Tensor:
        """The (c, eps)-transform g^{c,eps}(x) [n] (float64).

        eps = 0: ``min_j 1/2 |x - y_j|^2 - g_j``; eps > 0:
        ``-eps log sum_j b_j exp((g_j - 1/2 |x - y_j|^2) / eps)``. The semi-dual objective is
        ``F(g) = mean(c_transform(x)) + <b, g>``.
        """
        x, keys = self._query(x)
        x64 = x.to(torch.float64)
        # c(x, y_j) - g_j = |x|^2/2 - <x, mean> - (<x, y_j - mean> + g_j - |y_j|^2/2)
        base = 0.5 * x64.square().sum(1) - x64 @ keys.center64
        with full_precision(x.device):
            if self.eps == 0:
                _, best, _ = keys.scorer.argmax(x, keys.bias)
                return base - (best.to(torch.float64) + keys.shift)
            lse = keys.scorer.logsumexp(x, keys.bias, alpha=self.alpha)
        return base - self.eps * (lse.to(torch.float64) + keys.shift)


def assign(
    x: torch.Tensor,
    targets: torch.Tensor,
    potential: torch.Tensor,
    *,
    eps: float = 0.0,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    score_dtype: torch.dtype | None = None,
    classes: torch.Tensor | None = None,
    target_classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairs each noise sample with a target through the dual potential.

    eps = 0: the exact Laguerre cell ``argmax_j <x, y_j> + g_j - |y_j|^2 / 2`` (the float64
    brute-force argmax, ties to the smallest index). eps > 0: an exact sample from
    ``softmax_j(log b_j + (g_j - 1/2 |x - y_j|^2) / eps)`` by Gumbel-max. Both are streamed over
    chunks of targets, so at most one [n, chunk] score block exists at a time (two for eps > 0: the
    scores and their Gumbel noise), whatever N. For repeated calls with the same targets and
    potential, build a :class:`LaguerreCells` once.

    Duplicate targets are ties (their cells coincide): use
    :meth:`sdfm.transport.DuplicateGroups.spread` on the result to split their mass by weight. Near
    duplicates that the solver merged (``result.duplicates``) have cells of their own; pass
    ``duplicates.representatives_only(potential)`` as the potential (eps = 0) so that each group's
    cell is the one the solver fitted, then spread (``SemidiscreteCoupling`` does both).

    Args:
        x: noise samples [n, d] (float32 or float64; lower precisions are scored in float32).
        targets: data points [N, d], on any device (chunks are moved to ``x.device``).
        potential: dual potential g [N] in the 1/2 |x - y|^2 convention (float64 recommended).
        eps: absolute entropic regularisation (>= 0), in cost units.
        weights: target weights b [N] (positive; normalised). Only used when eps > 0.
        generator: randomness for eps > 0 (on ``x.device``).
        chunk_size: targets per chunk (default: a [rows, chunk] block of about 2M scores on the
            CPU, 128M on CUDA).
        score_dtype: None (float32 scores certified, near ties re-scored in float64: the float64
            argmax; see :class:`LaguerreCells`) or torch.bfloat16 / torch.float16 (eps = 0:
            low-precision scores, then float64 re-scoring of every candidate within the rounding
            bound; the result stays exact, see :class:`LaguerreCells`).
        classes, target_classes: class-conditional pairing: the class of each noise sample [n] and
            of each target [N]; every sample is paired within its class (scanning only that class's
            targets, gathered chunk by chunk: no per-class copies).

    Returns:
        int64 index [n] of the paired targets, on ``x.device``.
    """
    cells = LaguerreCells(
        targets,
        potential,
        eps=eps,
        weights=weights,
        chunk_size=chunk_size,
        score_dtype=score_dtype,
        classes=target_classes,
    )
    return cells.assign(x, generator=generator, classes=classes)


def marginal(x, targets, potential, *, eps=0.0, weights=None, chunk_size=None) -> torch.Tensor:
    """One-shot :meth:`LaguerreCells.marginal`: m_hat [N] (float64) from noise samples x [n, d]."""
    cells = LaguerreCells(targets, potential, eps=eps, weights=weights, chunk_size=chunk_size)
    return cells.marginal(x)


def c_transform(x, targets, potential, *, eps=0.0, weights=None, chunk_size=None) -> torch.Tensor:
    """One-shot :meth:`LaguerreCells.c_transform`: g^{c,eps}(x) [n] (float64)."""
    cells = LaguerreCells(targets, potential, eps=eps, weights=weights, chunk_size=chunk_size)
    return cells.c_transform(x)
