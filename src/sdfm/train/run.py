"""Run folders: ``run.json`` (what was trained, on what, how) next to ``checkpoints/`` and ``metrics.jsonl``.

``run.json`` holds the format tag, the sdfm version, the data (spec, raw fingerprint, shape, image
shape, classes), the normalisation used for training, the model name and config, the coupling and
its settings (and the potential file when semidiscrete) and the training config. :func:`load_run`
rebuilds the trained model (EMA weights by default) from the newest checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sdfm.artifacts.atomic import atomic_write
from sdfm.data.normalize import Normalization
from sdfm.models import build_model
from sdfm.train.checkpoint import latest_checkpoint, load_checkpoint

RUN_FILE = "run.json"
FORMAT = "sdfm.run"


def write_run(run_dir: str | Path, info: dict) -> Path:
    """Writes ``run.json`` atomically (``info`` plus the format tag and sdfm version)."""
    import sdfm

    payload = {"format": FORMAT, "format_version": 1, "sdfm_version": sdfm.__version__, **info}
    return atomic_write(Path(run_dir) / RUN_FILE, lambda p: p.write_text(json.dumps(payload, indent=2)))


def run_info(
    *,
    spec: str,
    dataset,
    fingerprint_raw: str,
    fingerprint_train: str,
    normalization: Normalization,
    model: dict,
    coupling: dict,
    train: dict,
    seed: int,
) -> dict:
    """The ``run.json`` payload (without format tags) of a run trained on ``dataset`` (a
    :class:`sdfm.data.Dataset` loaded from ``spec``) with the given model / coupling / train configs."""
    n, dim = dataset.x.shape
    return {
        "data": {
            "spec": spec,
            "name": dataset.name,
            "fingerprint": fingerprint_raw,
            "train_fingerprint": fingerprint_train,
            "shape": [int(n), int(dim)],
            "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
            "num_classes": dataset.num_classes,
        },
        "normalization": normalization.to_dict(),
        "model": model,
        "coupling": coupling,
        "train": train,
        "seed": seed,
    }


def read_run(run_dir: str | Path) -> dict:
    """Reads ``run.json``; ValueError with the reason when the folder is not an sdfm run."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ValueError(f"run: {run_dir} is not an sdfm run (no {RUN_FILE})")
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"run: corrupt {path}: {exc}") from exc
    if info.get("format") != FORMAT:
        raise ValueError(f"run: {path} has format {info.get('format')!r}, expected {FORMAT!r}")
    return info


@dataclass
class LoadedRun:
    """A trained model ready to sample, and how to map its samples back to data space."""

    model: torch.nn.Module
    normalization: Normalization
    info: dict
    step: int
    checkpoint: Path


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu", ema: bool = True) -> LoadedRun:
    """The model of the newest checkpoint of a run (EMA weights unless ``ema=False``), in eval mode."""
    info = read_run(run_dir)
    path = latest_checkpoint(Path(run_dir) / "checkpoints")
    if path is None:
        raise ValueError(
            f"run: no checkpoint in {Path(run_dir) / 'checkpoints'} (was training interrupted early?)"
        )
    ckpt = load_checkpoint(path)
    model = build_model(info["model"]["name"], info["model"]["config"])
    try:
        model.load_state_dict(ckpt.ema if ema else ckpt.model)
    except RuntimeError as exc:
        raise ValueError(f"run: checkpoint {path} does not fit the model in {RUN_FILE}: {exc}") from exc
    model.to(device).eval()
    return LoadedRun(
        model=model,
        normalization=Normalization.from_dict(info["normalization"]),
        info=info,
        step=ckpt.step,
        checkpoint=path,
    )
