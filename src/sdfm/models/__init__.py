"""Velocity fields (layer L1): an MLP for vectors, a U-Net for images; EMA of weights.

Every model maps (x [n, d], t [n], cond [n] | None) to [n, d]; the U-Net reshapes to its image
shape inside. ``MODELS`` maps names to (config class, model class); :func:`build_model` makes one
from a config dict (as stored in runs).
"""

from __future__ import annotations

from sdfm.models.ema import make_ema
from sdfm.models.embeddings import LabelEmbedding, SinusoidalTimeEmbedding
from sdfm.models.mlp import MLPConfig, MLPVelocity
from sdfm.models.unet import UNetConfig, UNetVelocity

#: name -> (config class, model class)
MODELS = {"mlp": (MLPConfig, MLPVelocity), "unet": (UNetConfig, UNetVelocity)}


def model_config(name: str, config: dict):
    """The checked config object of model ``name`` (types and bounds; nothing is allocated)."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r:.40}")
    try:
        return MODELS[name][0](**config)
    except TypeError as exc:
        raise ValueError(f"model: bad config for {name!r}: {exc}") from exc


def build_model(name: str, config: dict):
    """``build_model("mlp", {"dim": 2})``; ValueError for unknown names, config keys or values out of
    range."""
    config = model_config(name, config)
    return MODELS[name][1](config)


__all__ = [
    "MODELS",
    "LabelEmbedding",
    "MLPConfig",
    "MLPVelocity",
    "SinusoidalTimeEmbedding",
    "UNetConfig",
    "UNetVelocity",
    "build_model",
    "model_config",
    "make_ema",
]
