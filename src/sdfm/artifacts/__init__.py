"""Files that sdfm writes (layer L1): potentials, atomic writes."""

from sdfm.artifacts.atomic import atomic_write
from sdfm.artifacts.potential import PotentialFile, load_potential, save_potential

__all__ = ["PotentialFile", "atomic_write", "load_potential", "save_potential"]
