"""Run folders: ``run.json`` (what was trained, on what, how) next to ``checkpoints/`` and ``metrics.jsonl``.

``run.json`` holds the format tag, the sdfm version, the data (spec, raw fingerprint, shape, image
shape, classes), the normalisation used for training, the model name and config, the coupling and
its settings (and the potential file when semidiscrete) and the training config. :func:`load_run`
rebuilds the trained model (EMA weights by default) from the newest checkpoint.

:func:`read_run` validates every field it returns (types, bounds, the normalisation), so a corrupt or
hostile run.json is refused with a one-line reason before anything is built. A data file is stored
resolved, with its path relative to the run folder beside it, so the run is found from any working
directory and still when the run and its data move together. :class:`RunLock` keeps two processes
from writing one run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from sdfm.artifacts.atomic import atomic_write
from sdfm.checks import check_int, check_type
from sdfm.data.normalize import Normalization
from sdfm.models import build_model, model_config
from sdfm.train.checkpoint import load_latest_checkpoint
from sdfm.train.trainer import checkpoint_folder

RUN_FILE = "run.json"
FORMAT = "sdfm.run"
LOCK_FILE = ".lock"
MAX_RUN_BYTES = 1 << 24


#: what a run writes in its folder (what ``sdfm train --overwrite`` removes; nothing else is touched)
RUN_OUTPUTS = (
    RUN_FILE,
    "config.toml",
    "metrics.jsonl",
    "potential.safetensors",
    "index.safetensors",
    "checkpoints",
    "eval",
    "tensorboard",
)


def clear_run(run_dir: str | Path) -> list[Path]:
    """Removes the files and folders a run wrote in ``run_dir`` (:data:`RUN_OUTPUTS`), keeping anything
    else the user put there, and returns what was removed. Call it holding the folder's lock."""
    import shutil

    removed = []
    for name in RUN_OUTPUTS:
        path = Path(run_dir) / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(path)
    return removed


def write_run(run_dir: str | Path, info: dict) -> Path:
    """Writes ``run.json`` atomically (``info`` plus the format tag and sdfm version)."""
    import sdfm

    payload = {"format": FORMAT, "format_version": 1, "sdfm_version": sdfm.__version__, **info}
    data = payload.get("data", {})
    if data.get("path"):  # how to find the data file from the run folder when both move together
        payload["data"] = {**data, "path_from_run": os.path.relpath(data["path"], Path(run_dir).resolve())}
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
    path = Path(spec.partition("::")[0])
    return {
        "data": {
            "spec": spec,
            "path": str(path.resolve()) if path.exists() else None,
            # the options of a file or folder (image size, channels, held-out fraction and split, ...)
            "params": dict(dataset.params),
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
    """Reads and validates ``run.json``; ValueError with the reason when the folder is not an sdfm run
    or the file is malformed. ``info["data"]["spec"]`` is rewritten to where the data file is found
    now (as given, else its resolved path, else relative to the run folder)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ValueError(f"run: {run_dir} is not an sdfm run (no {RUN_FILE})")
    try:
        if path.stat().st_size > MAX_RUN_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes (more than {MAX_RUN_BYTES})")
        info = json.loads(path.read_text())
        check_type(RUN_FILE, info, dict)
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r:.40}, expected {FORMAT!r}")
        _validate(info)
    except (OSError, ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"run: corrupt {path}: {exc}") from None
    info["data"]["spec"] = _locate_data(info["data"], Path(run_dir))
    return info


def _validate(info: dict) -> None:
    from sdfm.data.normalize import Normalization

    for key in ("data", "normalization", "model", "coupling", "train"):
        check_type(key, info.get(key), dict)
    data = info["data"]
    check_type("data.spec", data.get("spec"), str)
    check_type("data.fingerprint", data.get("fingerprint"), str)
    shape = check_type("data.shape", data.get("shape"), list)
    if len(shape) != 2:
        raise ValueError(f"data.shape: expected [N, d], got {shape!r:.60}")
    check_int("data.shape[0]", shape[0], low=1, high=1 << 40)
    dim = check_int("data.shape[1]", shape[1], low=1, high=1 << 24)
    image = data.get("image_shape")
    if image is not None:
        check_type("data.image_shape", image, list)
        sizes = [check_int("data.image_shape", v, low=1, high=1 << 15) for v in image]
        if len(sizes) != 3 or sizes[0] * sizes[1] * sizes[2] != dim:
            raise ValueError(f"data.image_shape: {image!r:.60} does not hold d = {dim}")
    for key in ("path", "path_from_run"):
        check_type(f"data.{key}", data.get(key), (str, type(None)))
    check_int("data.num_classes", data.get("num_classes"), low=0, high=1 << 24, none=True)
    Normalization.from_dict(info["normalization"], dim=dim)
    check_type("model.name", info["model"].get("name"), str)
    config = check_type("model.config", info["model"].get("config"), dict)
    if "dim" in config and config["dim"] != dim:
        raise ValueError(f"model.config.dim: {config['dim']!r:.30} differs from the data's d = {dim}")
    model_config(info["model"]["name"], config)  # types and bounds, before anything is allocated
    check_type("coupling.name", info["coupling"].get("name"), str)
    check_int("seed", info.get("seed"), low=-(1 << 63), high=(1 << 64) - 1)


def _locate_data(data: dict, run_dir: Path) -> str:
    spec = data["spec"]
    head, sep, options = spec.partition("::")
    if not data.get("path") or Path(head).exists():
        return spec
    candidates = [Path(data["path"])]
    if data.get("path_from_run"):
        candidates.append(run_dir / data["path_from_run"])
    return next((str(c) + sep + options for c in candidates if c.exists()), spec)


class RunLock:
    """An advisory lock on a run folder (``fcntl.flock`` on ``RUN_DIR/.lock``, holding the owner's pid).

    The kernel releases it when the process ends, however it ends, so a killed run never leaves a
    stale lock; a second process gets ValueError naming the folder and the pid that holds it.
    ``with RunLock(run_dir):`` or ``lock = RunLock(run_dir).acquire()`` ... ``lock.release()``. On
    platforms without ``fcntl`` it does nothing."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"run: {self.run_dir} is in use by another sdfm process (pid {holder}); wait for it to "
                "finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
    ckpt = load_latest_checkpoint(checkpoint_folder(Path(run_dir)))
    if ckpt is None:
        raise ValueError(
            f"run: no checkpoint in {Path(run_dir) / 'checkpoints'} (was training interrupted early? "
            "sdfm train --resume starts it again)"
        )
    path = ckpt.path
    model = build_model(info["model"]["name"], info["model"]["config"])
    try:
        model.load_state_dict(ckpt.ema if ema else ckpt.model)
    except RuntimeError as exc:
        raise ValueError(f"run: checkpoint {path} does not fit the model in {RUN_FILE}: {exc}") from exc
    model.to(device).eval()
    return LoadedRun(
        model=model,
        normalization=Normalization.from_dict(info["normalization"], dim=int(info["data"]["shape"][1])),
        info=info,
        step=ckpt.step,
        checkpoint=path,
    )
