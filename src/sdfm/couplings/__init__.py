"""Couplings (layer L1): where noise meets data. Every coupling returns ``Pairs(x0, x1, index, cond)``.

- :class:`IndependentCoupling` (I-FM), :class:`MinibatchOTCoupling` (OT-FM, exact or Sinkhorn),
  :class:`SemidiscreteCoupling` (SD-FM).
- :class:`SemidiscretePairs` (and its :class:`PairDataset`): SD-FM pairs for your own training loop.
- ``COUPLINGS`` (:mod:`sdfm.couplings.registry`): name -> how a training run builds each one from its
  spec (``sdfm train --coupling`` takes its choices from it).
"""

from sdfm.couplings._base import DataCoupling
from sdfm.couplings.independent import IndependentCoupling
from sdfm.couplings.minibatch_ot import MinibatchOTCoupling
from sdfm.couplings.pairs import PairDataset, SemidiscretePairs
from sdfm.couplings.registry import COUPLINGS, CouplingContext, register_coupling
from sdfm.couplings.semidiscrete import SemidiscreteCoupling
from sdfm.couplings.semidiscrete_run import build_semidiscrete  # noqa: F401 - registers it

__all__ = [
    "COUPLINGS",
    "CouplingContext",
    "DataCoupling",
    "IndependentCoupling",
    "MinibatchOTCoupling",
    "PairDataset",
    "SemidiscreteCoupling",
    "SemidiscretePairs",
    "register_coupling",
]
