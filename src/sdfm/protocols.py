"""The shared vocabulary of sdfm: small Protocols used across layers."""

from __future__ import annotations

from typing import Protocol

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
