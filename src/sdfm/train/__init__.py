"""Training (layer L2): the flow-matching loop, checkpoints (atomic, resumable), metrics log."""

from sdfm.train.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from sdfm.train.recipe import RunSpec, fit
from sdfm.train.run import LoadedRun, RunLock, load_run, read_run, run_info, write_run
from sdfm.train.trainer import TrainConfig, TrainingDiverged, TrainResult, train

__all__ = [
    "Checkpoint",
    "LoadedRun",
    "RunLock",
    "RunSpec",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "fit",
    "latest_checkpoint",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_run",
    "read_run",
    "run_info",
    "save_checkpoint",
    "train",
    "write_run",
]
