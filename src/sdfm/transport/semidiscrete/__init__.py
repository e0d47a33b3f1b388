"""The semidiscrete OT solver (:class:`SemidiscreteSolver`) and what it returns.

- :mod:`~sdfm.transport.semidiscrete.solver`: the hyper-parameters, the loop and its step;
- :mod:`~sdfm.transport.semidiscrete.problem`: the targets prepared for a solve, scoring, measurement;
- :mod:`~sdfm.transport.semidiscrete.parts`: warm starts, annealing schedule, step sizes, per-cell
  scales, optimizers, averaging;
- :mod:`~sdfm.transport.semidiscrete.state`: the state carried between steps and the result.
"""

from sdfm.transport.semidiscrete.solver import SemidiscreteSolver, relative_eps_scale
from sdfm.transport.semidiscrete.state import HistoryEntry, Measurement, SemidiscreteResult, SolverState

__all__ = [
    "HistoryEntry",
    "Measurement",
    "SemidiscreteResult",
    "SemidiscreteSolver",
    "SolverState",
    "relative_eps_scale",
]
