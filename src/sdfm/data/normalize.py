"""The affine normalisation used for training, stored in the run and undone when sampling.

``standard`` (default): subtract the per-feature mean and divide by ONE global scale, the root mean
per-feature variance, so the data have unit average variance like the N(0, I) source while the
relative scale of the features (what the OT cost sees) is kept. ``none``: identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MODES = ("standard", "none")


@dataclass(frozen=True)
class Normalization:
    """x_train = (x - shift) / scale, with shift [d] and a scalar scale."""

    mode: str
    shift: np.ndarray
    scale: float

    @classmethod
    def fit(cls, x: np.ndarray, mode: str = "standard") -> Normalization:
        """Fits the normalisation to data [N, d] (float64 statistics, streamed over row blocks)."""
        if mode not in MODES:
            raise ValueError(f"normalize: expected one of {MODES}, got {mode!r}")
        d = x.shape[1]
        if mode == "none":
            return cls(mode, np.zeros(d), 1.0)
        total = np.zeros(d)
        total_sq = np.zeros(d)
        for start in range(0, x.shape[0], 65536):
            block = np.asarray(x[start : start + 65536], dtype=np.float64)
            total += block.sum(0)
            total_sq += (block * block).sum(0)
        n = x.shape[0]
        mean = total / n
        var = np.maximum(total_sq / n - mean * mean, 0.0)
        scale = float(np.sqrt(var.mean()))
        return cls(mode, mean, scale if scale > 0 else 1.0)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Data [N, d] -> training space, float32."""
        return ((np.asarray(x, dtype=np.float64) - self.shift) / self.scale).astype(np.float32)

    def undo(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Training space [n, d] -> data space (float32 numpy)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
        return (np.asarray(x, dtype=np.float64) * self.scale + self.shift).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "shift": [float(v) for v in self.shift], "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(str(d["mode"]), np.asarray(d["shift"], dtype=np.float64), float(d["scale"]))
