"""Real FID (Inception-v3 features) through torchmetrics, with locally stored weights only.

sdfm never downloads weights. Pass the path of the FID Inception weights (the ``pt_inception-2015-12-05``
file used by pytorch-fid / torch-fidelity) that you have on disk; install the optional extra with
``pip install 'sdfm[fid]'``.
"""

from __future__ import annotations

from pathlib import Path

import torch

FID_EXTRA = "pip install 'sdfm[fid]'  (torchmetrics[image] with torch-fidelity)"


def fid_metric_class():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as exc:
        raise RuntimeError(
            f"FID: torchmetrics' image metrics are not installed; {FID_EXTRA} ({exc})"
        ) from exc
    return FrechetInceptionDistance


def _to_unit_rgb(x: torch.Tensor, image_shape, lo: float, hi: float) -> torch.Tensor:
    c, h, w = image_shape
    imgs = x.reshape(x.shape[0], c, h, w).float()
    imgs = ((imgs - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    if c == 1:
        imgs = imgs.expand(-1, 3, -1, -1)
    elif c != 3:
        raise ValueError(f"image_shape: FID needs 1 or 3 channels, got {c}")
    return imgs


def inception_fid(
    real,
    fake,
    *,
    image_shape,
    weights: str | Path,
    value_range: tuple[float, float] | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> float:
    """FID between image sets real [n, C*H*W] and fake [m, C*H*W] (C = 1 or 3), with the Inception
    weights read from ``weights``. Pixels are mapped to [0, 1] with ``value_range`` (default: the
    real set's min and max), grey images repeated to RGB; torchmetrics resizes to 299x299.

    Raises:
        RuntimeError: the optional extra is missing (the message says what to install).
        ValueError: ``weights`` is not a file, or bad shapes.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise ValueError(
            f"weights: {weights} is not a file; FID needs locally stored Inception-v3 FID weights "
            "(sdfm does not download them)"
        )
    fid_cls = fid_metric_class()
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    dim = int(torch.tensor(image_shape).prod())
    for name, t in (("real", real), ("fake", fake)):
        if t.dim() != 2 or t.shape[1] != dim or t.shape[0] < 2:
            raise ValueError(
                f"{name}: expected [n >= 2, {dim}] for images {tuple(image_shape)}, got {list(t.shape)}"
            )
    lo, hi = value_range if value_range is not None else (float(real.min()), float(real.max()))
    metric = fid_cls(feature=2048, normalize=True, feature_extractor_weights_path=str(weights)).to(device)
    for t, is_real in ((real, True), (fake, False)):
        for i in range(0, t.shape[0], batch_size):
            metric.update(_to_unit_rgb(t[i : i + batch_size], image_shape, lo, hi).to(device), real=is_real)
    return float(metric.compute())
