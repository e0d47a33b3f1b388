"""Couplings (layer L1): where noise meets data. Every coupling returns ``Pairs(x0, x1, index, cond)``.

- :class:`IndependentCoupling` (I-FM), :class:`MinibatchOTCoupling` (OT-FM, exact or Sinkhorn),
  :class:`SemidiscreteCoupling` (SD-FM). ``COUPLINGS`` maps the CLI names to the classes.
"""

from sdfm.couplings._base import DataCoupling
from sdfm.couplings.independent import IndependentCoupling
from sdfm.couplings.minibatch_ot import MinibatchOTCoupling
from sdfm.couplings.semidiscrete import SemidiscreteCoupling

#: CLI name -> coupling class
COUPLINGS = {
    "independent": IndependentCoupling,
    "minibatch-ot": MinibatchOTCoupling,
    "semidiscrete": SemidiscreteCoupling,
}

__all__ = ["COUPLINGS", "DataCoupling", "IndependentCoupling", "MinibatchOTCoupling", "SemidiscreteCoupling"]
