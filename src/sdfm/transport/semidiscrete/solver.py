"""Semidiscrete OT solver: fits the dual potential g from a source (Gaussian noise) to N weighted atoms.

Problem (arXiv 2509.25519, section 2): maximise the concave semi-dual
``F_eps(g) = E_x[g^{c,eps}(x)] + <b, g>`` whose gradient is ``b - m(g)``, m_j(g) the mass the source
sends to atom j. g is optimal iff m(g) = b; progress is measured by chi2(m || b).

Algorithm (chosen by the comparison in BENCHMARKS.md, "Solver"), one :meth:`_Iteration.step` per batch:

0. One dimension, eps = 0 (``exact_1d``): atoms on one line (1-D targets, or a chain in d > 1) are
   solved by quantiles instead (:mod:`~sdfm.transport.semidiscrete.exact1d`); steps 1-6 do not run.
1. Work in the dot-product form on centred atoms, score_j(x) = <x, y_j - mean> + h_j
   (:class:`~sdfm.transport.semidiscrete.problem.SemidiscreteProblem`).
2. Warm start (``warm_start="best"``, see :func:`~sdfm.transport.semidiscrete.parts.select_start`):
   h = 0 or the radial start (the dual of the quantile map from the noise's radius to the atoms'
   distances from their mean), whichever gives the lower chi2 on the probe batch that measures the
   score scale s below. h = 0 wins on high-dimensional data; the radial start on low-dimensional and
   heavy-tailed data (there s is capped at 3x the radial start's own mean gap: at h = 0 the hull
   atoms' gaps set it, thousands of times the cells' own on Cauchy data). In the large
   high-dimensional regime of step 3 (``anneal="auto"``) the lifted start
   (:mod:`~sdfm.transport.semidiscrete.lift`: a solve on k-means clusters, lifted by each coarse
   cell's Gaussian map) is weighed against h = 0 instead.
3. Entropic annealing first (as the DRAG schedule of POT's ``ot.semidiscrete``): soft assignments
   with eps decreasing geometrically from 100 s to 0.3 s (s the mean score gap) over
   ``anneal_length`` (10) samples per atom in batches of min(1024, max(16, N / 4)), with steps
   h_j += lr_anneal * (eps + s) * (1 - m_hat_j / b_j), lr_anneal <= 3 * batch / N (the noise cap of
   step 4). The soft problem's dense Hessian moves mass across many cells at once, which steps on
   the hard problem do only by slow diffusion (the low modes of the cell-adjacency Laplacian): it
   fixes the coarse structure in low dimension. Skipped (``anneal="auto"``) where the annealing step
   is capped (N > 10,240) and the atoms' intrinsic dimension (TwoNN) is 7 or more: there every cell
   borders many others and the hard phase alone is faster.
4. Then preconditioned stochastic ascent on the hard problem, batches of min(4096, max(256, 4 N))
   (quasi-random noise for the Gaussian source in d <= 16):
   h_j += lr * s_j * max(1 - m_hat_j / b_j, -3). s_j is the Newton scale of cell j, the mean gap
   between the best and second-best score of the noise that falls in the cell (d m_j / d h_j ~
   m_j / gap_j), so one step size fits small and large cells whatever the units of the data (the
   default ``preconditioner="adaptive"``: a prior at the start's global gap that fades, and for a
   cell that won no sample, the gaps of the samples it was runner-up for, so that an empty cell
   keeps a scale of its own). An atom that no sample touches (as winner or runner-up) for 32
   expected hits at its weight rises at once to win about half its weight of the batch
   (``empty_rise``, :mod:`~sdfm.transport.semidiscrete.empty`: far outliers of heavy tails). The
   step is capped at lr <= noise_level * batch / N (0.25; 0.7 where the annealing is skipped as
   above, where larger steps average well): the relative counting error of a cell has
   variance N / batch, and iterates noisier than that average badly (the coupling is far from
   linear in h). Each step also takes the coarse-space correction
   (:mod:`~sdfm.transport.semidiscrete.coarse`): a damped Newton step on K smooth functions of the
   atoms, whose Hessian is estimated from the flux of the noise through the faces between cells
   (up to ``smooth_max_n`` atoms, and at any N in the large high-dimensional regime).
   Step control (``lr_control``, outside that regime): when the iterate's own chi2 (running mean
   of the batches') stays above 8 tol without falling at two looks in a row, lr halves and the
   average restarts. With the cell scales, chains of narrow cells (curves in 2-D and 3-D, the
   two-moons set) needed steps 4-64x smaller than the default; with the adaptive scales a helix
   that halved lr before converges at the default step, and a step 3x too large there is halved
   until it converges.
5. Averaging after annealing: polynomial-decay averaging h_avg += (p + 1) / (k + p + 1) (h - h_avg),
   whose window grows with k so the sampling noise keeps falling (no floor as with a fixed EMA);
   p = 2, or 1 in the large high-dimensional regime (0.5 from the lifted start).
6. chi2 of the averaged potential is measured on fresh i.i.d. noise, first after 5 training samples
   per atom, then at spans that grow with the distance to tol (in the large high-dimensional regime:
   where the 1 / samples decay of chi2 puts it at the level a measurement passes). A measurement below
   tol but within two standard errors of it doubles its sample, up to 2 samples per atom (where that
   exceeds eval_samples: large N, where one measurement costs well under a sample per atom); in the
   large high-dimensional regime it goes on above tol too while it can still pass at the cap. Once
   chi2 + 2 stderr <= tol and the smooth-error monitor (:mod:`~sdfm.transport.smoothness`, group
   residuals of the recent training batches) is within ``smooth_tol`` of its floor, a second
   measurement on fresh noise confirms both (and is what the result reports: the one that decided
   the stop is selected to be low). The solver stops on that confirmation (the true chi2 is below
   tol with about 97.5% confidence), after max_steps steps or after max_seconds seconds.
   In the large high-dimensional regime with i.i.d. steps (``measure_on_training``: not the
   quasi-random draws of d <= 16) the measurements draw no noise of their own
   (:mod:`~sdfm.transport.semidiscrete.shadow`): a snapshot of the average is counted on the steps'
   batches that follow it, which it does not depend on.
   After each reading a planner extends the count or picks the next snapshot's time and window by
   the power law of the average's chi2 (fitted to the last two readings); the solve stops on a
   passing reading of a snapshot that an earlier reading predicted below tol, and returns the
   snapshot. At N = 100,000 x 64 this stopped at 14.7 samples per target against 18.7
   (BENCHMARKS.md section 35).
   Measurements count the float64 argmax, as pairing does: with float32 scores each sample's
   winner is proven by the scores' rounding bound and the others (near ties) are scored again in
   float64 against the exact atoms (:mod:`~sdfm.transport.certified`). When the float32 scores'
   own count of a measurement understates its exact chi2 by more than tol / 4 (near ties in many
   rows: many atoms on a circle), the solve goes on in float64 scores
   (``settings["float64_from_step"]``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch

from sdfm.checks import check_float, check_int
from sdfm.transport import validate
from sdfm.transport._stream import full_precision
from sdfm.transport.augmented import ConditionedNoise, condition_mismatch
from sdfm.transport.diagnostics import chi2_from_sums
from sdfm.transport.semidiscrete import parts, tight
from sdfm.transport.semidiscrete.coarse import CoarseCorrection
from sdfm.transport.semidiscrete.empty import EmptyCells
from sdfm.transport.semidiscrete.exact1d import solve_1d
from sdfm.transport.semidiscrete.problem import (
    DTYPES,
    Check,
    SemidiscreteProblem,
    relative_eps_scale_of,
)
from sdfm.transport.semidiscrete.shadow import ShadowCheck, law_power, plan
from sdfm.transport.semidiscrete.state import HistoryEntry, Measurement, SemidiscreteResult, SolverState
from sdfm.transport.sharding import Collective
from sdfm.transport.smoothness import SmoothMonitor, worst_ratio
from sdfm.transport.sources import standard_normal

#: records the history keeps between measurements: one every this many steps
HISTORY_EVERY = 50
#: the first chi2 measurement comes after this many training samples per atom (past the annealing)
FIRST_MEASURE = 5
#: the smooth-error stop watches the training batches of about this many samples per atom
SMOOTH_WINDOW = 10
#: the relative mass residual 1 - m_hat_j / b_j of a step is clipped from below here (times
#: max(1, 1 / (batch b_j)), max(1, N / batch) for uniform weights): a cell holding 4x its weight or
#: more shrinks at a bounded rate (unbounded outer cells otherwise overshoot and oscillate; measured on
#: small 2-D mixtures: up to 1.5x fewer samples). Unscaled, the clip biased large-N steps, where a
#: cell's count per batch is 0 or 1: at N = 100,000 chi2 stalled near 0.3; scaled by N / batch for
#: every cell, it left cells of weight 1e-6 at 80 times their weight (BENCHMARKS.md section 27).
RESIDUAL_FLOOR = -3.0
#: large problems (where the annealing step is capped) whose atoms have at least this intrinsic
#: dimension (TwoNN, :mod:`sdfm.transport.intrinsic`) skip the annealing and take NOISE_LEVEL_DIRECT
#: (``anneal="auto"``, ``noise_level=None``; see ``_Iteration.direct``)
LOW_DIM_BELOW = 7.0
#: the hard phase's default noise cap (``noise_level=None``): larger steps cost 3.5x more samples on
#: the 2-D checkerboard (0.7: 250 samples per target against 71)
NOISE_LEVEL = 0.25
#: ... and in the large high-dimensional regime, where every cell borders many others and larger
#: steps average well (64-d mixture, N = 30,000: chi2 0.11 after 15 samples per target against 0.21)
NOISE_LEVEL_DIRECT = 0.7
#: the power p of the polynomial-decay averaging (``average_power=None``): 2, and 1 in the large
#: high-dimensional regime, whose iterates are stationary after a few samples per target: a flatter
#: weighting averages more of them (64-d mixture, N = 30,000, three seeds: chi2 3-13% lower at 12-18
#: samples per target; BENCHMARKS.md section 17)
AVERAGE_POWER = 2.0
AVERAGE_POWER_DIRECT = 1.0
#: ... and 0.5 from the lifted start, which leaves less of a transient to weigh down (64-d mixture,
#: N = 30,000: chi2 0.098 at 12 samples per target against 0.105 with power 1, three seeds; section 34)
AVERAGE_POWER_LIFTED = 0.5
#: step control (``lr_control``): lr halves when, at two looks in a row, the iterate's chi2 is above
#: LR_CONTROL_LEVEL * tol and has not fallen below LR_CONTROL_FALL times its value at the previous
#: look (at 4 tol and one look, the built-in checkerboard's transient triggered it); looks are at least
#: LR_CONTROL_EVERY steps and 1 / lr steps apart (the iterate's noise settles in about 1 / lr steps);
#: lr goes no lower than LR_CONTROL_MIN of its value
LR_CONTROL_LEVEL = 8.0
LR_CONTROL_FALL = 0.7
LR_CONTROL_EVERY = 25
LR_CONTROL_MIN = 1.0 / 256
#: the solve goes on in float64 scores when a measurement's float32 counts understate its exact
#: (certified) chi2 by more than this fraction of tol (:meth:`_Iteration._precision_switch`)
FLOAT64_SWITCH = 0.25
#: the fixed seed of the condition-mismatch check of augmented solves (fresh noise, reproducible)
MISMATCH_SEED = 20250925


#: the numeric options of SemidiscreteSolver: name -> (int or float, low, high, None allowed)
_NUMBERS = {
    "tol": (float, 0, None, True),
    "max_steps": (int, 1, None, True),
    "batch_size": (int, 1, None, True),
    "anneal_batch_size": (int, 1, None, True),
    "eval_samples": (int, 1, None, True),
    "chunk_size": (int, 1, None, True),
    "memory_limit": (int, 0, None, False),
    "max_seconds": (float, 0, None, True),
    "smooth_tol": (float, 0, None, True),
    "coarse_neighbours": (int, 1, None, False),
    "smooth_max_n": (int, 1, None, True),
    "coarse_size": (int, 0, None, False),
    **dict.fromkeys(
        ("lr", "lr_anneal", "anneal_start", "anneal_end", "anneal_length", "eval_every"),
        (float, 0, None, False),
    ),
    "noise_level": (float, 0, None, True),
    "anneal_noise_level": (float, 0, None, True),
    **dict.fromkeys(("lr_decay", "batch_growth"), (float, 0, None, False)),
    "average_power": (float, 0, None, True),
    "ema_decay": (float, 0, 1, False),
}
#: float options that may be 0 (the others must be > 0)
_MAY_BE_ZERO = frozenset({"lr_decay", "batch_growth", "average_power", "ema_decay"})


@dataclass(frozen=True)
class SemidiscreteSolver:
    """Stochastic solver of the semidiscrete OT semi-dual. Defaults need no tuning.

    Attributes:
        eps: entropic regularisation of the target coupling (0 = hard assignment, the default).
        relative_eps: if True (default) the absolute eps is ``eps * std(C)``, C the cost matrix
            1/2 |x - y|^2 between 1024 reference noise samples and the targets (the paper's
            convention), with the targets centred so that the scale does not change when the data
            are shifted (the coupling does not either); if False, eps is absolute (cost units).
        tol: stop once the measured chi2 of the averaged potential plus two standard errors is
            <= tol (None: never).
        max_steps: stop after this many steps (batches) at the latest (None: no limit).
        max_seconds: stop after this much wall time (None: no limit).
        batch_size: noise samples per step (None: 4 per atom, at least 256 and at most 4096; finer
            steps end sooner on small problems: 1.5-2x fewer samples than 16 per atom at N = 256).
        lr: step size relative to the Newton scale of each cell, hard phase (upper bound; the noise
            cap below binds from N = 2,926 on at the default batch).
        lr_control: outside the large high-dimensional regime (see ``anneal``), halve the hard
            phase's lr (down to 1/256 of it) when the iterate's chi2 stays above 8 tol without
            falling at two looks in a row, and restart the average from the new iterate. Chains of
            narrow cells need it: a spiral of 1,000 points in 2-D, a helix in 3-D and the built-in
            two-moons set (10,000 points) were at chi2 0.47, 0.16 and 0.10 after 40 s with the fixed
            step, and reach tol 0.05 with it in 7, 4.5 and 20 s (BENCHMARKS.md section 19).
            ``settings["lr_scale"]`` reports the final factor.
        measure_on_training: in the large high-dimensional regime (see ``anneal``) with i.i.d. steps
            (not the quasi-random draws of d <= 16), measure the stop's chi2 on snapshots of the
            average counted on the steps' own noise (:mod:`~sdfm.transport.semidiscrete.shadow`):
            no noise samples of its own, and the potential returned is the snapshot that passed.
            False: measure on fresh noise, as elsewhere. ``settings["measured_on_training"]`` says
            which ran.
        anneal_batch_size: noise samples per step during annealing (the soft problem's smooth
            dynamics gain from many small steps; None: N / 4, at least 16 and at most 1024).
        noise_level: caps the hard-phase step at ``noise_level * batch_size / N``: a step moves each
            cell by lr times its relative counting error, whose variance is N / batch_size, so the
            cap bounds the iterate's noise (too noisy iterates average badly: the coupling is far
            from linear in h). With non-uniform weights (or merged duplicates) the cap is per cell,
            ``noise_level * batch_size * b_j``, and so is the residual's floor. None (default): 0.25,
            or 0.7 in the large high-dimensional regime (see ``anneal``), where larger steps average
            well.
        lr_anneal: the same during the entropic annealing phase.
        anneal_noise_level: caps the annealing step at ``anneal_noise_level * anneal_batch_size / N``
            (None: no cap), for the same reason as ``noise_level``. Without it the annealed
            potential's noise grows with N / anneal_batch_size: on a 64-d mixture of N = 50,000 the
            first chi2 after the annealing was 1.45 instead of 0.34, and the solve had not reached
            0.05 after 300 s (0.12) against 183 s with the cap (BENCHMARKS.md section 10). The default
            3.0 leaves every N <= 10,240 unchanged (where the solver's defaults were chosen); beyond,
            the annealing moves the potential as far in total as at N = 10,240.
        preconditioner: "adaptive" (default), "cell" or "global" (one scale, the mean gap).
            "adaptive" lets each cell's scale follow the cell (the prior at the start's global gap
            fades, a sample's gap also counts for its runner-up atom), measures the coarse
            correction's trust bound in x (face units, on the 95th percentile of the batch's face
            moves) and restarts an average that lags the iterate. "cell" (the default until
            BENCHMARKS.md section 24) scales each cell's step by its running mean gap with a prior
            of one sample at the start's global gap: on 2-D and 3-D data it needs 1.2-4x more
            samples (8gaussians 474 against 121 per target), and it does not finish data in many
            tight clusters or tiny far clusters; on 16-64-d data the two are alike (sections 21-24).
        optimizer: "sgd" or "adam" (Adam on the preconditioned gradient; for comparisons).
        lr_decay: step size decays as (1 + k / 100)^-lr_decay (0 = constant).
        averaging: "poly" (polynomial decay), "ema", "uniform" (Polyak) or "none".
        average_power: p of the polynomial-decay averaging (None: 2, or 1 in the large
            high-dimensional regime, see ``anneal``, where the iterates are stationary early and a
            flatter weighting averages more of them).
        ema_decay: decay of the "ema" averaging.
        anneal: run the entropic annealing warm-up phase (True / False), or "auto" (default): anneal
            except in the large high-dimensional regime, where the annealing step is capped (N above
            10,240 at the defaults, see ``anneal_noise_level``) and the atoms' intrinsic dimension
            (TwoNN on 2,048 of them, :func:`sdfm.transport.intrinsic_dimension`) is 7 or more. There
            every cell borders many others and the hard phase alone moves mass across the atoms, so
            the annealing's 10 samples per atom are spent for nothing. Low-dimensional data (2-D
            sets, a 2-D set embedded in 64 dimensions) and every N <= 10,240 keep the annealing.
            ``settings["intrinsic_dimension"]`` / ``settings["annealed"]`` of the result say what ran.
        anneal_start: initial eps of the annealing, in units of the mean score gap.
        anneal_end: final eps of the annealing, in units of the mean score gap.
        anneal_length: length of the annealing in noise samples per atom.
        batch_growth: the batch grows as batch_size * (1 + batch_growth * samples / N) (0 = fixed).
        warm_start: "best" (default), "zero", "radial", "lifted", "auto", "gaussian" or "nearest"
            (g = 0: nearest neighbour). "zero" is h = 0: every noise goes to the atom with the largest
            <x, y_j - mean>, the hull's atoms. "radial" is the dual of the radial map that sends the
            noise's radius (chi law) to the atoms' distances from their mean by quantiles (standard
            Gaussian source only). "best" takes the one of the two with the lower chi2 on one probe
            batch (the radial start is weighed for the standard Gaussian source in d >= 2 with
            eps = 0), and records it in ``settings["warm_start_used"]``: on heavy-tailed 2-D data
            (Cauchy, log-normal, Student t) the radial start converges in a few hundred samples per
            target where h = 0 needs thousands or does not converge; on high-dimensional data h = 0
            wins and the solve is that of "zero" bit for bit (BENCHMARKS.md section 25), except
            in the large high-dimensional regime (``anneal="auto"`` skipping the annealing, hard
            problems, one process), where "best" weighs "lifted" against h = 0 instead: the
            problem solved on N / 100 k-means clusters of the atoms (256 to 1,024) and lifted to each
            atom by its coarse cell's Gaussian map (:mod:`~sdfm.transport.semidiscrete.lift`; its
            noise draws score the centres only and are not counted in ``samples``:
            ``settings["lift"]`` has them).
            On the 64-d 16-cluster mixture it starts at chi2 0.73 where h = 0 is at 467 and reaches
            chi2 0.1 after about 12 samples per target instead of 14 (section 34).
            "auto" / "gaussian" start from the potential of a Gaussian fitted to the data; it can
            leave a bias that chi2 hardly sees (on the 2-D checkerboard at chi2 0.043, atoms
            farther out than the median held 0.468 of the mass instead of 0.5), so they are opt-in.
        eval_samples: noise samples per chi2 measurement (None: enough for a standard error near
            tol / 10).
        eval_every: the least training between two measurements, as a multiple of eval_samples.
            The first measurement comes after max(eval_every * eval_samples, 5 N) training samples
            (past the annealing); then the span grows with the distance to tol, up to doubling the
            training so far (chi2 limited by sampling noise falls as 1 / samples).
        dtype: "float32" (default) or "float64" for the scores; the potential is kept in float64.
            One-dimensional targets are always scored in float64 (their chain of narrow cells is
            beyond float32 at N >= 1,000; ``settings["score_precision"]`` of the result says which),
            and a float32 solve goes on in float64 when its float32 counts are off (module step 6).
        device: where to compute (None: the device of the targets).
        chunk_size: targets per score block (None: automatic, blocks of about 2M scores on the CPU
            and 128M on CUDA).
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
        quasi_random: draw the noise of the steps (not of the chi2 measurements) as scrambled Sobol
            points mapped through the normal quantile function (None: for the default Gaussian
            source in d <= 16; they count the cells with less noise: 3.5x lower variance in 2-D,
            12% in 16-D, none in 64-D).
        coarse_size: K, the number of smooth functions of the coarse-space correction of the hard
            phase (:mod:`~sdfm.transport.semidiscrete.coarse`: a Newton step on a partition of unity
            over K k-means centres of the atoms, at most N / 4; 0 disables it). It removes the
            large-scale mass errors that per-cell steps fix only by slow diffusion.
        coarse_neighbours: the centres each atom's coarse functions spread over.
        smooth_tol: the stop also requires that no group of atoms along a smooth function of y
            (quartiles of the radius and of the top two principal coordinates, k-means clusters;
            :mod:`~sdfm.transport.smoothness`) has a mass error above ``smooth_tol`` times the floor
            that chi2 and the measurement noise explain (None: chi2 alone decides).
        smooth_max_n: the coarse-space correction and the smooth-error stop apply up to this many
            atoms (None: at any N; the coarse correction also applies at any N in the large
            high-dimensional regime, see ``anneal``, where it lowers chi2 by 4-10% at 15 samples per
            target on the 64-d mixture, BENCHMARKS.md section 17). Beyond, the steps are capped by
            the counting noise and the floor of the smooth errors falls like 1 / sqrt(N): on the
            64-d mixture of BENCHMARKS.md section 10 at N = 100,000 chi2 reached 0.071 after 31
            samples per atom, but the smooth stop came only at 51 (905 s, against about 35 samples
            per atom without it); at N = 30,000 it cost 41 against 38. Smooth errors are still
            measured and reported at any N.
        pruning: exact argmax with cluster bounds instead of scoring every atom
            (:mod:`sdfm.transport.pruned`) in the hard phase and the chi2 checks: "auto" (default:
            tried from 20,000 atoms on, on CPU, when the atoms are held in memory, and kept while its
            estimated cost is below 0.8 of the dense scan's: low-dimensional data at large N; the
            same cells, and the same potential to the rounding of the scores: the trajectory may
            part from the dense one's), "on" or "off". While in use the bounds hold a cluster-sorted
            copy of the atoms (N d in the compute dtype; "auto" frees it after three trials that do
            not pay). The result's settings report how often it was used (``pruning_used``).
        exact_1d: solve one-dimensional problems with eps = 0 by quantiles
            (:mod:`~sdfm.transport.semidiscrete.exact1d`: closed form for the Gaussian source, sample
            quantiles otherwise) instead of stochastic ascent, which converges slowly on their chain
            of cells. One-dimensional means atoms on one line: 1-D targets, and, for the Gaussian
            source, targets in d > 1 within 1e-3 of their extent of a line
            (:mod:`sdfm.transport.collinear`, ``settings["collinear"]``): the 1-D solution along the
            line is checked on fresh noise and, if the distance to the line matters, is the start of
            the stochastic solve (``settings["line_start"]``). A chain of 1,000 atoms on a line in
            2-D: 0.04 s, where stochastic ascent alone is at chi2 0.10 after 40 s (BENCHMARKS.md
            section 19). Collinear atoms are scored in float64, as 1-D ones are.
        tight_start: atoms in tight groups (each much closer to its nearest neighbour than to its
            8th nearest: near-copies, jittered duplicates) start from a solve with each group
            merged into one atom (:mod:`~sdfm.transport.semidiscrete.tight`), for eps = 0, the
            Gaussian source and one process, when a fifth of the atoms or more are that tight
            (``settings["tight_start_used"]``; up to 4,194,304 atoms in d <= 4, N d up to 2^27 above).
            Jittered copies of every point in 2-D are solved where the plain solve stalls
            (BENCHMARKS.md section 23).
        empty_rise: on the hard problem (eps = 0), an atom that no training sample has touched (as
            winner or runner-up) for 32 expected hits at its weight rises at once to win about half its
            weight of the batch (:mod:`~sdfm.transport.semidiscrete.empty`; ``settings["empty_rises"]``
            counts them). Far outliers of heavy-tailed data otherwise stay unpaired: their cells
            need a rise thousands of ordinary steps long. A solve whose cells all get noise is
            unchanged bit for bit.
    """

    eps: float = 0.0
    relative_eps: bool = True
    tol: float | None = 0.05
    max_steps: int | None = 100_000
    max_seconds: float | None = None
    batch_size: int | None = None
    lr: float = 0.35
    noise_level: float | None = None
    anneal_batch_size: int | None = None
    lr_anneal: float = 0.3
    anneal_noise_level: float | None = 3.0
    preconditioner: Literal["cell", "adaptive", "global"] = "adaptive"
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr_decay: float = 0.0
    averaging: Literal["poly", "ema", "uniform", "none"] = "poly"
    average_power: float | None = None
    ema_decay: float = 0.99
    anneal: bool | Literal["auto"] = "auto"
    anneal_start: float = 100.0
    anneal_end: float = 0.3
    anneal_length: float = 10.0
    batch_growth: float = 0.0
    warm_start: Literal["best", "zero", "radial", "lifted", "auto", "gaussian", "nearest"] = "best"
    eval_samples: int | None = None
    eval_every: float = 1.0
    dtype: Literal["float32", "float64"] = "float32"
    device: str | None = None
    chunk_size: int | None = None
    memory_limit: int = 1 << 30
    score_dtype: Literal["bfloat16", "float16"] | None = None
    quasi_random: bool | None = None
    exact_1d: bool = True
    tight_start: bool = True
    empty_rise: bool = True
    lr_control: bool = True
    measure_on_training: bool = True
    coarse_size: int = 256
    coarse_neighbours: int = 4
    smooth_tol: float | None = 3.0
    smooth_max_n: int | None = 16384
    pruning: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        validate.check_eps(self.eps, "eps")
        for name, (kind, low, high, none) in _NUMBERS.items():
            value = getattr(self, name)
            if kind is int:
                check_int(name, value, low=low, high=high, none=none)
            else:  # low 0 is open (> 0) except for the options that may be 0
                check_float(name, value, low=low, high=high, none=none, low_open=name not in _MAY_BE_ZERO)
        if self.tol is None and self.max_steps is None and self.max_seconds is None:
            raise ValueError("tol, max_steps and max_seconds are all None: the solver would never stop")
        if not self.ema_decay < 1:
            raise ValueError(f"ema_decay: expected a number in [0, 1), got {self.ema_decay!r}")
        choices = {
            "preconditioner": tuple(parts.PRECONDITIONERS),
            "optimizer": tuple(parts.OPTIMIZERS),
            "averaging": ("poly", "ema", "uniform", "none"),
            "warm_start": ("best", *parts.WARM_STARTS),
            "dtype": tuple(DTYPES),
            "score_dtype": (None, "bfloat16", "float16"),
            "quasi_random": (None, True, False),
            "exact_1d": (True, False),
            "tight_start": (True, False),
            "empty_rise": (True, False),
            "lr_control": (True, False),
            "measure_on_training": (True, False),
            "anneal": (True, False, "auto"),
            "pruning": ("auto", "on", "off"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.score_dtype is not None and self.eps > 0:
            raise ValueError(
                "score_dtype: low-precision scoring is exact for hard assignment (eps = 0) only; "
                f"got eps={self.eps!r}"
            )

    def solve(
        self,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        noise=None,
        init: torch.Tensor | None = None,
        callback: Callable[[SolverState], None] | None = None,
        collective: Collective | None = None,
        stop_on_interrupt: bool = False,
    ) -> SemidiscreteResult:
        """Fits the potential of the semidiscrete OT problem from ``noise`` to ``targets``.

        Args:
            targets: data points [N, d] (used as given: no rescaling). Identical rows are merged,
                and so are rows closer than the scores resolve (``settings["merge_radius"]``: 64
                roundoffs of the compute dtype times sqrt(d) times the data's extent; see
                :mod:`sdfm.transport.duplicates`).
            weights: positive target weights [N] (normalised; None = uniform).
            generator: randomness of the noise draws (on the compute device).
            noise: source sampler ``noise(n, d, generator=, device=, dtype=) -> [n, d]``
                (default: standard Gaussian).
            init: a potential [N] to start from (warm start from an earlier solve).
            callback: called with the :class:`SolverState` after every step (progress display:
                ``sdfm.progress.solve_bar``); it must not draw from ``generator``.
            collective: solve with the atoms sharded across processes
                (:class:`~sdfm.transport.sharding.Collective`; ``sdfm.parallel.collective()`` under
                torchrun). Every process passes the same targets (e.g. the same memory-mapped file)
                and a generator with the same seed; each scores only its own range of atoms (and
                copies only that range), the global argmax and the assignment histogram are
                all-reduced, and every process returns the same result. With eps = 0 and no
                annealing it equals the single-process solve for the same seed bit for bit; the
                soft (annealing) phase agrees to float32 rounding (the shards' log-sum-exp are
                combined), and the stochastic iteration then agrees in distribution.
            stop_on_interrupt: a KeyboardInterrupt (Ctrl-C, or SIGTERM as the CLI maps it) between
                steps ends the solve like a budget: the averaged potential so far is measured and
                returned with ``settings["interrupted"]`` set to the exception's class name
                (``"KeyboardInterrupt"``, or a subclass's); False: the interrupt propagates. An
                interrupt during the merged start (``tight_start``) returns the full problem's
                potential lifted from the merged solve so far.

        Returns:
            A :class:`SemidiscreteResult`.
        """
        t_start = time.perf_counter()
        problem = SemidiscreteProblem(self, targets, weights, generator, noise, collective)
        start = None if init is None else problem.iterate_of(init)
        with full_precision(problem.device):
            run = _Iteration(self, problem, t_start)
            if self._exact_1d(problem):
                if problem.d == 1:
                    return run.result_1d()
                if start is None:  # on a line in d > 1: exact up to the off-line rounding (checked)
                    start = solve_1d(problem, self.tol, gaussian=True)[0]
                    run.line_start = True
            if start is None and self._tight_start(problem):
                labels = tight.tight_groups(problem)
                if labels is not None:
                    start, run.tight = tight.merged_start(
                        self, problem, labels, generator, noise, stop_on_interrupt
                    )
            state = run.start(start)
            if run.tight is not None and "interrupted" in run.tight:  # stopped in the merged solve
                return run.interrupted(state, run.tight["interrupted"])
            try:
                while not run.done(state):
                    new = run.measure_if_due(run.step(state, problem.draw_train(run.batch_size(state))))
                    run.record(new, step_eps=state.eps)
                    state = new
                    if callback is not None:
                        callback(state)
            except KeyboardInterrupt as exc:
                if not stop_on_interrupt:
                    raise
                return run.interrupted(state, type(exc).__name__)
            return run.result(state)

    def settings(self) -> dict:
        return asdict(self)

    def _tight_start(self, problem: SemidiscreteProblem) -> bool:
        """Whether tight groups of atoms are looked for (see ``tight_start``)."""
        return self.tight_start and problem.gaussian and problem.eps_abs == 0 and problem.collective is None

    def _exact_1d(self, problem: SemidiscreteProblem) -> bool:
        """Whether this problem is solved by quantiles (see ``exact_1d``)."""
        return (
            self.exact_1d
            and problem.line is not None
            and (problem.d == 1 or problem.gaussian)
            and problem.n > 1
            and problem.eps_abs == 0
            and problem.collective is None
        )


def relative_eps_scale(targets, noise=None, *, device=None) -> float:
    """The cost scale behind relative eps: std of 1/2 |x - y|^2 between 1024 fixed-seed noise samples
    and (up to 8192 evenly strided) targets [N, d]. ``eps_abs = eps * relative_eps_scale(targets)``."""
    targets = validate.as_targets(targets)
    device = torch.device(device) if device is not None else targets.device
    return relative_eps_scale_of(targets, standard_normal if noise is None else noise, device=device)


class _Iteration:
    """One solve: the problem, the solver's named pieces, and the step that moves the state."""

    def __init__(self, solver: SemidiscreteSolver, problem: SemidiscreteProblem, t_start: float):
        self.s = solver
        self.problem = problem
        self.t_start = t_start
        self.history: list[HistoryEntry] = []
        self.optimizer = parts.OPTIMIZERS[solver.optimizer](problem.n, problem.device)
        self.averaging = None  # set by start(), once the regime is known (see average_power())
        self.cells = None  # per-cell step scales, set by start()
        self.schedule = None  # the annealing schedule, set by start()
        self.finished = None  # (chi2, se, converged) when start() already decided
        self.coarse = None  # the coarse-space correction of the hard phase, set by _start_hard()
        self.empty = None  # the hard phase's tracker of untouched cells (empty_rise), set by _start_hard()
        self._best = None  # the last hard batch's best scores (the empty cells' rise needs them)
        self.last_check = None  # the last measurement (chi2 and smooth errors)
        self.smooth = None  # smooth-group residuals of the training batches (hard phase), see start()
        # the coarse correction and the smooth stop apply up to smooth_max_n atoms (see its docstring)
        self.large_scale = solver.smooth_max_n is None or problem.n <= solver.smooth_max_n
        self.smooth_tol = solver.smooth_tol if self.large_scale else None
        self._intrinsic = None  # the atoms' intrinsic dimension, estimated by direct() where it matters
        self._direct = None  # whether the large high-dimensional regime applies (see direct())
        self.schedule_ran = False  # whether the annealing ran
        self.tight = None  # the merged solve behind the start (tight.merged_start's summary), if any
        self.line_start = False  # whether the start is the 1-D solution of atoms (nearly) on a line
        self.start_used = None  # the warm start that ran (None: a given start: init, line, merged)
        self.lift = None  # the lifted start's summary (lift.lifted_start), where it ran
        self.lr_scale = 1.0  # the step control's factor on the hard phase's lr (see lr_control)
        self._control_step = 0  # the step of the step control's last look
        self._control_level = math.inf  # the iterate's chi2 at that look
        self._control_stalls = 0  # looks in a row that saw the iterate's chi2 high and not falling
        self.shadow = None  # the snapshot being measured on the steps' noise (shadow.ShadowCheck)
        self.shadow_plan = None  # (window, predicted) of the next snapshot, planned by the last reading
        self.readings: list[tuple[int, float]] = []  # (training samples at the snapshot, chi2) read

    # -- the regime ------------------------------------------------------------------------------
    def direct(self) -> bool:
        """Whether this problem takes the large, high-dimensional regime: no annealing and larger
        hard-phase steps (``anneal="auto"``, ``noise_level=None``; see LOW_DIM_BELOW).

        That is where the annealing step is capped (N > 10,240 at the defaults: the annealing then
        costs its samples per atom at ever smaller steps) and the atoms' intrinsic dimension is at
        least LOW_DIM_BELOW (every cell borders many others, so the hard phase moves mass across the
        atoms without the annealing's help). Decided once; the dimension is estimated only here."""
        if self._direct is None:
            s, problem = self.s, self.problem
            capped = parts.capped(s.lr_anneal, s.anneal_noise_level, problem.anneal_batch_size / problem.n)
            if capped < s.lr_anneal:
                self._intrinsic = problem.intrinsic_dimension()
            self._direct = self._intrinsic is not None and self._intrinsic >= LOW_DIM_BELOW
        return self._direct

    def _anneals(self) -> bool:
        anneal = self.s.anneal
        return not self.direct() if anneal == "auto" else bool(anneal)

    def noise_level(self) -> float:
        """The hard phase's noise cap: ``noise_level``, or by the regime when it is None."""
        if self.s.noise_level is not None:
            return self.s.noise_level
        return NOISE_LEVEL_DIRECT if self.direct() else NOISE_LEVEL

    def average_power(self) -> float:
        """The polynomial averaging's power: ``average_power``, or by the regime when it is None."""
        if self.s.average_power is not None:
            return self.s.average_power
        if self.start_used == "lifted":
            return AVERAGE_POWER_LIFTED
        return AVERAGE_POWER_DIRECT if self.direct() else AVERAGE_POWER

    # -- the phases --------------------------------------------------------------------------------
    def start(self, init: torch.Tensor | None) -> SolverState:
        """The first state: a warm start (or ``init``), the score scale, the annealing schedule."""
        s, problem = self.s, self.problem
        if problem.n == 1:
            self.finished = (0.0, 0.0, True)
            return SolverState(potential=parts.zero_start(problem), converged=True)
        if init is None:
            direct = s.warm_start == "best" and s.anneal == "auto" and self.direct()
            h, scale0, self.start_used, self.lift = parts.select_start(problem, s.warm_start, direct)
        else:  # resuming: done already if the given potential is good enough
            h = init
            self.last_check = problem.check(h, s.tol, extend=True)
            if self.last_check.passes(s.tol, self.smooth_tol):
                self.finished = (self.last_check.chi2, self.last_check.stderr, True)
                return SolverState(potential=h, converged=True)
            scale0 = parts.gap_scale(problem, h)
        poly = s.averaging == "poly"  # (the power of the other kinds is unused)
        self.averaging = parts.Averaging(s.averaging, self.average_power() if poly else 0.0, s.ema_decay)
        self.cells = parts.PRECONDITIONERS[s.preconditioner](problem.n, scale0, problem.device)
        anneal_to = max(s.anneal_end * scale0, problem.eps_abs)
        # Annealing builds the coarse structure; a warm start from a given potential has it.
        if self._anneals() and init is None and s.anneal_start * scale0 > anneal_to:
            self.schedule = parts.AnnealSchedule(
                s.anneal_start * scale0, anneal_to, s.anneal_length, problem.n
            )
        annealing = self.schedule is not None
        self.schedule_ran = annealing
        groups = problem.smooth_groups() if self.smooth_tol is not None and problem.eps_abs == 0 else None
        if groups is not None:
            self.smooth = SmoothMonitor(groups, window=max(SMOOTH_WINDOW * problem.n, 8 * problem.batch_size))
        if not annealing:
            self._start_hard(0)
        return SolverState(
            potential=h, eps=self.schedule.eps if annealing else problem.eps_abs, annealing=annealing
        )

    def batch_size(self, state: SolverState) -> int:
        s = self.s
        batch = self.problem.anneal_batch_size if state.annealing else self.problem.batch_size
        if s.batch_growth > 0:
            batch = int(batch * (1 + s.batch_growth * state.train_samples / self.problem.n))
        return batch

    def step(self, state: SolverState, x: torch.Tensor) -> SolverState:
        """One stochastic step on the noise batch x [B, d]: masses, scales, direction, update, average."""
        s, problem, batch = self.s, self.problem, x.shape[0]
        mass, batch_chi2 = self._masses(state, x)
        if self.shadow is not None:
            self.shadow.observe(x)
        scale = self.cells.scale()
        if state.eps > 0:
            scale = scale + state.eps
        # the floor scales with 1 / (batch b_j): a single hit of a cell expecting batch b_j << 1 samples
        # has residual 1 - 1 / (batch b_j), and clipping it would bias the step (cells never shrink
        # enough); per cell where the weights differ (floats for uniform weights)
        expected, inverse = self._expected(batch)
        floor = RESIDUAL_FLOOR * (
            inverse.clamp(min=1.0) if isinstance(inverse, torch.Tensor) else max(1.0, inverse)
        )
        direction = self.optimizer.direction((1.0 - mass / problem.b).clamp_(min=floor), state.step)
        if state.annealing:
            lr = parts.capped(s.lr_anneal, s.anneal_noise_level, expected)
        else:
            lr = parts.capped(s.lr, self.noise_level(), expected) * self.lr_scale
        h = state.potential + parts.decayed(lr, state.step, s.lr_decay) * scale * direction
        if self.coarse is not None and not state.annealing and state.eps == 0:
            h = h + self.coarse.step(problem.b - mass, scale)
        if self.empty is not None and not state.annealing and state.eps == 0:
            h = self._raise_empty(state, x, h)
        chi2_iterate = state.chi2_iterate
        if not math.isnan(batch_chi2):
            chi2_iterate = batch_chi2 if math.isnan(chi2_iterate) else 0.9 * chi2_iterate + 0.1 * batch_chi2
        new = replace(
            state,
            potential=h,
            step=state.step + 1,
            train_samples=state.train_samples + batch,
            chi2_iterate=chi2_iterate,
        )
        if state.annealing:
            return self._advance_annealing(new, batch)
        count = state.num_averaged + 1
        if self._halve_lr(new):  # restart the average: the noisier iterates so far would bias it
            average, count = h.clone(), 1
        else:
            average = self.averaging.update(state.average, h, count)
        due = state.next_measure
        if due is None:  # the first measurement, counted from the end of the annealing
            due = new.train_samples + max(problem.eval_samples * s.eval_every, FIRST_MEASURE * problem.n)
        return replace(new, average=average, num_averaged=count, next_measure=due)

    def _expected(self, batch: int):
        """(A cell's expected count per batch, batch b_j, and its inverse): the floats batch / n and
        n / batch for uniform weights, per-cell tensors [n] otherwise (given weights, merged duplicates)."""
        problem = self.problem
        if problem.uniform:
            return batch / problem.n, problem.n / batch
        expected = problem.b * batch
        return expected, 1.0 / expected

    def _raise_empty(self, state: SolverState, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h with the stale atoms raised to win about half their weight of the batch x (``empty_rise``;
        the average follows the iterate as it does every step)."""
        samples = state.train_samples + x.shape[0]
        stale = self.empty.stale(samples)
        if stale.numel() == 0:
            return h
        target = state.potential[stale] + self.empty.rise(x, self._best, state.potential, stale, samples)
        return h.index_put((stale,), torch.maximum(h[stale], target))

    def _halve_lr(self, state: SolverState) -> bool:
        """The step control (``lr_control``): halves the hard phase's lr when, at two looks in a row,
        the iterate's chi2 is above LR_CONTROL_LEVEL * tol and did not fall below LR_CONTROL_FALL
        times its value at the previous look (a stationary noise floor, not the transient)."""
        s = self.s
        if not s.lr_control or self.direct() or state.eps > 0 or self.lr_scale <= LR_CONTROL_MIN:
            return False
        if state.step - self._control_step < max(LR_CONTROL_EVERY, math.ceil(1.0 / (s.lr * self.lr_scale))):
            return False
        level, previous = state.chi2_iterate, self._control_level
        self._control_step, self._control_level = state.step, level
        tol = s.tol if s.tol is not None else 0.05
        # (comparisons with NaN, before the first hard batch, are False: no halving)
        if not (level > LR_CONTROL_LEVEL * tol and level >= LR_CONTROL_FALL * previous):
            self._control_stalls = 0
            return False
        self._control_stalls += 1
        if self._control_stalls < 2:  # two looks in a row: a plateau, not a pause of the transient
            return False
        self._control_stalls = 0
        self.lr_scale *= 0.5
        return True

    def _masses(self, state: SolverState, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The batch's assignment masses m_hat [n] and its chi2 estimate (NaN while annealing)."""
        problem, batch = self.problem, x.shape[0]
        if state.eps > 0:
            # The batch chi2 (display only) needs the squares: skipped while annealing.
            sums, squares, _ = problem.soft(x, state.potential, state.eps, squares=not state.annealing)
            chi2 = float("nan") if state.annealing else _batch_chi2(sums, squares, batch, problem)
            return sums / batch, chi2
        top2 = None
        if self.coarse is not None and not state.annealing:
            top2 = problem.top2(x, state.potential)
            idx, best, second = top2.index, top2.best, top2.second
        else:
            idx, best, second = problem.hard(x, state.potential, top2=self.cells.needs_gaps)
        counts = torch.bincount(idx, minlength=problem.n).to(torch.float64)
        if self.cells.needs_gaps:
            self.cells.update(idx, best, second, None if top2 is None else top2.second_index)
        if self.smooth is not None and not state.annealing:
            self.smooth.observe(counts, batch)
        if self.empty is not None and not state.annealing:
            self.empty.touch(idx, None if top2 is None else top2.second_index, state.train_samples + batch)
            self._best = best
        if top2 is not None:
            self.coarse.observe(top2, self.cells.scale(), batch)
        return counts / batch, _batch_chi2(counts, counts, batch, problem)

    def _precision_switch(self, check: Check, step: int) -> None:
        """Float64 scores from now on when the float32 scores' own counts understate the exact chi2
        of a measurement by more than FLOAT64_SWITCH * tol (0.05 without tol): the steps would
        otherwise balance the float32 cells, not the exact ones (near ties in most rows: many atoms
        on a circle)."""
        if check.chi2_scored is not None and check.chi2 - check.chi2_scored > FLOAT64_SWITCH * (
            self.s.tol or 0.05
        ):
            self.problem.use_float64(step)

    def _advance_annealing(self, state: SolverState, batch: int) -> SolverState:
        self.schedule.update(batch)
        if self.schedule.eps is not None:
            return replace(state, eps=self.schedule.eps)
        if self.problem.eps_abs == 0:
            self.cells.reset()  # the gaps of the soft phase are not those of the hard cells
        self._start_hard(state.train_samples)
        return replace(state, eps=self.problem.eps_abs, annealing=False)

    def _start_hard(self, samples: int) -> None:
        """Sets up the hard phase's pieces: the tracker of empty cells (``empty_rise``, eps = 0, from
        ``samples`` training samples on) and the coarse-space correction (where it applies)."""
        s, problem = self.s, self.problem
        if s.empty_rise and problem.eps_abs == 0:
            self.empty = EmptyCells(problem, samples)
        if (
            s.coarse_size <= 0
            or not (self.large_scale or self.direct())
            or problem.eps_abs > 0
            or problem.lowp is not None
            or problem.n < 8
        ):
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=problem.generator, device=problem.device))
        self.coarse = CoarseCorrection(
            problem,
            size=s.coarse_size,
            neighbours=s.coarse_neighbours,
            face_units=s.preconditioner == "adaptive",
            generator=torch.Generator().manual_seed(seed),
        )

    def _check_finite(self, state: SolverState) -> None:
        if not bool(torch.isfinite(state.average).all()):  # (a measurement syncs anyway)
            raise ValueError(
                f"solve: the potential became NaN or Inf by step {state.step} (eps_abs "
                f"{self.problem.eps_abs:.3g}); the targets' scale is extreme for this precision: rescale "
                "the data or raise eps"
            )

    def _extend(self) -> int | bool:
        """How far the stop test's measurement extends while its verdict is unclear: an unclear
        verdict (within two standard errors of tol) draws more samples, up to 2 per atom in all (large
        N only: the measurement is then cheap against the training it can save)."""
        problem = self.problem
        return 2 * problem.n if 2 * problem.n > problem.eval_samples else False

    def measures_on_training(self) -> bool:
        """Whether the stop measures snapshots of the average on the steps' noise (:mod:`.shadow`;
        ``measure_on_training``): in the large high-dimensional regime, with i.i.d. hard-phase draws."""
        s, problem = self.s, self.problem
        return (
            s.measure_on_training
            and s.tol is not None
            and problem.sobol is None
            and problem.eps_abs == 0
            and self.direct()
        )

    def measure_if_due(self, state: SolverState) -> SolverState:
        """Measures chi2 of the averaged iterate on fresh noise when a measurement is due (or, where
        :meth:`measures_on_training`, reads the snapshot measured on the steps' noise)."""
        problem = self.problem
        if self.measures_on_training():
            return self._measure_on_training(state)
        if state.next_measure is None or state.train_samples < state.next_measure:
            return replace(state, seconds=time.perf_counter() - self.t_start)
        tol = self.s.tol
        self._check_finite(state)
        extend = self._extend()
        while_promising = self.direct()  # (where the next measurement is planned by the 1 / samples law)
        check = problem.check(state.average, tol, extend=extend, while_promising=while_promising)
        self._precision_switch(check, state.step)
        smooth = self._smooth_ratio(check.chi2)
        chi2_ok = check.passes(tol, None)
        ok = chi2_ok and (smooth is None or smooth <= self.smooth_tol)
        if ok:
            # Stopping selects a measurement that came out low: the chi2 reported (and the verdict)
            # come from fresh noise that did not decide the stop.
            check = problem.check(state.average, tol, extend=extend, while_promising=while_promising)
            chi2_ok = check.passes(tol, None)
            ok = check.passes(tol, self.smooth_tol)
            if self.smooth_tol is not None and check.smooth:  # (the check's own groups count too)
                smooth = max(smooth or 0.0, worst_ratio(check.smooth))
        self.last_check = check
        held = chi2_ok and not ok  # (with chi2 passing, only a smooth error can hold the stop)
        new = replace(
            state,
            measured=Measurement(check.chi2, check.stderr, state.step, smooth, held),
            next_measure=self._next_measure(state.train_samples, check),
            converged=ok,
            seconds=time.perf_counter() - self.t_start,
        )
        return self._restart_lagging_average(new)

    def _measure_on_training(self, state: SolverState) -> SolverState:
        """The stop on the steps' noise (:mod:`.shadow`): a snapshot of the average is counted on the
        batches that follow it (no noise of its own) and read after a planned window. The first
        snapshot comes at the first measurement; after each reading the planner
        (:func:`.shadow.plan`, by the power law of chi2) either extends the count or picks the next
        snapshot's training time and window. The solve stops on a reading that passes (chi2 + 2 se
        <= tol) of a snapshot that an earlier reading, on other noise, predicted below tol: the
        reading reported did not pick the snapshot (as the confirming measurement on fresh noise
        does elsewhere). The snapshot is the potential returned."""
        now = replace(state, seconds=time.perf_counter() - self.t_start)
        problem, tol = self.problem, self.s.tol
        if self.shadow is None:
            due = state.next_measure
            if due is None or state.train_samples < due:
                return now
            self._check_finite(state)
            window, predicted = (
                self.shadow_plan if self.shadow_plan is not None else (problem.eval_samples, False)
            )
            self.shadow = ShadowCheck(problem, state.average, state.train_samples, window, predicted)
            return now
        check = self.shadow.reading()
        if check is None:
            return now
        shadow = self.shadow
        self._precision_switch(check, state.step)
        smooth = self._smooth_ratio(check.chi2)
        if self.smooth_tol is not None and check.smooth:
            smooth = max(smooth or 0.0, worst_ratio(check.smooth))
        chi2_ok = check.passes(tol, None)
        ok = chi2_ok and shadow.predicted and (smooth is None or smooth <= self.smooth_tol)
        self.last_check = check
        new = replace(
            now,
            measured=Measurement(check.chi2, check.stderr, state.step, smooth, chi2_ok and not ok),
            converged=ok,
        )
        if ok:
            self.shadow = None
            return replace(new, average=shadow.potential)
        if self.readings and self.readings[-1][0] == shadow.at:  # an extension's reading: the latest
            self.readings.pop()
        self.readings.append((shadow.at, check.chi2))
        cap = self._extend() or problem.eval_samples  # (2 per atom, or eval_samples at small N)
        power = law_power(self.readings)
        step = plan(
            check,
            shadow.at,
            state.train_samples,
            tol=tol,
            n=problem.n,
            base=problem.eval_samples,
            cap=cap,
            power=power,
        )
        if step.extend_to is not None:
            shadow.target = step.extend_to
            return new
        predicted = check.chi2 * (shadow.at / step.at) ** power <= tol
        self.shadow, self.shadow_plan = None, (step.window, predicted)
        return self._restart_lagging_average(replace(new, next_measure=step.at))

    def _restart_lagging_average(self, state: SolverState) -> SolverState:
        """``preconditioner="adaptive"``: when a failed measurement finds the average more than twice
        as far from the marginals as the iterate's running batch chi2, the average restarts from the
        iterate: it lags behind an iterate still drifting (the small cells of heavy-tailed data
        settle slowly), and polynomial averaging would carry the lag for thousands of steps."""
        tol = self.s.tol if self.s.tol is not None else 0.05
        chi2 = state.measured.chi2
        if self.s.preconditioner != "adaptive" or state.converged or not chi2 > tol:
            return state
        if not state.chi2_iterate < 0.5 * chi2:  # (NaN before the first hard batch: no restart)
            return state
        return replace(state, average=state.potential.clone(), num_averaged=1)

    def _smooth_ratio(self, chi2: float) -> float | None:
        """The worst smooth group of the recent training batches, in floors (None where the smooth
        stop does not apply); the stop needs it <= smooth_tol."""
        if self.smooth_tol is None or self.smooth is None:
            return None
        return worst_ratio(self.smooth.errors(chi2))

    def _next_measure(self, train_samples: int, check: Check) -> int:
        """When to measure next: after a span of training that grows with the distance to tol (up to
        doubling the training so far while chi2 is 4x tol or more: noise-limited chi2 falls as
        1 / samples), and at least eval_every measurement sizes later.

        In the large high-dimensional regime the averaged potential's chi2 falls as 1 / (training
        samples) from the first measurement on (BENCHMARKS.md sections 17 and 34), so the next one
        comes where that law puts chi2 at the level a measurement of twice eval_samples passes,
        tol - 2 se (se scaled from this measurement's): one measurement there usually decides,
        where a measurement near tol costs up to 2 samples per atom and fails about half the time."""
        tol = self.s.tol if self.s.tol is not None else 0.05
        chi2 = check.chi2
        ratio = 1.0 if not chi2 > 0 else math.sqrt(chi2 / tol)
        if self.direct() and chi2 > 0 and math.isfinite(check.stderr):
            planned = 2 * self.problem.eval_samples
            level = tol - 2.0 * check.stderr * check.samples / planned
            ratio = chi2 / level if level > 0.5 * tol else ratio
        growth = min(2.0, max(1.1, ratio))
        span = max((growth - 1.0) * train_samples, self.problem.eval_samples * self.s.eval_every)
        return train_samples + int(span)

    def record(self, state: SolverState, step_eps: float) -> None:
        """Appends a history entry after a measurement and every HISTORY_EVERY steps (``step_eps``:
        the eps of the step that led to ``state``)."""
        fresh = state.measured is not None and state.measured.step == state.step
        if fresh or state.step % HISTORY_EVERY == 0:
            self.history.append(
                HistoryEntry(
                    step=state.step,
                    samples=self.problem.samples,
                    seconds=state.seconds,
                    eps=step_eps,
                    chi2=state.measured.chi2 if fresh else None,
                    chi2_stderr=state.measured.stderr if fresh else None,
                    chi2_iterate=state.chi2_iterate,
                )
            )

    def done(self, state: SolverState) -> bool:
        s = self.s
        if self.finished is not None or state.converged:
            return True
        if s.max_steps is not None and state.step >= s.max_steps:
            return True
        return s.max_seconds is not None and state.seconds >= s.max_seconds

    def interrupted(self, state: SolverState, name: str) -> SemidiscreteResult:
        """The result of a solve stopped by an interrupt: the last complete step's averaged
        potential (or the start), measured, with ``settings["interrupted"] = name``."""
        result = self.result(state)
        result.settings["interrupted"] = name
        return result

    def result(self, state: SolverState) -> SemidiscreteResult:
        problem = self.problem
        if self.finished is not None:
            chi2, se, ok = self.finished
        elif state.measured is not None and state.measured.step == state.step:
            chi2, se, ok = state.measured.chi2, state.measured.stderr, state.converged
        else:
            self.last_check = problem.check(state.best, self.s.tol, extend=True)
            chi2, se = self.last_check.chi2, self.last_check.stderr
            ok = self.last_check.passes(self.s.tol, self.smooth_tol)
        chi2_samples = problem.eval_samples if problem.n > 1 else 0
        method = "exact_1d" if self.line_start and state.step == 0 else "stochastic"
        return self._result(state.best, chi2, se, ok, state.step, chi2_samples, method=method)

    def result_1d(self) -> SemidiscreteResult:
        """The one-dimensional problem solved by quantiles (closed form for the Gaussian source)."""
        problem = self.problem
        h, chi2, se, ok = solve_1d(problem, self.s.tol, gaussian=problem.gaussian)
        chi2_samples = 0 if problem.gaussian else problem.eval_samples
        method = "exact_1d" if problem.gaussian else "sample_quantiles_1d"
        return self._result(h, chi2, se, ok, 0, chi2_samples, method=method)

    def _result(self, h, chi2, se, ok, steps, chi2_samples, *, method: str) -> SemidiscreteResult:
        problem = self.problem
        settings = self.s.settings()
        settings.update(
            eps_abs=problem.eps_abs,
            num_targets=problem.n_all,
            dim=problem.d,
            processes=1 if problem.collective is None else problem.collective.world_size,
            targets_streamed=problem.streamed,
            batch_size=problem.batch_size,
            anneal_batch_size=problem.anneal_batch_size,
            quasi_random=problem.sobol is not None,
            method=method,
            collinear=problem.d > 1 and problem.line is not None,
            line_start=self.line_start,
            warm_start_used=self.start_used,
            lift=self.lift,
            tight_start_used=self.tight,
            score_precision=str(problem.dtype).removeprefix("torch."),
            # the step at which float32 scores gave way to float64 (their counts were off)
            float64_from_step=problem.float64_from,
            # atoms closer than this were merged as duplicates (below the scores' resolution)
            merge_radius=problem.merge_radius,
            pruning_used=problem.pruning_summary(),
            annealed=self.schedule_ran,
            intrinsic_dimension=self._intrinsic,
            # the hard phase's step cap (None if no hard step ran with the regime's default)
            noise_level_used=self.s.noise_level if self._direct is None else self.noise_level(),
            average_power_used=getattr(self.averaging, "power", None) if self.s.averaging == "poly" else None,
            coarse_used=self.coarse is not None,
            # whether the stop measured snapshots of the average on the steps' noise (shadow.py)
            measured_on_training=self._direct is not None and self.measures_on_training(),
            empty_rises=0 if self.empty is None else self.empty.raised,
            lr_scale=self.lr_scale,
        )
        potential = problem.potential_of(h)
        if (
            isinstance(problem.noise, ConditionedNoise)
            and problem.eps_abs == 0
            and problem.collective is None
        ):
            # augmented solves: chi2 misses pairs that leave their condition (see condition_mismatch)
            gen = torch.Generator(device=problem.device).manual_seed(MISMATCH_SEED)
            check = condition_mismatch(problem.src, potential, problem.noise, generator=gen)
            settings["condition_mismatch"] = check.to_dict()
        return SemidiscreteResult(
            potential=potential,
            eps=problem.eps_abs,
            chi2=float(chi2),
            chi2_stderr=float(se),
            chi2_samples=chi2_samples,
            converged=bool(ok),
            steps=steps,
            samples=problem.samples,
            seconds=time.perf_counter() - self.t_start,
            history=self.history,
            weights=problem.weights_all,
            duplicates=problem.duplicates,
            settings=settings,
            smooth_errors=[] if self.last_check is None else list(self.last_check.smooth),
        )


def _batch_chi2(sums: torch.Tensor, squares: torch.Tensor, n: int, problem: SemidiscreteProblem) -> float:
    """chi2 of one batch's assignments (NaN below two samples)."""
    return float("nan") if n < 2 else chi2_from_sums(sums, squares, n, problem.b)
