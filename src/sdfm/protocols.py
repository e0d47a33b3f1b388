"""The shared vocabulary of sdfm: small Protocols used across layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


class NoiseSampler(Protocol):
    """Draws ``n`` source samples ``x0`` of dimension ``d``.

    Called as ``sampler(n, d, generator=..., device=..., dtype=...)`` and returns a tensor [n, d].
    The default source of sdfm is the standard Gaussian (:func:`sdfm.transport.standard_normal`).
    """

    def __call__(
        self,
        n: int,
        d: int,
        *,
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Pairs:
    """A batch of (noise, data) pairs: what every coupling returns.

    Attributes:
        x0: noise samples [n, d] (the source, t = 0 of the path).
        x1: their paired data points [n, d] (t = 1).
        index: int64 [n], the row of ``x1`` in the coupling's data.
        cond: labels of the paired data points [n] (int64), or None when the data have none.
    """

    x0: torch.Tensor
    x1: torch.Tensor
    index: torch.Tensor
    cond: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x0.shape[0])


@runtime_checkable
class Coupling(Protocol):
    """Draws ``n`` (noise, data) pairs: ``coupling.sample(n, generator=g) -> Pairs``.

    Randomness comes only from ``generator`` (on the coupling's device), so a seeded generator
    gives the same pairs every time.
    """

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Pairs: ...


@runtime_checkable
class VelocityField(Protocol):
    """A time-dependent vector field ``v(x [n, d], t [n], cond [n] | None) -> [n, d]``."""

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor: ...
