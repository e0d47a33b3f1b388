"""Real datasets that ship inside installed packages (nothing is downloaded)."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "test", "all")


def digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits: pixels float32 in [0, 16] (as given, no rescaling), labels.

    The 1797 images are split 80/20 by a fixed permutation (numpy seed 0): ``"train"`` [1438, 64]
    (the default, so that ``sdfm eval`` has held-out data), ``"test"`` [359, 64], ``"all"`` [1797, 64].
    """
    from sdfm.extras import require

    load_digits = require("sklearn.datasets", "the built-in digits dataset").load_digits

    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    bunch = load_digits()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    if split == "all":
        return x, y
    perm = np.random.default_rng(0).permutation(x.shape[0])
    cut = int(round(0.8 * x.shape[0]))
    keep = np.sort(perm[:cut] if split == "train" else perm[cut:])
    return x[keep], y[keep]


def mnist1d(n: int = 5000, split: str = "train", seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package (no download).

    ``n`` signals are generated with the package's default transformations and seed, standardised
    by the package, then split 80/20: ``split="train"`` returns the first 80% ([4000, 40] for the
    default n = 5000), ``"test"`` the rest. Labels 0..9. The global numpy / random state the
    package seeds is restored afterwards.
    """
    import random

    from sdfm.extras import require

    mnist1d_data = require("mnist1d.data", "the built-in MNIST-1D dataset")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset

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
