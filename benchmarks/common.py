"""Shared helpers of the benchmark scripts: machine description, timing, JSON output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sdfm.transport import _stream, clustering, pruned
from sdfm.transport.assign import LaguerreCells
from sdfm.transport.pruned import ClusterBounds
from sdfm.transport.semidiscrete import lift, parts, problem, solver, tight

RESULTS = Path(__file__).parent / "results"

#: The solver's warm start before BENCHMARKS.md section 25 made ``warm_start="best"`` (h = 0 or the
#: radial start, by a probe) the default. The scripts of sections 1-24 pin it.
ZERO_START = {"warm_start": "zero"}

#: The solver's step scales before BENCHMARKS.md section 24 made ``preconditioner="adaptive"`` the
#: default, with the warm start of that time. The scripts of the sections measured before it pin
#: them, so that their tables rerun as measured (their "default" means these settings).
CELL = {"preconditioner": "cell", "empty_rise": False, **ZERO_START}


class AdaptiveBefore26(parts.AdaptiveCellScales):
    """The adaptive step scales of sections 21-25: every sample's gap also counts for its runner-up
    atom (section 26 counts it only for a cell that won no sample of the batch)."""

    def update(self, index, best, second, second_index=None) -> None:
        parts.CellScales.update(self, index, best, second)
        self.prior_weight *= 0.99
        if second_index is not None:
            valid = second_index >= 0
            gap = (best - second).to(torch.float64)[valid]
            self.gap_sum.index_add_(0, second_index[valid], gap)
            self.gap_count.index_add_(0, second_index[valid], torch.ones_like(gap))


@contextlib.contextmanager
def before_26(on: bool = True):
    """The solver's adaptive defaults before section 26 while the block runs (if ``on``): the step
    scales of :class:`AdaptiveBefore26` under their own name, "adaptive" (the solver's face units and
    average restart key on that name). Yields the solver options to add: the empty rise off ({}
    when not ``on``). The scripts of sections 21-25 run their adaptive rows in it (``--before-26``
    where a script measures the default)."""
    saved = parts.PRECONDITIONERS["adaptive"]
    try:
        yield set_before_26(on)
    finally:
        parts.PRECONDITIONERS["adaptive"] = saved


def set_before_26(on: bool) -> dict:
    """:func:`before_26` for the rest of the process (a script's ``--before-26``): the options to add."""
    if on:
        parts.PRECONDITIONERS["adaptive"] = AdaptiveBefore26
    return {"empty_rise": False} if on else {}


def _uniform_expected(self, batch: int):
    return batch / self.problem.n, self.problem.n / batch


#: ``SDFM_BEFORE_27=1`` runs a script with the steps of before section 27 (:func:`before_27`): the
#: tables of sections 1-26 on problems with merged duplicates or given weights rerun as measured.
if os.environ.get("SDFM_BEFORE_27"):
    solver._Iteration._expected = _uniform_expected


@contextlib.contextmanager
def before_27(on: bool = True):
    """The solver's steps before section 27 while the block runs (if ``on``): the residual's floor and
    the noise cap of the step take every cell's expected count per batch as batch / N, whatever the
    weights (section 27 takes batch b_j per cell where the weights differ: given weights, merged
    duplicates). Uniform weights are unaffected."""
    saved = solver._Iteration._expected
    try:
        if on:
            solver._Iteration._expected = _uniform_expected
        yield
    finally:
        solver._Iteration._expected = saved


def _block_top_before_28(block, second=None):
    """The block reduction of the scans before section 28: ``topk`` or ``max`` over the whole block."""
    if second and block.shape[1] >= 2:
        vals, idx = block.topk(2, dim=1)
        v1, i1, v2, i2 = vals[:, 0], idx[:, 0], vals[:, 1], idx[:, 1]
        if second == "index":  # topk orders ties arbitrarily: the smaller index is the best
            swap = (v1 == v2) & (i2 < i1)
            i1, i2 = torch.where(swap, i2, i1), torch.where(swap, i1, i2)
        return v1, i1, v2, i2 if second == "index" else None
    v1, i1 = block.max(dim=1)
    return v1, i1, None, None


def _argmax_before_28(self, x, keys):
    """``LaguerreCells``' hard argmax before section 28: the plain scan in the query's dtype."""
    return keys.scorer.argmax(x, keys.bias)[0]


@contextlib.contextmanager
def before_28(on: bool = True, pairing: bool = False):
    """The scans' block reduction before section 28 while the block runs (if ``on``): one-level
    ``topk`` / ``max`` instead of the two-level :func:`sdfm.transport._stream.block_top` (the same
    values and indices but for exact ties; only the speed differs). With ``pairing``, also the
    plain float32 argmax of ``LaguerreCells`` (no certificate, no float64 re-scoring)."""
    saved = _stream.block_top, LaguerreCells._argmax
    try:
        if on:
            _stream.block_top = _block_top_before_28
            if pairing:
                LaguerreCells._argmax = _argmax_before_28
        yield
    finally:
        _stream.block_top, LaguerreCells._argmax = saved


#: ``SDFM_BEFORE_28=1`` runs a script with the scans and the pairing of before section 28
#: (:func:`before_28` with ``pairing``): sections 1-27's pairing timings rerun as measured.
if os.environ.get("SDFM_BEFORE_28"):
    _stream.block_top = _block_top_before_28
    LaguerreCells._argmax = _argmax_before_28


@contextlib.contextmanager
def before_29(on: bool = True):
    """The solver's measurements before section 29 while the block runs (if ``on``): they count the
    float32 scores' own argmax (no certificate, no float64 re-scoring, no switch to float64)."""
    saved = problem.CERTIFIED_COUNTS
    try:
        problem.CERTIFIED_COUNTS = saved and not on
        yield
    finally:
        problem.CERTIFIED_COUNTS = saved


#: ``SDFM_BEFORE_29=1`` runs a script with the solver's measurements of before section 29
#: (:func:`before_29`): with ``SDFM_BEFORE_28=1`` too, sections 1-28 rerun as measured.
if os.environ.get("SDFM_BEFORE_29"):
    problem.CERTIFIED_COUNTS = False


def _margin_before_30(self, x, norm, threshold, bias_max: float):
    scale = norm * self.key_norm + bias_max
    return 2.0 * (x.shape[1] + 4) * torch.finfo(x.dtype).eps * scale + 1e-9 * bias_max


_MARGIN = ClusterBounds._margin


_PROBE_ROWS = pruned.PROBE_ROWS


@contextlib.contextmanager
def before_30(on: bool = True):
    """The pruned search before section 30 while the block runs (if ``on``): the bias term of its
    rounding margin is max |bias_j| over all atoms (so masked copies, bias -1e30, make every cluster
    a candidate), and a trial of ``"auto"`` searches the whole call (no probe)."""
    try:
        if on:
            ClusterBounds._margin = _margin_before_30
            pruned.PROBE_ROWS = 1 << 62
        yield
    finally:
        ClusterBounds._margin = _MARGIN
        pruned.PROBE_ROWS = _PROBE_ROWS


#: ``SDFM_BEFORE_30=1`` runs a script with the pruned search of before section 30.
if os.environ.get("SDFM_BEFORE_30"):
    ClusterBounds._margin = _margin_before_30
    pruned.PROBE_ROWS = 1 << 62


class _BestBefore31(pruned._Best):
    """The pruned search's running best before section 31: merged one cluster visit at a time."""

    def merge(self, rows, block, atoms) -> None:
        v1, p1 = block.max(dim=1)
        i1 = atoms[p1]
        b, bi = self.best[rows], self.index[rows]
        new_first = _ranks_before(v1, i1, b, bi)
        if self.runner is not None:
            if block.shape[1] >= 2:
                v2, p2 = block.scatter(1, p1[:, None], float("-inf")).max(dim=1)
                i2 = atoms[p2]
            else:
                v2, i2 = torch.full_like(v1, float("-inf")), torch.full_like(i1, -1)
            s, si = self.runner[rows], self.runner_index[rows]
            cand_s, cand_i = torch.where(new_first, b, v1), torch.where(new_first, bi, i1)
            other_s, other_i = torch.where(new_first, v2, s), torch.where(new_first, i2, si)
            take = (_ranks_before(cand_s, cand_i, other_s, other_i) & (cand_i >= 0)) | (other_i < 0)
            self.runner[rows] = torch.where(take, cand_s, other_s)
            self.runner_index[rows] = torch.where(take, cand_i, other_i)
        self.best[rows] = torch.where(new_first, v1, b)
        self.index[rows] = torch.where(new_first, i1, bi)


def _ranks_before(v, i, w, j):
    return (v > w) | ((v == w) & (i < j))


def _score_pairs_before_31(self, x, bias_sorted, q, k, state) -> tuple[int, int]:
    if q.numel() == 0:
        return 0, 0
    order = torch.argsort(k, stable=True)
    q, k = q[order], k[order]
    ids, counts = torch.unique_consecutive(k, return_counts=True)
    scored, start = 0, 0
    for cid, c in zip(ids.tolist(), counts.tolist(), strict=True):
        rows = q[start : start + c]
        start += c
        lo, hi = self.offsets[cid], self.offsets[cid + 1]
        state.merge(rows, torch.addmm(bias_sorted[lo:hi], x[rows], self.keys[lo:hi].T), self.atoms[lo:hi])
        scored += c * (hi - lo)
    return scored, len(counts)


def _search_before_31(self, x, bias, *, second=None):
    n = x.shape[0]
    bias_sorted = bias[self.atoms]
    bias64 = bias_sorted.to(torch.float64)
    top, top_a = self._cluster_max(bias64), self._cluster_max(bias64 + 0.5 * self.sqnorm)
    x64 = x.to(torch.float64)
    sq = x64.square().sum(1)
    norm = sq.sqrt()
    cross = x64 @ self.centres.T
    bound = (cross + top).addcmul_(norm[:, None], self.radius[None, :])
    dist = (sq[:, None] - 2.0 * cross + self.centres.square().sum(1)).clamp_min_(0.0).sqrt_()
    reach = (dist - self.radius).clamp_min_(0.0)
    bound = torch.minimum(bound, 0.5 * sq[:, None] + top_a - 0.5 * reach.square())
    state = _BestBefore31.empty(n, x.dtype, x.device, second)
    first = bound.argmax(dim=1)
    rows = torch.arange(n, device=x.device)
    scored, visits = _score_pairs_before_31(self, x, bias_sorted, rows, first, state)
    threshold = (state.runner if second else state.best).to(torch.float64)
    margin = self._margin(x, norm, threshold, float(bias64.abs().max()))
    margin = margin + 1e-9 * (norm * self.key_norm + threshold.abs() + sq + dist.max(1).values.square())
    candidates = bound >= (threshold - margin)[:, None]
    candidates[rows, first] = False
    q, k = torch.nonzero(candidates, as_tuple=True)
    more, more_visits = _score_pairs_before_31(self, x, bias_sorted, q, k, state)
    runner, runner_index = (
        (state.runner, state.runner_index if second == "index" else None) if second else (None, None)
    )
    return state.index, state.best, runner, runner_index, scored + more, visits + more_visits


_SEARCH = ClusterBounds.search


@contextlib.contextmanager
def before_31(on: bool = True):
    """The pruned search before section 31 while the block runs (if ``on``): the bounds computed
    out of place, and each cluster visit merged into the running best on its own."""
    try:
        if on:
            ClusterBounds.search = _search_before_31
        yield
    finally:
        ClusterBounds.search = _SEARCH


#: ``SDFM_BEFORE_31=1`` runs a script with the pruned search of before section 31.
if os.environ.get("SDFM_BEFORE_31"):
    ClusterBounds.search = _search_before_31


_SHIFT_MAX_DIM = pruned.SHIFT_MAX_DIM


@contextlib.contextmanager
def before_32(on: bool = True):
    """The pruned search's bounds before section 32 while the block runs (if ``on``): no shifted
    bound (it is decided when the bounds are built, so build them inside the block)."""
    try:
        if on:
            pruned.SHIFT_MAX_DIM = 0
        yield
    finally:
        pruned.SHIFT_MAX_DIM = _SHIFT_MAX_DIM


#: ``SDFM_BEFORE_32=1`` runs a script with the pruned search's bounds of before section 32.
if os.environ.get("SDFM_BEFORE_32"):
    pruned.SHIFT_MAX_DIM = 0


_NEIGHBOUR_DISTANCES = tight.neighbour_distances


def _neighbour_distances_before_33(atoms, k, queries=None):
    """tight.neighbour_distances before section 33: a float64 copy of the (centred) atoms, a float32
    copy of them, and one [256, N] score block (plus its bias added out of place) per 256 rows."""
    if isinstance(atoms, tight.AtomView):
        atoms = atoms.rows(torch.arange(atoms.n, device=atoms.device)) - (
            0.0 if atoms.center is None else atoms.center
        )
    if atoms.shape[1] <= tight.KD_DIMS:
        return _NEIGHBOUR_DISTANCES(atoms, k, queries)
    n = atoms.shape[0]
    queries = torch.arange(n) if queries is None else queries.cpu()
    keys = atoms.to(torch.float32)
    bias = -0.5 * keys.square().sum(1)
    take = min(n, k + 5)
    dist = torch.empty(queries.shape[0], k, dtype=torch.float64, device=atoms.device)
    index = torch.empty(queries.shape[0], k, dtype=torch.long, device=atoms.device)
    for start in range(0, queries.shape[0], 256):
        rows = queries[start : start + 256].to(atoms.device)
        cand = torch.topk(keys[rows] @ keys.T + bias, take, dim=1).indices
        d = (atoms[rows, None, :] - atoms[cand]).norm(dim=2)
        d = d.masked_fill(cand == rows[:, None], torch.inf)
        d, order = d.sort(dim=1)
        dist[start : start + 256] = d[:, :k]
        index[start : start + 256] = cand.gather(1, order)[:, :k]
    return dist, index


@contextlib.contextmanager
def _patched(on: bool, *changes):
    """Sets each (object, attribute, value) of ``changes`` while the block runs (if ``on``)."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        if on:
            for obj, name, value in changes:
                setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def before_33(on: bool = True):
    """The tight groups' neighbour search and k-means' distance blocks (one per chunk, the whole
    subsample in Lloyd's steps) of before section 33 while the block runs (if ``on``)."""
    return _patched(
        on,
        (tight, "neighbour_distances", _neighbour_distances_before_33),
        (clustering, "BLOCK_ELEMENTS", 1 << 62),
    )


def group_counts(y, weights, result, samples: int, batch: int):
    """(Counts [G] of ``samples`` fresh float64 noise samples (seed 123, drawn ``batch`` at a time) in
    each group of merged targets, by a brute-force argmax (``assign``; merged copies taken out as the
    coupling does), and the groups' weights [G]). ``weights``: the targets' [N], normalised. Their
    unbiased chi2 is ``sdfm.transport.chi2_from_counts(counts, weights)``."""
    from sdfm.transport import assign

    gen = torch.Generator().manual_seed(123)
    groups, potential = torch.arange(y.shape[0]), result.potential
    if result.duplicates is not None:
        groups, weights = result.duplicates.inverse, result.duplicates.group_weights().double()
        potential = result.duplicates.representatives_only(potential)
    counts = torch.zeros(weights.shape[0], dtype=torch.float64)
    for _ in range(0, samples, batch):
        x = torch.randn(batch, y.shape[1], generator=gen, dtype=torch.float64)
        index = assign(x, y.double(), potential.double())
        counts += torch.bincount(groups[index], minlength=weights.shape[0])
    return counts, weights


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def repeat(fn, repeats: int = 5, warmup: int = 1, sync=None) -> dict:
    """Wall time of fn() over repeats (after warm-up): min and median seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return {"min": min(times), "median": statistics.median(times), "all": times}


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def _next_measure_before_34(self, train_samples: int, check) -> int:
    """The solver's measurement schedule before section 34: growth sqrt(chi2 / tol) in every regime."""
    tol = self.s.tol if self.s.tol is not None else 0.05
    ratio = 1.0 if not check.chi2 > 0 else (check.chi2 / tol) ** 0.5
    growth = min(2.0, max(1.1, ratio))
    span = max((growth - 1.0) * train_samples, self.problem.eval_samples * self.s.eval_every)
    return train_samples + int(span)


_check_now = problem.SemidiscreteProblem.check


def _check_before_34(self, h, tol=None, *, extend=False, while_promising=False):
    """A measurement whose capped extension stops once the estimate is above tol (before section 34)."""
    return _check_now(self, h, tol, extend=extend, while_promising=False)


_select_start_now = parts.select_start


def _select_start_before_34(problem, kind, direct=False):
    """The start as before section 34: "best" weighs h = 0 and the radial start in every regime."""
    return _select_start_now(problem, kind, False)


def before_34(on: bool = True):
    """The solver as before section 34 while the block runs (if ``on``): "best" never weighs the
    lifted start (on the large high-dimensional data it then starts from h = 0, averaging with power
    1), and the stop's measurements are planned by sqrt(chi2 / tol) with the extension only below tol.
    The scripts of the sections measured before it run under it, so that their tables rerun as
    measured."""
    return _patched(
        on,
        (solver._Iteration, "_next_measure", _next_measure_before_34),
        (problem.SemidiscreteProblem, "check", _check_before_34),
        (parts, "select_start", _select_start_before_34),
        (solver._Iteration, "measures_on_training", _never),
    )


def _never(self) -> bool:
    return False


def before_35(on: bool = True):
    """The solver as before section 35 while the block runs (if ``on``): the stop measures the
    average on fresh noise in every regime (never on the steps' noise), and the lift has 256
    clusters at any N (before_36)."""
    return _patched(on, (solver._Iteration, "measures_on_training", _never), *_BEFORE_36)


def _lift_clusters_before_36(n: int) -> int:
    return lift.LIFT_CLUSTERS


def _lift_draws_before_36(clusters: int) -> int:
    return lift.LIFT_DRAWS * int(clusters)


_BEFORE_36 = (
    (lift, "lift_clusters", _lift_clusters_before_36),
    (lift, "lift_draws", _lift_draws_before_36),
)


def before_36(on: bool = True):
    """The solver as before section 36 while the block runs (if ``on``): the lifted start on 256
    k-means clusters at any N (not n / 100 of them, up to 1,024), with LIFT_DRAWS draws per cluster
    whatever their number."""
    return _patched(on, *_BEFORE_36)
