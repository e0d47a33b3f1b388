"""Files that sdfm writes (layer L1): potentials, FAISS indexes, atomic writes."""

from sdfm.artifacts.atomic import atomic_write
from sdfm.artifacts.index import load_index, save_index
from sdfm.artifacts.potential import PotentialFile, load_potential, save_potential

__all__ = ["PotentialFile", "atomic_write", "load_index", "load_potential", "save_index", "save_potential"]
