"""Class-conditional semidiscrete OT: noise of class c is transported to the data of class c.

The class of a noise sample is drawn from the data's class masses p(c) = sum of b_j over class c, and
within class c the target weights are b_j / p(c). The classes are independent sub-problems, so one
potential vector g [N] holds all of them (each class's entries are defined up to their own constant)
and pairing is :func:`sdfm.transport.assign` with ``classes`` (argmax restricted to the class). This
module fits g class by class with :class:`SemidiscreteSolver` (choice: one solve per class, each
to the solver's tolerance, so the overall chi2 = sum_c p(c) chi2_c is below it too; a joint solve
over all classes would share noise draws but is not done). For eps > 0 relative, the absolute eps
is set once from the whole data set, so every class uses the same eps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from sdfm.transport import validate
from sdfm.transport.duplicates import DuplicateGroups
from sdfm.transport.semidiscrete import SemidiscreteResult, SemidiscreteSolver, relative_eps_scale


@dataclass(frozen=True)
class ClassConditionalResult:
    """What :func:`solve_per_class` returns.

    Attributes:
        potential: g [N] float64 (1/2 |x - y|^2 convention), every class's sub-problem in one vector.
        eps: the absolute eps shared by all classes.
        classes: class of each target [N] int64.
        class_probs: p(c) [K] float64 (0 for labels without targets).
        chi2: overall chi2 = sum_c p(c) chi2_c; chi2_stderr its standard error.
        chi2_per_class: {class: chi2_c}.
        converged: every class converged.
        weights: normalised target weights [N] (None = uniform).
        duplicates: identical targets within a class, as global groups (None if none).
        per_class: {class: the solver's result on that class's targets}.
        steps, samples, chi2_samples, seconds: summed over the classes; settings: the solver's.
    """

    potential: torch.Tensor
    eps: float
    classes: torch.Tensor
    class_probs: torch.Tensor
    chi2: float
    chi2_stderr: float
    chi2_per_class: dict[int, float]
    converged: bool
    seconds: float
    samples: int
    steps: int = 0
    chi2_samples: int = 0
    settings: dict = field(default_factory=dict, repr=False)
    weights: torch.Tensor | None = field(default=None, repr=False)
    duplicates: DuplicateGroups | None = field(default=None, repr=False)
    per_class: dict[int, SemidiscreteResult] = field(default_factory=dict, repr=False)


def solve_per_class(
    solver: SemidiscreteSolver,
    targets: torch.Tensor,
    classes: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    noise=None,
    callback=None,
) -> ClassConditionalResult:
    """Fits the class-conditional potential: one :meth:`SemidiscreteSolver.solve` per class on that
    class's targets (with weights b_j / p(c)).

    Args:
        solver: the hyper-parameters (its tolerance applies to every class).
        targets: data points [N, d]; classes: their class labels [N] (integers >= 0).
        weights: positive target weights [N] (None = uniform).
        callback: passed to every class's solve (progress display).
    """
    t0 = time.perf_counter()
    targets = validate.as_targets(targets)
    n = targets.shape[0]
    labels = validate.as_labels(classes, n, "classes").cpu()
    b = validate.as_weights(weights, n)
    b = torch.full((n,), 1.0 / n, dtype=torch.float64) if b is None else b.to(torch.float64).cpu()
    sub_solver = solver
    if solver.eps > 0 and solver.relative_eps:
        sub_solver = replace(solver, eps=solver.eps * relative_eps_scale(targets, noise), relative_eps=False)
    num_classes = int(labels.max()) + 1
    probs = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, b)
    potential = torch.zeros(n, dtype=torch.float64)
    per_class: dict[int, SemidiscreteResult] = {}
    inverse = torch.empty(n, dtype=torch.int64)
    representative: list[torch.Tensor] = []
    groups = 0
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        w = None if weights is None else b[idx]
        res = sub_solver.solve(
            targets[idx.to(targets.device)], w, generator=generator, noise=noise, callback=callback
        )
        per_class[c] = res
        potential[idx] = res.potential.detach().to("cpu", torch.float64)
        if res.duplicates is not None:
            inverse[idx] = res.duplicates.inverse.cpu() + groups
            representative.append(idx[res.duplicates.representative.cpu()])
            groups += res.duplicates.num_groups
        else:
            inverse[idx] = torch.arange(groups, groups + idx.numel())
            representative.append(idx)
            groups += idx.numel()
    duplicates = None
    if groups < n:
        duplicates = DuplicateGroups(inverse=inverse, representative=torch.cat(representative), weights=b)
    chi2 = sum(float(probs[c]) * r.chi2 for c, r in per_class.items())
    se = sum((float(probs[c]) * r.chi2_stderr) ** 2 for c, r in per_class.items()) ** 0.5
    return ClassConditionalResult(
        potential=potential,
        eps=next(iter(per_class.values())).eps,
        classes=labels,
        class_probs=probs,
        chi2=chi2,
        chi2_stderr=se,
        chi2_per_class={c: r.chi2 for c, r in per_class.items()},
        converged=all(r.converged for r in per_class.values()),
        seconds=time.perf_counter() - t0,
        samples=sum(r.samples for r in per_class.values()),
        steps=sum(r.steps for r in per_class.values()),
        chi2_samples=sum(r.chi2_samples for r in per_class.values()),
        settings={**solver.settings(), "per_class": True, "eps_abs": next(iter(per_class.values())).eps},
        weights=None if weights is None else b,
        duplicates=duplicates,
        per_class=per_class,
    )
