"""Independent coupling (I-FM): noise and data drawn independently."""

from __future__ import annotations

import torch

from sdfm.couplings._base import DataCoupling
from sdfm.couplings.registry import register_coupling
from sdfm.protocols import Pairs


class IndependentCoupling(DataCoupling):
    """x0 ~ noise and x1 ~ data (by weight), independently. See :class:`DataCoupling` for the args."""

    name = "independent"

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Pairs:
        n = self._check_n(n)
        index = self.draw_index(n, generator)
        return self.pairs(self.draw_noise(n, generator), index)


@register_coupling("independent", conditions=True)
def build_independent(spec, ctx):
    """I-FM for a run: data points drawn by weight (with their labels or continuous conditions)."""
    if ctx.conditions is not None:
        return IndependentCoupling(ctx.targets, conditions=ctx.conditions), {}
    return IndependentCoupling(ctx.targets, labels=ctx.labels), {}
