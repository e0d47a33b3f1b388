"""Semidiscrete OT solver: fits the dual potential g from a source (Gaussian noise) to N weighted atoms.

Problem (PAPER.md section 2): maximise the concave semi-dual
``F_eps(g) = E_x[g^{c,eps}(x)] + <b, g>`` whose gradient is ``b - m(g)``, m_j(g) the mass the source
sends to atom j. g is optimal iff m(g) = b; progress is measured by chi2(m || b).

Algorithm (chosen by the comparison in BENCHMARKS.md, "Solver"):

1. Work in the dot-product form on centred atoms, score_j(x) = <x, y_j - mean> + h_j: it is
   translation invariant and well scaled whatever the data's offset and units.
2. Warm start: h_j = -lam/2 (y_j - mean)^T Sigma^{-1/2} (y_j - mean), the dual of the linear Monge
   map N(0, I) -> N(mean, Sigma) at lam = 1 and the zero potential at lam = 0; the best of
   lam in {0, 1/2, 1} by chi2 on a small batch.
3. Entropic annealing first (as the DRAG schedule of POT's ``ot.semidiscrete``): soft assignments
   with eps decreasing geometrically from 100 s to 0.3 s (s the mean score gap) over
   ``anneal_length`` (10) samples per atom in batches of 1024, with steps
   h_j += lr_anneal * (eps + s) * (1 - m_hat_j / b_j), lr_anneal <= 3 * batch / N (the noise cap of
   step 4; it binds only beyond N = 10,240). The soft problem's dense Hessian moves mass
   across many cells at once, which steps on the hard problem do only by slow diffusion (the low
   modes of the cell-adjacency Laplacian): it fixes the coarse structure in low dimension.
4. Then preconditioned stochastic ascent on the hard problem, batches of 4096:
   h_j += lr * s_j * (1 - m_hat_j / b_j). s_j is the Newton scale of cell j, the mean gap between
   the best and second-best score of the noise that falls in the cell (d m_j / d h_j ~ m_j / gap_j),
   so one step size fits small and large cells whatever the units of the data. The step is capped
   at lr <= noise_level * batch / N: the relative counting error of a cell has variance
   N / batch, and iterates noisier than that average badly (the coupling is far from linear in h).
5. Averaging after annealing: polynomial-decay averaging h_avg += (p + 1) / (k + p + 1) (h - h_avg),
   whose window grows with k so the sampling noise keeps falling (no floor as with a fixed EMA).
6. chi2 of the averaged potential is measured on fresh noise every ``eval_every`` measurement
   sizes of training; the measurement grows (up to 8x) while chi2 is within two standard errors of
   tol. The solver stops once chi2 + 2 stderr <= tol (so the true chi2 is below tol with about
   97.5% confidence), after max_steps steps or after max_seconds seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from sdfm.transport import _checks
from sdfm.transport._stream import (
    LowpKeys,
    chunk_size_for,
    full_precision,
    stream_argmax,
    stream_argmax_lowp,
    stream_softmax_columns,
    target_chunks,
)
from sdfm.transport.diagnostics import MarginalAccumulator
from sdfm.transport.duplicates import DuplicateGroups, find_duplicates
from sdfm.transport.sharding import Collective, all_reduce_columns, combine_argmax, combine_logsumexp
from sdfm.transport.sources import draw, standard_normal

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class HistoryEntry:
    """One progress record of the solver."""

    step: int
    samples: int
    seconds: float
    eps: float
    chi2: float | None  # measured on fresh noise for the averaged potential (None: not measured)
    chi2_stderr: float | None
    chi2_iterate: float  # running estimate from the training batches for the current iterate


@dataclass(frozen=True)
class SemidiscreteResult:
    """What :meth:`SemidiscreteSolver.solve` returns.

    Attributes:
        potential: g [N] float64 in the 1/2 |x - y|^2 convention: the cell of x is
            argmax_j <x, y_j> + g_j - |y_j|^2 / 2. Duplicate targets share one value.
        eps: the absolute regularisation of the coupling (0 = hard assignment).
        chi2: chi2(m || b) of the returned potential, measured on ``chi2_samples`` fresh samples.
        chi2_stderr: standard error of ``chi2``.
        chi2_samples: number of noise samples behind ``chi2``.
        converged: whether ``chi2 <= tol``.
        steps, samples, seconds: work done (samples count every noise draw, including measurement).
        history: progress records.
        weights: normalised target weights [N] (None = uniform).
        duplicates: groups of identical targets (None if there are none).
        settings: the solver's hyper-parameters plus the resolved ones (eps_abs, dtype, device).
    """

    potential: torch.Tensor
    eps: float
    chi2: float
    chi2_stderr: float
    chi2_samples: int
    converged: bool
    steps: int
    samples: int
    seconds: float
    history: list[HistoryEntry] = field(repr=False)
    weights: torch.Tensor | None = field(default=None, repr=False)
    duplicates: DuplicateGroups | None = field(default=None, repr=False)
    settings: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class SemidiscreteSolver:
    """Stochastic solver of the semidiscrete OT semi-dual. Defaults need no tuning.

    Attributes:
        eps: entropic regularisation of the target coupling (0 = hard assignment, the default).
        relative_eps: if True (default) the absolute eps is ``eps * std(C)``, C the cost matrix
            1/2 |x - y|^2 between 1024 reference noise samples and the targets (the paper's
            convention, PAPER.md section 2); if False, eps is absolute (cost units).
        tol: stop once the measured chi2 of the averaged potential plus two standard errors is
            <= tol (None: never).
        max_steps: stop after this many steps (batches) at the latest (None: no limit).
        max_seconds: stop after this much wall time (None: no limit).
        batch_size: noise samples per step.
        lr: step size relative to the Newton scale of each cell, hard phase (upper bound).
        anneal_batch_size: noise samples per step during annealing (the soft problem's smooth
            dynamics gain from many small steps).
        noise_level: caps the hard-phase step at ``noise_level * batch_size / N``: a step moves each
            cell by lr times its relative counting error, whose variance is N / batch_size, so the
            cap bounds the iterate's noise (too noisy iterates average badly: the coupling is far
            from linear in h).
        lr_anneal: the same during the entropic annealing phase.
        anneal_noise_level: caps the annealing step at ``anneal_noise_level * anneal_batch_size / N``
            (None: no cap), for the same reason as ``noise_level``. Without it the annealed
            potential's noise grows with N / anneal_batch_size: on a 64-d mixture of N = 50,000 the
            first chi2 after the annealing was 1.45 instead of 0.34, and the solve had not reached
            0.05 after 300 s (0.12) against 183 s with the cap (BENCHMARKS.md section 10). The default
            3.0 leaves every N <= 10,240 unchanged (where the solver's defaults were chosen); beyond,
            the annealing moves the potential as far in total as at N = 10,240.
        preconditioner: "cell" (per-cell gap scale) or "global" (one scale, the mean gap).
        optimizer: "sgd" or "adam" (Adam on the preconditioned gradient; for comparisons).
        lr_decay: step size decays as (1 + k / 100)^-lr_decay (0 = constant).
        averaging: "poly" (polynomial decay), "ema", "uniform" (Polyak) or "none".
        average_power: p of the polynomial-decay averaging.
        ema_decay: decay of the "ema" averaging.
        anneal: run the entropic annealing warm-up phase.
        anneal_start: initial eps of the annealing, in units of the mean score gap.
        anneal_end: final eps of the annealing, in units of the mean score gap.
        anneal_length: length of the annealing in noise samples per atom.
        batch_growth: the batch grows as batch_size * (1 + batch_growth * samples / N) (0 = fixed).
        warm_start: "zero" (default), "auto", "gaussian" or "nearest" (g = 0: nearest neighbour).
            "auto" / "gaussian" start from the potential of a Gaussian fitted to the data; it can
            leave a bias that chi2 hardly sees (on the 2-D checkerboard at chi2 0.043, atoms
            farther out than the median held 0.468 of the mass instead of 0.5), so they are opt-in.
        eval_samples: noise samples per chi2 measurement (None: enough for a standard error near
            tol / 10).
        eval_every: samples between two measurements, as a multiple of eval_samples.
        dtype: "float32" (default) or "float64" for the scores; the potential is kept in float64.
        device: where to compute (None: the device of the targets).
        chunk_size: targets per score block (None: automatic, about 4M elements per block).
        memory_limit: bytes the solver may spend on its own copy of the centred targets in the
            compute dtype, on the compute device (default 1 GiB). Larger targets are not copied but
            streamed chunk by chunk from where they are (a memory-mapped file, host memory feeding a
            GPU); 0 always streams. Beyond it the solver holds O(N) vectors (about 80 bytes per
            target) and one [batch, chunk] score block.
        score_dtype: None (default: scores in ``dtype``), or "bfloat16" / "float16": the hard phase
            and the chi2 measurements score in that dtype with certified error bounds and re-score
            the candidates in float64 (``assign(score_dtype=)``'s method), so every assignment is the
            exact argmax; only the cell-gap statistics of the step sizes use the low-precision
            scores. It pays only where low-precision matmuls are fast (GPUs; CPUs at high d) and the
            certified error (bf16: about 1% of |x| |y_j - mean|) is small against the gaps between
            the best scores; otherwise the re-scored candidates dominate: on the 784-d mixture of
            BENCHMARKS.md section 10 (clusters far from the mean) its hard phase was 6x slower on
            CPU. Needs eps = 0, one process, and the solver's own copy of the targets (within
            ``memory_limit``) plus a low-precision copy; the annealing phase scores in ``dtype``.
            Opt-in; measure before use.
    """

    eps: float = 0.0
    relative_eps: bool = True
    tol: float | None = 0.05
    max_steps: int | None = 100_000
    max_seconds: float | None = None
    batch_size: int = 4096
    lr: float = 0.1
    noise_level: float = 0.25
    anneal_batch_size: int = 1024
    lr_anneal: float = 0.3
    anneal_noise_level: float | None = 3.0
    preconditioner: Literal["cell", "global"] = "cell"
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr_decay: float = 0.0
    averaging: Literal["poly", "ema", "uniform", "none"] = "poly"
    average_power: float = 2.0
    ema_decay: float = 0.99
    anneal: bool = True
    anneal_start: float = 100.0
    anneal_end: float = 0.3
    anneal_length: float = 10.0
    batch_growth: float = 0.0
    warm_start: Literal["auto", "gaussian", "zero", "nearest"] = "zero"
    eval_samples: int | None = None
    eval_every: float = 5.0
    dtype: Literal["float32", "float64"] = "float32"
    device: str | None = None
    chunk_size: int | None = None
    memory_limit: int = 1 << 30
    score_dtype: Literal["bfloat16", "float16"] | None = None

    def __post_init__(self) -> None:
        _checks.check_eps(self.eps, "eps")
        if self.tol is not None and not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise ValueError(f"tol: expected a number > 0 or None, got {self.tol!r}")
        _checks.check_positive_int(self.max_steps, "max_steps")
        _checks.check_positive_int(self.batch_size, "batch_size", allow_none=False)
        _checks.check_positive_int(self.anneal_batch_size, "anneal_batch_size", allow_none=False)
        _checks.check_positive_int(self.eval_samples, "eval_samples")
        _checks.check_positive_int(self.chunk_size, "chunk_size")
        if (
            isinstance(self.memory_limit, bool)
            or not isinstance(self.memory_limit, int)
            or self.memory_limit < 0
        ):
            raise ValueError(
                f"memory_limit: expected an integer number of bytes >= 0, got {self.memory_limit!r}"
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds: expected a number > 0 or None, got {self.max_seconds!r}")
        if self.tol is None and self.max_steps is None and self.max_seconds is None:
            raise ValueError("tol, max_steps and max_seconds are all None: the solver would never stop")
        positive = (
            "lr",
            "lr_anneal",
            "noise_level",
            "anneal_start",
            "anneal_end",
            "anneal_length",
            "eval_every",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        if self.anneal_noise_level is not None and not (
            isinstance(self.anneal_noise_level, (int, float))
            and math.isfinite(self.anneal_noise_level)
            and self.anneal_noise_level > 0
        ):
            raise ValueError(
                f"anneal_noise_level: expected a finite number > 0 or None, got {self.anneal_noise_level!r}"
            )
        for name in ("lr_decay", "batch_growth", "average_power"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: expected a number in [0, 1), got {self.ema_decay!r}")
        choices = {
            "preconditioner": ("cell", "global"),
            "optimizer": ("sgd", "adam"),
            "averaging": ("poly", "ema", "uniform", "none"),
            "warm_start": ("auto", "gaussian", "zero", "nearest"),
            "dtype": tuple(_DTYPES),
            "score_dtype": (None, "bfloat16", "float16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.score_dtype is not None and self.eps > 0:
            raise ValueError(
                "score_dtype: low-precision scoring is exact for hard assignment (eps = 0) only; "
                f"got eps={self.eps!r}"
            )

    # ------------------------------------------------------------------------------------------
    def solve(
        self,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        noise=None,
        init: torch.Tensor | None = None,
        progress: bool = True,
        collective: Collective | None = None,
    ) -> SemidiscreteResult:
        """Fits the potential of the semidiscrete OT problem from ``noise`` to ``targets``.

        Args:
            targets: data points [N, d] (used as given: no rescaling). Identical rows are merged
                (see :mod:`sdfm.transport.duplicates`).
            weights: positive target weights [N] (normalised; None = uniform).
            generator: randomness of the noise draws (on the compute device).
            noise: source sampler ``noise(n, d, generator=, device=, dtype=) -> [n, d]``
                (default: standard Gaussian).
            init: a potential [N] to start from (warm start from an earlier solve).
            progress: show a tqdm bar with chi2.
            collective: solve with the atoms sharded across processes
                (:class:`~sdfm.transport.sharding.Collective`; ``sdfm.parallel.collective()`` under
                torchrun). Every process passes the same targets (e.g. the same memory-mapped file)
                and a generator with the same seed; each scores only its own range of atoms (and
                copies only that range), the global argmax and the assignment histogram are
                all-reduced, and every process returns the same result. With eps = 0 and no
                annealing it equals the single-process solve for the same seed bit for bit; the
                soft (annealing) phase agrees to float32 rounding (the shards' log-sum-exp are
                combined), and the stochastic iteration then agrees in distribution.

        Returns:
            A :class:`SemidiscreteResult`.
        """
        run = _Run(self, targets, weights, generator, noise, init, progress, collective)
        return run.execute()

    def settings(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
def _relative_eps_scale(targets, noise, *, device, n_ref=1024, max_targets=8192, rows=None) -> float:
    """std of the cost matrix 1/2 |x - y|^2 between reference noise and (a stride of) the targets
    (of ``targets[rows]`` when rows are given)."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = draw(noise, n_ref, targets.shape[1], generator=gen, device=device, dtype=torch.float64)
    count = targets.shape[0] if rows is None else rows.shape[0]
    stride = max(1, count // max_targets)
    picked = targets[::stride] if rows is None else targets[rows[::stride].to(targets.device)]
    y = picked.to(device=device, dtype=torch.float64)
    cost = 0.5 * torch.cdist(x, y).square()
    return float(cost.std())


def relative_eps_scale(targets, noise=None, *, device=None) -> float:
    """The cost scale behind relative eps: std of 1/2 |x - y|^2 between 1024 fixed-seed noise samples
    and (up to 8192 evenly strided) targets [N, d]. ``eps_abs = eps * relative_eps_scale(targets)``."""
    targets = _checks.as_targets(targets)
    device = torch.device(device) if device is not None else targets.device
    return _relative_eps_scale(targets, standard_normal if noise is None else noise, device=device)


class _Run:
    """The changing state of one solve (a local of the loop, not of the solver)."""

    def __init__(self, solver, targets, weights, generator, noise, init, progress, collective=None):
        self.s = solver
        self.t_start = time.perf_counter()
        targets = _checks.as_targets(targets)
        self.n_all, self.d = targets.shape
        w_all = _checks.as_weights(weights, self.n_all)
        self.weights_all = w_all
        if init is not None:
            init = _checks.as_potential(init, self.n_all, "init")
        self.generator = generator
        self.noise = standard_normal if noise is None else noise
        if not callable(self.noise):
            raise ValueError(f"noise: expected a callable sampler, got {type(noise).__name__}")
        self.progress = progress
        self.device = torch.device(solver.device) if solver.device else targets.device
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"generator: on {generator.device}, but the solver computes on {self.device}")
        self.dtype = _DTYPES[solver.dtype]

        # Duplicates: one atom per distinct position, carrying the summed weight. Atoms are read from
        # the targets through `rows` (their target indices; None: atom = target), never copied whole.
        self.duplicates = find_duplicates(targets, w_all)
        self.src = targets
        if self.duplicates is not None:
            self.rows = self.duplicates.representative
            w = self.duplicates.group_weights()
            if init is not None:
                init = init[self.rows.to(init.device)]
        else:
            self.rows, w = None, w_all
        self.n = self.n_all if self.rows is None else int(self.rows.shape[0])
        self.b = (
            torch.full((self.n,), 1.0 / self.n, dtype=torch.float64, device=self.device)
            if w is None
            else w.to(self.device)
        )

        # Sharding: this process scores atoms [lo, hi) only (all of them without a collective).
        self.collective = collective
        if collective is not None and collective.world_size > self.n:
            raise ValueError(
                f"collective: {collective.world_size} processes for {self.n} distinct targets; "
                "use at most one process per target"
            )
        self.lo, self.hi = (0, self.n) if collective is None else collective.shard(self.n)

        # Centred atoms in the compute dtype: this process's range is copied if it fits in
        # memory_limit, otherwise streamed (with a centre) from the targets where they are.
        chunk0 = chunk_size_for(solver.batch_size, self.n, self.d, solver.chunk_size)
        mean = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        sq = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start, stop, y in self._atom_chunks(chunk0):
            mean += (self.b[start:stop, None] * y).sum(0)
            sq[start:stop] = y.square().sum(1)
        self.mean = mean
        self.sqnorm = sq
        itemsize = torch.finfo(self.dtype).bits // 8
        local = self.hi - self.lo
        self.subset = None  # positions of the local atoms in self.keys when streaming with rows
        if local * self.d * itemsize <= solver.memory_limit:
            self.keys = torch.empty(local, self.d, dtype=self.dtype, device=self.device)
            for start, stop, y in self._atom_chunks(chunk0, self.lo, self.hi):
                self.keys[start - self.lo : stop - self.lo] = (y - mean).to(self.dtype)
            self.center = None
        else:
            if self.rows is None:
                self.keys = targets[self.lo : self.hi]  # a view: nothing is read yet
            else:
                self.keys = targets
                self.subset = self.rows[self.lo : self.hi].to(targets.device)
            self.center = mean.to(self.dtype)
        self.init = init
        self.lowp = self._lowp_keys() if solver.score_dtype is not None else None

        self.eps_abs = solver.eps
        if solver.eps > 0 and solver.relative_eps:
            self.eps_abs = solver.eps * _relative_eps_scale(
                targets, self.noise, device=self.device, rows=self.rows
            )
        tol = solver.tol if solver.tol is not None else 0.05
        self.eval_samples = solver.eval_samples or int(
            min(1 << 22, max(1 << 14, math.ceil(10.0 * math.sqrt(2.0 * self.n) / tol)))
        )
        self.samples = 0
        self.steps = 0
        self.history: list[HistoryEntry] = []

    def _lowp_keys(self) -> LowpKeys:
        """Low-precision copy of the (copied, centred) atoms for exact low-precision argmax."""
        s = self.s
        if self.collective is not None:
            raise ValueError("score_dtype: low-precision scoring needs one process (for now)")
        dtype = getattr(torch, s.score_dtype)
        need = (self.n * self.d * torch.finfo(self.dtype).bits) // 8
        if self.center is not None or need + (self.n * self.d * 2) > s.memory_limit:
            raise ValueError(
                f"score_dtype: low-precision scoring re-scores from the solver's own copy of the targets "
                f"and keeps a {s.score_dtype} copy: [{self.n}, {self.d}] needs "
                f"{need + self.n * self.d * 2} bytes, over memory_limit={s.memory_limit}; raise memory_limit"
            )
        chunks = target_chunks(
            self.keys, max(1, (1 << 22) // self.d), device=self.device, dtype=torch.float64
        )
        zeros = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        # the keys are centred already: centre 0; the bias is set per call (_hard)
        return LowpKeys.build(chunks, (self.n, self.d), dtype, zeros, zeros.new_zeros(self.d))

    # -- scoring helpers -----------------------------------------------------------------------
    def _draw(self, n):
        x = draw(self.noise, n, self.d, generator=self.generator, device=self.device, dtype=self.dtype)
        self.samples += n
        return x

    def _bias(self, h, eps=0.0):
        if eps == 0:
            return (h - h.max()).to(self.dtype)
        scaled = h / eps + torch.log(self.b)
        return (scaled - scaled.max()).to(self.dtype)

    def _chunk(self, n):
        return chunk_size_for(n, self.n, self.d, self.s.chunk_size)

    def _atom_chunks(self, chunk, lo=0, hi=None):
        """(start, stop, atoms[start:stop]) in float64 on the compute device, for atoms [lo, hi)."""
        hi = self.n if hi is None else hi
        if self.rows is None:
            for start, stop, y in target_chunks(
                self.src[lo:hi], chunk, device=self.device, dtype=torch.float64
            ):
                yield start + lo, stop + lo, y
        else:
            subset = self.rows[lo:hi].to(self.src.device)
            for start, stop, y in target_chunks(
                self.src, chunk, device=self.device, dtype=torch.float64, subset=subset
            ):
                yield start + lo, stop + lo, y

    def _hard(self, x, h, top2=False):
        """Global (atom index, best score, second-best score or None) of each row of x."""
        if self.lowp is not None:
            lowp = self.lowp.with_bias(h - h.max())
            return stream_argmax_lowp(x, lowp, targets=self.keys, chunk=self._chunk(x.shape[0]), top2=top2)
        idx, best, second = stream_argmax(
            x,
            self.keys,
            self._bias(h)[self.lo : self.hi],
            chunk=self._chunk(x.shape[0]),
            center=self.center,
            top2=top2,
            subset=self.subset,
            positions=True,
        )
        if self.collective is None:
            return idx, best, second
        if top2 and second is None:  # a one-atom shard has no second best
            second = torch.full_like(best, float("-inf"))
        return combine_argmax(idx + self.lo, best, second, self.collective, self.n, self.lo, self.hi)

    def _soft(self, x, h, eps, squares=False):
        """Column sums [N] (and sums of squares) of the soft assignment, over every shard."""
        col = self.collective
        sums, sq, lse = stream_softmax_columns(
            x,
            self.keys,
            self._bias(h, eps)[self.lo : self.hi],
            chunk=self._chunk(x.shape[0]),
            center=self.center,
            alpha=1.0 / eps,
            squares=squares,
            subset=self.subset,
            combine_lse=None if col is None else (lambda lse: combine_logsumexp(lse, col)),
        )
        if col is None:
            return sums, sq, lse
        sums = all_reduce_columns(sums, col, self.n, self.lo)
        if sq is not None:
            sq = all_reduce_columns(sq, col, self.n, self.lo)
        return sums, sq, lse

    def _chi2_batch(self, h, n) -> float:
        """chi2 of potential h on n fresh samples (hard), for warm-start selection."""
        acc = MarginalAccumulator(self.n, self.b, device=self.device, groups=1)
        done = 0
        while done < n:
            m = min(4096, n - done)
            idx, _, _ = self._hard(self._draw(m), h)
            acc.add_index(idx)
            done += m
        return acc.chi2()[0]

    def measure(self, h, tol: float | None = None) -> tuple[float, float]:
        """chi2 and its standard error for potential h, on fresh samples.

        Starts with eval_samples; while the verdict against ``tol`` is unclear (chi2 within two
        standard errors of tol) the sample doubles, up to 8x.
        """
        acc = MarginalAccumulator(self.n, self.b, device=self.device)
        batch = max(self.s.batch_size, 4096)
        target = self.eval_samples
        while True:
            while acc.num_samples < target:
                m = min(batch, target - acc.num_samples)
                x = self._draw(m)
                if self.eps_abs == 0:
                    idx, _, _ = self._hard(x, h)
                    acc.add_index(idx)
                else:
                    sums, squares, _ = self._soft(x, h, self.eps_abs, squares=True)
                    acc.add_soft(sums, squares, m)
            chi2, se = acc.chi2()
            undecided = tol is not None and abs(chi2 - tol) < 2 * se
            # A first "converged" verdict is confirmed on twice the sample: stopping at the first
            # lucky low estimate would bias the returned potential's chi2 upwards.
            unconfirmed = _converged(chi2, se, tol) and target < 2 * self.eval_samples
            if not (undecided or unconfirmed) or target >= 8 * self.eval_samples:
                return chi2, se
            target *= 2

    # -- initialisation ------------------------------------------------------------------------
    def _warm_start(self):
        z_quad = None
        kind = self.s.warm_start
        if self.init is not None:
            h = self.init.to(self.device, torch.float64) - 0.5 * self.sqnorm
            return h - (self.b * h).sum()
        if kind in ("auto", "gaussian"):
            z_quad = self._gaussian_quadratic()
        if kind == "zero":
            return torch.zeros(self.n, dtype=torch.float64, device=self.device)
        if kind == "nearest":  # g = 0 in the 1/2|x-y|^2 convention: h = -|y - mean|^2 / 2
            centred = self.sqnorm - 2 * self._dot_mean() + self.mean.square().sum()
            return -0.5 * centred
        if kind == "gaussian":
            return -0.5 * z_quad
        probe = min(4 * self.n, 1 << 16)
        best = None
        for lam in (0.0, 0.5, 1.0):
            h = -0.5 * lam * z_quad
            c = self._chi2_batch(h, probe)
            if best is None or c < best[0]:
                best = (c, h)
        return best[1]

    def _dot_mean(self):
        out = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start, stop, y in self._atom_chunks(self._chunk(1)):
            out[start:stop] = y @ self.mean
        return out

    def _gaussian_quadratic(self):
        """(y - mean)^T Sigma^{+1/2} (y - mean) per atom, Sigma the weighted covariance."""
        cov = torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)
        chunk = self._chunk(self.d)
        for start, stop, y in self._atom_chunks(chunk):
            z = y - self.mean
            cov += (z * self.b[start:stop, None]).T @ z
        evals, evecs = torch.linalg.eigh(cov)
        floor = evals.max().clamp_min(1e-300) * 1e-10
        inv_quarter = torch.where(evals > floor, evals.clamp_min(floor) ** -0.25, torch.zeros_like(evals))
        proj = evecs * inv_quarter
        out = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start, stop, y in self._atom_chunks(chunk):
            out[start:stop] = ((y - self.mean) @ proj).square().sum(1)
        return out

    def _gap_scale(self, h) -> float:
        x = self._draw(min(4096, max(256, 4 * self.n)))
        _, best, second = self._hard(x, h, top2=True)
        if self.n < 2:
            return 1.0
        gap = (best - second).to(torch.float64)
        return max(float(gap.mean()), 1e-30)

    # -- main loop -----------------------------------------------------------------------------
    def execute(self) -> SemidiscreteResult:
        s = self.s
        with full_precision(self.device):
            return self._loop(s)

    def _loop(self, s) -> SemidiscreteResult:
        from tqdm.auto import tqdm

        if self.n == 1:
            return self._finish(
                torch.zeros(1, dtype=torch.float64, device=self.device), (0.0, 0.0), converged=True
            )
        h = self._warm_start()
        if self.init is not None:  # resuming: done already if the given potential is good enough
            chi = self.measure(h, s.tol)
            if _converged(chi[0], chi[1], s.tol):
                return self._finish(h, chi, converged=True)
        scale0 = self._gap_scale(h)
        gap_sum = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        gap_cnt = torch.zeros_like(gap_sum)
        eps_end = self.eps_abs
        anneal_to = max(s.anneal_end * scale0, eps_end)
        # Annealing builds the coarse structure; a warm start from a given potential has it.
        anneal = s.anneal and self.init is None
        eps = s.anneal_start * scale0 if anneal and s.anneal_start * scale0 > anneal_to else None
        schedule = _Anneal(self.s, eps, anneal_to, self.n) if eps else None
        h_avg = None
        k_avg = 0
        mom = torch.zeros_like(h)
        sq_avg = torch.zeros_like(h)
        chi2_iter = float("nan")
        next_eval = None
        last_measure = None
        converged = False
        bar = tqdm(
            total=s.max_steps, disable=not self.progress, unit="step", dynamic_ncols=True, desc="solve"
        )
        train_samples = 0
        try:
            while True:
                annealing = schedule is not None and schedule.eps is not None
                eps = schedule.eps if annealing else None
                batch = s.anneal_batch_size if annealing else s.batch_size
                if s.batch_growth > 0:
                    batch = int(batch * (1 + s.batch_growth * train_samples / self.n))
                x = self._draw(batch)
                train_samples += batch
                cur_eps = eps if annealing else eps_end
                if cur_eps and cur_eps > 0:
                    # The batch chi2 (display only) needs the squares: skipped while annealing.
                    sums, squares, _ = self._soft(x, h, cur_eps, squares=not annealing)
                    mass = sums / batch
                    chi_b = float("nan") if annealing else _batch_chi2(sums, squares, batch, self.b)
                    scale = (
                        scale0 if s.preconditioner == "global" else self._cell_scale(gap_sum, gap_cnt, scale0)
                    )
                    scale = scale + cur_eps
                else:
                    idx, best, second = self._hard(x, h, top2=s.preconditioner == "cell")
                    counts = torch.bincount(idx, minlength=self.n).to(torch.float64)
                    mass = counts / batch
                    chi_b = _batch_chi2(counts, counts, batch, self.b)
                    if s.preconditioner == "cell":
                        gap = (best - second).to(torch.float64)
                        gap_sum.mul_(0.99).index_add_(0, idx, gap)
                        gap_cnt.mul_(0.99).index_add_(0, idx, torch.ones_like(gap))
                        scale = self._cell_scale(gap_sum, gap_cnt, scale0)
                    else:
                        scale = scale0
                if not math.isnan(chi_b):
                    chi2_iter = chi_b if math.isnan(chi2_iter) else 0.9 * chi2_iter + 0.1 * chi_b
                direction = 1.0 - mass / self.b
                if s.optimizer == "adam":
                    k = self.steps + 1
                    mom.mul_(0.9).add_(direction, alpha=0.1)
                    sq_avg.mul_(0.999).addcmul_(direction, direction, value=0.001)
                    direction = (mom / (1 - 0.9**k)) / ((sq_avg / (1 - 0.999**k)).sqrt() + 1e-8)
                if annealing:
                    lr = _capped(s.lr_anneal, s.anneal_noise_level, batch, self.n)
                else:
                    lr = _capped(s.lr, s.noise_level, batch, self.n)
                if s.lr_decay > 0:
                    lr = lr * (1.0 + self.steps / 100.0) ** (-s.lr_decay)
                h = h + lr * scale * direction
                self.steps += 1
                if annealing:
                    schedule.update(batch)
                    if schedule.eps is None and eps_end == 0 and s.preconditioner == "cell":
                        gap_sum.zero_()
                        gap_cnt.zero_()
                else:
                    h_avg, k_avg = self._average(h, h_avg, k_avg)
                    if next_eval is None:
                        next_eval = self.samples + self.eval_samples * s.eval_every
                bar.update(1)
                elapsed = time.perf_counter() - self.t_start
                record = None
                if not annealing and self.samples >= next_eval:
                    chi2, se = self.measure(h_avg, s.tol)
                    last_measure = (chi2, se, self.steps)
                    next_eval = self.samples + self.eval_samples * s.eval_every
                    record = (chi2, se)
                    elapsed = time.perf_counter() - self.t_start
                    converged = _converged(chi2, se, s.tol)
                if record is not None or self.steps % 50 == 0:
                    self.history.append(
                        HistoryEntry(
                            step=self.steps,
                            samples=self.samples,
                            seconds=elapsed,
                            eps=cur_eps or 0.0,
                            chi2=None if record is None else record[0],
                            chi2_stderr=None if record is None else record[1],
                            chi2_iterate=chi2_iter,
                        )
                    )
                    post = {"chi2_iter": f"{chi2_iter:.3g}"}
                    if last_measure is not None:
                        post["chi2"] = f"{last_measure[0]:.4f}±{last_measure[1]:.4f}"
                    post["eps"] = f"{(cur_eps or 0.0):.3g}"
                    bar.set_postfix(post, refresh=False)
                if converged:
                    break
                if s.max_steps is not None and self.steps >= s.max_steps:
                    break
                if s.max_seconds is not None and elapsed >= s.max_seconds:
                    break
        finally:
            bar.close()
        final = h_avg if h_avg is not None else h
        if last_measure is not None and last_measure[2] == self.steps:
            chi = last_measure[:2]
        else:
            chi = self.measure(final, s.tol)
            converged = _converged(chi[0], chi[1], s.tol)
        return self._finish(final, chi, converged)

    def _cell_scale(self, gap_sum, gap_cnt, scale0):
        # Posterior mean of the cell's gap with a prior of one sample at the global scale.
        return (gap_sum + scale0) / (gap_cnt + 1.0)

    def _average(self, h, h_avg, k):
        s = self.s
        k += 1
        if h_avg is None or s.averaging == "none":
            return h.clone(), k
        if s.averaging == "poly":
            w = (s.average_power + 1.0) / (k + s.average_power + 1.0)
        elif s.averaging == "uniform":
            w = 1.0 / k
        else:
            w = 1.0 - s.ema_decay
        return h_avg + w * (h - h_avg), k

    def _finish(self, h, chi, converged) -> SemidiscreteResult:
        g = h + 0.5 * self.sqnorm
        g = g - (self.b * g).sum()
        if self.duplicates is not None:
            g = g[self.duplicates.inverse.to(g.device)]
        seconds = time.perf_counter() - self.t_start
        settings = self.s.settings()
        settings.update(
            eps_abs=self.eps_abs,
            num_targets=self.n_all,
            dim=self.d,
            processes=1 if self.collective is None else self.collective.world_size,
            targets_streamed=self.center is not None,
        )
        return SemidiscreteResult(
            potential=g.detach().to(torch.float64),
            eps=self.eps_abs,
            chi2=float(chi[0]),
            chi2_stderr=float(chi[1]),
            chi2_samples=self.eval_samples if self.n > 1 else 0,
            converged=bool(converged),
            steps=self.steps,
            samples=self.samples,
            seconds=seconds,
            history=self.history,
            weights=self.weights_all,
            duplicates=self.duplicates,
            settings=settings,
        )


class _Anneal:
    """Geometric eps schedule of the annealing phase; ``eps`` becomes None when it is over."""

    def __init__(self, solver: SemidiscreteSolver, start: float, end: float, num_atoms: int):
        self.eps: float | None = start
        self.end = end
        self.decay = math.log(end / start) / (solver.anneal_length * num_atoms)

    def update(self, batch: int) -> None:
        self.eps *= math.exp(self.decay * batch)
        if self.eps <= self.end * (1 + 1e-9):
            self.eps = None


def _capped(lr: float, noise_level: float | None, batch: int, n: int) -> float:
    """The step size lr, capped at noise_level * batch / n (None: no cap)."""
    return lr if noise_level is None else min(lr, noise_level * batch / n)


def _converged(chi2: float, se: float, tol: float | None) -> bool:
    """Converged when chi2 is below tol with about 97.5% confidence (chi2 + 2 se <= tol)."""
    return tol is not None and chi2 + 2.0 * (0.0 if math.isnan(se) else se) <= tol


def _batch_chi2(sums, squares, n, b) -> float:
    if n < 2:
        return float("nan")
    return float(((sums * sums - squares) / b).sum() / (n * (n - 1.0)) - 1.0)
