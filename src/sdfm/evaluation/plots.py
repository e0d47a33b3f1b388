"""Pictures of samples: image grids for images, scatter for 2-D data and principal components above."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _figure():
    from sdfm.extras import require

    matplotlib = require("matplotlib", "drawing pictures")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_samples(
    x: np.ndarray, path: str | Path, *, image_shape=None, title: str = "", max_items: int = 64, reference=None
) -> Path:
    """Writes a PNG of samples x [n, d] (the picture of :func:`samples_figure`)."""
    from sdfm.artifacts.atomic import atomic_write

    plt = _figure()
    fig = samples_figure(x, image_shape=image_shape, title=title, max_items=max_items, reference=reference)
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


def samples_figure(x: np.ndarray, *, image_shape=None, title: str = "", max_items: int = 64, reference=None):
    """A matplotlib figure of samples x [n, d]: an image grid when ``image_shape`` (C, H, W) is known,
    a histogram in 1-D, a scatter in 2-D and on the top two principal components above (over
    ``reference`` data in grey if given). The caller closes it (``sdfm sample``, TensorBoard)."""
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
    elif x.shape[1] == 1:
        fig, ax = plt.subplots(figsize=(4, 3))
        if reference is not None:
            ax.hist(np.asarray(reference)[:, 0], bins=80, density=True, color="0.8", label="data")
        ax.hist(x[:, 0], bins=80, density=True, color="C0", alpha=0.6, label="samples")
    else:
        # 2-D data as they are; higher dimensions on the top two principal components (of the
        # reference when given), the same picture `sdfm eval` draws
        proj = _projection(np.asarray(reference if reference is not None else x, dtype=np.float64))
        fig, ax = plt.subplots(figsize=(4, 4))
        if reference is not None:
            r = proj(reference)
            ax.scatter(r[:, 0], r[:, 1], s=1, c="0.8", label="data")
        p = proj(x)
        ax.scatter(p[:, 0], p[:, 1], s=1, c="C0", alpha=0.6, label="samples")
        if x.shape[1] == 2:
            ax.set_aspect("equal")
        else:
            ax.set_xlabel("principal direction 1", fontsize=8)
            ax.set_ylabel("principal direction 2", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _projection(reference: np.ndarray):
    """x [n, d] -> [n, 2]: identity in 2-D, else the reference's top two principal components."""
    if reference.shape[1] == 2:
        return lambda x: np.asarray(x)[..., :2]
    mean = reference.mean(0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    basis = vt[:2].T
    return lambda x: (np.asarray(x) - mean) @ basis


def _mosaic(x: np.ndarray, image_shape, k: int = 16) -> np.ndarray:
    c, h, w = image_shape
    k = min(k, x.shape[0])
    cols = int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / cols))
    imgs = x[:k].reshape(k, c, h, w)[:, 0]
    out = np.full((rows * (h + 1), cols * (w + 1)), np.nan)
    for i in range(k):
        r, q = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = imgs[i]
    return out


def _save(fig, path: Path) -> Path:
    from sdfm.artifacts.atomic import atomic_write

    plt = _figure()
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return path


def plot_sample_grid(
    samples: dict, path, *, reference: np.ndarray, image_shape=None, display=None, max_points: int = 2000
) -> Path:
    """One panel per (method, setting): ``samples[method][setting]`` = x [n, d]. 2-D data as scatter
    over the reference (grey), images as a mosaic of 16 (after ``display``, e.g. undoing the
    normalisation), other data projected on the reference's top two principal components."""
    plt = _figure()
    methods = list(samples)
    settings = list(dict.fromkeys(s for m in methods for s in samples[m]))
    fig, axes = plt.subplots(
        len(methods), len(settings), figsize=(2.0 * len(settings), 2.0 * len(methods)), squeeze=False
    )
    proj = _projection(reference) if image_shape is None else None
    ref2 = proj(reference[:max_points]) if proj else None
    show = display or (lambda x: x)
    if image_shape is not None:
        lo, hi = np.percentile(show(reference), 0.5), np.percentile(show(reference), 99.5)
    for i, m in enumerate(methods):
        for j, s in enumerate(settings):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if s not in samples[m]:
                ax.axis("off")
                continue
            x = samples[m][s]
            if image_shape is not None:
                ax.imshow(
                    np.clip((_mosaic(show(x), image_shape) - lo) / max(hi - lo, 1e-12), 0, 1), cmap="gray"
                )
            else:
                p = proj(x[:max_points])
                ax.scatter(ref2[:, 0], ref2[:, 1], s=0.5, c="0.85")
                ax.scatter(p[:, 0], p[:, 1], s=0.5, c="C0", alpha=0.5)
                lim = np.percentile(np.abs(ref2), 99.5) * 1.3
                ax.set_xlim(-lim + ref2[:, 0].mean(), lim + ref2[:, 0].mean())
                ax.set_ylim(-lim + ref2[:, 1].mean(), lim + ref2[:, 1].mean())
            if i == 0:
                ax.set_title(s, fontsize=9)
            if j == 0:
                ax.set_ylabel(m, fontsize=9)
    return _save(fig, path)


def plot_metric_curves(rows: dict, path, *, metrics: dict) -> Path:
    """Metric against NFE (log scale), one line per method; ``rows[method]`` are evaluation rows
    (fixed-step settings joined by a line, dopri5 as a star at its NFE, the data floor dashed)."""
    plt = _figure()
    keys = [k for k in metrics if any(k in r for rs in rows.values() for r in rs)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        for c, (m, rs) in enumerate(rows.items()):
            fixed = [r for r in rs if r.get("steps") and key in r]
            ax.plot([r["nfe"] for r in fixed], [r[key] for r in fixed], "o-", color=f"C{c}", label=m, ms=3)
            for r in rs:
                if r["setting"] == "dopri5" and key in r:
                    ax.plot([r["nfe"]], [r[key]], "*", color=f"C{c}", ms=9)
                if r["setting"] == "data" and key in r and c == 0:
                    ax.axhline(r[key], color="0.5", ls="--", lw=1, label="data floor")
        ax.set_xscale("log", base=2)
        label, lower = metrics[key]
        values = [r[key] for rs in rows.values() for r in rs if key in r and r[key] is not None]
        if key != "accuracy" and values and min(values) > 0:  # (an unbiased estimate can be <= 0)
            ax.set_yscale("log")
        ax.set_title(f"{label} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.set_xlabel("NFE (star: dopri5)")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def plot_trajectories(trajectories: dict, path, *, reference: np.ndarray, max_paths: int = 100) -> Path:
    """ODE paths x_t (``trajectories[method]`` [T+1, k, d]) from noise (black dot) to sample (colour),
    in 2-D or on the reference's top two principal components."""
    plt = _figure()
    proj = _projection(reference)
    fig, axes = plt.subplots(1, len(trajectories), figsize=(3.3 * len(trajectories), 3.3), squeeze=False)
    ref2 = proj(reference[:2000])
    for c, (ax, (m, traj)) in enumerate(zip(axes[0], trajectories.items(), strict=False)):
        p = proj(traj[:, :max_paths])
        ax.scatter(ref2[:, 0], ref2[:, 1], s=0.5, c="0.85")
        for k in range(p.shape[1]):
            ax.plot(p[:, k, 0], p[:, k, 1], color=f"C{c}", lw=0.6, alpha=0.7)
        ax.scatter(p[0, :, 0], p[0, :, 1], s=3, c="k")
        ax.scatter(p[-1, :, 0], p[-1, :, 1], s=3, c=f"C{c}")
        ax.set_title(m, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def plot_chi2(history, path, *, tol: float | None = None) -> Path:
    """What decides the semidiscrete solver's stop: the chi2 of the averaged potential measured on fresh
    noise (+- 1 standard error) against noise samples seen, and the tolerance it must fall below (with
    97.5% confidence). The noisy running chi2 of single batches is not drawn: it does not decide."""
    plt = _figure()
    # (log y axis: chi2 is floored at 1e-6 below; x in millions of noise samples, linear)
    pts = [(h.samples, h.chi2, h.chi2_stderr or 0.0) for h in history if h.chi2 is not None and h.samples > 0]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    if pts:
        s, c, e = map(np.asarray, zip(*pts, strict=False))
        ax.errorbar(
            s / 1e6,
            np.maximum(c, 1e-6),
            yerr=e,
            fmt="o-",
            color="C3",
            ms=3,
            label="chi2 measured on fresh noise",
        )
        ax.set_yscale("log")
    if tol:
        ax.axhline(tol, color="k", ls="--", lw=1, label=f"tol {tol} (stop when below, 97.5% conf.)")
    ax.set_xlabel("noise samples (millions)")
    ax.set_ylabel("chi2(marginal || b)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_image_rows(rows: dict, path, *, image_shape, max_items: int = 10, title: str = "") -> Path:
    """One row of images per entry (``rows[label]`` = x [n, C*H*W] in data units), columns aligned
    (e.g. condition, samples, truth for super-resolution); one grey scale for all."""
    plt = _figure()
    c, h, w = image_shape
    k = min(max_items, *(np.asarray(x).shape[0] for x in rows.values()))
    stack = np.concatenate([np.asarray(x)[:k] for x in rows.values()])
    lo, hi = np.percentile(stack, 0.5), np.percentile(stack, 99.5)
    fig, axes = plt.subplots(len(rows), k, figsize=(0.8 * k + 1.4, 0.85 * len(rows)), squeeze=False)
    for r, (label, x) in enumerate(rows.items()):
        imgs = np.clip((np.asarray(x)[:k].reshape(k, c, h, w) - lo) / max(hi - lo, 1e-12), 0, 1)
        for i in range(k):
            ax = axes[r, i]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(
                imgs[i, 0] if c == 1 else imgs[i, :3].transpose(1, 2, 0), cmap="gray" if c == 1 else None
            )
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
