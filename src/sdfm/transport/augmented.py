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
from dataclasses import dataclass

import torch

from sdfm.transport.assign import LaguerreCells
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
    directions that move mass between slices, so potentials far apart (in max g - min g) have the same
    chi2; what training sees is how many pairs leave their condition. The solver reports it for
    augmented solves (``result.settings["condition_mismatch"]``, :func:`condition_mismatch`); on nine
    20-point toys it matched the exact coupling's within 0.02 (BENCHMARKS.md section 8).

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
        return self.draw(n, d, generator=generator, device=device, dtype=dtype)[0]

    def draw(
        self, n: int, d: int, *, generator=None, device="cpu", dtype=torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries [n, d] (as ``noise(n, d)`` draws them) and the index i [n] of each one's condition."""
        k = self.cond_dim
        if d <= k:
            raise ValueError(f"d: the augmented dimension {d} must exceed the condition size {k}")
        x0 = torch.randn(n, d - k, generator=generator, device=device, dtype=dtype)
        i = self.draw_index(n, generator, device)
        return augmented_queries(x0, self.conditions.to(device)[i], self.beta), i


@dataclass(frozen=True)
class ConditionMismatch:
    """How far the pairs of an augmented coupling leave the condition of their noise.

    Attributes:
        left: fraction of pairs whose data point's condition z_j differs from the drawn z0 (with
            one condition per data point, the pairs not made with the noise's own data point or an
            exact copy of its condition).
        relative_distance: mean |z0 - z_j| over the mean |z0 - z_k| for a random data point k:
            0 = every pair keeps its condition, about 1 = the condition is ignored.
        num_samples: noise samples drawn.
    """

    left: float
    relative_distance: float
    num_samples: int

    def to_dict(self) -> dict:
        return {
            "left": self.left,
            "relative_distance": self.relative_distance,
            "num_samples": self.num_samples,
        }


def condition_mismatch(
    keys,
    potential,
    noise: ConditionedNoise,
    *,
    num_samples: int = 1 << 16,
    batch_size: int = 8192,
    generator: torch.Generator | None = None,
) -> ConditionMismatch:
    """The condition mismatch (:class:`ConditionMismatch`) of the hard pairs (eps = 0) that ``potential``
    makes over the augmented ``keys`` [N, d + k] (:func:`augmented_keys`) for fresh draws of ``noise``.

    A diagnostic of augmented solves beside chi2: for a large beta the semi-dual is nearly flat in the
    directions that move mass between condition slices, so chi2 can be small while pairs leave their
    condition that the exact coupling keeps (the solver reports this number).
    """
    keys = as_targets(keys, "keys")
    z = noise.conditions
    if keys.shape[0] != z.shape[0] or keys.shape[1] <= noise.cond_dim:
        raise ValueError(
            f"keys: expected [{z.shape[0]}, d + {noise.cond_dim}] augmented keys, got {list(keys.shape)}"
        )
    cells = LaguerreCells(keys, potential)
    device = keys.device
    z = z.to(device=device, dtype=torch.float64)
    left = dist = rand = 0.0
    done = 0
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        queries, i = noise.draw(n, keys.shape[1], generator=generator, device=device, dtype=keys.dtype)
        j = cells.assign(queries)
        k = torch.randint(z.shape[0], (n,), generator=generator, device=device)
        left += float((z[j] != z[i]).any(dim=1).sum())
        dist += float((z[i] - z[j]).norm(dim=1).sum())
        rand += float((z[i] - z[k]).norm(dim=1).sum())
        done += n
    return ConditionMismatch(left / done, dist / rand if rand > 0 else 0.0, done)
