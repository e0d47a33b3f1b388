"""FAISS index files: the serialised index in a safetensors file with JSON metadata, tied to one potential.

Layout: tensor ``index`` (uint8, ``faiss.serialize_index``) and metadata key ``sdfm`` (JSON: format,
kind, search parameters, N, d, the fingerprint of (potential, data shape, data fingerprint), and the
sha256 ``checksum`` of the blob and the metadata). Written atomically. :func:`load_index` refuses an
index built for another potential or other data, and a modified or truncated file, with ValueError.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sdfm.artifacts.atomic import atomic_write
from sdfm.artifacts.checksum import checksum
from sdfm.checks import check_int, check_type
from sdfm.transport.search import FaissCells, faiss_module, potential_fingerprint

FORMAT = "sdfm.faiss_index"


def save_index(path: str | Path, cells: FaissCells) -> Path:
    """Writes ``cells``' index (atomically) with what :func:`load_index` needs to check it."""
    from safetensors.torch import save_file

    faiss = faiss_module()
    blob = torch.from_numpy(np.ascontiguousarray(faiss.serialize_index(cells.index)))
    meta = {
        "format": FORMAT,
        "kind": cells.kind,
        "params": cells.params,
        "num_targets": cells.num_targets,
        "dim": cells.dim,
        "fingerprint": cells.fingerprint,
    }
    meta = json.loads(json.dumps(meta))
    meta["checksum"] = checksum({"index": blob}, meta)
    text = json.dumps(meta, sort_keys=True)
    return atomic_write(path, lambda tmp: save_file({"index": blob}, str(tmp), metadata={"sdfm": text}))


def load_index(path: str | Path, potential, *, shape, data_fingerprint: str | None = None) -> FaissCells:
    """Reads an index written by :func:`save_index`; ValueError unless it was built for this
    ``potential`` [N] over data of ``shape`` (N, d) with this ``data_fingerprint``."""
    from safetensors import safe_open

    faiss = faiss_module()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"index: no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("sdfm", "{}"))
            blob = fh.get_tensor("index")
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        raise ValueError(f"index: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"index: {path} is not an sdfm FAISS index file")
    try:
        if meta.get("checksum") is None:  # (always written; a flipped bit in its name skips nothing)
            raise ValueError("no checksum in the metadata (modified or corrupt; delete the file to rebuild)")
        if meta["checksum"] != checksum({"index": blob}, meta):
            raise ValueError(
                "the checksum of the index and its metadata does not match (modified or corrupt)"
            )
        check_type("fingerprint", meta.get("fingerprint"), str)
        check_type("kind", meta.get("kind"), str)
        check_type("params", meta.get("params"), dict)
        num_targets = check_int("num_targets", meta.get("num_targets"), low=1, high=1 << 40)
        dim = check_int("dim", meta.get("dim"), low=1, high=1 << 24)
        if blob.dtype != torch.uint8 or blob.dim() != 1:
            raise ValueError(f"index: expected a uint8 blob, got {blob.dtype} {list(blob.shape)}")
    except ValueError as exc:
        raise ValueError(f"index: {path}: {exc}") from None
    potential = torch.as_tensor(potential)
    expected = potential_fingerprint(potential, tuple(shape), data_fingerprint)
    if meta["fingerprint"] != expected:
        raise ValueError(
            f"index: {path} was built for another potential or other data (fingerprint "
            f"{meta['fingerprint'][:12]}…, this potential and data give {expected[:12]}…); rebuild it"
        )
    try:
        index = faiss.deserialize_index(blob.numpy())
    except Exception as exc:  # noqa: BLE001 - FAISS raises RuntimeError on truncated or garbled blobs
        raise ValueError(f"index: {path}: FAISS cannot read the index: {type(exc).__name__}") from exc
    try:
        return FaissCells.from_index(
            index,
            kind=meta["kind"],
            num_targets=num_targets,
            dim=dim,
            fingerprint=meta["fingerprint"],
            params=meta["params"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"index: {path}: does not describe its index: {exc}") from None
