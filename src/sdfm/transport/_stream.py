"""Streamed scoring kernels: every reduction over the targets runs chunk by chunk.

A score block is ``alpha * <x, y_j - center> + bias_j`` for one chunk of targets; no more than one
[n, chunk] block (plus, for Gumbel sampling, one noise block of the same shape) exists at a time.
Targets may live on another device or in another dtype (e.g. a CPU or memory-mapped array feeding a
GPU): each chunk is moved and cast on the fly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

#: Default number of elements of one [n, chunk] score block (8 MiB in float32): blocks that fit
#: in cache beat larger ones (measured: chunk 1024-2048 for n = 1024).
BLOCK_ELEMENTS = 1 << 21

#: The same on CUDA devices (512 MiB in float32): there a block of 2,048 x 1,024 scores is all
#: kernel launches and Python; at N = 10^6 x 64 on an H200, exact pairing ran 17x faster with this
#: default's 2,048 x 65,536 blocks than with the CPU's, and 5% slower than with 2,048 x 131,072
#: (BENCHMARKS.md section 37). Lower it with ``chunk_size`` on a GPU short of memory.
BLOCK_ELEMENTS_CUDA = 1 << 27

#: exp() arguments are clamped from below at this value: exp(-40) = 4e-18 and its square stay
#: normal floats. Denormals (exp(x) for x < -87 in float32) make CPU arithmetic ~100x slower; the
#: clamp adds at most 4e-18 per entry to probabilities, far below float32 resolution of a sum.
EXP_FLOOR = -40.0


def _exp_shifted_(block: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """In place: exp(block - shift[:, None]) with the argument clamped at EXP_FLOOR."""
    return block.sub_(shift[:, None]).clamp_(min=EXP_FLOOR).exp_()


#: Queries are processed ROW_BLOCK rows at a time (each row block streams over all targets).
ROW_BLOCK = 2048


def chunk_size_for(
    n: int, num_targets: int, d: int, chunk_size: int | None = None, device: torch.device | None = None
) -> int:
    """Number of targets per chunk: the given one, or one that keeps [rows, chunk] and [chunk, d]
    within BLOCK_ELEMENTS (rows = min(n, ROW_BLOCK); BLOCK_ELEMENTS_CUDA on a CUDA ``device``)."""
    if chunk_size is not None:
        return max(1, min(int(chunk_size), num_targets))
    rows = min(n, ROW_BLOCK)
    block = (
        BLOCK_ELEMENTS_CUDA if device is not None and torch.device(device).type == "cuda" else BLOCK_ELEMENTS
    )
    return max(1, min(num_targets, max(64, block // max(rows, d, 1))))


def _row_blocks(x: torch.Tensor):
    for start in range(0, x.shape[0], ROW_BLOCK):
        yield x[start : start + ROW_BLOCK]


@contextlib.contextmanager
def full_precision(device: torch.device):
    """Disables TF32 matmuls on CUDA while scoring: argmax results must be exact."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = old
    else:  # pragma: no cover - older torch
        old = matmul.allow_tf32
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32 = old


@contextlib.contextmanager
def full_accumulation(device: torch.device):
    """Forbids reduced-precision (bf16/fp16) reductions in CUDA half-precision GEMMs while scoring:
    the error bound of the low-precision path assumes float32 accumulation."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    old = (matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction)
    matmul.allow_bf16_reduced_precision_reduction = False
    matmul.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction, matmul.allow_fp16_reduced_precision_reduction = old


def target_chunks(
    targets: torch.Tensor,
    chunk: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    center: torch.Tensor | None = None,
    subset: torch.Tensor | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yields ``(start, stop, y[start:stop] - center)`` moved to ``device`` and cast to ``dtype``;
    with ``subset`` (target indices on the targets' device) the rows ``y[subset[start:stop]]``,
    gathered one chunk at a time."""
    n_targets = targets.shape[0] if subset is None else subset.shape[0]
    for start in range(0, n_targets, chunk):
        stop = min(start + chunk, n_targets)
        rows = targets[start:stop] if subset is None else targets[subset[start:stop]]
        z = rows.to(device=device, dtype=dtype, non_blocking=True)
        if center is not None:
            z = z - center
        yield start, stop, z


def score_blocks(
    x: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor,
    *,
    chunk: int,
    center: torch.Tensor | None = None,
    alpha: float = 1.0,
    subset: torch.Tensor | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yields ``(start, stop, block)`` with block [n, stop - start] = alpha x (y - center)^T + bias
    (over ``targets[subset]`` when given; ``bias`` is then the subset's).

    The block is written into one reused buffer: a consumer must be done with it before asking for
    the next one.
    """
    n = x.shape[0]
    n_targets = targets.shape[0] if subset is None else subset.shape[0]
    buf = torch.empty(n * min(chunk, n_targets), dtype=x.dtype, device=x.device)
    for start, stop, z in target_chunks(
        targets, chunk, device=x.device, dtype=x.dtype, center=center, subset=subset
    ):
        out = buf[: n * (stop - start)].view(n, stop - start)
        torch.addmm(bias[start:stop], x, z.T, alpha=alpha, out=out)
        yield start, stop, out


@dataclass(frozen=True)
class Top2:
    """The best and second-best score of each query row, with their target indices.

    index / best: the argmax [n] (ties to the smallest index) and its score; second_index / second:
    the runner-up [n] (its score equals ``best`` on a tie; -inf and index -1 when only one target).
    """

    index: torch.Tensor
    best: torch.Tensor
    second_index: torch.Tensor
    second: torch.Tensor


def stream_argmax(
    x: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor,
    *,
    chunk: int,
    center: torch.Tensor | None = None,
    alpha: float = 1.0,
    top2: bool = False,
    gumbel: torch.Generator | None | bool = False,
    subset: torch.Tensor | None = None,
    positions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row-wise argmax of the scores over all targets (or over ``targets[subset]``), streamed.

    Args:
        gumbel: False for a plain argmax; otherwise a generator (or None for the global one) that
            draws i.i.d. standard Gumbel noise added to every score (Gumbel-max sampling).
        top2: also return the second-best score (for the gap statistics of the solver).
        subset: target indices [M] on the targets' device: score only those rows (gathered chunk by
            chunk; ``bias`` [M] is theirs); the returned index is into all targets.

    Returns:
        index [n] (int64), best score [n], second-best score [n] or None.
    """
    kw = dict(chunk=chunk, center=center, alpha=alpha, gumbel=gumbel, subset=subset, positions=positions)
    index, best, second, _ = _scan(x, targets, bias, **kw, second="score" if top2 else None)
    return index, best, second


def stream_top2(
    x: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor,
    *,
    chunk: int,
    center: torch.Tensor | None = None,
    alpha: float = 1.0,
    subset: torch.Tensor | None = None,
    positions: bool = False,
) -> Top2:
    """The best and second-best targets of each row (indices and scores), streamed like
    :func:`stream_argmax` (the pair of cells whose shared face a noise sample is nearest)."""
    kw = dict(chunk=chunk, center=center, alpha=alpha, subset=subset, positions=positions)
    index, best, second, second_index = _scan(x, targets, bias, **kw, second="index")
    return Top2(index, best, second_index, second)


#: :func:`block_top` reduces blocks of at least this many columns in two levels
TWO_LEVEL_MIN_COLUMNS = 512


def block_top(block: torch.Tensor, second: str | None = None):
    """(v1, i1, v2, i2) of each row of a score block [n, m]: the largest value and the first column
    holding it; with ``second``, the second-largest value (equal to v1 when the largest appears
    twice) and, for "index", the first other column holding it (None otherwise, and for m = 1).

    On CPU a reduction with indices (``max(dim)``, ``topk``) costs 15-30x an ``amax`` and, at d <= 64,
    as much as the GEMM that made the block. From TWO_LEVEL_MIN_COLUMNS columns on, the block is
    reduced in two levels: the maxima of strided column groups by ``amax`` (a multiple of 32 groups:
    other counts make the strided ``amax`` 5-25x slower on our CPU), then the indices within the
    winning group (and the runner-up's) on [n, width] gathers. The same values and, but for ties
    across groups (those rows take the one-level path), the same indices as :func:`_block_top_plain`.
    """
    n, m = block.shape
    if m < TWO_LEVEL_MIN_COLUMNS or block.device.type != "cpu":
        return _block_top_plain(block, second)
    groups = 32 * max(1, m // 1024)
    width = m // groups
    head = block[:, : groups * width]
    step = torch.arange(width, device=block.device) * groups  # group s holds columns s + groups k
    group_max = head.view(n, width, groups).amax(1)  # [n, groups]
    v1, s1 = group_max.max(dim=1)
    inside = head.gather(1, s1[:, None] + step)  # [n, width], ascending columns
    j1 = inside.argmax(dim=1)
    i1 = s1 + groups * j1
    tied = (group_max == v1[:, None]).sum(1) > 1
    v2 = i2 = None
    if second:  # the winner out of its group and of the group maxima (index_fill_: scatter_ is slow)
        rows = torch.arange(n, device=block.device)
        inside.view(-1).index_fill_(0, rows * width + j1, float("-inf"))
        group_max.view(-1).index_fill_(0, rows * groups + s1, float("-inf"))
    if second == "score":  # values only: amax
        v2 = torch.maximum(inside.amax(dim=1), group_max.amax(dim=1))
    elif second:
        w2, j2 = inside.max(dim=1)
        o2, s2 = group_max.max(dim=1)
        v2 = torch.maximum(w2, o2)
        if second == "index":
            other = head.gather(1, s2[:, None] + step).argmax(dim=1)
            a, b = s1 + groups * j2, s2 + groups * other
            i2 = torch.where(w2 > o2, a, torch.where(o2 > w2, b, torch.minimum(a, b)))
            tied |= (o2 >= w2) & ((group_max == o2[:, None]).sum(1) > 1)
    if m > groups * width:  # the last m mod groups columns, merged as a block of their own
        tail = _block_top_plain(block[:, groups * width :], second)
        v1, i1, v2, i2 = _merge_tops((v1, i1, v2, i2), tail, groups * width)
    rows = tied.nonzero().squeeze(1)
    if rows.numel():  # ties across groups: the one-level path for those rows
        exact = _block_top_plain(block[rows], second)
        v1, i1 = v1.index_put((rows,), exact[0]), i1.index_put((rows,), exact[1])
        if v2 is not None:
            v2 = v2.index_put((rows,), exact[2])
        if i2 is not None:
            i2 = i2.index_put((rows,), exact[3])
    return v1, i1, v2, i2


def _block_top_plain(block: torch.Tensor, second: str | None = None):
    """:func:`block_top` with one-level reductions (``max`` finds the first column of the largest)."""
    v1, i1 = block.max(dim=1)
    if not second or block.shape[1] < 2:
        return v1, i1, None, None
    kept = block.gather(1, i1[:, None])
    block.scatter_(1, i1[:, None], float("-inf"))
    if second == "index":
        v2, i2 = block.max(dim=1)
    else:
        v2, i2 = block.amax(dim=1), None
    block.scatter_(1, i1[:, None], kept)  # the block is left as it was
    return v1, i1, v2, i2


def _merge_tops(left, right, offset: int):
    """The :func:`block_top` of columns [left | right] from each part's (right's columns + offset)."""
    v1, i1, v2, i2 = left
    r1, j1, r2, j2 = right
    j1 = j1 + offset
    better = r1 > v1  # a tie keeps the left (smaller) column
    top, index = torch.where(better, r1, v1), torch.where(better, j1, i1)
    if v2 is None:
        return top, index, None, None
    loser, loser_index = torch.where(better, v1, r1), torch.where(better, i1, j1)
    # the runner-up: the best of the loser of the two maxima and the winner's own second
    own2 = (
        torch.where(better, r2, v2)
        if r2 is not None
        else torch.where(better, loser.new_full((), float("-inf")), v2)
    )
    second = torch.maximum(loser, own2)
    if i2 is None:
        return top, index, second, None
    own2_index = torch.where(better, j2 + offset, i2) if j2 is not None else i2
    pick_loser = (loser > own2) | ((loser == own2) & (loser_index < own2_index))
    return top, index, second, torch.where(pick_loser, loser_index, own2_index)


def _scan(x, targets, bias, *, chunk, center, alpha, gumbel=False, subset=None, positions=False, second=None):
    """(index, best, second score or None, second index or None) of each row; ``second`` is None,
    "score" or "index" (score and index)."""
    if x.shape[0] > ROW_BLOCK:
        kw = dict(chunk=chunk, center=center, alpha=alpha, gumbel=gumbel, subset=subset, positions=positions)
        parts = [
            _scan(x[r : r + ROW_BLOCK], targets, bias, **kw, second=second)
            for r in range(0, x.shape[0], ROW_BLOCK)
        ]
        return tuple(None if parts[0][i] is None else torch.cat([p[i] for p in parts]) for i in range(4))
    n = x.shape[0]
    best = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    index = torch.zeros(n, dtype=torch.long, device=x.device)
    runner = torch.full_like(best, float("-inf")) if second else None
    runner_index = torch.full_like(index, -1) if second == "index" else None
    noise_buf = None
    for start, _, block in score_blocks(
        x, targets, bias, chunk=chunk, center=center, alpha=alpha, subset=subset
    ):
        if gumbel is not False:
            if noise_buf is None:
                noise_buf = torch.empty(block.numel(), dtype=x.dtype, device=x.device)
            g = noise_buf[: block.numel()].view_as(block)
            # Gumbel = -log(-log(U)), U ~ U[0, 1); U = 0 gives -inf (that atom cannot win).
            torch.rand(g.shape, generator=gumbel, dtype=x.dtype, device=x.device, out=g)
            g.log_().neg_().log_().neg_()
            block.add_(g)
        v1, i1, v2, i2 = block_top(block, second)
        better = v1 > best
        if runner_index is not None:
            runner_index = _second_index_after_merge(
                best, index, runner, runner_index, v1, i1 + start, v2, i2, start, better
            )
        if second:
            runner = _second_after_merge(best, runner, v1, v2, better)
        best = torch.where(better, v1, best)
        index = torch.where(better, i1 + start, index)
    if subset is not None and not positions:
        lookup = subset.to(x.device)
        index = lookup[index]
        if runner_index is not None:
            runner_index = torch.where(runner_index >= 0, lookup[runner_index.clamp_min(0)], runner_index)
    return index, best, runner, runner_index


def _second_index_after_merge(best, index, second, second_index, v1, i1, v2, i2, start, better):
    """The index of the running second-best after a block (see :func:`_second_after_merge`)."""
    # a new best: the runner-up is the better of the old best (none before the first block) and the
    # block's second
    old_best = torch.where(torch.isneginf(best), torch.full_like(index, -1), index)
    up_idx = old_best if v2 is None else torch.where(v2 > best, i2 + start, old_best)
    # no improvement of the best: the block's top value may still beat the runner-up
    keep_old = second >= v1
    return torch.where(better, up_idx, torch.where(keep_old, second_index, i1))


def stream_logsumexp(
    x: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor,
    *,
    chunk: int,
    center: torch.Tensor | None = None,
    alpha: float = 1.0,
    subset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row-wise logsumexp of the scores over all targets (or ``targets[subset]``), streamed (online max
    rescaling)."""
    if x.shape[0] > ROW_BLOCK:
        return torch.cat(
            [
                stream_logsumexp(xb, targets, bias, chunk=chunk, center=center, alpha=alpha, subset=subset)
                for xb in _row_blocks(x)
            ]
        )
    n = x.shape[0]
    run_max = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
    run_sum = torch.zeros(n, dtype=x.dtype, device=x.device)
    for _, _, block in score_blocks(x, targets, bias, chunk=chunk, center=center, alpha=alpha, subset=subset):
        new_max = torch.maximum(run_max, block.max(dim=1).values)
        run_sum = run_sum * torch.exp(run_max - new_max) + _exp_shifted_(block, new_max).sum(1)
        run_max = new_max
    return run_max + torch.log(run_sum)


def stream_softmax_columns(
    x: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor,
    *,
    chunk: int,
    center: torch.Tensor | None = None,
    alpha: float = 1.0,
    squares: bool = False,
    subset: torch.Tensor | None = None,
    combine_lse=None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Column sums of the row-softmax of the scores, streamed (two passes unless one chunk holds all).

    Args:
        subset: score only ``targets[subset]`` (``bias`` is theirs; sums are per subset position).
        combine_lse: for targets sharded across processes, ``combine_lse(local lse [n]) -> global
            lse [n]``: the rows are normalised over every shard.

    Returns:
        sums [M] (float64), sums of squares [M] (float64) or None, row logsumexp [n].
    """
    if x.shape[0] > ROW_BLOCK:
        parts = [
            stream_softmax_columns(
                xb,
                targets,
                bias,
                chunk=chunk,
                center=center,
                alpha=alpha,
                squares=squares,
                subset=subset,
                combine_lse=combine_lse,
            )
            for xb in _row_blocks(x)
        ]
        sq = torch.stack([p[1] for p in parts]).sum(0) if squares else None
        return (torch.stack([p[0] for p in parts]).sum(0), sq, torch.cat([p[2] for p in parts]))
    n_targets = targets.shape[0] if subset is None else subset.shape[0]
    sums = torch.zeros(n_targets, dtype=torch.float64, device=x.device)
    sq = torch.zeros_like(sums) if squares else None
    one_pass = chunk >= n_targets and combine_lse is None
    lse = None
    if not one_pass:
        lse = stream_logsumexp(x, targets, bias, chunk=chunk, center=center, alpha=alpha, subset=subset)
        if combine_lse is not None:
            lse = combine_lse(lse)
    for start, stop, block in score_blocks(
        x, targets, bias, chunk=chunk, center=center, alpha=alpha, subset=subset
    ):
        if one_pass:  # normalise in place (torch.softmax would leave denormals in its exp)
            row_max = block.max(dim=1).values
            p = _exp_shifted_(block, row_max)
            row_sum = p.sum(1)
            p.div_(row_sum[:, None])
            lse = row_max + torch.log(row_sum)
        else:
            p = _exp_shifted_(block, lse)
        sums[start:stop] = p.sum(0)  # float32 sum then upcast: summing with dtype= is 40x slower
        if sq is not None:
            sq[start:stop] = p.square_().sum(0)
    return sums, sq, lse


def lowp_error_coefficients(d: int, dtype: torch.dtype) -> tuple[float, float]:
    """(c_in, c_out) bounding one low-precision inner product of length d:
    |score_lowp - <x, z>| <= c_in |x| |z| + c_out |score_lowp|.

    Operands rounded to ``dtype`` (unit roundoff u each: 2u + u^2), products exact in float32, float32
    accumulation (gamma_d); the result rounded to ``dtype`` once more (u |acc| <= u |score| / (1 - u)).
    Both with a 10% margin."""
    u = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    gamma = d * 2.0**-24 / max(1e-12, 1 - d * 2.0**-24)
    return 1.1 * (2 * u + u * u + gamma * (1 + u) ** 2), 1.1 * u / (1 - u)


@dataclass(frozen=True)
class LowpKeys:
    """What the low-precision argmax needs, prepared once per (targets, potential, device).

    keys: centred targets [N, d] in bf16/fp16; norms: |y_j - center| [N] (float32, rounded up);
    norm_max: max of the norms; bias32 / bias64: the shifted score bias [N]; bias_abs_max: max |bias|;
    center64: the centre [d] (float64).
    """

    keys: torch.Tensor
    norms: torch.Tensor
    norm_max: float
    bias32: torch.Tensor
    bias64: torch.Tensor
    bias_abs_max: float
    center64: torch.Tensor

    @classmethod
    def build(cls, chunks, shape, dtype, bias64: torch.Tensor, center64: torch.Tensor) -> LowpKeys:
        """From ``chunks`` of (start, stop, centred targets [m, d] float64) covering ``shape`` [N, d]."""
        keys = torch.empty(shape, dtype=dtype, device=bias64.device)
        norms = torch.empty(shape[0], dtype=torch.float64, device=bias64.device)
        for start, stop, z in chunks:
            keys[start:stop] = z.to(dtype)
            norms[start:stop] = z.norm(dim=1)
        return cls(
            keys=keys,
            norms=(norms * (1 + 2.0**-20)).to(torch.float32),  # rounded up: the bound stays a bound
            norm_max=float(norms.max()),
            bias32=bias64.to(torch.float32),
            bias64=bias64,
            bias_abs_max=float(bias64.abs().max()),
            center64=center64,
        )

    def with_bias(self, bias64: torch.Tensor) -> LowpKeys:
        """The same keys with another score bias [N] (float64)."""
        return replace(
            self, bias32=bias64.to(torch.float32), bias64=bias64, bias_abs_max=float(bias64.abs().max())
        )


def _second_after_merge(best, second, v1, v2, better):
    """The running second-best of each row after a block with top values v1 (and v2, or None)."""
    upper = best if v2 is None else torch.maximum(best, v2)
    return torch.where(better, upper, torch.maximum(second, v1))


def _merge_top2(best: torch.Tensor, second: torch.Tensor, block: torch.Tensor):
    """The running best and second-best values of each row, updated with a [n, m] score block."""
    if block.shape[1] >= 2:
        vals = block.topk(2, dim=1).values
        v1, v2 = vals[:, 0], vals[:, 1]
    else:
        v1, v2 = block[:, 0], None
    better = v1 > best
    return torch.where(better, v1, best), _second_after_merge(best, second, v1, v2, better)


def stream_argmax_lowp(
    x: torch.Tensor, lowp: LowpKeys, *, targets: torch.Tensor, chunk: int, top2: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Exact argmax_j <x, y_j - center> + bias_j with low-precision scores and exact re-scoring.

    The scores are computed with ``lowp.keys`` [N, d] (the centred targets already rounded to
    bf16/fp16) and a rounded copy of x; each comes with a certified error bound
    (``lowp_error_coefficients``: c_in |x| |y_j - center| + c_out |score|, plus a slack for the float32
    bias). A target is a candidate when its upper bound reaches the best lower bound of the row; the
    true argmax always is (its true score, below its upper bound, is at least every other true score,
    above their lower bounds). Candidates are re-scored in float64 from ``targets`` [N, d], so the
    result equals the float64 argmax (ties to the smallest index).

    Returns:
        index [n] (int64); with ``top2``, also the best and second-best **low-precision** scores
        [n] (float32; within the error bound of the true ones: for the solver's gap statistics),
        else None, None.
    """
    if x.shape[0] > ROW_BLOCK:
        parts = [
            stream_argmax_lowp(xb, lowp, targets=targets, chunk=chunk, top2=top2) for xb in _row_blocks(x)
        ]
        if not top2:
            return torch.cat([p[0] for p in parts]), None, None
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))
    n, d = x.shape
    device = x.device
    c_in, c_out = lowp_error_coefficients(d, lowp.keys.dtype)
    xq = x.to(lowp.keys.dtype)
    xnorm = x.to(torch.float64).norm(dim=1) * 1.0001
    # Absolute slack: float32 rounding of the bias and of the sum score + bias (with room to spare).
    slack32 = ((2.0**-21) * (xnorm * lowp.norm_max + lowp.bias_abs_max)).to(torch.float32)
    xcoef32 = (c_in * xnorm).to(torch.float32)
    # Every score has a certified interval [s - err, s + err]. The true argmax's upper end is at least
    # every lower end, so targets whose upper end is below the best lower end so far are dropped.
    lower = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    best = torch.full_like(lower, float("-inf")) if top2 else None
    second = torch.full_like(lower, float("-inf")) if top2 else None
    rows, cols, vals = [], [], []
    num_targets = lowp.keys.shape[0]
    for start in range(0, num_targets, chunk):
        stop = min(start + chunk, num_targets)
        with full_accumulation(device):
            raw = xq @ lowp.keys[start:stop].T
        s = torch.add(raw, lowp.bias32[start:stop])  # float32
        if top2:
            best, second = _merge_top2(best, second, s)
        err = torch.addcmul(slack32[:, None], xcoef32[:, None], lowp.norms[None, start:stop])
        err.add_(raw.abs(), alpha=c_out)
        lower = torch.maximum(lower, (s - err).amax(dim=1))
        upper = s.add_(err)
        r, c = (upper >= lower[:, None]).nonzero(as_tuple=True)
        rows.append(r)
        cols.append(c + start)
        vals.append(upper[r, c])
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    # candidates kept against an earlier (lower) best are dropped against the final one
    final = vals >= lower[rows]
    rows, cols = rows[final], cols[final]
    picked = targets[cols.to(targets.device)].to(device=device, dtype=torch.float64)
    exact = (x.to(torch.float64)[rows] * (picked - lowp.center64)).sum(1)
    exact += lowp.bias64[cols]
    row_max = torch.full((n,), float("-inf"), dtype=torch.float64, device=device)
    row_max.scatter_reduce_(0, rows, exact, reduce="amax")
    winner = exact == row_max[rows]
    index = torch.full((n,), num_targets, dtype=torch.long, device=device)
    index.scatter_reduce_(0, rows[winner], cols[winner], reduce="amin")
    return index, best, second
