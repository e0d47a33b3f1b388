"""Datasets (layer L1): generated toys, bundled real sets, tensor files, fingerprints."""

from sdfm.data.files import fingerprint, load_array
from sdfm.data.registry import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "fingerprint", "load_array", "load_dataset"]
