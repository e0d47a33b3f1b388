"""Optional dependencies. ``pip install sdfm`` brings what the transport, couplings, flow, samplers and
training need (torch, numpy, safetensors, scipy, tqdm, torchdiffeq); the rest comes with extras:

- ``sdfm[cli]``: the built-in real datasets (scikit-learn's digits, MNIST-1D), image folders (Pillow),
  pictures and reports (matplotlib) and exact W2 (POT): what ``sdfm demo`` and ``sdfm eval`` use;
- ``sdfm[faiss]``, ``sdfm[fid]``, ``sdfm[tensorboard]``; ``sdfm[all]`` is all of them.

A missing one gives :class:`MissingExtra` (an ImportError) whose one-line message names the extra.
"""

from __future__ import annotations

import importlib

#: module -> the extra that installs it
EXTRAS = {
    "matplotlib": "cli",
    "sklearn": "cli",
    "mnist1d": "cli",
    "ot": "cli",
    "PIL": "cli",
    "faiss": "faiss",
    "torchmetrics": "fid",
    "torch.utils.tensorboard": "tensorboard",
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


#: module -> the pip package, where the names differ
PACKAGES = {"sklearn": "scikit-learn", "ot": "POT", "PIL": "Pillow", "torch.utils.tensorboard": "tensorboard"}


def require(module: str, purpose: str):
    """Imports ``module`` or raises :class:`MissingExtra` saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        key = module if module in EXTRAS else top
        package = PACKAGES.get(key, key)
        raise MissingExtra(
            f"{purpose} needs the optional package {package!r}: pip install 'sdfm[{EXTRAS.get(key, 'all')}]'"
        ) from exc
