"""The semidiscrete problem as the solver sees it: distinct atoms with their weights, centred keys in the
compute dtype (copied or streamed), the scorer, the noise source and the chi2 measurement.

The solver works in the dot-product form on centred atoms, score_j(x) = <x, y_j - mean> + h_j: it is
translation invariant and well scaled whatever the data's offset and units. ``h`` and the potential g of
the 1/2 |x - y|^2 convention are related by g_j = h_j + |y_j|^2 / 2 (up to a constant).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from functools import partial

import torch

from sdfm.transport import intrinsic, validate
from sdfm.transport._stream import LowpKeys, Top2, chunk_size_for, target_chunks
from sdfm.transport.certified import ScoreCertificate
from sdfm.transport.collinear import line_direction
from sdfm.transport.diagnostics import MarginalAccumulator
from sdfm.transport.duplicates import find_duplicates, resolution_radius
from sdfm.transport.pruned import Pruning
from sdfm.transport.scoring import Scorer
from sdfm.transport.sharding import Collective
from sdfm.transport.smoothness import SmoothError, SmoothGroups, worst_ratio
from sdfm.transport.sources import draw, standard_normal

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: measurements count the float64 argmax of float32 scores (certified, near ties re-scored:
#: :meth:`SemidiscreteProblem.hard_exact`); False counts the float32 argmax (as before 2026-12-04)
CERTIFIED_COUNTS = True
#: a measurement batch whose float32 winners are unproven in more than this fraction of its rows
#: scores those rows densely in float64 (cheaper than re-scoring each one's candidates pair by pair
#: where many targets are within the bound: tight clusters in high dimension, a circle)
DENSE_FLOAT64_ROWS = 0.05

#: the default ``quasi_random`` applies up to this dimension: scrambled Sobol points lowered the
#: variance of cell counts by 3.5x in 2-D and 12% in 16-D, and not at all in 64-D
QUASI_RANDOM_MAX_DIM = 16


def converged(chi2: float, se: float, tol: float | None) -> bool:
    """Converged when chi2 is below tol with about 97.5% confidence (chi2 + 2 se <= tol)."""
    return tol is not None and chi2 + 2.0 * (0.0 if math.isnan(se) else se) <= tol


@dataclass(frozen=True)
class Check:
    """One measurement of a potential on fresh noise: chi2 with its standard error, the number of
    samples behind it, and the worst mass error along smooth functions of the atoms (per family)."""

    chi2: float
    stderr: float
    samples: int
    smooth: list[SmoothError] = field(default_factory=list)
    #: chi2 of the same samples counted by the float32 scores' own argmax (None: not certified)
    chi2_scored: float | None = None

    def passes(self, tol: float | None, smooth_tol: float | None) -> bool:
        """chi2 + 2 stderr <= tol and no smooth group off by more than smooth_tol floors."""
        ok = converged(self.chi2, self.stderr, tol)
        return ok and (smooth_tol is None or worst_ratio(self.smooth) <= smooth_tol)


class SemidiscreteProblem:
    """Targets prepared once for one solve (validation, duplicates, weights, keys, sharding).

    Attributes:
        n: number of distinct atoms (duplicates merged); n_all the number of targets.
        d: dimension. b: atom weights [n] float64. mean: weighted mean [d]; sqnorm: |y_j|^2 [n].
        scorer: scores over this process's atoms. lowp: low-precision keys (score_dtype) or None.
        eps_abs: the absolute eps of the target coupling. eval_samples: samples per chi2 measurement.
        samples: every noise sample drawn so far (training and measurement).
    """

    # long: every field of the prepared problem set once, in the order they depend on each other
    def __init__(self, solver, targets, weights, generator, noise, collective: Collective | None = None):
        self.settings = solver
        targets = validate.as_targets(targets)
        self.n_all, self.d = targets.shape
        self.weights_all = validate.as_weights(weights, self.n_all)
        self.generator = generator
        self.noise = standard_normal if noise is None else noise
        if not callable(self.noise):
            raise ValueError(f"noise: expected a callable sampler, got {type(noise).__name__}")
        #: whether the source is the standard Gaussian (closed forms and quasi-random draws apply)
        self.gaussian = self.noise is standard_normal
        self.device = torch.device(solver.device) if solver.device else targets.device
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"generator: on {generator.device}, but the solver computes on {self.device}")
        # one-dimensional atoms are scored in float64 whatever ``dtype`` says (see assign.compute_dtype)
        self.dtype = torch.float64 if targets.shape[1] == 1 else DTYPES[solver.dtype]

        # Duplicates: one atom per distinct position, carrying the summed weight; atoms closer than the
        # scores resolve (see duplicates.resolution_radius) count as one position. Atoms are read from
        # the targets through `rows` (their target indices; None: atom = target), never copied whole.
        self.merge_radius = self._merge_radius(targets)
        self.duplicates = find_duplicates(targets, self.weights_all, radius=self.merge_radius)
        self.src = targets
        if self.duplicates is not None:
            self.rows = self.duplicates.representative
            w = self.duplicates.group_weights()
        else:
            self.rows, w = None, self.weights_all
        self.n = self.n_all if self.rows is None else int(self.rows.shape[0])
        self.b = (
            torch.full((self.n,), 1.0 / self.n, dtype=torch.float64, device=self.device)
            if w is None
            else w.to(self.device)
        )
        #: every atom has the same weight (the solver's steps then take one scale for all)
        self.uniform = w is None or bool(self.b.min() == self.b.max())

        # Sharding: this process scores atoms [lo, hi) only (all of them without a collective).
        if collective is not None and collective.world_size > self.n:
            raise ValueError(
                f"collective: {collective.world_size} processes for {self.n} distinct targets; "
                "use at most one process per target"
            )
        self.collective = collective
        lo, hi = (0, self.n) if collective is None else collective.shard(self.n)

        # Centred atoms in the compute dtype: this process's range is copied if it fits in
        # memory_limit, otherwise streamed (with a centre) from the targets where they are.
        self.batch_size = solver.batch_size or int(min(4096, max(256, 4 * self.n)))
        self.anneal_batch_size = solver.anneal_batch_size or int(min(1024, max(16, self.n // 4)))
        chunk0 = chunk_size_for(self.batch_size, self.n, self.d, solver.chunk_size)
        mean = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        sq = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start, stop, y in self.atom_chunks(chunk0):
            mean += (self.b[start:stop, None] * y).sum(0)
            sq[start:stop] = y.square().sum(1)
        self.mean = mean
        self.sqnorm = sq
        # Atoms on one line (every 1-D problem, any two distinct atoms, a chain embedded in d > 1):
        # the cell of x depends on <x, u> only, so the problem is one-dimensional (solved by
        # quantiles, see exact1d) and its chain of narrow cells is scored in float64.
        self.line = None
        if self.n >= 2:
            self.line = line_direction(partial(self.atom_chunks, chunk0), targets.dtype)
        if self.line is not None:
            self.dtype = torch.float64
        self.scorer = self._scorer(lo, hi, chunk0)
        self.lowp = self._lowp_keys() if solver.score_dtype is not None else None
        self._certificate = None  # (built at the first certified count: float32 scores only)
        self._scorer64 = None  # (float64 scores of the atoms, for batches with many near ties)
        #: the solve step at which float32 scores gave way to float64 (None: they did not)
        self.float64_from: int | None = None

        self.eps_abs = solver.eps
        if solver.eps > 0 and solver.relative_eps:
            self.eps_abs = solver.eps * relative_eps_scale_of(
                targets, self.noise, device=self.device, rows=self.rows
            )
        tol = solver.tol if solver.tol is not None else 0.05
        self.eval_samples = solver.eval_samples or int(
            min(1 << 22, max(1 << 10, math.ceil(10.0 * math.sqrt(2.0 * self.n) / tol)))
        )
        self.samples = 0
        self._smooth = None
        # Training draws (not measurements) are quasi-random for the Gaussian source in low d, where
        # scrambled Sobol points count the cells with much less noise (2-D: 3.5x lower variance).
        qmc = solver.quasi_random
        if qmc is None:
            qmc = self.gaussian and self.d <= QUASI_RANDOM_MAX_DIM
        elif qmc and not self.gaussian:
            raise ValueError("quasi_random: quasi-random draws need the default standard Gaussian source")
        self.sobol = None
        if qmc:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=self.device))
            self.sobol = torch.quasirandom.SobolEngine(self.d, scramble=True, seed=seed)

    def _scorer(self, lo: int, hi: int, chunk: int) -> Scorer:
        """The scorer of atoms [lo, hi) in the compute dtype: centred atoms copied if they fit in
        memory_limit, otherwise streamed (with a centre) from the targets where they are."""
        solver, targets = self.settings, self.src
        subset = center = None
        if (hi - lo) * self.d * (torch.finfo(self.dtype).bits // 8) <= solver.memory_limit:
            keys = torch.empty(hi - lo, self.d, dtype=self.dtype, device=self.device)
            for start, stop, y in self.atom_chunks(chunk, lo, hi):
                keys[start - lo : stop - lo] = (y - self.mean).to(self.dtype)
        else:
            if self.rows is None:
                keys = targets[lo:hi]  # a view: nothing is read yet
            else:
                keys = targets
                subset = self.rows[lo:hi].to(targets.device)
            center = self.mean.to(self.dtype)
        return Scorer(
            keys,
            self.n,
            lo,
            center=center,
            subset=subset,
            collective=self.collective,
            chunk_size=solver.chunk_size,
            # cluster bounds need the atoms held (a cluster-sorted copy is made): not when streamed
            pruning=None if center is not None or solver.score_dtype is not None else Pruning(solver.pruning),
        )

    def off_the_record(self):
        """A block whose searches leave the pruning's schedule and counts as they were (a probe the
        solve does not count), so that a solve with it repeats one without it bit for bit."""
        pruning = self.scorer.pruning
        return contextlib.nullcontext() if pruning is None else pruning.unscheduled()

    def pruning_summary(self) -> dict | None:
        """How the argmax searches went (see :class:`~sdfm.transport.pruned.Pruning`), or None."""
        return None if self.scorer.pruning is None else self.scorer.pruning.summary()

    @property
    def streamed(self) -> bool:
        """Whether the atoms are read from the targets chunk by chunk (no copy of them was made)."""
        return self.scorer.center is not None

    def _lowp_keys(self) -> LowpKeys:
        """Low-precision copy of the (copied, centred) atoms for exact low-precision argmax."""
        s = self.settings
        if self.collective is not None:
            raise ValueError("score_dtype: low-precision scoring needs one process (for now)")
        dtype = getattr(torch, s.score_dtype)
        need = (self.n * self.d * torch.finfo(self.dtype).bits) // 8
        if self.streamed or need + (self.n * self.d * 2) > s.memory_limit:
            raise ValueError(
                f"score_dtype: low-precision scoring re-scores from the solver's own copy of the targets "
                f"and keeps a {s.score_dtype} copy: [{self.n}, {self.d}] needs "
                f"{need + self.n * self.d * 2} bytes, over memory_limit={s.memory_limit}; raise memory_limit"
            )
        chunks = target_chunks(
            self.scorer.keys, max(1, (1 << 22) // self.d), device=self.device, dtype=torch.float64
        )
        zeros = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        # the keys are centred already: centre 0; the bias is set per call (hard)
        return LowpKeys.build(chunks, (self.n, self.d), dtype, zeros, zeros.new_zeros(self.d))

    # -- noise and scores ------------------------------------------------------------------------
    def draw(self, n: int) -> torch.Tensor:
        """n fresh i.i.d. noise samples [n, d] in the compute dtype (counted in ``samples``)."""
        x = draw(self.noise, n, self.d, generator=self.generator, device=self.device, dtype=self.dtype)
        self.samples += n
        return x

    def draw_train(self, n: int) -> torch.Tensor:
        """n noise samples for a step: scrambled Sobol points mapped by the normal quantile function
        when quasi-random draws are on, else i.i.d. (measurements always draw i.i.d.: the chi2
        estimator assumes independent samples)."""
        if self.sobol is None:
            return self.draw(n)
        u = self.sobol.draw(n, dtype=torch.float64).clamp_(2.0**-53, 1.0 - 2.0**-53)
        self.samples += n
        x = math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
        return x.to(device=self.device, dtype=self.dtype)

    def bias(self, h: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
        """Score bias [n] in the compute dtype: h (eps = 0) or h / eps + log b, shifted to max 0."""
        if eps == 0:
            return (h - h.max()).to(self.dtype)
        scaled = h / eps + torch.log(self.b)
        return (scaled - scaled.max()).to(self.dtype)

    def hard(self, x: torch.Tensor, h: torch.Tensor, top2: bool = False):
        """(atom index [n], best score [n], second-best score [n] or None) of each noise sample."""
        if self.lowp is not None:
            return self.scorer.argmax_lowp(x, self.lowp.with_bias(h - h.max()), top2=top2)
        return self.scorer.argmax(x, self.bias(h), top2=top2)

    @property
    def certifies(self) -> bool:
        """Whether a measurement's counts are certified (hard float32 scores, :meth:`hard_exact`)."""
        return CERTIFIED_COUNTS and self.eps_abs == 0 and self.dtype == torch.float32 and self.lowp is None

    def hard_exact(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the float64 argmax [n], ties to the smallest index; the argmax as scored [n]) of noise x.

        Float32 scores (:attr:`certifies`): each row's winner is proven by the scores' rounding
        bound (:mod:`sdfm.transport.certified`); the rows it does not prove (near ties) are scored
        again in float64 against the exact atoms. Otherwise the scored argmax is taken as it is:
        float64 scores, and low-precision ones, whose argmax is re-scored in float64 already."""
        if not self.certifies:
            index = self.hard(x, h)[0]
            return index, index
        bias = self.bias(h)
        index, best, second = self.scorer.argmax(x, bias, top2=True)
        if self._certificate is None:
            chunk = self.chunk(self.d)
            self._certificate = ScoreCertificate.build(self.src, self.mean, torch.float32, chunk=chunk)
        rows = self._certificate.uncertain(x, best, second).nonzero().squeeze(1)
        if rows.numel() == 0:
            return index, index
        lo = self.scorer.lo
        exact = index.clone()
        if rows.numel() > DENSE_FLOAT64_ROWS * x.shape[0]:  # (the same rows on every process)
            exact[rows] = self._float64_scorer().argmax(x[rows].to(torch.float64), h - h.max())[0]
            return exact, index
        exact[rows] = self.scorer.exact_argmax(
            x[rows],
            bias,
            h - h.max(),
            self.mean,
            self._certificate,
            atoms=lambda pos: self.atoms_at(pos + lo) - self.mean,
        )
        return exact, index

    def _float64_scorer(self) -> Scorer:
        """Float64 scores of this process's atoms streamed from the targets (no copy is kept)."""
        if self._scorer64 is None:
            lo, hi = self.scorer.lo, self.scorer.hi
            rows = torch.arange(lo, hi) if self.rows is None else self.rows[lo:hi]
            self._scorer64 = Scorer(
                self.src,
                self.n,
                lo,
                center=self.mean,
                subset=rows.to(self.src.device),
                collective=self.collective,
                chunk_size=self.settings.chunk_size,
            )
        return self._scorer64

    def use_float64(self, step: int) -> None:
        """Scores in float64 from now on (the solver switches when float32 counts are off by more
        than a quarter of tol: near ties everywhere, e.g. many atoms on a circle). The float64 copy
        of the atoms takes twice the memory (streamed from the targets beyond memory_limit)."""
        self.dtype = torch.float64
        self.scorer = self._scorer(self.scorer.lo, self.scorer.hi, self.chunk(self.batch_size))
        self.float64_from = step

    def top2(self, x: torch.Tensor, h: torch.Tensor) -> Top2:
        """Best and second-best atoms (indices and scores) of each noise sample."""
        return self.scorer.top2(x, self.bias(h))

    def soft(self, x: torch.Tensor, h: torch.Tensor, eps: float, squares: bool = False):
        """Column sums [n] (and sums of squares) of the soft assignment at eps, over every shard."""
        return self.scorer.softmax_columns(x, self.bias(h, eps), alpha=1.0 / eps, squares=squares)

    # -- atoms -----------------------------------------------------------------------------------
    def chunk(self, n: int) -> int:
        return chunk_size_for(n, self.n, self.d, self.settings.chunk_size, self.device)

    def atoms_at(self, index: torch.Tensor) -> torch.Tensor:
        """The atoms y[index] [len, d] in float64 on the compute device (index into the n atoms)."""
        rows = index if self.rows is None else self.rows.to(index.device)[index]
        return self.src[rows.to(self.src.device)].to(device=self.device, dtype=torch.float64)

    def _merge_radius(self, targets: torch.Tensor) -> float:
        """The distance below which atoms are merged: the resolution of the scores' dtype (float64
        for atoms on one line, which are scored in float64 whatever ``dtype`` says)."""
        dtype = self.dtype
        if dtype != torch.float64 and self.n_all >= 2:
            chunk = chunk_size_for(4096, self.n_all, self.d, self.settings.chunk_size)
            chunks = partial(target_chunks, targets, chunk, device=self.device, dtype=torch.float64)
            if line_direction(chunks, targets.dtype) is not None:
                dtype = torch.float64
        return resolution_radius(targets, dtype)

    def atom_chunks(self, chunk: int, lo: int = 0, hi: int | None = None):
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

    def dot_mean(self) -> torch.Tensor:
        """<y_j, mean> [n] (float64)."""
        out = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start, stop, y in self.atom_chunks(self.chunk(1)):
            out[start:stop] = y @ self.mean
        return out

    def gaussian_quadratic(self) -> torch.Tensor:
        """(y - mean)^T Sigma^{+1/2} (y - mean) per atom [n], Sigma the weighted covariance."""
        cov = torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)
        chunk = self.chunk(self.d)
        for start, stop, y in self.atom_chunks(chunk):
            z = y - self.mean
            cov += (z * self.b[start:stop, None]).T @ z
        evals, evecs = torch.linalg.eigh(cov)
        floor = evals.max().clamp_min(1e-300) * 1e-10
        inv_quarter = torch.where(evals > floor, evals.clamp_min(floor) ** -0.25, torch.zeros_like(evals))
        proj = evecs * inv_quarter
        out = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start, stop, y in self.atom_chunks(chunk):
            out[start:stop] = ((y - self.mean) @ proj).square().sum(1)
        return out

    def centred_norms(self) -> torch.Tensor:
        """|y_j - mean| per atom [n] (float64), read chunk by chunk from the targets."""
        out = torch.empty(self.n, dtype=torch.float64, device=self.device)
        for start, stop, y in self.atom_chunks(self.chunk(self.d)):
            out[start:stop] = (y - self.mean).norm(dim=1)
        return out

    def potential_of(self, h: torch.Tensor) -> torch.Tensor:
        """g [n_all] (float64, 1/2 |x - y|^2 convention, b-weighted mean 0) of the iterate h [n]."""
        g = h + 0.5 * self.sqnorm
        g = g - (self.b * g).sum()
        if self.duplicates is not None:
            g = g[self.duplicates.inverse.to(g.device)]
        return g.detach().to(torch.float64)

    def iterate_of(self, potential: torch.Tensor) -> torch.Tensor:
        """The iterate h [n] of a potential g [n_all] (1/2 |x - y|^2 convention)."""
        g = validate.as_potential(potential, self.n_all, "init")
        if self.rows is not None:
            g = g[self.rows.to(g.device)]
        h = g.to(self.device, torch.float64) - 0.5 * self.sqnorm
        return h - (self.b * h).sum()

    # -- measurement -----------------------------------------------------------------------------
    def chi2_batch(self, h: torch.Tensor, n: int) -> float:
        """chi2 of potential h on n fresh samples (hard), for warm-start selection."""
        sizes = [min(4096, n - done) for done in range(0, n, 4096)]
        return self.chi2_of_index(torch.cat([self.hard(self.draw(m), h)[0] for m in sizes]))

    def chi2_of_index(self, index: torch.Tensor) -> float:
        """chi2 of the atoms' counts in ``index`` (the hard assignment of some noise) against b."""
        acc = MarginalAccumulator(self.n, self.b, device=self.device, groups=1)
        acc.add_index(index)
        return acc.chi2()[0]

    def intrinsic_dimension(self) -> float:
        """TwoNN estimate of the atoms' intrinsic dimension (:mod:`sdfm.transport.intrinsic`), on a
        fixed-seed subsample of at most 2,048 atoms read from the targets (nothing else is copied)."""
        pick = intrinsic.sample_rows(self.n)
        rows = pick if self.rows is None else self.rows.cpu()[pick]
        points = self.src[rows.to(self.src.device)].to(self.device, torch.float64)
        return intrinsic.intrinsic_dimension(points)

    def smooth_groups(self) -> SmoothGroups | None:
        """The smooth-function groups of the atoms (built at the first check; None for n < 8)."""
        if self._smooth is None and self.n >= 8:
            chunk = self.chunk(self.d)
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.device))
            self._smooth = SmoothGroups.build(
                lambda: self.atom_chunks(chunk),
                self.n,
                self.d,
                self.mean,
                self.b,
                generator=torch.Generator().manual_seed(seed),
            )
        return self._smooth

    def check(
        self,
        h: torch.Tensor,
        tol: float | None = None,
        *,
        extend: bool | int = False,
        while_promising: bool = False,
    ) -> Check:
        """chi2 (with standard error) and the smooth-group errors of h on eval_samples fresh i.i.d.
        samples (see :meth:`measure`; an int ``extend`` caps the extended sample at that many; with
        ``while_promising`` a capped extension goes on, on either side of tol, while the estimate is
        within one standard error of the level that would pass at the cap)."""
        return self.check_of(*self._accumulate(h, tol, extend, while_promising))

    def check_of(self, acc: MarginalAccumulator, scored: MarginalAccumulator | None) -> Check:
        """The :class:`Check` of counts accumulated by :meth:`counters` / :meth:`count`."""
        chi2, se = acc.chi2()
        groups = self.smooth_groups()
        smooth = [] if groups is None else groups.errors(acc.mass(), chi2, acc.num_samples)
        return Check(chi2, se, acc.num_samples, smooth, None if scored is None else scored.chi2()[0])

    def counters(self) -> tuple[MarginalAccumulator, MarginalAccumulator | None]:
        """Empty accumulators of a measurement: the exact argmax's counts, and those of the argmax as
        scored where the two can differ (certified float32 scores; None otherwise)."""
        acc = MarginalAccumulator(self.n, self.b, device=self.device)
        scored = MarginalAccumulator(self.n, self.b, device=self.device) if self.certifies else None
        return acc, scored

    def count(self, x: torch.Tensor, h: torch.Tensor, acc, scored) -> None:
        """Adds the hard cells of noise x [m, d] under potential h to a measurement's counters."""
        idx, as_scored = self.hard_exact(x, h)
        acc.add_index(idx)
        if scored is not None:
            scored.add_index(as_scored)

    def undecided(self, acc, tol: float | None, extend: bool | int, while_promising: bool = False) -> bool:
        """Whether a measurement's verdict against tol is unclear enough to extend its sample (see
        :meth:`_accumulate`; ``extend`` as there)."""
        if not extend:
            return False
        chi2, se = acc.chi2()
        undecided = tol is not None and abs(chi2 - tol) < 2 * se
        if extend is not True and while_promising:
            limit = int(extend)
            return undecided and chi2 < tol - 2.0 * se * acc.num_samples / limit + se
        if extend is not True:  # a capped extension (the stop test) only helps below tol
            return undecided and chi2 < tol
        return undecided

    def measure(
        self, h: torch.Tensor, tol: float | None = None, *, extend: bool = False
    ) -> tuple[float, float]:
        """chi2 and its standard error for potential h, on eval_samples fresh i.i.d. samples.

        With ``extend``, while the verdict against ``tol`` is unclear (chi2 within two standard errors
        of tol) the sample doubles, up to 8x (for a final verdict), or up to ``extend`` samples if it is
        an int (the solver's stop test: 2 per atom, where that is more than eval_samples; only while the
        estimate is below tol, where more samples can confirm it).
        """
        return self._accumulate(h, tol, extend)[0].chi2()

    def _accumulate(
        self, h: torch.Tensor, tol: float | None, extend: bool | int, while_promising: bool = False
    ):
        """(the counts of the exact argmax, those of the argmax as scored or None when the two are
        the same by construction), MarginalAccumulators.

        A capped extension (the stop test) goes on only below tol by default. Stopping it as soon as
        the estimate crosses above tol selects the readings that end just above tol: at N = 100,000 an
        average that stopped at chi2 0.088 read 0.101 and 0.113 on its way (BENCHMARKS.md section 34). With
        ``while_promising`` it goes on while it can still pass at the cap, chi2 < tol - 2 se_cap + se
        (se_cap the standard error scaled to the cap), on either side of tol."""
        # extend: True (up to 8 x eval_samples), False, or the most samples to extend to
        limit = 8 * self.eval_samples if extend is True else int(extend)
        acc, scored = self.counters()
        # soft rows are summed per batch: eight batches at least, one per jackknife group
        batch = max(self.batch_size, 4096) if self.eps_abs == 0 else -(-self.eval_samples // 8)
        target = self.eval_samples
        while True:
            while acc.num_samples < target:
                m = min(batch, target - acc.num_samples)
                x = self.draw(m)
                if self.eps_abs == 0:
                    self.count(x, h, acc, scored)
                else:
                    sums, squares, _ = self.soft(x, h, self.eps_abs, squares=True)
                    acc.add_soft(sums, squares, m)
            if not self.undecided(acc, tol, extend, while_promising) or target >= limit:
                return acc, scored
            target = min(2 * target, limit)


def relative_eps_scale_of(targets, noise, *, device, n_ref=1024, max_targets=8192, rows=None) -> float:
    """std of the cost matrix 1/2 |x - y|^2 between reference noise and (a stride of) the targets
    (of ``targets[rows]`` when rows are given), centred. Centring the targets changes the cost by
    terms that depend on x alone or on y alone, which leave the coupling unchanged, so the scale (and
    a relative eps) does not depend on where the data sit: offset 1e6 data otherwise got an eps of
    order 1e5 and an independent coupling in disguise."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = draw(noise, n_ref, targets.shape[1], generator=gen, device=device, dtype=torch.float64)
    count = targets.shape[0] if rows is None else rows.shape[0]
    stride = max(1, count // max_targets)
    picked = targets[::stride] if rows is None else targets[rows[::stride].to(targets.device)]
    y = picked.to(device=device, dtype=torch.float64)
    y = y - y.mean(0)
    cost = 0.5 * torch.cdist(x, y).square()
    return float(cost.std())
