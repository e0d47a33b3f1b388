"""Pictures of samples: scatter for 2-D data, image grids for images, curves for 1-D signals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(
    x: np.ndarray, path: str | Path, *, image_shape=None, title: str = "", max_items: int = 64, reference=None
) -> Path:
    """Writes a PNG of samples x [n, d]: 2-D scatter (over ``reference`` data in grey if given), an
    image grid when ``image_shape`` (C, H, W) is known, otherwise the first signals as curves."""
    from sdfm.artifacts.atomic import atomic_write

    plt = _figure()
    x = np.asarray(x)
    if image_shape is not None:
        c, h, w = image_shape
        k = min(max_items, x.shape[0])
        cols = int(math.ceil(math.sqrt(k)))
        rows = int(math.ceil(k / cols))
        imgs = x[:k].reshape(k, c, h, w)
        lo, hi = np.percentile(imgs, 0.5), np.percentile(imgs, 99.5)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < k:
                img = np.clip((imgs[i] - lo) / max(hi - lo, 1e-12), 0, 1)
                ax.imshow(img[0] if c == 1 else img[:3].transpose(1, 2, 0), cmap="gray" if c == 1 else None)
    elif x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.8", label="data")
        ax.scatter(x[:, 0], x[:, 1], s=1, c="C0", alpha=0.6, label="samples")
        ax.set_aspect("equal")
    else:
        k = min(16, x.shape[0])
        fig, axes = plt.subplots(4, 4, figsize=(8, 5), squeeze=False, sharex=True)
        for i, ax in enumerate(axes.flat):
            if i < k:
                ax.plot(x[i], lw=1)
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path
