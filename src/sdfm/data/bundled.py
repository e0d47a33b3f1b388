"""Real datasets that ship inside installed packages (nothing is downloaded)."""

from __future__ import annotations

import numpy as np


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits: pixels [1797, 64] float32 in [0, 16], labels [1797].

    The values are returned as given (0..16), without rescaling.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)
