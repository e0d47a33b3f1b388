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


def mnist1d(n: int = 5000, split: str = "train", seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package (no download).

    ``n`` signals are generated with the package's default transformations and seed, standardised
    by the package, then split 80/20: ``split="train"`` returns the first 80% ([4000, 40] for the
    default n = 5000), ``"test"`` the rest. Labels 0..9. The global numpy / random state the
    package seeds is restored afterwards.
    """
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    args = get_dataset_args()
    args.num_samples, args.seed = int(n), int(seed)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x, y = (data["x"], data["y"]) if split == "train" else (data["x_test"], data["y_test"])
    return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
