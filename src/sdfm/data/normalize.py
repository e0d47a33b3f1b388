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


def _blocks(x, rows: int = 65536):
    for start in range(0, x.shape[0], rows):
        yield np.asarray(x[start : start + rows], dtype=np.float64)


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
        n = x.shape[0]
        if n == 0:
            raise ValueError("normalize: the data have no rows")
        # two passes (mean, then centred squares): E[x^2] - mean^2 cancels catastrophically for data
        # far from the origin (offset 1e6, std 1e-3 gave a scale 37x too large)
        total = np.zeros(d)
        for block in _blocks(x):
            total += block.sum(0)
        mean = total / n
        centred_sq = np.zeros(d)
        for block in _blocks(x):
            block = block - mean
            centred_sq += (block * block).sum(0)
        scale = float(np.sqrt((centred_sq / n).mean()))
        if not np.isfinite(mean).all() or not np.isfinite(scale):
            raise ValueError("normalize: the data contain NaN or Inf (or values too large for float64)")
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
    def from_dict(cls, d: dict, *, dim: int | None = None) -> Normalization:
        """The normalisation stored by :meth:`to_dict`; ValueError unless it is well formed (a known
        mode, ``dim`` finite shifts when given, a finite scale > 0)."""
        try:
            mode, shift, scale = d["mode"], np.asarray(d["shift"], dtype=np.float64), float(d["scale"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"normalization: malformed {d!r:.80}: {exc}") from None
        if mode not in MODES:
            raise ValueError(f"normalization: mode {mode!r} is not one of {MODES}")
        if shift.ndim != 1 or (dim is not None and shift.shape[0] != dim):
            raise ValueError(f"normalization: shift of shape {list(shift.shape)}, expected [{dim}]")
        if not (np.isfinite(shift).all() and np.isfinite(scale) and scale > 0):
            raise ValueError(f"normalization: shift and scale must be finite with scale > 0 (scale {scale})")
        return cls(str(mode), shift, scale)
