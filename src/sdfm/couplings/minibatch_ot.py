"""Minibatch OT coupling (OT-FM): n noises and n data points re-paired by OT within the batch (and,
for class-conditional models, within each class of the batch)."""

from __future__ import annotations

import torch

from sdfm.couplings._base import DataCoupling
from sdfm.couplings.registry import register_coupling
from sdfm.protocols import Pairs
from sdfm.transport.minibatch import exact_assignment, sample_plan_rows, sinkhorn
from sdfm.transport.sources import standard_normal
from sdfm.transport.validate import check_eps, check_positive_int

METHODS = ("exact", "sinkhorn")


class MinibatchOTCoupling(DataCoupling):
    """Draws n noises and n data points, then pairs them by OT within the batch.

    Args:
        data, labels, weights, noise: see :class:`~sdfm.couplings.DataCoupling`.
        method: ``"exact"`` — the optimal permutation (scipy ``linear_sum_assignment``; every point
            of the batch used once, cost O(n^3) on CPU); ``"sinkhorn"`` — the log-domain entropic
            plan (torch, any device), one data point drawn per noise from its row of the plan.
        batch_size: the OT batch size; a request for more pairs is split into independent OT
            problems of this size (the last one smaller). None = one problem per request.
        eps: Sinkhorn regularisation, relative to the batch cost std by default (``relative``).
        max_iter, tol: Sinkhorn stopping rule.
        conditional: pair only within classes (needs ``labels``): each OT batch is split by the class
            of its data points and every class block is solved on its own (each noise then carries
            its data point's class as ``cond``, and the class frequencies are those of the data).
    """

    name = "minibatch-ot"

    def __init__(
        self,
        data,
        *,
        method: str = "exact",
        batch_size: int | None = None,
        eps: float = 0.05,
        relative: bool = True,
        max_iter: int = 2000,
        tol: float = 1e-4,
        labels=None,
        weights=None,
        noise=standard_normal,
        conditional: bool = False,
    ):
        super().__init__(data, labels=labels, weights=weights, noise=noise)
        if conditional and self.labels is None:
            raise ValueError("conditional: within-class minibatch OT needs labels")
        self.conditional = bool(conditional)
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        self.method = method
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.eps = check_eps(eps)
        if method == "sinkhorn" and self.eps == 0:
            raise ValueError("eps: Sinkhorn needs eps > 0 (method='exact' is the eps = 0 coupling)")
        self.relative = bool(relative)
        self.max_iter = check_positive_int(max_iter, "max_iter", allow_none=False)
        self.tol = float(tol)

    def _pair(self, x0: torch.Tensor, x1: torch.Tensor, generator, classes=None) -> torch.Tensor:
        """Local indices into x1 for each x0 (within each class when ``classes`` [m] are given)."""
        if classes is not None:
            out = torch.empty(x0.shape[0], dtype=torch.long, device=x0.device)
            for c in torch.unique(classes):
                rows = torch.nonzero(classes == c).squeeze(1)
                out[rows] = rows[self._pair(x0[rows], x1[rows], generator)]
            return out
        if x0.shape[0] == 1:
            return torch.zeros(1, dtype=torch.long, device=x0.device)
        if self.method == "exact":
            return exact_assignment(x0, x1)
        plan = sinkhorn(x0, x1, self.eps, relative=self.relative, max_iter=self.max_iter, tol=self.tol)
        return sample_plan_rows(plan.log_plan, generator)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Pairs:
        n = self._check_n(n)
        index = self.draw_index(n, generator)
        x0 = self.draw_noise(n, generator)
        size = self.batch_size or n
        out = torch.empty_like(index)
        for start in range(0, n, size):
            sl = slice(start, min(n, start + size))
            classes = self.labels[index[sl]] if self.conditional else None
            local = self._pair(x0[sl], self.data[index[sl]], generator, classes)
            out[sl] = index[sl][local]
        return self.pairs(x0, out)


#: Sinkhorn's relative eps when a run does not set one
DEFAULT_SINKHORN_EPS = 0.05


@register_coupling("minibatch-ot", options=("eps", "ot_method", "ot_batch_size"))
def build_minibatch_ot(spec, ctx):
    """OT-FM for a run: exact or Sinkhorn OT in batches of ``spec.ot_batch_size`` (default: the
    training batch), within classes when ``spec.conditional``."""
    info = ctx.stored or {
        "method": spec.ot_method,
        "batch_size": spec.ot_batch_size or ctx.batch_size,
        "eps": DEFAULT_SINKHORN_EPS if spec.eps is None else spec.eps,
    }
    coupling = MinibatchOTCoupling(
        ctx.targets,
        method=info["method"],
        batch_size=info["batch_size"],
        eps=info["eps"],
        labels=ctx.labels,
        conditional=spec.conditional,
    )
    return coupling, {k: info[k] for k in ("method", "batch_size", "eps")}
