"""Continuous conditions: semidiscrete OT under the augmented cost (arXiv 2509.25519).

Each data point y_j comes with a condition vector z_j (e.g. a noisy low-resolution copy of an image).
The source draws noise x0 ~ N(0, I_d) *and* a condition z0 = z_i of a data point i ~ b, and the cost is

    c((x0, z0), (y_j, z_j)) = 1/2 |x0 - y_j|^2 + beta 1/2 |z0 - z_j|^2,

which is the plain squared cost between the query [x0, sqrt(beta) z0] and the key [y_j, sqrt(beta) z_j].
So the augmented problem is an ordinary semidiscrete problem over the keys with the source
:class:`ConditionedNoise`: the solver and :func:`~sdfm.transport.assign` run on it unchanged. Large beta
pairs each noise with data of nearly its own condition (beta -> infinity with distinct z_j is the
independent coupling); beta = 0 ignores the condition.
"""

from __future__ import annotations

import math

import torch

from sdfm.transport.validate import as_targets, as_weights


def _check_beta(beta) -> float:
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not (math.isfinite(beta) and beta >= 0)
    ):
        raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}")
    return float(beta)


def _check_conditions(conditions, n_targets: int) -> torch.Tensor:
    z = as_targets(conditions, "conditions")
    if z.shape[0] != n_targets:
        raise ValueError(
            f"conditions: expected one row per data point ([{n_targets}, k]), got {list(z.shape)}"
        )
    return z


def augmented_keys(targets, conditions, beta: float) -> torch.Tensor:
    """The keys [y_j, sqrt(beta) z_j] [N, d + k] of the augmented problem (on the targets' device)."""
    y = as_targets(targets, "targets")
    z = _check_conditions(conditions, y.shape[0]).to(device=y.device, dtype=y.dtype)
    return torch.cat([y, math.sqrt(_check_beta(beta)) * z], dim=1)


def augmented_queries(x0: torch.Tensor, z0: torch.Tensor, beta: float) -> torch.Tensor:
    """The queries [x0, sqrt(beta) z0] [n, d + k]."""
    if x0.dim() != 2 or z0.dim() != 2 or x0.shape[0] != z0.shape[0]:
        raise ValueError(f"x0, z0: expected [n, d] and [n, k], got {list(x0.shape)} and {list(z0.shape)}")
    return torch.cat([x0, math.sqrt(_check_beta(beta)) * z0.to(x0.dtype)], dim=1)


class ConditionedNoise:
    """The source of the augmented problem, as a noise sampler for the solver: ``noise(n, d + k)`` draws
    x0 ~ N(0, I_d) and an index i ~ ``weights`` (uniform by default) and returns [x0, sqrt(beta) z_i].

    The source is a sum of N slices {z = z_i}. For a large beta the semi-dual is nearly flat in the
    directions that move mass between slices, and the stochastic solver's potential can drift along
    them while chi2 stays small (see the solver's notes in BENCHMARKS.md); check the pairs (e.g. how
    far z_j lies from z0) when beta |z_i - z_j|^2 dwarfs the data cost.

    Args:
        conditions: z [N, k], one per data point.
        beta: weight of the condition cost.
        weights: data weights [N] (the law of i; None = uniform).
    """

    def __init__(self, conditions, beta: float, weights=None):
        self.conditions = as_targets(conditions, "conditions")
        self.beta = _check_beta(beta)
        self.weights = as_weights(weights, self.conditions.shape[0])

    @property
    def cond_dim(self) -> int:
        return int(self.conditions.shape[1])

    def draw_index(self, n: int, generator, device) -> torch.Tensor:
        if self.weights is None:
            return torch.randint(self.conditions.shape[0], (n,), generator=generator, device=device)
        return torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)

    def __call__(self, n: int, d: int, *, generator=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
        k = self.cond_dim
        if d <= k:
            raise ValueError(f"d: the augmented dimension {d} must exceed the condition size {k}")
        x0 = torch.randn(n, d - k, generator=generator, device=device, dtype=dtype)
        i = self.draw_index(n, generator, device)
        return augmented_queries(x0, self.conditions.to(device)[i], self.beta)
