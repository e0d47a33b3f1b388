"""Checkpoints: a folder per step, published atomically.

Layout of ``RUN_DIR/checkpoints/step_0000100/``:
    model.safetensors   model weights (``model.*``) and EMA weights (``ema.*``)
    state.pt            optimiser, LR schedule, EMA count and random-generator state (torch.save)
    state.json          step, the run's config and metadata (data fingerprint, normalisation, ...)
The folder is written under a temporary name, every file fsynced, then renamed in one step; the
text file ``checkpoints/latest`` (also replaced atomically) names the newest complete one. A crash at
any point leaves the previous checkpoint intact and loadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sdfm.artifacts.atomic import atomic_write

LATEST = "latest"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns (tensors on CPU)."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict
    meta: dict


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save_checkpoint(
    folder: str | Path, step: int, *, model: dict, ema: dict, state: dict, meta: dict, keep: int = 2
) -> Path:
    """Writes checkpoint ``step`` under ``folder`` atomically and keeps the newest ``keep`` ones."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = folder / name
    tmp = folder / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.items()}
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.items()})
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        torch.save(state, tmp / "state.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **meta}, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(folder / LATEST, lambda p: p.write_text(name + "\n"))
    old = sorted(p for p in folder.glob("step_*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint folder (as named by ``latest``, else the highest step), or None."""
    folder = Path(folder)
    with contextlib.suppress(OSError):
        name = (folder / LATEST).read_text().strip()
        if name and (folder / name / "state.json").is_file():
            return folder / name
    complete = sorted(p for p in folder.glob("step_*") if (p / "state.json").is_file())
    return complete[-1] if complete else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a checkpoint folder; ValueError with the reason if it is missing or corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "model.safetensors"))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is a corrupt checkpoint
        raise ValueError(f"checkpoint: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    step = int(meta.pop("step"))
    return Checkpoint(path=path, step=step, model=model, ema=ema, state=state, meta=meta)
