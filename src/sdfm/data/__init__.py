"""Datasets (layer L1): generated toys, bundled real sets, tensor files, fingerprints."""

from sdfm.data.files import fingerprint, load_array
from sdfm.data.registry import DATASETS, Dataset, heldout_spec, load_dataset

__all__ = ["DATASETS", "Dataset", "fingerprint", "heldout_spec", "load_array", "load_dataset"]
