"""Training (layer L2): the flow-matching loop, checkpoints (atomic, resumable), metrics log."""

from sdfm.train.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from sdfm.train.run import LoadedRun, load_run, read_run, run_info, write_run
from sdfm.train.trainer import TrainConfig, TrainResult, train

__all__ = [
    "Checkpoint",
    "LoadedRun",
    "TrainConfig",
    "TrainResult",
    "latest_checkpoint",
    "load_checkpoint",
    "load_run",
    "read_run",
    "run_info",
    "save_checkpoint",
    "train",
    "write_run",
]
