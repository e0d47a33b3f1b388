"""The recipe of a training run (layer L2): everything ``sdfm train`` does, in one call.

    from sdfm.train import RunSpec, TrainConfig, fit
    spec = RunSpec(data="checkerboard", coupling="semidiscrete", train=TrainConfig(steps=2000))
    result = fit(spec, "runs/sd")

:func:`fit` is the one place where the data are loaded and normalised, the coupling built (for
semidiscrete runs the potential solved and saved in the run, or loaded and checked), the run described
in run.json and the model trained; the CLI, ``sdfm demo`` and the benchmarks call it. A
:class:`RunSpec` field has the name of its ``sdfm train`` option (``ot_batch_size`` is
``--ot-batch-size``), and error messages name the option.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from sdfm import parallel
from sdfm.artifacts.atomic import atomic_write
from sdfm.couplings.registry import COUPLING_OPTIONS, COUPLINGS, CouplingContext
from sdfm.data import fingerprint, load_dataset
from sdfm.data.normalize import Normalization
from sdfm.flow import OBJECTIVES
from sdfm.models import build_model
from sdfm.train.checkpoint import latest_checkpoint
from sdfm.train.run import RunLock, clear_run, read_run, run_info, write_run
from sdfm.train.trainer import TrainConfig, TrainResult, train

#: where training metrics go besides metrics.jsonl
LOGS = ("jsonl", "tensorboard")
#: learning rate per model when the spec gives no TrainConfig
DEFAULT_LR = {"mlp": 1e-3, "unet": 2e-4}


@dataclass(frozen=True)
class RunSpec:
    """What to train. Defaults are ``sdfm train``'s.

    Attributes:
        data: built-in dataset name (with parameters) or tensor file.
        coupling: a name in :data:`sdfm.couplings.COUPLINGS` (independent, minibatch-ot, semidiscrete).
        model: ``mlp`` or ``unet``; width / depth: MLP hidden width and blocks (U-Net base channels).
        normalize: ``standard`` (per-feature mean, one global scale) or ``none``.
        objective: a name in :data:`sdfm.flow.OBJECTIVES` (flow, meanflow).
        conditional: class-conditional model and pairing (needs labels); label_dropout: for
            classifier-free guidance (default 0.1 when conditional).
        eps: relative eps of the semidiscrete potential to solve (default 0) or of Sinkhorn (0.05).
        potential: a potential file solved for the normalised data (semidiscrete; default: solve one).
        pca: semidiscrete pairing in the top-K principal directions.
        search: semidiscrete pairing by ``exact`` argmax or a FAISS index (flat, ivf, hnsw).
        pairing_precision: ``fp32`` or ``bf16`` scores with exact re-scoring (semidiscrete, eps = 0).
        step_scales: the solver's per-cell step scales when it solves the run's potential
            (semidiscrete): ``adaptive`` or ``cell`` (``SemidiscreteSolver``'s ``preconditioner``;
            None: the solver's default, ``adaptive``).
        ot_method, ot_batch_size: minibatch OT solver (exact, sinkhorn) and batch (default: the
            training batch).
        superres, beta, condition_noise: super-resolution by the given factor with continuous
            conditions (image data; defaults of :class:`sdfm.data.superres.SuperResTask`).
        train: the :class:`TrainConfig` (default: its defaults with the model's learning rate); its
            ``objective`` and ``label_dropout`` are set from this spec.
        device: ``cpu``, ``cuda``, ... (default cpu).
        log: ``jsonl`` (metrics.jsonl only, the default) or ``tensorboard`` (also
            ``RUN_DIR/tensorboard/``: metrics and sample grids; extra ``sdfm[tensorboard]``).
    """

    data: str
    coupling: str
    model: str = "mlp"
    width: int | None = None
    depth: int | None = None
    normalize: str = "standard"
    objective: str = "flow"
    conditional: bool = False
    label_dropout: float | None = None
    eps: float | None = None
    potential: str | None = None
    pca: int | None = None
    search: str = "exact"
    pairing_precision: str = "fp32"
    step_scales: str | None = None
    ot_method: str = "exact"
    ot_batch_size: int | None = None
    superres: int | None = None
    beta: float | None = None
    condition_noise: float | None = None
    train: TrainConfig | None = None
    device: str | None = None
    log: str = "jsonl"

    def __post_init__(self):
        if self.log not in LOGS:
            raise ValueError(f"--log: expected one of {list(LOGS)}, got {self.log!r}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"--coupling: expected one of {sorted(COUPLINGS)}, got {self.coupling!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective: expected one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        if self.model not in DEFAULT_LR:
            raise ValueError(f"--model: expected one of {sorted(DEFAULT_LR)}, got {self.model!r}")
        registration = COUPLINGS[self.coupling]
        defaults = {f.name: f.default for f in fields(self)}
        for option in COUPLING_OPTIONS:
            if getattr(self, option) != defaults[option] and option not in registration.options:
                readers = sorted(name for name, r in COUPLINGS.items() if option in r.options)
                raise ValueError(
                    f"--{option.replace('_', '-')}: only used with --coupling {' or '.join(readers)}, "
                    f"not {self.coupling}"
                )
        if self.label_dropout and not self.conditional:
            raise ValueError("--label-dropout: only used with --conditional")
        if self.superres is None and (self.beta is not None or self.condition_noise is not None):
            raise ValueError("--beta/--condition-noise: only used with --superres")

    def train_config(self) -> TrainConfig:
        """The training config: ``train`` (or the defaults with the model's lr) with this spec's
        objective and label dropout."""
        base = self.train if self.train is not None else TrainConfig(lr=DEFAULT_LR[self.model])
        dropout = self.label_dropout if self.label_dropout is not None else (0.1 if self.conditional else 0.0)
        if not 0 <= dropout < 1:
            raise ValueError(f"--label-dropout: expected a number in [0, 1), got {dropout}")
        return replace(base, objective=self.objective, label_dropout=dropout)


def _stderr(message: str) -> None:
    print(f"sdfm train: {message}", file=sys.stderr)


def fit(
    spec: RunSpec,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | str = True,
    log=_stderr,
    files: dict[str, str] | None = None,
) -> TrainResult:
    """Trains ``spec`` into ``run_dir`` (or continues it with ``resume``) and returns the result.

    Holds the run folder's lock (:class:`sdfm.train.RunLock`) for the whole call; a run stopped before
    its first checkpoint resumes from step 0. ValueError (naming the ``sdfm train`` option) for bad
    specs, a folder that already holds a run (without ``resume``), or a spec that does not match
    the run being resumed. ``overwrite`` first removes what an earlier run wrote in the folder
    (:data:`sdfm.train.run.RUN_OUTPUTS`; other files stay). ``log`` receives one-line progress
    messages (rank 0 only). ``files`` (name -> text) are written into the run folder beside run.json
    (e.g. the resolved ``config.toml`` of ``sdfm train``)."""
    if resume and overwrite:
        raise ValueError("--overwrite: replaces the run in the folder; --resume continues it (pass one)")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out: {run_dir} exists and is not a folder")
    lock = RunLock(run_dir).acquire() if os.environ.get("RANK", "0") == "0" else None  # rank 0 writes
    try:
        if overwrite and lock is not None and (run_dir / "run.json").exists():
            removed = clear_run(run_dir)
            log(f"--overwrite: removed {', '.join(p.name for p in removed)} from {run_dir}")
        return _fit_locked(spec, run_dir, resume, progress, log, overwrite, files or {})
    finally:
        if lock is not None:
            lock.release()


def _check_folder(run_dir: Path, resume: bool, overwrite: bool = False) -> None:
    existing = (run_dir / "run.json").exists() and not overwrite  # (rank 0 has cleared it)
    if existing and not resume:
        if latest_checkpoint(run_dir / "checkpoints") is None:
            raise ValueError(
                f"--out: {run_dir} holds a run stopped before its first checkpoint; pass --resume to "
                "start it again (its potential is reused) or choose another folder"
            )
        raise ValueError(
            f"--out: {run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or choose another folder"
        )
    if resume and not existing:
        raise ValueError(f"--resume: {run_dir} holds no run to resume")


def _check_resume(spec: RunSpec, info: dict, fp_raw: str, run_dir: Path) -> None:
    """The spec must describe the run being resumed."""
    if info["data"]["fingerprint"] != fp_raw:
        raise ValueError(f"--data: {spec.data} is not the data of the run in {run_dir} (fingerprint differs)")
    if info["coupling"]["name"] != spec.coupling or info["model"]["name"] != spec.model:
        raise ValueError(
            f"--resume: the run was trained with --coupling {info['coupling']['name']} --model "
            f"{info['model']['name']}, got {spec.coupling} / {spec.model}"
        )
    if info["train"].get("objective", "flow") != spec.objective:
        raise ValueError(
            f"--resume: the run was trained with --objective {info['train'].get('objective', 'flow')}"
            f", got {spec.objective}"
        )
    if bool(info["coupling"].get("conditional", False)) != spec.conditional:
        raise ValueError(
            f"--resume: the run was trained {'with' if spec.conditional is False else 'without'} "
            "--conditional; pass the same flags"
        )


def _load_data(spec: RunSpec, run_dir: Path, resume: bool):
    """The dataset, its raw fingerprint, the resumed run's info (None for a new run) and the
    normalisation (the stored one when resuming)."""
    dataset = load_dataset(spec.data)
    fp_raw = fingerprint(np.ascontiguousarray(dataset.x))
    info = read_run(run_dir) if resume else None
    if info is not None:
        _check_resume(spec, info, fp_raw, run_dir)
        return dataset, fp_raw, info, Normalization.from_dict(info["normalization"], dim=dataset.x.shape[1])
    return dataset, fp_raw, None, Normalization.fit(dataset.x, spec.normalize)


def _fit_locked(
    spec: RunSpec, run_dir: Path, resume: bool, progress: bool, log, overwrite: bool = False, files=None
) -> TrainResult:
    _check_folder(run_dir, resume, overwrite)
    config = spec.train_config()
    device = parallel.init_from_env(parallel.parse_device(spec.device))
    main_rank = parallel.is_main()
    parallel.barrier()  # every process has checked the run folder before rank 0 writes to it
    _allow_tf32(device)
    dataset, fp_raw, info, norm = _load_data(spec, run_dir, resume)
    if spec.conditional and (dataset.labels is None or (dataset.num_classes or 0) < 2):
        raise ValueError(f"--conditional: {spec.data} has no class labels (or a single class)")
    task = _superres_task(spec, dataset, info)
    x_train = norm.apply(dataset.x)
    fp_train = fingerprint(x_train)
    targets = torch.from_numpy(np.ascontiguousarray(x_train)).to(device)
    n, dim = x_train.shape
    if info is not None:
        model_info, coupling_info = info["model"], info["coupling"]
    else:
        model_info = {"name": spec.model, "config": _model_config(spec, dataset, dim, task)}
        coupling_info = {"name": spec.coupling, "conditional": bool(spec.conditional)}
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
    parallel.barrier()
    ctx = CouplingContext(
        targets=targets,
        labels=None if dataset.labels is None else torch.from_numpy(dataset.labels),
        run_dir=run_dir,
        device=device,
        seed=config.seed,
        batch_size=config.batch_size,
        data_name=spec.data,
        fingerprint_raw=fp_raw,
        fingerprint_train=fp_train,
        stored=coupling_info if info is not None else None,
        progress=progress,
        log=log if main_rank else (lambda message: None),
    )
    if task is not None:
        ctx.task = task
        ctx.conditions = torch.from_numpy(task.conditions(x_train, dataset.image_shape, seed=config.seed)).to(
            device
        )
        coupling_info = {**coupling_info, "superres": task.to_dict()}
    coupling, extra = COUPLINGS[spec.coupling].build(spec, ctx)
    coupling_info = {**coupling_info, **extra}
    torch.manual_seed(config.seed)  # the network's initial weights
    model = build_model(model_info["name"], model_info["config"]).to(device)
    if main_rank:
        write_run(
            run_dir,
            run_info(
                spec=spec.data,
                dataset=dataset,
                fingerprint_raw=fp_raw,
                fingerprint_train=fp_train,
                normalization=norm,
                model=model_info,
                coupling=coupling_info,
                train=config.to_dict(),
                seed=config.seed,
            ),
        )
        for name, text in (files or {}).items():
            atomic_write(run_dir / name, lambda p, text=text: p.write_text(text))
        procs = "" if parallel.world_size() == 1 else f", {parallel.world_size()} processes"
        log(f"{spec.coupling} on {dataset.name} [{n}, {dim}], {spec.model}{procs} -> {run_dir}")
    return train(
        model,
        coupling,
        config,
        run_dir,
        resume=resume,
        meta={"data_fingerprint": fp_raw, "coupling": spec.coupling},
        progress=progress,
        loggers=_loggers(spec, run_dir, dataset, norm, model_info, task, config) if main_rank else (),
    )


def _loggers(spec: RunSpec, run_dir: Path, dataset, norm, model_info: dict, task, config) -> list:
    """The training loggers of ``spec.log`` besides metrics.jsonl."""
    if spec.log != "tensorboard":
        return []
    from sdfm.train.tensorboard import TensorBoardLog

    return [
        TensorBoardLog(
            run_dir,
            dim=dataset.x.shape[1],
            image_shape=dataset.image_shape,
            undo=norm.undo,
            num_classes=model_info["config"].get("num_classes"),
            sample_grid=task is None,  # (super-resolution models need condition images)
            seed=config.seed,
        )
    ]


def _allow_tf32(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the network's matmuls; pairing disables TF32 itself
        torch.backends.cudnn.allow_tf32 = True


def _model_config(spec: RunSpec, dataset, dim: int, task) -> dict:
    """The model config of a new run: its shape, and what the labels, conditions and objective need."""
    if spec.model == "mlp":
        cfg = {"dim": dim}
        if spec.width:
            cfg["hidden"] = spec.width
        if spec.depth:
            cfg["depth"] = spec.depth
    else:
        if dataset.image_shape is None:
            raise ValueError(
                f"--model: unet needs image data ([N, H, W] or [N, C, H, W] files, or digits); "
                f"{dataset.name} is flat [N, {dim}]; use --model mlp"
            )
        cfg = {"image_shape": list(dataset.image_shape)}
        if spec.width:
            cfg["base"] = spec.width
        if min(dataset.image_shape[1:]) < 8:
            raise ValueError(f"--model: unet needs images of at least 8x8, got {dataset.image_shape}")
    if spec.conditional:
        cfg["num_classes"] = int(dataset.num_classes)
    cfg.update(OBJECTIVES[spec.objective].model_config)
    if task is not None:
        c, h, w = dataset.image_shape
        cfg["cond_dim"] = c * (h // task.factor) * (w // task.factor)
    return cfg


def _superres_task(spec: RunSpec, dataset, info: dict | None):
    """The super-resolution task of ``spec.superres`` (or of the resumed run), checked; None otherwise."""
    from sdfm.data.superres import SuperResTask

    stored = None if info is None else info["coupling"].get("superres")
    if info is not None and (stored is not None) != (spec.superres is not None):
        raise ValueError("--resume: pass --superres exactly when the run was trained with it")
    if spec.superres is None:
        return None
    if dataset.image_shape is None:
        raise ValueError(f"--superres: needs image data; {dataset.name} rows are not images")
    if spec.conditional:
        raise ValueError("--superres: a model takes class labels or condition vectors, not both")
    if not COUPLINGS[spec.coupling].conditions:
        supported = " and ".join(sorted(name for name, r in COUPLINGS.items() if r.conditions))
        raise ValueError(f"--superres: supported couplings are {supported}")
    if spec.potential:
        raise ValueError(
            "--potential: not used with --superres (the augmented potential is solved in the run)"
        )
    if parallel.active():
        raise ValueError("torchrun: --superres runs need one process (for now)")
    _, h, w = dataset.image_shape
    if h % spec.superres or w % spec.superres:
        raise ValueError(f"--superres: {spec.superres} does not divide the image size {h}x{w}")
    if stored is not None:
        return SuperResTask(**stored)
    defaults = SuperResTask()
    try:
        return SuperResTask(
            factor=spec.superres,
            noise=defaults.noise if spec.condition_noise is None else spec.condition_noise,
            beta=defaults.beta if spec.beta is None else spec.beta,
        )
    except ValueError as exc:
        raise ValueError(f"--superres: {exc}") from None
