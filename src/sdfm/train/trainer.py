"""The training loop (layer L2): one loop for every coupling; only ``coupling.sample`` differs.

pairs = coupling.sample(n, generator)      # Pairs(x0, x1, index, cond)
t, r = objective.times(n, generator)       # flow: t from the time sampler; meanflow: (t, r)
loss = objective.loss(...)                 # flow: |v(x_t, t, cond) - (x1 - x0)|^2; meanflow: MeanFlow's
AdamW step (warm-up, gradient clipping), EMA update
every log_every: a JSONL line; every checkpoint_every and at the end: an atomic checkpoint

Under torchrun (an initialised process group of P processes) the same loop runs data-parallel: the
model is wrapped in DistributedDataParallel, every process draws batch_size / P pairs from its own
random stream (``sdfm.parallel.rank_seed``), and rank 0 alone logs and writes checkpoints (holding every
process's generator state, so a resumed run continues each stream).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sdfm import parallel
from sdfm.artifacts.atomic import atomic_write
from sdfm.checks import check_float, check_int
from sdfm.flow import OBJECTIVES, MeanFlowConfig, get_time_sampler, make_objective
from sdfm.models import make_ema
from sdfm.train.checkpoint import clean_partial, load_latest_checkpoint, save_checkpoint

METRICS = "metrics.jsonl"


#: the numeric fields of TrainConfig: name -> (type, low, high); lr > 0, label_dropout and ema_decay < 1
_RANGES = {
    "steps": (int, 1, None),
    "batch_size": (int, 1, None),
    "log_every": (int, 1, None),
    "keep": (int, 1, None),
    "warmup": (int, 0, None),
    "checkpoint_every": (int, 0, None),
    "lr": (float, 0, None),
    "weight_decay": (float, 0, None),
    "grad_clip": (float, 0, None),
    "label_dropout": (float, 0, 1),
    "ema_decay": (float, 0, 1),
}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
        steps: optimiser steps in total (a resumed run continues up to this number).
        batch_size: pairs per step (in all; each of P processes draws batch_size / P).
        lr: AdamW learning rate after warm-up; weight_decay: AdamW weight decay.
        warmup: linear learning-rate warm-up steps; schedule: ``constant`` or ``cosine`` (to 0 at ``steps``).
        grad_clip: max global gradient norm (0 = no clipping).
        ema_decay: decay of the EMA of the weights.
        time_sampler: ``uniform`` or ``logit-normal``.
        seed: seed of the one generator that draws all pairs and times.
        log_every, checkpoint_every: in steps (checkpoint_every 0 = only at the end); keep: checkpoints kept.
        bf16: bfloat16 autocast on CUDA (ignored on CPU); compile: ``torch.compile`` the model.
        label_dropout: probability that a pair's label is replaced by the null label -1 (for
            classifier-free guidance of conditional models; 0 = never).
        objective: ``flow`` (flow matching, a velocity field) or ``meanflow`` (MeanFlow, a model of the
            average velocity u(x, t, r) built with ``mean_flow=True``; ``time_sampler`` is then unused,
            (t, r) come from ``meanflow``).
        meanflow: :class:`sdfm.flow.MeanFlowConfig` (a dict is converted).
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    schedule: str = "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    time_sampler: str = "uniform"
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    keep: int = 2
    bf16: bool = False
    compile: bool = False
    label_dropout: float = 0.0
    objective: str = "flow"
    meanflow: MeanFlowConfig = MeanFlowConfig()

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        if isinstance(self.meanflow, dict):
            object.__setattr__(self, "meanflow", MeanFlowConfig(**self.meanflow))
        if not isinstance(self.meanflow, MeanFlowConfig):
            raise ValueError(
                f"meanflow: expected a MeanFlowConfig or dict, got {type(self.meanflow).__name__}"
            )
        for name, (kind, low, high) in _RANGES.items():
            if kind is int:
                check_int(name, getattr(self, name), low=low, high=high)
            else:
                check_float(name, getattr(self, name), low=low, high=high, low_open=name == "lr")
        if not self.label_dropout < 1.0 or not self.ema_decay < 1.0:
            raise ValueError(
                f"label_dropout / ema_decay: expected numbers in [0, 1), got {self.label_dropout}, "
                f"{self.ema_decay}"
            )
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        get_time_sampler(self.time_sampler)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """The trained model, its EMA copy (``ema.module`` is the model to sample from), the last step and
    the logged metrics of this call."""

    model: torch.nn.Module
    ema: torch.nn.Module
    step: int
    metrics: list[dict]


def _lr_factor(config: TrainConfig):
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0
        if config.schedule == "cosine":
            progress = min(1.0, step / max(1, config.steps))
            return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
        return warm

    return factor


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops metric lines logged after ``step`` (they belong to work lost in an interruption)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line
    atomic_write(path, lambda p: p.write_text("".join(k + "\n" for k in kept)))


def checkpoint_folder(run_dir: Path) -> Path:
    """``run_dir/checkpoints``, refused when it is a symlink (it could lead out of the run)."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_symlink():
        raise ValueError(f"run: {folder} is a symlink; refused (checkpoints must live inside the run)")
    return folder


def _restore(ckpt, model, ema, optimizer, scheduler, generator, world: int, rank: int) -> None:
    """Loads a checkpoint's weights, EMA, optimiser, schedule and this process's generator state."""
    try:
        model.load_state_dict(ckpt.model)
        ema.module.load_state_dict(ckpt.ema)
        ema.n_averaged.copy_(ckpt.state["ema_n_averaged"])
        optimizer.load_state_dict(ckpt.state["optimizer"])
        scheduler.load_state_dict(ckpt.state["scheduler"])
        states = ckpt.state.get("generators", [ckpt.state["generator"]])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"resume: checkpoint {ckpt.path} does not fit this run: {exc}") from exc
    if len(states) != world:
        raise ValueError(
            f"resume: the checkpoint was written by {len(states)} processes, this run has {world}"
        )
    generator.set_state(states[rank].to(generator.get_state().device))


class TrainingDiverged(ValueError):
    """The loss became NaN or Inf; nothing from the diverged steps was written."""


def _logged_checkpoint(loggers, step: int, ema, model) -> None:
    if not loggers:
        return
    ema.eval()
    for logger in loggers:
        logger.checkpoint(step, ema)
    ema.train()
    model.train()


def train(
    model: torch.nn.Module,
    coupling,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    meta: dict | None = None,
    progress: bool | str = True,
    loggers=(),
) -> TrainResult:
    """Trains ``model`` (a velocity field) on pairs from ``coupling`` by flow matching (or a mean-flow
    model by MeanFlow, ``config.objective``).

    Args:
        model: ``v(x [n, d], t [n], cond) -> [n, d]``, on the coupling's device.
        coupling: anything with ``sample(n, generator=) -> Pairs`` (:mod:`sdfm.couplings`).
        config: :class:`TrainConfig`.
        run_dir: where ``metrics.jsonl`` and ``checkpoints/`` go (None: nothing written).
        resume: continue from the newest checkpoint in ``run_dir`` (model, EMA, optimiser, schedule
            and generator state), so the result equals an uninterrupted run on CPU with the same seed.
        meta: JSON-able run metadata stored in every checkpoint (data fingerprint, normalisation...).
        progress: show a tqdm bar with the loss and pairs/s (a string: the bar's label, e.g.
            "SD-FM train").
        loggers: objects with ``log(record)`` (every metrics line), ``checkpoint(step, ema_model)``
            (every checkpoint) and ``close()``, called on the main process (e.g.
            :class:`sdfm.train.tensorboard.TensorBoardLog`).
    """
    from tqdm.auto import tqdm

    objective = make_objective(config.objective, config)
    objective.check_model(model)
    loop = _Loop(model, coupling, config, objective, Path(run_dir) if run_dir is not None else None, meta)
    step = loop.restore() if resume else 0
    bar = tqdm(
        total=config.steps,
        initial=step,
        disable=not (progress and loop.main),
        desc=progress if isinstance(progress, str) else "train",
        dynamic_ncols=True,
    )
    loggers = list(loggers) if loop.main else []
    model.train()
    try:
        while step < config.steps:
            step = loop.step(step)
            if step % config.log_every == 0 or step == config.steps:
                record = loop.log(step)
                bar.set_postfix(loss=f"{record['loss']:.4f}", pairs_s=f"{record['pairs_per_s']:.0f}")
                for logger in loggers:
                    logger.log(record)
            bar.update(1)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                loop.checkpoint(step)
                _logged_checkpoint(loggers, step, loop.ema.module, model)
        bar.close()
        loop.checkpoint(step)
        _logged_checkpoint(loggers, step, loop.ema.module, model)
    finally:
        for logger in loggers:
            logger.close()
    model.eval()
    loop.ema.module.eval()
    return TrainResult(model=model, ema=loop.ema.module, step=step, metrics=loop.metrics)


class _Loop:
    """The state of :func:`train` and its pieces: one step, the metrics window, the finiteness check,
    checkpoints and their restore."""

    def __init__(self, model, coupling, config: TrainConfig, objective, run_dir: Path | None, meta):
        self.model, self.coupling, self.config, self.objective = model, coupling, config, objective
        self.run_dir, self.meta = run_dir, meta
        self.device = device = next(model.parameters()).device
        self.world, self.rank = world, rank = parallel.world_size(), parallel.rank()
        if config.batch_size % world:
            raise ValueError(f"batch_size: {config.batch_size} is not divisible by the {world} processes")
        self.batch = config.batch_size // world
        self.main = rank == 0
        self.generator = torch.Generator(device=device).manual_seed(parallel.rank_seed(config.seed, rank))
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(config))
        self.ema = make_ema(model, config.ema_decay)
        forward = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.forward = torch.compile(forward) if config.compile else forward
        self.autocast = torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda"
        )
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)  # first step with a non-finite loss
        self.log_path = run_dir / METRICS if (run_dir is not None and self.main) else None  # rank 0 writes
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.metrics: list[dict] = []
        self.grad_norm = None
        self._reset_window()

    def restore(self) -> int:
        """Continues from the newest checkpoint (or step 0 when the run has none yet); the step."""
        if self.run_dir is None:
            raise ValueError("resume: needs a run_dir")
        ckpt = load_latest_checkpoint(checkpoint_folder(self.run_dir))
        step = 0
        if ckpt is not None:  # (None: killed before its first checkpoint, so it starts again at 0)
            _restore(
                ckpt,
                self.model,
                self.ema,
                self.optimizer,
                self.scheduler,
                self.generator,
                self.world,
                self.rank,
            )
            step = ckpt.step
        if self.main:
            clean_partial(checkpoint_folder(self.run_dir))
            _truncate_metrics(self.run_dir / METRICS, step)
        return step

    def step(self, step: int) -> int:
        """One optimiser step on a fresh batch of pairs; returns the new step count."""
        config, device, generator = self.config, self.device, self.generator
        t_pair = time.perf_counter()
        pairs = self.coupling.sample(self.batch, generator=generator)
        pair_s = time.perf_counter() - t_pair
        t, r = self.objective.times(self.batch, generator=generator, device=device, dtype=pairs.x0.dtype)
        cond = pairs.cond
        if cond is not None and config.label_dropout > 0:  # (no extra draws otherwise: runs unchanged)
            drop = torch.rand(cond.shape[0], generator=generator, device=device) < config.label_dropout
            cond = torch.where(drop, torch.full_like(cond, -1), cond)
        with self.autocast:
            loss, stats = self.objective.loss(self.forward, pairs.x0, pairs.x1, t, r, cond, model=self.model)
        self.first_bad = torch.where(
            (self.first_bad == 0) & ~torch.isfinite(stats.loss),
            torch.full_like(self.first_bad, step + 1),
            self.first_bad,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.grad_norm = (
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            if config.grad_clip > 0
            else None
        )
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update_parameters(self.model)
        window = self.window
        window["loss"] += stats.loss
        window["target"] += stats.transport_cost
        window["pairs"] += len(pairs)
        window["pair_s"] += pair_s
        window["n"] += 1
        return step + 1

    def _reset_window(self) -> None:
        self.window = {
            "loss": 0.0,
            "target": 0.0,
            "pairs": 0,
            "pair_s": 0.0,
            "t0": time.perf_counter(),
            "n": 0,
        }

    def log(self, step: int) -> dict:
        """The metrics of the steps since the last log (a JSONL line on rank 0)."""
        self.check_finite()
        window, device = self.window, self.device
        seconds = time.perf_counter() - window["t0"]
        record = {
            "step": step,
            # the window's one host sync (and, with P processes, its one collective)
            "loss": parallel.mean_scalar(float(window["loss"]) / window["n"], device),
            # E|x1 - x0|^2 of the window's pairs, the quantity the eval report calls transport cost
            "transport_cost": parallel.mean_scalar(float(window["target"]) / window["n"], device),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": None if self.grad_norm is None else float(self.grad_norm),
            "pairs_per_s": self.world * window["pairs"] / max(seconds, 1e-9),
            "pairing_fraction": window["pair_s"] / max(seconds, 1e-9),
        }
        self.metrics.append(record)
        if self.log_path is not None:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        self._reset_window()
        return record

    def check_finite(self) -> None:
        """Stops (a collective: every rank) when some step's loss was NaN or Inf, before it is saved."""
        bad = int(self.first_bad)
        if parallel.mean_scalar(float(bad > 0), self.device) == 0:
            return
        at = f"at step {bad}" if bad else "on another process"
        raise TrainingDiverged(
            f"train: the loss became NaN or Inf {at} (lr {self.config.lr:g}); stopped without writing the "
            f"diverged weights (the last checkpoint is intact); lower the learning rate"
        )

    def checkpoint(self, at: int) -> None:
        """Checkpoint ``at`` (rank 0 writes; every rank takes part in the collectives)."""
        self.check_finite()
        if self.run_dir is None:
            return
        generators = parallel.gather_objects(self.generator.get_state())  # a collective: every rank
        if not self.main:
            parallel.barrier()
            return
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "ema_n_averaged": self.ema.n_averaged.detach().cpu(),
        }
        if self.world > 1:
            state["generators"] = generators
        save_checkpoint(
            self.run_dir / "checkpoints",
            at,
            model=self.model.state_dict(),
            ema=self.ema.module.state_dict(),
            state=state,
            meta={"train": self.config.to_dict(), **(self.meta or {})},
            keep=self.config.keep,
        )
        parallel.barrier()
