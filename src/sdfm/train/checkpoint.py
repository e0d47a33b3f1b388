"""Checkpoints: a folder per step, published atomically.

Layout of ``RUN_DIR/checkpoints/step_0000100/``:
    model.safetensors   model weights (``model.*``) and EMA weights (``ema.*``)
    state.pt            optimiser, LR schedule, EMA count and random-generator state (torch.save)
    state.json          step, the sha256 of the two files above, the run's config and metadata, and
                        a checksum of itself
The folder is written under a temporary name, every file fsynced, then renamed in one step; the
text file ``checkpoints/latest`` (also replaced atomically) names the newest complete one. A crash at
any point leaves the previous checkpoint intact and loadable.

Reading trusts nothing in the folder: ``latest`` must name a ``step_NNNNNNNN`` folder inside
``checkpoints/`` (a path or a symlink leading out is ignored), the step in ``state.json`` must equal
the one stored with the weights and in the folder's name, and :func:`load_latest_checkpoint` falls
back to the older checkpoint when the newest cannot be read. :func:`clean_partial` removes the
temporary files and folders that a killed writer leaves behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from sdfm import faults
from sdfm.artifacts.atomic import atomic_write
from sdfm.artifacts.checksum import checksum

LATEST = "latest"
BINARIES = ("model.safetensors", "state.pt")  # their sha256 is stored in state.json and checked on load
_NAME = re.compile(r"step_(\d{8})")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns (tensors on CPU)."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict
    meta: dict


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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
    try:  # made inside ``try``: an interrupt right after mkdir still reaches the clean-up below
        tmp.mkdir()
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.items()}
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.items()})
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        torch.save(state, tmp / "state.pt")
        payload = json.loads(json.dumps({"step": step, **meta}))
        payload["files"] = {name: _sha256(tmp / name) for name in BINARIES}
        payload["checksum"] = checksum({}, payload)
        (tmp / "state.json").write_text(json.dumps(payload, indent=2, sort_keys=True))
        faults.point("checkpoint.written", step, str(tmp))
        for f in tmp.iterdir():
            _fsync(f)
        faults.point("checkpoint.synced", step, str(tmp))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    faults.point("checkpoint.renamed", step, str(final))
    atomic_write(folder / LATEST, lambda p: p.write_text(name + "\n"))
    faults.point("checkpoint.latest", step, str(folder / LATEST))
    old = sorted(p for p in folder.glob("step_*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _inside(folder: Path, path: Path) -> bool:
    """``path`` is a real (non-symlink) folder directly inside ``folder``."""
    try:
        return not path.is_symlink() and path.is_dir() and path.resolve().parent == folder.resolve()
    except OSError:
        return False


def _candidates(folder: Path) -> list[Path]:
    """Checkpoint folders, newest first: the one ``latest`` names, then the others by step."""
    found = sorted(
        (p for p in folder.glob("step_*") if _NAME.fullmatch(p.name) and _inside(folder, p)),
        reverse=True,
    )
    with contextlib.suppress(OSError, UnicodeDecodeError):
        name = (folder / LATEST).read_text()[:64].strip()
        if _NAME.fullmatch(name) and folder / name in found:
            found.remove(folder / name)
            found.insert(0, folder / name)
    return [p for p in found if (p / "state.json").is_file()]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint folder (as named by ``latest``, else the highest step), or None.

    Only ``step_NNNNNNNN`` folders inside ``folder`` count: ``latest`` naming anything else (a path
    such as ``../../other/checkpoints/step_00000400``, a symlink leading out) is ignored."""
    found = _candidates(Path(folder))
    return found[0] if found else None


def load_latest_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The newest checkpoint in ``folder`` that reads cleanly (None when there is none at all).

    A newest checkpoint that is corrupt (truncated, edited, steps that disagree) is reported on stderr
    and the next older one is used; ValueError when every one is corrupt."""
    errors = []
    for path in _candidates(Path(folder)):
        try:
            ckpt = load_checkpoint(path)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        for message in errors:
            print(f"sdfm: skipping a corrupt checkpoint ({message}); using {path.name}", file=sys.stderr)
        return ckpt
    if errors:
        raise ValueError("; ".join(errors))
    return None


def clean_partial(folder: str | Path) -> list[Path]:
    """Removes what killed writers left in a checkpoint folder (``.tmp-step_*`` folders, ``.latest.*.tmp``
    files). Call it only while holding the run's lock (:class:`sdfm.train.RunLock`): a live writer's
    temporary folder looks the same. Returns the removed paths."""
    folder = Path(folder)
    removed = []
    for p in list(folder.glob(".tmp-step_*")) + list(folder.glob(f".{LATEST}.*.tmp")):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


def _stored_step(path: Path) -> int | None:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        step = (fh.metadata() or {}).get("step")
    return None if step is None else int(step)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Reads a checkpoint folder; ValueError with the reason if it is missing or corrupt (including a
    step in ``state.json`` that disagrees with the one stored with the weights or in the folder name)."""
    from safetensors.torch import load_file

    from sdfm.checks import check_int, check_type

    path = Path(path)
    links = [f for f in ("state.json", "model.safetensors", "state.pt") if (path / f).is_symlink()]
    if links:
        raise ValueError(f"checkpoint: {path}: {', '.join(links)} is a symlink (refused: it may lead out)")
    try:
        meta = check_type("state.json", json.loads((path / "state.json").read_text()), dict)
        stored_sum = meta.pop("checksum", None)
        if stored_sum is None and "files" in meta:  # both are written together since checksums exist
            raise ValueError("state.json has file hashes but no checksum (modified or corrupt)")
        if stored_sum is not None and stored_sum != checksum({}, meta):
            raise ValueError("state.json does not match its checksum (modified or corrupt)")
        step = check_int("step", meta.pop("step", None), low=0, high=1 << 62, where="state.json")
        files = meta.pop("files", None)  # (checkpoints written before checksums have none)
        if files is not None:
            check_type("files", files, dict, where="state.json")
            for name in BINARIES:
                if files.get(name) != _sha256(path / name):
                    raise ValueError(f"{name} does not match its sha256 in state.json (modified or corrupt)")
        stored = _stored_step(path)
        tensors = load_file(str(path / "model.safetensors"))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is a corrupt checkpoint
        raise ValueError(f"checkpoint: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    named = _NAME.fullmatch(path.name)
    if stored != step or (named and int(named.group(1)) != step):
        raise ValueError(
            f"checkpoint: {path} is inconsistent: state.json says step {step}, the weights say "
            f"{stored}, the folder name {path.name}"
        )
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint: {path}/state.pt holds {type(state).__name__}, not a dict")
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    return Checkpoint(path=path, step=step, model=model, ema=ema, state=state, meta=meta)
