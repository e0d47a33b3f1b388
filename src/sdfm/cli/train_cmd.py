"""``sdfm train`` and ``sdfm sample``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from sdfm.cli.common import CliError, check_writable_file, check_writable_folder, device_from, tensor_view

DEFAULT_LR = {"mlp": 1e-3, "unet": 2e-4}
DEFAULT_SINKHORN_EPS = 0.05


def add_train_parser(sub, positive_int, nonneg_float) -> None:
    p = sub.add_parser(
        "train",
        help="train a flow-matching model with an independent, minibatch-OT or semidiscrete coupling",
        description=(
            "Train a velocity field by flow matching from N(0, I) to the data. The data are "
            "normalised for training (per-feature mean, one global scale; stored in the run and "
            "undone when sampling). With --coupling semidiscrete and no --potential, the potential "
            "is solved first and saved in RUN_DIR/potential.safetensors."
        ),
    )
    p.add_argument(
        "--data", required=True, help="dataset name (checkerboard, gmm, digits, mnist1d, ...) or file"
    )
    p.add_argument(
        "--coupling", required=True, choices=["independent", "minibatch-ot", "semidiscrete"], help="pairing"
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--potential", default=None, help="potential file solved for the normalised data")
    p.add_argument(
        "--eps",
        type=nonneg_float,
        default=None,
        help="relative eps: of the semidiscrete potential to solve (default 0) or of Sinkhorn (default 0.05)",
    )
    p.add_argument(
        "--pca",
        type=positive_int,
        default=None,
        metavar="K",
        help="semidiscrete: solve and pair with the cost 1/2 |P x - P y|^2 in the normalised data's top-K "
        "principal directions (stored with the potential)",
    )
    p.add_argument(
        "--search",
        choices=["exact", "flat", "ivf", "hnsw"],
        default="exact",
        help="semidiscrete pairing: sdfm's exact streamed argmax (default) or a FAISS index over the "
        "fixed potential's keys (flat: exact; ivf / hnsw: approximate; needs sdfm[faiss]; saved as "
        "RUN_DIR/index.safetensors and checked against the potential on --resume)",
    )
    p.add_argument("--ot-method", choices=["exact", "sinkhorn"], default="exact", help="minibatch OT solver")
    p.add_argument(
        "--pairing-precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="semidiscrete pairing scores: fp32, or bf16 with exact float64 re-scoring (same pairs; "
        "faster at high d where bf16 matmuls are fast)",
    )
    p.add_argument(
        "--ot-batch-size", type=positive_int, default=None, help="OT batch (default: --batch-size)"
    )
    p.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional model (needs labels): the network takes the label; semidiscrete pairs "
        "each noise within its class (one potential per class), minibatch-ot solves OT within each "
        "class of the batch",
    )
    p.add_argument(
        "--label-dropout",
        type=nonneg_float,
        default=None,
        help="probability of dropping the label, for classifier-free guidance "
        "(default 0.1 with --conditional)",
    )
    p.add_argument(
        "--superres",
        type=positive_int,
        default=None,
        metavar="FACTOR",
        help="super-resolution (image data): the network takes each image's noisy FACTOR-times "
        "downsampled copy z as a continuous condition; semidiscrete pairs by the augmented cost "
        "c(x, y) + beta c(z, z')",
    )
    p.add_argument(
        "--beta",
        type=nonneg_float,
        default=None,
        help="weight of the condition cost (--superres; default 30)",
    )
    p.add_argument(
        "--condition-noise",
        type=nonneg_float,
        default=None,
        help="std of the noise on the low-resolution conditions, normalised units (--superres; default 0.1)",
    )
    p.add_argument(
        "--objective",
        choices=["flow", "meanflow"],
        default="flow",
        help="flow: flow matching of a velocity field (default); meanflow: MeanFlow (Geng et al. 2025), "
        "a model of the average velocity u(x, t, r) for one- and few-step sampling (sdfm sample "
        "--solver meanflow)",
    )
    p.add_argument("--model", choices=["mlp", "unet"], default="mlp", help="velocity network (default mlp)")
    p.add_argument(
        "--width", type=positive_int, default=None, help="MLP hidden width (256) / U-Net base channels (32)"
    )
    p.add_argument("--depth", type=positive_int, default=None, help="MLP residual blocks (default 4)")
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="pairs per step (default 256)")
    p.add_argument(
        "--lr", type=nonneg_float, default=None, help="learning rate (default 1e-3 mlp, 2e-4 unet)"
    )
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (default 100)")
    p.add_argument("--ema-decay", type=nonneg_float, default=0.999, help="EMA decay (default 0.999)")
    p.add_argument("--time-sampler", choices=["uniform", "logit-normal"], default="uniform")
    p.add_argument("--normalize", choices=["standard", "none"], default="standard", help="data normalisation")
    p.add_argument(
        "--checkpoint-every", type=int, default=1000, help="steps between checkpoints (0 = end only)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("sample", help="sample from a trained run with an ODE solver")
    s.add_argument("--run", required=True, help="run folder written by sdfm train")
    s.add_argument("--num", type=positive_int, default=1000, help="number of samples (default 1000)")
    s.add_argument(
        "--solver",
        choices=["euler", "midpoint", "heun", "rk4", "meanflow", "dopri5"],
        default=None,
        help="ODE solver, or meanflow (jumps of a mean-flow model); default meanflow for mean-flow "
        "runs, euler otherwise",
    )
    s.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="solver steps (ignored by dopri5; default 8, or 1 for the meanflow sampler)",
    )
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument(
        "--out", required=True, help="output .npy file (a .png of the samples is written beside it)"
    )
    s.add_argument(
        "--label",
        type=int,
        default=None,
        help="class of every sample (conditional runs; default: classes in turn)",
    )
    s.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="classifier-free guidance scale (conditional runs; default 1)",
    )
    s.add_argument(
        "--guidance-correction",
        type=positive_int,
        default=None,
        metavar="PARTICLES",
        help="EXPERIMENTAL: correct guided samples towards the geometric mixture p_c^w p_u^(1-w) by "
        "drawing PARTICLES guided trajectories per sample and resampling one by its importance weight "
        "(arXiv 2509.25519; fixed-step solvers)",
    )
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")


def _model_config(args, dataset, dim: int) -> dict:
    cfg = _model_shape(args, dataset, dim)
    if args.conditional:
        cfg["num_classes"] = int(dataset.num_classes)
    if args.objective == "meanflow":
        cfg["mean_flow"] = True
    if getattr(args, "cond_dim", None):
        cfg["cond_dim"] = int(args.cond_dim)
    return cfg


def _model_shape(args, dataset, dim: int) -> dict:
    if args.model == "mlp":
        cfg = {"dim": dim}
        if args.width:
            cfg["hidden"] = args.width
        if args.depth:
            cfg["depth"] = args.depth
        return cfg
    if dataset.image_shape is None:
        raise CliError(
            f"--model: unet needs image data ([N, H, W] or [N, C, H, W] files, or digits); "
            f"{dataset.name} is flat [N, {dim}]; use --model mlp"
        )
    cfg = {"image_shape": list(dataset.image_shape)}
    if args.width:
        cfg["base"] = args.width
    if min(dataset.image_shape[1:]) < 8:
        raise CliError(f"--model: unet needs images of at least 8x8, got {dataset.image_shape}")
    return cfg


def _semidiscrete(args, run_dir: Path, targets, fp_train: str, fp_raw: str, device, labels=None):
    """The coupling's potential: loaded from --potential (checked) or solved and saved in the run
    (per class when ``labels`` are given: class-conditional pairing; in the top --pca directions).

    Returns (g, eps, weights, duplicates, the potential's name for run.json, projection or None)."""
    import torch

    from sdfm import parallel
    from sdfm.artifacts import load_potential, save_potential
    from sdfm.progress import solve_bar
    from sdfm.transport import PCAProjection, SemidiscreteSolver

    if args.potential:
        pf = load_potential(args.potential)
        if pf.fingerprint == fp_raw and fp_raw != fp_train:
            raise CliError(
                f"--potential: {args.potential} was solved for the raw data, but training uses normalised "
                "data; pass --normalize none, or omit --potential to solve for the normalised data"
            )
        pf.check_targets(targets, fingerprint=fp_train)
        if labels is not None and (pf.classes is None or not torch.equal(pf.classes, labels.cpu())):
            raise CliError(
                f"--potential: {args.potential} is not a class-conditional potential for these labels "
                "(omit --potential to solve one per class)"
            )
        if labels is None and pf.classes is not None:
            raise CliError(f"--potential: {args.potential} is class-conditional; pass --conditional")
        if args.eps is not None and abs(float(pf.meta.get("eps_relative", pf.eps)) - args.eps) > 1e-12:
            raise CliError(
                f"--eps: {args.eps} differs from the potential's eps ({pf.meta.get('eps_relative')})"
            )
        if args.pca is not None and (pf.projection is None or pf.projection.k != args.pca):
            raise CliError(f"--pca: {args.potential} was not solved in {args.pca} principal directions")
        name = str(Path(args.potential).resolve())
        return pf.potential, pf.eps, pf.weights, pf.duplicates, name, pf.projection
    out = run_dir / "potential.safetensors"
    main_rank = parallel.is_main()
    solver = SemidiscreteSolver(eps=args.eps or 0.0, device=str(device))
    projection, keys = None, targets
    if args.pca is not None:
        if args.pca > targets.shape[1]:
            raise CliError(f"--pca: {args.pca} components for data of dimension {targets.shape[1]}")
        projection = PCAProjection.fit(targets, args.pca)
        keys = projection.project_targets(targets)
    if main_rank:
        print(f"sdfm train: solving the semidiscrete potential for {args.data} -> {out}", file=sys.stderr)
    gen = torch.Generator(device=device).manual_seed(args.seed)  # the same on every process
    with solve_bar(tol=solver.tol, num_targets=keys.shape[0], disable=args.quiet or not main_rank) as bar:
        if labels is not None:  # class-conditional: one sub-problem per class
            from sdfm.transport import solve_per_class

            res = solve_per_class(solver, keys, labels, generator=gen, callback=bar)
        else:
            res = solver.solve(keys, generator=gen, callback=bar, collective=parallel.collective())
    if main_rank:
        save_potential(
            out,
            res,
            fingerprint=fp_train,
            targets=targets,
            data_name=args.data,
            extra={"seed": args.seed},
            projection=projection,
        )
        print(
            f"sdfm train: potential chi2 {res.chi2:.4f} ± {res.chi2_stderr:.4f}, {res.seconds:.1f} s",
            file=sys.stderr,
        )
    parallel.barrier()
    return res.potential, res.eps, res.weights, res.duplicates, "potential.safetensors", projection


def _superres_task(args, dataset, info: dict | None):
    """The super-resolution task of --superres (or of the resumed run), checked; None otherwise."""
    from sdfm.data.superres import SuperResTask

    stored = None if info is None else info["coupling"].get("superres")
    if info is not None and (stored is not None) != (args.superres is not None):
        raise CliError("--resume: pass --superres exactly when the run was trained with it")
    if args.superres is None:
        if args.beta is not None or args.condition_noise is not None:
            raise CliError("--beta/--condition-noise: only used with --superres")
        return None
    if dataset.image_shape is None:
        raise CliError(f"--superres: needs image data; {dataset.name} rows are not images")
    if args.conditional:
        raise CliError("--superres: a model takes class labels or condition vectors, not both")
    if args.coupling == "minibatch-ot":
        raise CliError("--superres: supported couplings are independent and semidiscrete")
    if args.potential:
        raise CliError("--potential: not used with --superres (the augmented potential is solved in the run)")
    _, h, w = dataset.image_shape
    if h % args.superres or w % args.superres:
        raise CliError(f"--superres: {args.superres} does not divide the image size {h}x{w}")
    if stored is not None:
        return SuperResTask(**stored)
    defaults = SuperResTask()
    try:
        task = SuperResTask(
            factor=args.superres,
            noise=defaults.noise if args.condition_noise is None else args.condition_noise,
            beta=defaults.beta if args.beta is None else args.beta,
        )
    except ValueError as exc:
        raise CliError(f"--superres: {exc}") from None
    c = dataset.image_shape[0]
    args.cond_dim = c * (h // task.factor) * (w // task.factor)
    return task


def _superres(args, run_dir: Path, task, dataset, x_train, targets, coupling_info: dict, device):
    """The coupling of a super-resolution run (semidiscrete: the augmented potential, solved and saved
    in the run, or loaded from it on --resume)."""
    import torch

    from sdfm.artifacts import load_potential, save_potential
    from sdfm.couplings import IndependentCoupling, SemidiscreteCoupling
    from sdfm.data import fingerprint
    from sdfm.evaluation.superres import superres_coupling
    from sdfm.transport import augmented_keys

    z = torch.from_numpy(task.conditions(x_train, dataset.image_shape, seed=args.seed)).to(device)
    coupling_info = {**coupling_info, "superres": task.to_dict()}
    if args.coupling == "independent":
        return IndependentCoupling(targets, conditions=z), coupling_info
    keys = augmented_keys(targets, z, task.beta)
    fp_keys = fingerprint(keys.cpu().numpy())
    path = run_dir / "potential.safetensors"
    if args.resume:
        pf = load_potential(path)
        pf.check_targets(keys, fingerprint=fp_keys)
        coupling = SemidiscreteCoupling(
            targets,
            pf.potential,
            eps=pf.eps,
            weights=pf.weights,
            duplicates=pf.duplicates,
            conditions=z,
            beta=task.beta,
        )
        return coupling, coupling_info
    print(f"sdfm train: solving the augmented potential (beta {task.beta:g}) -> {path}", file=sys.stderr)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    coupling, res = superres_coupling(
        "semidiscrete", targets, z, task, generator=gen, progress=not args.quiet
    )
    save_potential(
        path, res, fingerprint=fp_keys, targets=keys, data_name=args.data, extra={"seed": args.seed}
    )
    print(
        f"sdfm train: potential chi2 {res.chi2:.4f} ± {res.chi2_stderr:.4f}, {res.seconds:.1f} s",
        file=sys.stderr,
    )
    return coupling, {
        **coupling_info,
        "potential": "potential.safetensors",
        "eps": res.eps,
        "eps_relative": 0.0,
    }


def _search_index(args, run_dir: Path, kind: str, targets, g, projection, fp_train: str):
    """The FAISS index of a run: loaded from RUN_DIR/index.safetensors on --resume (refused if built
    for another potential), else built over the pairing keys and saved there."""
    from sdfm.artifacts import load_index, save_index
    from sdfm.transport.search import FaissCells

    path = run_dir / "index.safetensors"
    keys = targets if projection is None else projection.project_targets(targets)
    if args.resume:
        return load_index(path, g, shape=tuple(keys.shape), data_fingerprint=fp_train)
    cells = FaissCells(keys, g, kind=kind, data_fingerprint=fp_train)
    save_index(path, cells)
    return cells


def cmd_train(args) -> int:
    import os

    from sdfm.train import RunLock

    run_dir = Path(args.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise CliError(f"--out: {run_dir} exists and is not a folder")
    check_writable_folder(run_dir, "--out")
    # rank 0 (the writer) holds the run folder's lock for the whole command
    lock = RunLock(run_dir).acquire() if os.environ.get("RANK", "0") == "0" else None
    try:
        return _train_locked(args, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(args, run_dir: Path) -> int:
    import torch

    from sdfm import parallel
    from sdfm.couplings import IndependentCoupling, MinibatchOTCoupling, SemidiscreteCoupling
    from sdfm.data import fingerprint, load_dataset
    from sdfm.data.normalize import Normalization
    from sdfm.models import build_model
    from sdfm.train import TrainConfig, latest_checkpoint, read_run, run_info, train, write_run

    existing = (run_dir / "run.json").exists()
    if existing and not args.resume:
        if latest_checkpoint(run_dir / "checkpoints") is None:
            raise CliError(
                f"--out: {run_dir} holds a run stopped before its first checkpoint; pass --resume to "
                "start it again (its potential is reused) or choose another folder"
            )
        raise CliError(
            f"--out: {run_dir} already holds a run; pass --resume to continue it or choose another folder"
        )
    if args.resume and not existing:
        raise CliError(f"--resume: {run_dir} holds no run to resume")
    if args.coupling != "semidiscrete" and args.potential:
        raise CliError(f"--potential: only used with --coupling semidiscrete, not {args.coupling}")
    if args.warmup < 0 or args.checkpoint_every < 0:
        raise CliError("--warmup/--checkpoint-every: expected integers >= 0")
    if args.pca is not None and args.coupling != "semidiscrete":
        raise CliError(f"--pca: only used with --coupling semidiscrete, not {args.coupling}")
    device = parallel.init_from_env(device_from(args.device))
    main_rank = parallel.is_main()
    parallel.barrier()  # every process has checked the run folder before rank 0 writes to it
    if parallel.active():
        if args.superres or (args.conditional and args.coupling == "semidiscrete"):
            raise CliError(
                "torchrun: --superres and --conditional semidiscrete runs need one process (for now)"
            )
        if args.pairing_precision == "bf16":
            raise CliError("--pairing-precision: bf16 scores need one process (for now)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the network's matmuls; pairing disables TF32 itself
        torch.backends.cudnn.allow_tf32 = True
    dataset = load_dataset(args.data)
    fp_raw = fingerprint(np.ascontiguousarray(dataset.x))
    if args.resume:
        info = read_run(run_dir)
        if info["data"]["fingerprint"] != fp_raw:
            raise CliError(
                f"--data: {args.data} is not the data of the run in {run_dir} (fingerprint differs)"
            )
        if info["coupling"]["name"] != args.coupling or info["model"]["name"] != args.model:
            raise CliError(
                f"--resume: the run was trained with --coupling {info['coupling']['name']} --model "
                f"{info['model']['name']}, got {args.coupling} / {args.model}"
            )
        if info["train"].get("objective", "flow") != args.objective:
            raise CliError(
                f"--resume: the run was trained with --objective {info['train'].get('objective', 'flow')}"
                f", got {args.objective}"
            )
        if bool(info["coupling"].get("conditional", False)) != args.conditional:
            raise CliError(
                f"--resume: the run was trained {'with' if args.conditional is False else 'without'} "
                "--conditional; pass the same flags"
            )
        norm = Normalization.from_dict(info["normalization"])
    else:
        norm = Normalization.fit(dataset.x, args.normalize)
    if args.conditional:
        if dataset.labels is None or (dataset.num_classes or 0) < 2:
            raise CliError(f"--conditional: {args.data} has no class labels (or a single class)")
    elif args.label_dropout:
        raise CliError("--label-dropout: only used with --conditional")
    task = _superres_task(args, dataset, info if args.resume else None)
    label_dropout = (
        args.label_dropout if args.label_dropout is not None else (0.1 if args.conditional else 0.0)
    )
    if label_dropout >= 1:
        raise CliError(f"--label-dropout: expected a number in [0, 1), got {label_dropout}")
    x_train = norm.apply(dataset.x)
    fp_train = fingerprint(x_train)
    targets = tensor_view(x_train).to(device)
    n, dim = x_train.shape
    labels = None if dataset.labels is None else torch.from_numpy(dataset.labels)
    lr = args.lr if args.lr else DEFAULT_LR[args.model]
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        time_sampler=args.time_sampler,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        bf16=args.bf16,
        compile=args.compile,
        label_dropout=label_dropout,
        objective=args.objective,
    )
    if args.resume:
        model_info, coupling_info = info["model"], info["coupling"]
    else:
        model_info = {"name": args.model, "config": _model_config(args, dataset, dim)}
        coupling_info = {"name": args.coupling, "conditional": bool(args.conditional)}
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
    parallel.barrier()
    if task is not None:
        coupling, coupling_info = _superres(
            args, run_dir, task, dataset, x_train, targets, coupling_info, device
        )
    elif args.coupling == "independent":
        coupling = IndependentCoupling(targets, labels=labels)
    elif args.coupling == "minibatch-ot":
        eps = DEFAULT_SINKHORN_EPS if args.eps is None else args.eps
        if not args.resume:
            coupling_info.update(
                method=args.ot_method, batch_size=args.ot_batch_size or args.batch_size, eps=eps
            )
        coupling = MinibatchOTCoupling(
            targets,
            method=coupling_info["method"],
            batch_size=coupling_info["batch_size"],
            eps=coupling_info["eps"],
            labels=labels,
            conditional=args.conditional,
        )
    else:
        if args.resume:
            pot_path = coupling_info["potential"]
            pot_path = pot_path if Path(pot_path).is_absolute() else str(run_dir / pot_path)
            args.potential = pot_path
            args.eps = None
        g, eps_abs, weights, dups, pot_name, projection = _semidiscrete(
            args, run_dir, targets, fp_train, fp_raw, device, labels=labels if args.conditional else None
        )
        if not args.resume:
            coupling_info.update(potential=pot_name, eps=eps_abs, eps_relative=args.eps or 0.0)
            if projection is not None:
                coupling_info["pca"] = projection.k
        lowp = args.pairing_precision == "bf16"
        if lowp and eps_abs > 0:
            raise CliError("--pairing-precision: bf16 scores are exact for eps = 0 only")
        if lowp and args.conditional:
            raise CliError("--pairing-precision: bf16 scores do not support --conditional pairing yet")
        search_kind = coupling_info.get("search", "exact") if args.resume else args.search
        search = None
        if search_kind != "exact":
            if eps_abs > 0 or args.conditional or lowp or parallel.active():
                raise CliError("--search: a FAISS index pairs eps = 0, unconditional, one process only")
            search = _search_index(args, run_dir, search_kind, targets, g, projection, fp_train)
            coupling_info["search"] = search_kind
        coupling = SemidiscreteCoupling(
            targets,
            g,
            eps=eps_abs,
            weights=weights,
            duplicates=dups,
            labels=labels,
            score_dtype=torch.bfloat16 if lowp else None,
            conditional=args.conditional,
            projection=projection,
            collective=parallel.collective(),
            search=search,
        )
    info = run_info(
        spec=args.data,
        dataset=dataset,
        fingerprint_raw=fp_raw,
        fingerprint_train=fp_train,
        normalization=norm,
        model=model_info,
        coupling=coupling_info,
        train=config.to_dict(),
        seed=args.seed,
    )
    torch.manual_seed(args.seed)  # the network's initial weights
    model = build_model(model_info["name"], model_info["config"]).to(device)
    if main_rank:
        write_run(run_dir, info)
        procs = "" if parallel.world_size() == 1 else f", {parallel.world_size()} processes"
        print(
            f"sdfm train: {args.coupling} on {dataset.name} [{n}, {dim}], {args.model}{procs} -> {run_dir}",
            file=sys.stderr,
        )
    result = train(
        model,
        coupling,
        config,
        run_dir,
        resume=args.resume,
        meta={"data_fingerprint": fp_raw, "coupling": args.coupling},
        progress=not args.quiet,
    )
    if not main_rank:
        return 0
    last = result.metrics[-1] if result.metrics else {}
    print(
        f"trained {result.step} steps; loss {last.get('loss', float('nan')):.4f}, "
        f"{last.get('pairs_per_s', 0):.0f} pairs/s -> {run_dir}"
    )
    return 0


def cmd_sample(args) -> int:
    import torch

    from sdfm.artifacts.atomic import atomic_write
    from sdfm.evaluation.plots import plot_samples
    from sdfm.samplers import default_method, integrate
    from sdfm.train import load_run

    out = Path(args.out)
    if out.suffix != ".npy":
        raise CliError(f"--out: expected a .npy path, got {args.out}")
    check_writable_file(out, "--out")
    device = device_from(args.device)
    run = load_run(args.run, device=device, ema=not args.no_ema)
    dim = int(run.info["data"]["shape"][1])
    generator = torch.Generator(device=device).manual_seed(args.seed)
    x0 = torch.randn(args.num, dim, generator=generator, device=device)
    num_classes = run.info["model"]["config"].get("num_classes")
    cond = None
    if run.info["coupling"].get("superres"):  # conditions: the held-out images' noisy low-res copies
        from sdfm.evaluation.superres import superres_heldout

        if args.label is not None or args.guidance != 1.0:
            raise CliError("--label/--guidance: a super-resolution run is conditioned on images, not labels")
        _, high, z, _, _ = superres_heldout(run.info, run.normalization)
        num = min(args.num, z.shape[0])
        cond = torch.from_numpy(z[:num]).to(device)
        x0 = x0[:num]
        print(f"conditions: the first {num} held-out images' low-resolution copies", file=sys.stderr)
    elif num_classes:
        if args.label is not None and not 0 <= args.label < num_classes:
            raise CliError(f"--label: expected a class in [0, {num_classes}), got {args.label}")
        cond = (
            torch.full((args.num,), args.label, device=device)
            if args.label is not None
            else torch.arange(args.num, device=device) % num_classes
        )
    elif args.label is not None or args.guidance != 1.0:
        raise CliError("--label/--guidance: the run's model is unconditional (train with --conditional)")
    mean_flow = bool(run.info["model"]["config"].get("mean_flow", False))
    solver = args.solver or default_method(mean_flow)
    if solver == "meanflow" and not mean_flow:
        raise CliError("--solver: meanflow needs a mean-flow run (sdfm train --objective meanflow)")
    steps = args.steps or (1 if solver == "meanflow" else 8)
    if args.guidance_correction:
        from sdfm.samplers import corrected_guidance

        if cond is None or not num_classes:
            raise CliError("--guidance-correction: needs a class-conditional run")
        if solver in ("dopri5", "meanflow"):
            raise CliError(f"--guidance-correction: needs a fixed-step ODE solver, not {solver}")
        x0 = torch.randn(x0.shape[0], args.guidance_correction, dim, generator=generator, device=device)
        res = corrected_guidance(
            run.model, x0, cond, args.guidance, steps=steps, method=solver, generator=generator
        )
        print(
            f"guidance correction: {args.guidance_correction} particles per sample, mean effective sample "
            f"size {float(res.ess.mean()):.1f}",
            file=sys.stderr,
        )
    else:
        res = integrate(run.model, x0, steps=steps, method=solver, cond=cond, guidance=args.guidance)
    samples = run.normalization.undo(res.x)
    if not np.isfinite(samples).all():
        raise CliError(
            f"--run: {args.run} (step {run.step}) gives NaN or Inf samples; nothing written (a diverged run?)"
        )

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, samples)

    atomic_write(out, write)
    image_shape = run.info["data"].get("image_shape")
    label = f"{run.info['coupling']['name']}, {solver}, NFE {res.nfe}, step {run.step}"
    png = plot_samples(samples, out.with_suffix(".png"), image_shape=image_shape, title=label)
    print(f"{args.num} samples ({solver}, NFE {res.nfe}) -> {out}, {png}")
    return 0
