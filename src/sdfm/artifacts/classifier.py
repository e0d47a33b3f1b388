"""Classifier files: the feature classifier behind the classifier-feature metrics, cached in a run
(safetensors: its weights and the real class frequencies, JSON metadata with its config, the
fingerprint of the data it was trained on and its held-out accuracy). Written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdfm.artifacts.atomic import atomic_write
from sdfm.metrics import ClassifierConfig, FeatureClassifier


def save_classifier(
    path: Path, model: FeatureClassifier, class_freq: torch.Tensor, test_accuracy, fingerprint: str
) -> Path:
    """Writes the classifier trained on data with this ``fingerprint``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["__class_freq__"] = class_freq.double().contiguous()
    meta = {
        "config": json.dumps(model.config.to_dict()),
        "fingerprint": fingerprint,
        "test_accuracy": json.dumps(test_accuracy),
    }
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def load_classifier(path: Path, fingerprint: str):
    """(model in eval mode, class frequencies, held-out accuracy) of the cached classifier, or None
    when it is absent, unreadable or was trained on other data (then it is simply trained again)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        if meta.get("fingerprint") != fingerprint:
            return None
        model = FeatureClassifier(ClassifierConfig(**json.loads(meta["config"])))
        freq = tensors.pop("__class_freq__")
        model.load_state_dict(tensors)
        return model.eval(), freq, json.loads(meta.get("test_accuracy", "null"))
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, RecursionError):
        return None
