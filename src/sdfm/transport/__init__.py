"""Semidiscrete optimal transport on tensors (layer L0: no nn.Module, no files, no distributed).

- :func:`assign`: exact streamed argmax (eps = 0) or Gumbel-max sample (eps > 0) of the cell of
  each noise sample.
- :class:`SemidiscreteSolver`: fits the dual potential; returns a :class:`SemidiscreteResult`.
- minibatch OT (the OT-FM baseline): :func:`exact_assignment`, :func:`sinkhorn`.
- continuous conditions: :func:`augmented_keys` and the source :class:`ConditionedNoise` turn the
  augmented cost c(x, y) + beta c(z, z') into an ordinary semidiscrete problem.
- scale: :class:`PCAProjection` (the pairing cost in a PCA space), :class:`Collective` (atoms
  sharded across processes; the collective operations are passed in as callables).
- diagnostics: chi2 with standard error, total variation and its sampling floor, usage, cost; mass
  errors along smooth functions of the atoms (:class:`SmoothGroups`, :class:`SmoothError`);
  :func:`intrinsic_dimension` (TwoNN), which picks the solver's regime.
"""

from sdfm.transport.assign import LaguerreCells, assign, c_transform, marginal
from sdfm.transport.augmented import (
    ConditionedNoise,
    ConditionMismatch,
    augmented_keys,
    augmented_queries,
    condition_mismatch,
)
from sdfm.transport.conditional import ClassConditionalResult, solve_per_class
from sdfm.transport.diagnostics import (
    MarginalEstimate,
    chi2_from_counts,
    chi2_from_sums,
    estimate_marginal,
    total_variation,
    transport_cost,
    tv_sampling_floor,
    usage_counts,
    usage_histogram,
)
from sdfm.transport.duplicates import DuplicateGroups, find_duplicates
from sdfm.transport.intrinsic import intrinsic_dimension
from sdfm.transport.minibatch import SinkhornResult, cost_matrix, exact_assignment, sample_plan_rows, sinkhorn
from sdfm.transport.projection import PCAProjection
from sdfm.transport.semidiscrete import (
    HistoryEntry,
    SemidiscreteResult,
    SemidiscreteSolver,
    relative_eps_scale,
)
from sdfm.transport.sharding import Collective, shard_range
from sdfm.transport.smoothness import SmoothError, SmoothGroups
from sdfm.transport.sources import standard_normal

__all__ = [
    "ClassConditionalResult",
    "Collective",
    "ConditionedNoise",
    "ConditionMismatch",
    "condition_mismatch",
    "DuplicateGroups",
    "HistoryEntry",
    "LaguerreCells",
    "MarginalEstimate",
    "PCAProjection",
    "SemidiscreteResult",
    "SemidiscreteSolver",
    "SinkhornResult",
    "SmoothError",
    "SmoothGroups",
    "assign",
    "augmented_keys",
    "augmented_queries",
    "c_transform",
    "chi2_from_counts",
    "chi2_from_sums",
    "cost_matrix",
    "estimate_marginal",
    "exact_assignment",
    "find_duplicates",
    "intrinsic_dimension",
    "marginal",
    "relative_eps_scale",
    "sample_plan_rows",
    "shard_range",
    "sinkhorn",
    "solve_per_class",
    "standard_normal",
    "total_variation",
    "transport_cost",
    "tv_sampling_floor",
    "usage_counts",
    "usage_histogram",
]
