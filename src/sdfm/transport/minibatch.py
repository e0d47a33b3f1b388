"""Minibatch optimal transport between n noises and m data points (the OT-FM baseline).

- :func:`exact_assignment`: the optimal permutation for n = m (scipy's ``linear_sum_assignment``,
  the Jonker-Volgenant algorithm: every point used exactly once, O(n^3)).
- :func:`sinkhorn`: the entropic plan in the log domain (torch, any device), eps absolute or
  relative to the cost scale as in the semidiscrete solver; :func:`sample_plan_rows` draws one data
  point per noise from the rows of the plan.

Cost 1/2 |x - y|^2 everywhere, as in the rest of sdfm.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from sdfm.transport.validate import as_queries, as_targets, check_eps


def cost_matrix(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """C_ij = 1/2 |x0_i - x1_j|^2 [n, m], computed in the inputs' dtype (at least float32)."""
    dtype = torch.promote_types(torch.promote_types(x0.dtype, x1.dtype), torch.float32)
    a, b = x0.to(dtype), x1.to(device=x0.device, dtype=dtype)
    sq = 0.5 * (a * a).sum(1, keepdim=True) + 0.5 * (b * b).sum(1)[None, :] - a @ b.T
    return sq.clamp_min_(0)


def _check_pair(x0, x1) -> tuple[torch.Tensor, torch.Tensor]:
    x1 = as_targets(x1, "x1")
    return as_queries(x0, x1.shape[1], "x0"), x1


def exact_assignment(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Optimal permutation pairing noises x0 [n, d] with data x1 [n, d].

    Returns int64 ``perm`` [n] on ``x0.device`` such that ``(x0[i], x1[perm[i]])`` minimises
    sum_i 1/2 |x0_i - x1_perm(i)|^2 over all permutations (scipy ``linear_sum_assignment`` on the
    float64 cost matrix).
    """
    from scipy.optimize import linear_sum_assignment

    x0, x1 = _check_pair(x0, x1)
    if x0.shape[0] != x1.shape[0]:
        raise ValueError(
            f"x1: exact assignment needs as many data points as noises, got x0 {list(x0.shape)} "
            f"and x1 {list(x1.shape)}"
        )
    cost = cost_matrix(x0.detach().double().cpu(), x1.detach().double().cpu()).numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = torch.empty(x0.shape[0], dtype=torch.long)
    perm[torch.from_numpy(rows)] = torch.from_numpy(cols)
    return perm.to(x0.device)


@dataclass(frozen=True)
class SinkhornResult:
    """Entropic OT plan between uniform measures on n and m points.

    Attributes:
        log_plan: log P [n, m] (P sums to 1, rows to 1/n, columns to 1/m up to ``marginal_error``).
        f, g: dual potentials [n], [m] in cost units.
        eps: the absolute regularisation used.
        iterations: Sinkhorn iterations run.
        marginal_error: L1 error of the column marginal after the last (row) update.
    """

    log_plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    eps: float
    iterations: int
    marginal_error: float


def sinkhorn(
    x0: torch.Tensor,
    x1: torch.Tensor,
    eps: float = 0.05,
    *,
    relative: bool = True,
    max_iter: int = 2000,
    tol: float = 1e-4,
    warn_above: float | None = 0.01,
) -> SinkhornResult:
    """Log-domain Sinkhorn between the uniform measures on x0 [n, d] and x1 [m, d].

    Args:
        x0, x1: the two point clouds (any device; float64 gives tighter marginals).
        eps: regularisation (> 0). Relative by default: ``eps_abs = eps * std(C)`` with C the cost
            matrix of this batch after centring each cloud (which leaves the plan unchanged), the
            convention of :class:`~sdfm.transport.SemidiscreteSolver`.
        relative: read ``eps`` relative to std(C) (True) or in cost units (False).
        max_iter: iteration cap; tol: stop when the L1 column-marginal error is below it.
        warn_above: a RuntimeWarning when the cap is reached with the marginal error still above
            this (the plan is far from a coupling; None: never).
    """
    x0, x1 = _check_pair(x0, x1)
    eps = check_eps(eps)
    if eps <= 0:
        raise ValueError(f"eps: Sinkhorn needs eps > 0, got {eps} (use exact_assignment for eps = 0)")
    # Centring each cloud changes C by row and column constants only, so the plan is the same; the
    # relative eps and the float precision then do not depend on where the data sit (offset 1e6 data
    # gave a 1e12-sized cost, an eps to match and a plan that never converged).
    c0, c1 = x0 - x0.mean(0), x1 - x1.mean(0)
    cost = cost_matrix(c0, c1)
    n, m = cost.shape
    scale = float(cost.std()) if (relative and cost.numel() > 1) else 1.0
    eps_abs = float(eps) * (scale if scale > 0 else 1.0)
    log_a, log_b = -math.log(n), -math.log(m)
    f = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(m, dtype=cost.dtype, device=cost.device)
    neg = -cost / eps_abs
    err, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        f = -eps_abs * torch.logsumexp(neg + (g / eps_abs + log_b)[None, :], dim=1)
        g = -eps_abs * torch.logsumexp(neg + (f / eps_abs + log_a)[:, None], dim=0)
        if it % 10 == 0 or it == max_iter:
            # After the g update columns are exact; measure the row marginal instead.
            log_plan = neg + (f / eps_abs + log_a)[:, None] + (g / eps_abs + log_b)[None, :]
            err = float((log_plan.exp().sum(1) - 1.0 / n).abs().sum())
            if err < tol:
                break
    log_plan = neg + (f / eps_abs + log_a)[:, None] + (g / eps_abs + log_b)[None, :]
    if warn_above is not None and not err <= warn_above:
        warnings.warn(
            f"sinkhorn: marginal error {err:.3g} after {it} iterations (eps {eps_abs:.3g}): the plan is far "
            "from converged; raise eps or max_iter",
            RuntimeWarning,
            stacklevel=2,
        )
    # potentials of the uncentred cost: C = C_centred + <c0_i, delta> - <c1_j, delta> + |delta|^2 / 2
    delta = (x0.mean(0) - x1.mean(0)).to(cost.dtype)
    f = f + c0.to(cost.dtype) @ delta + 0.5 * delta.dot(delta)
    g = g - c1.to(device=cost.device, dtype=cost.dtype) @ delta
    return SinkhornResult(log_plan=log_plan, f=f, g=g, eps=eps_abs, iterations=it, marginal_error=err)


def sample_plan_rows(log_plan: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One column per row drawn from the conditional plan P[i, :] / sum_j P[i, j] (Gumbel-max).

    Returns int64 [n] on ``log_plan.device``.
    """
    u = torch.rand(log_plan.shape, generator=generator, dtype=log_plan.dtype, device=log_plan.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
    return torch.argmax(log_plan + gumbel, dim=1)
