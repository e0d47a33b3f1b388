"""Checksums of safetensors artefacts: a flipped bit in a tensor or in the metadata is detected on load."""

from __future__ import annotations

import hashlib
import json

import torch


def checksum(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """sha256 of the tensors (name, dtype, shape, bytes, in name order) and of ``meta`` without its
    ``checksum`` key (canonical JSON), as ``"sha256:<hex>"``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    rest = {k: v for k, v in meta.items() if k != "checksum"}
    h.update(json.dumps(rest, sort_keys=True).encode())
    return "sha256:" + h.hexdigest()
