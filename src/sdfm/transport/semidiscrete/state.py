"""What a solve returns (:class:`SemidiscreteResult`, :class:`HistoryEntry`) and what it carries from one
step to the next (:class:`SolverState`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdfm.transport.duplicates import DuplicateGroups


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
        steps, samples, seconds: work done (samples count every noise draw scored against the
            atoms, including measurement; the lifted start's draws, which score its k-means centres
            only, are in ``settings["lift"]``).
        history: progress records.
        weights: normalised target weights [N] (None = uniform).
        duplicates: groups of identical targets (None if there are none).
        settings: the solver's hyper-parameters plus the resolved ones (eps_abs, dtype, device).
        smooth_errors: the worst mass error along smooth functions of the atoms per family
            (:class:`~sdfm.transport.smoothness.SmoothError`), from the measurement behind ``chi2``;
            empty where none was made (one atom, the closed-form 1-D solve).
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
    smooth_errors: list = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class Measurement:
    """chi2 of the averaged iterate on fresh noise, and the step it was taken at.

    Attributes:
        smooth_ratio: the worst smooth-group mass error the stop compared with ``smooth_tol``, in
            floors (the recent training batches' groups, and the confirming check's where one ran;
            None where the smooth stop does not apply).
        smooth_held: chi2 passed but that smooth error held the stop (the solve goes on).
    """

    chi2: float
    stderr: float
    step: int
    smooth_ratio: float | None = None
    smooth_held: bool = False


@dataclass(frozen=True)
class SolverState:
    """The solver between two steps (``state = solver.step(problem, state, x)``).

    Attributes:
        potential: the current iterate h [n] (float64, dot-product form on centred atoms).
        average: the averaged iterate (None until the averaging starts after the annealing).
        num_averaged: number of iterates in ``average``.
        eps: the eps of the next step's assignments (annealing: decreasing; then the target eps).
        annealing: whether the next step belongs to the entropic annealing phase.
        step: steps taken. train_samples: noise samples drawn by steps (measurements excluded).
        chi2_iterate: running chi2 estimate of the iterate from the training batches (NaN: none yet).
        measured: the last chi2 measurement of the averaged iterate (None: none yet).
        next_measure: training samples (``train_samples``) at which the next measurement is due.
        converged: the last measurement met the tolerance.
        seconds: wall time since the solve started.
    """

    potential: torch.Tensor
    average: torch.Tensor | None = None
    num_averaged: int = 0
    eps: float = 0.0
    annealing: bool = False
    step: int = 0
    train_samples: int = 0
    chi2_iterate: float = float("nan")
    measured: Measurement | None = None
    next_measure: int | None = None
    converged: bool = False
    seconds: float = 0.0

    @property
    def best(self) -> torch.Tensor:
        """The iterate a solve would return now: the average once there is one."""
        return self.potential if self.average is None else self.average
