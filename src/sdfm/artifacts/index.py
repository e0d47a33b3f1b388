"""FAISS index files: the serialised index in a safetensors file with JSON metadata, tied to one potential.

Layout: tensor ``index`` (uint8, ``faiss.serialize_index``) and metadata key ``sdfm`` (JSON: format,
kind, search parameters, N, d, the fingerprint of (potential, data shape, data fingerprint)). Written
atomically. :func:`load_index` refuses an index built for another potential or other data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sdfm.artifacts.atomic import atomic_write
from sdfm.transport.search import FaissCells, _faiss, potential_fingerprint

FORMAT = "sdfm.faiss_index"


def save_index(path: str | Path, cells: FaissCells) -> Path:
    """Writes ``cells``' index (atomically) with what :func:`load_index` needs to check it."""
    from safetensors.torch import save_file

    faiss = _faiss()
    blob = torch.from_numpy(np.ascontiguousarray(faiss.serialize_index(cells.index)))
    meta = {
        "format": FORMAT,
        "kind": cells.kind,
        "params": cells.params,
        "num_targets": cells.num_targets,
        "dim": cells.dim,
        "fingerprint": cells.fingerprint,
    }
    text = json.dumps(meta, sort_keys=True)
    return atomic_write(path, lambda tmp: save_file({"index": blob}, str(tmp), metadata={"sdfm": text}))


def load_index(path: str | Path, potential, *, shape, data_fingerprint: str | None = None) -> FaissCells:
    """Reads an index written by :func:`save_index`; ValueError unless it was built for this
    ``potential`` [N] over data of ``shape`` (N, d) with this ``data_fingerprint``."""
    from safetensors import safe_open

    faiss = _faiss()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"index: no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("sdfm", "{}"))
            blob = fh.get_tensor("index")
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        raise ValueError(f"index: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"index: {path} is not an sdfm FAISS index file")
    potential = torch.as_tensor(potential)
    expected = potential_fingerprint(potential, tuple(shape), data_fingerprint)
    if meta["fingerprint"] != expected:
        raise ValueError(
            f"index: {path} was built for another potential or other data (fingerprint "
            f"{meta['fingerprint'][:12]}…, this potential and data give {expected[:12]}…); rebuild it"
        )
    index = faiss.deserialize_index(blob.numpy())
    return FaissCells.from_index(
        index,
        kind=meta["kind"],
        num_targets=meta["num_targets"],
        dim=meta["dim"],
        fingerprint=meta["fingerprint"],
        params=meta["params"],
    )
