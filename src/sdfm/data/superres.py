"""Conditions for super-resolution: each image's noisy low-resolution copy (average pooling + noise)."""

from __future__ import annotations

import numpy as np


def lowres(x: np.ndarray, image_shape, factor: int) -> np.ndarray:
    """Average-pools images [N, C*H*W] by ``factor`` -> [N, C*(H/f)*(W/f)] (float32)."""
    c, h, w = (int(s) for s in image_shape)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != c * h * w:
        raise ValueError(f"x: expected [N, {c * h * w}] images of shape {(c, h, w)}, got {list(x.shape)}")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or h % factor or w % factor:
        raise ValueError(f"factor: expected an integer >= 2 dividing {h}x{w}, got {factor!r}")
    img = x.reshape(-1, c, h // factor, factor, w // factor, factor)
    return img.mean(axis=(3, 5)).reshape(x.shape[0], -1)


def noisy_lowres(x: np.ndarray, image_shape, factor: int, noise: float, seed) -> np.ndarray:
    """:func:`lowres` plus Gaussian noise of std ``noise`` (numpy seed ``seed``): the conditions z."""
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise ValueError(f"noise: expected a number >= 0, got {noise!r}")
    z = lowres(x, image_shape, factor)
    if noise > 0:
        z = z + np.float32(noise) * np.random.default_rng(seed).standard_normal(z.shape, dtype=np.float32)
    return z


def upsample(z: np.ndarray, image_shape, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of low-resolution rows back to [N, C*H*W] (the naive baseline)."""
    c, h, w = (int(s) for s in image_shape)
    img = np.asarray(z, dtype=np.float32).reshape(-1, c, h // factor, 1, w // factor, 1)
    return np.broadcast_to(img, (img.shape[0], c, h // factor, factor, w // factor, factor)).reshape(
        img.shape[0], -1
    )
