"""Independent coupling (I-FM): noise and data drawn independently."""

from __future__ import annotations

import torch

from sdfm.couplings._base import DataCoupling
from sdfm.protocols import Pairs


class IndependentCoupling(DataCoupling):
    """x0 ~ noise and x1 ~ data (by weight), independently. See :class:`DataCoupling` for the args."""

    name = "independent"

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Pairs:
        n = self._check_n(n)
        index = self.draw_index(n, generator)
        return self.pairs(self.draw_noise(n, generator), index)
