"""Conditions for super-resolution: each image's noisy low-resolution copy (average pooling + noise),
and the task that fixes how they are made (:class:`SuperResTask`: factor, noise, condition-cost weight).

Conditions are built in the normalised training units: z = avgpool(x, factor) + noise * xi, with a
numpy seed derived from the run's seed and the split (so a run's conditions can be rebuilt exactly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sdfm.checks import check_float, check_int


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


_STREAM = {"train": 0x5E5, "test": 0x5E6}


@dataclass(frozen=True)
class SuperResTask:
    """Attributes:
    factor: downsampling factor of the conditions (8x8 digits -> 4x4 with 2).
    noise: std of the Gaussian noise added to the low-resolution copy (normalised units).
    beta: weight of the condition cost in the augmented semidiscrete cost (SD-FM only). Small beta
        pairs noise with data of other conditions (the model then learns a blurred conditional);
        on digits x2, beta = 3 / 10 / 30 gave one-step PSNR 12.7 / 17.5 / 18.8 dB against I-FM's
        18.7 (BENCHMARKS.md section 8), hence the default 30.
    """

    factor: int = 2
    noise: float = 0.1
    beta: float = 30.0

    def __post_init__(self):
        check_int("factor", self.factor, low=2)
        check_float("noise", self.noise, low=0)
        check_float("beta", self.beta, low=0)

    def conditions(self, x: np.ndarray, image_shape, *, seed: int, split: str = "train") -> np.ndarray:
        """The conditions z [N, k] of normalised images x [N, d] (``split`` picks the noise stream)."""
        if split not in _STREAM:
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        return noisy_lowres(x, image_shape, self.factor, self.noise, seed=[int(seed), _STREAM[split]])

    def to_dict(self) -> dict:
        return asdict(self)
