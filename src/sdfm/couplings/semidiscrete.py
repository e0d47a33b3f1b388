"""Semidiscrete coupling (SD-FM): each fresh noise is paired with its Laguerre cell's data point."""

from __future__ import annotations

from pathlib import Path

import torch

from sdfm.couplings._base import DataCoupling
from sdfm.protocols import Pairs
from sdfm.transport import validate
from sdfm.transport.assign import LaguerreCells
from sdfm.transport.augmented import augmented_keys, augmented_queries
from sdfm.transport.duplicates import DuplicateGroups
from sdfm.transport.sources import standard_normal


class SemidiscreteCoupling(DataCoupling):
    """Pairs x0 ~ N(0, I) with ``argmax_j <x0, y_j> + g_j - |y_j|^2/2`` (eps = 0) or a Gumbel-max sample
    of the soft cell (eps > 0), streamed over chunks of the data: no [n, N] matrix beyond one chunk.

    Args:
        data: data points [N, d] the potential was solved for.
        potential: g [N] (1/2 |x - y|^2 convention).
        eps: absolute regularisation of the pairing (use the solver's ``result.eps``).
        weights: data weights [N] the potential was solved with (None = uniform).
        duplicates: duplicate groups from the solver; the mass of a shared cell is split by weight.
        labels, noise: see :class:`~sdfm.couplings.DataCoupling`.
        chunk_size: data points per score block (default automatic, ~2M scores per block).
        score_dtype: ``torch.bfloat16`` for faster exact pairing where bf16 matmuls are fast (eps = 0;
            see :class:`~sdfm.transport.LaguerreCells`); None = float32 scores.
        conditional: class-conditional pairing (needs ``labels`` and a potential from
            :func:`~sdfm.transport.solve_per_class`): each noise gets a class c drawn from the data's
            class masses p(c) and is paired within class c only; ``cond`` is c.
        conditions, beta: continuous conditions z [N, k] and the weight beta of the augmented cost
            (:mod:`sdfm.transport.augmented`; the potential must be solved on
            ``augmented_keys(data, conditions, beta)`` with the source ``ConditionedNoise``): each noise
            x0 gets a condition z0 = z_i, i ~ weights, and is paired by the argmax over the keys of the
            query [x0, sqrt(beta) z0]; ``cond`` is z0.
        collective: pair against data sharded across processes
            (:class:`~sdfm.transport.sharding.Collective`, e.g. ``sdfm.parallel.collective()`` under
            torchrun): every process draws its own noise, the queries of all processes are gathered,
            each process scores them against its own range of the data, and the global argmax comes
            back (equal to a single process's pairing of the same queries for eps = 0). ``sample``
            is then a collective call with the same n on every process.
        projection: a :class:`~sdfm.transport.PCAProjection` the potential was solved in (the
            pairing cost is 1/2 |P x0 - P y|^2): queries and keys are projected, the pairs keep the
            full x0 and y.
        search: pair through a :class:`~sdfm.transport.search.FaissCells` index built for this data
            and potential (eps = 0, unconditional): approximate for IVF / HNSW; check its recall and
            chi2 with :func:`~sdfm.transport.search.search_quality`.
        pruning: exact pairing through cluster bounds ("auto", "on", "off"; see
            :class:`~sdfm.transport.LaguerreCells`): the same pairs, faster on low-dimensional data.

    Build it from a solver result with :meth:`from_result` or from a potential file with
    :meth:`from_file` (which refuses a potential solved for other data).
    """

    name = "semidiscrete"

    def __init__(
        self,
        data,
        potential,
        *,
        eps: float = 0.0,
        weights=None,
        duplicates: DuplicateGroups | None = None,
        labels=None,
        noise=standard_normal,
        chunk_size: int | None = None,
        score_dtype: torch.dtype | None = None,
        conditional: bool = False,
        conditions=None,
        beta: float | None = None,
        collective=None,
        projection=None,
        search=None,
        pruning: str = "auto",
    ):
        super().__init__(data, labels=labels, weights=weights, noise=noise, conditions=conditions)
        if conditional and self.labels is None:
            raise ValueError("conditional: class-conditional pairing needs labels")
        if (conditions is None) != (beta is None):
            raise ValueError("conditions, beta: the augmented cost needs both (or neither)")
        self.conditional = bool(conditional)
        self.beta = None if beta is None else float(beta)
        keys = self.data if conditions is None else augmented_keys(self.data, self.conditions, beta)
        self.projection = projection
        if projection is not None:
            if conditions is not None:
                raise ValueError("projection: not supported with continuous conditions")
            if projection.dim != self.dim:
                raise ValueError(f"projection: made for d = {projection.dim}, the data have d = {self.dim}")
            keys = projection.project_targets(self.data)
        if collective is not None and collective.world_size > 1 and collective.gather is None:
            raise ValueError("collective: sharded pairing gathers every process's noise; it needs gather")
        self.collective = collective
        if search is not None:
            if eps > 0 or conditional or conditions is not None or collective is not None:
                raise ValueError("search: a FAISS index pairs eps = 0, unconditional, single-process only")
            if search.num_targets != keys.shape[0] or search.dim != keys.shape[1]:
                raise ValueError(
                    f"search: index over [{search.num_targets}, {search.dim}] keys, "
                    f"the pairing keys are {list(keys.shape)}"
                )
        self.search = search
        if duplicates is not None and duplicates.inverse.shape[0] != self.num_data:
            raise ValueError(
                f"duplicates: groups for {duplicates.inverse.shape[0]} data points, data has {self.num_data}"
            )
        if duplicates is not None and eps == 0:
            # merged targets: each group's cell is its representative's (the solver's atom), spread
            # by weight at pairing time (a near duplicate's own cell is not the group's); the groups
            # of a class-conditional solve lie within one class each
            potential = duplicates.representatives_only(validate.as_potential(potential, self.num_data))
        self.cells = LaguerreCells(
            keys,
            potential,
            eps=eps,
            weights=self.weights,
            chunk_size=chunk_size,
            score_dtype=score_dtype,
            classes=self.labels if self.conditional else None,
            collective=collective,
            pruning=pruning,
        )
        if self.conditional:
            b = self.weights if self.weights is not None else torch.ones(self.num_data, dtype=torch.float64)
            mass = torch.zeros(int(self.labels.max()) + 1, dtype=torch.float64, device=b.device)
            self.class_probs = mass.index_add_(0, self.labels.to(b.device), b.to(torch.float64))
            self.class_probs = self.class_probs / self.class_probs.sum()
        self.eps = self.cells.eps
        self.duplicates = duplicates

    @classmethod
    def from_result(cls, data, result, **kwargs) -> SemidiscreteCoupling:
        """From a :class:`~sdfm.transport.SemidiscreteResult` of the same data, or a
        :class:`~sdfm.transport.ClassConditionalResult` (then conditional, with its classes as labels)."""
        from sdfm.transport.conditional import ClassConditionalResult

        if isinstance(result, ClassConditionalResult):
            kwargs.setdefault("labels", result.classes)
            kwargs.setdefault("conditional", True)
        return cls(
            data,
            result.potential,
            eps=result.eps,
            weights=result.weights,
            duplicates=result.duplicates,
            **kwargs,
        )

    @classmethod
    def from_file(cls, path: str | Path, data, **kwargs) -> SemidiscreteCoupling:
        """From a potential file; ValueError if it was solved for other data (shape or fingerprint)."""
        from sdfm.artifacts.potential import load_potential

        pf = load_potential(path, targets=torch.as_tensor(data))
        kwargs.setdefault("projection", pf.projection)
        return cls(data, pf.potential, eps=pf.eps, weights=pf.weights, duplicates=pf.duplicates, **kwargs)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Pairs:
        n = self._check_n(n)
        x0 = self.draw_noise(n, generator)
        return self.pair(x0, generator=generator)

    def pair(
        self,
        x0: torch.Tensor,
        *,
        classes: torch.Tensor | None = None,
        conditions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Pairs:
        """Pairs given noise ``x0`` [n, d] (your own draws of the source) with their cells' data points.

        Class-conditional couplings draw each sample's class from the data's class masses unless
        ``classes`` [n] is given; continuous-condition couplings draw each sample's condition from the
        data's conditions unless ``conditions`` [n, k] is given. ``generator`` drives those draws, the
        Gumbel noise of eps > 0 and the split of duplicate cells."""
        if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or x0.shape[1] != self.dim:
            shape = list(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise ValueError(f"x0: expected noise of shape [n, {self.dim}], got {shape}")
        x0 = x0.to(device=self.device, dtype=self.data.dtype)
        n = x0.shape[0]
        cond = None
        query = x0
        if self.conditional:
            if classes is None:
                probs = self.class_probs.to(x0.device)
                classes = torch.multinomial(probs, n, replacement=True, generator=generator)
            elif (
                classes.shape != (n,) or int(classes.min()) < 0 or int(classes.max()) >= len(self.class_probs)
            ):
                raise ValueError(f"classes: expected [{n}] classes in [0, {len(self.class_probs)})")
            classes = classes.to(x0.device)
        elif classes is not None:
            raise ValueError("classes: only for a class-conditional coupling (conditional=True)")
        if self.conditions is not None:  # continuous conditions: z0 = z_i, query [x0, sqrt(beta) z0]
            if conditions is None:
                cond = self.conditions[self.draw_index(n, generator)]
            elif conditions.dim() != 2 or conditions.shape != (n, self.conditions.shape[1]):
                raise ValueError(
                    f"conditions: expected [{n}, {self.conditions.shape[1]}], got {list(conditions.shape)}"
                )
            else:
                cond = conditions.to(device=self.device, dtype=self.data.dtype)
            query = augmented_queries(x0, cond, self.beta)
        elif conditions is not None:
            raise ValueError("conditions: only for a coupling with continuous conditions")
        if self.projection is not None:
            query = self.projection.project(query)
        if self.collective is not None and self.collective.world_size > 1:
            # every process's queries against every shard; keep this process's rows
            everyone = self.collective.gather(query)
            index = self.cells.assign(everyone, generator=generator)
            index = index[self.collective.rank * n : (self.collective.rank + 1) * n]
        elif self.search is not None:
            index = self.search.assign(query)
        else:
            index = self.cells.assign(query, generator=generator, classes=classes)
        if self.duplicates is not None:
            index = self.duplicates.spread(index, generator)
        return self.pairs(x0, index, cond)


def augmented_coupling(
    targets: torch.Tensor,
    conditions: torch.Tensor,
    beta: float,
    *,
    generator: torch.Generator | None = None,
    solver=None,
    progress: bool = False,
):
    """(coupling, solver result) for continuous conditions z [N, k]: the augmented problem
    c(x, y) + beta c(z, z') solved with ``solver`` (default settings) from the source
    :class:`~sdfm.transport.ConditionedNoise`, and the coupling that pairs by it."""
    from sdfm.progress import solve_bar
    from sdfm.transport import ConditionedNoise, SemidiscreteSolver

    solver = solver or SemidiscreteSolver(device=str(targets.device))
    keys = augmented_keys(targets, conditions, beta)
    with solve_bar(tol=solver.tol, num_targets=keys.shape[0], disable=not progress) as bar:
        result = solver.solve(
            keys, noise=ConditionedNoise(conditions, beta), generator=generator, callback=bar
        )
    coupling = SemidiscreteCoupling.from_result(targets, result, conditions=conditions, beta=beta)
    return coupling, result
