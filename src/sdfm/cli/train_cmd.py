"""``sdfm train`` and ``sdfm sample``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from sdfm.cli.common import (
    CliError,
    add_image_options,
    check_writable_file,
    check_writable_folder,
    device_from,
)
from sdfm.couplings import COUPLINGS
from sdfm.flow import OBJECTIVES


# long: one add_argument per option of train and sample, a table rather than logic
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
        "--config",
        default=None,
        metavar="FILE.toml",
        help='read options from a TOML file (keys are the option names: data = "digits", steps = 5000, '
        "conditional = true, ...); flags on the command line override it. Every run writes its resolved "
        "options to RUN_DIR/config.toml, so `sdfm train --config RUN_DIR/config.toml --out NEW` repeats it",
    )
    p.add_argument(
        "--data",
        required=False,
        help="dataset name (checkerboard, gmm, digits, mnist1d, ...), tensor or .csv file, or a folder of "
        "PNG/JPEG images (one subfolder per class gives labels; 10%% held out for sdfm eval)",
    )
    add_image_options(p)
    p.add_argument(
        "--coupling",
        required=False,
        choices=sorted(COUPLINGS),
        help="how noise x0 and data x1 are paired: independent (I-FM, random pairs), minibatch-ot (OT-FM, "
        "exact or Sinkhorn OT within each batch) or semidiscrete (SD-FM, each noise to its Laguerre cell "
        "under a potential solved once for the whole dataset)",
    )
    p.add_argument("--out", required=False, help="run folder (required, here or in --config)")
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
        "--step-scales",
        choices=["adaptive", "cell"],
        default=None,
        help="semidiscrete: the solver's per-cell step scales (as sdfm solve --step-scales): adaptive "
        "(the default) or cell (the default before BENCHMARKS.md section 24)",
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
        choices=sorted(OBJECTIVES),
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
    p.add_argument(
        "--time-sampler",
        choices=["uniform", "logit-normal"],
        default="uniform",
        help="distribution of the training times t: uniform on [0, 1] (default) or logit-normal(0, 1), "
        "which weights the middle of the path more",
    )
    p.add_argument("--normalize", choices=["standard", "none"], default="standard", help="data normalisation")
    p.add_argument(
        "--checkpoint-every", type=int, default=1000, help="steps between checkpoints (0 = end only)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (its run.json, checkpoints, potential, metrics and eval are removed "
        "first; other files in the folder stay)",
    )
    p.add_argument(
        "--log",
        choices=["jsonl", "tensorboard"],
        default="jsonl",
        help="jsonl: RUN_DIR/metrics.jsonl (default); tensorboard: also RUN_DIR/tensorboard/ with the "
        "metrics and, at checkpoints, a grid of samples (sdfm[tensorboard])",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser(
        "sample",
        help="sample from a trained run with an ODE solver",
        description=(
            "Draw N(0, I) noise, integrate the run's newest checkpoint (EMA weights by default) with a "
            "fixed-step ODE solver, dopri5 or the mean-flow sampler, undo the training normalisation and "
            "write the samples in data units as a .npy file with a picture beside it (an image grid, a "
            "2-D scatter, or a scatter in the data's top two principal directions)."
        ),
    )
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
        "--out",
        required=True,
        help="output .npy file (a .png of the samples is written beside it), or with --format png-folder "
        "a folder",
    )
    s.add_argument(
        "--format",
        choices=["npy", "png-folder"],
        default="npy",
        help="npy (default): one array in data units; png-folder (image runs): one 8-bit PNG per sample, "
        "000000.png, ..., pixel values mapped from the training data's range to 0..255, for an "
        "external FID tool",
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


def spec_from_args(args):
    """The :class:`sdfm.train.RunSpec` of ``sdfm train`` arguments."""
    from sdfm.train import TrainConfig
    from sdfm.train.recipe import DEFAULT_LR, RunSpec

    try:
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr if args.lr else DEFAULT_LR[args.model],
            warmup=args.warmup,
            ema_decay=args.ema_decay,
            time_sampler=args.time_sampler,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            bf16=args.bf16,
            compile=args.compile,
        )
    except ValueError as exc:
        raise CliError(f"--{str(exc).replace('_', '-')}") from None
    names = ("data", "coupling", "model", "width", "depth", "normalize", "objective", "conditional")
    names += ("label_dropout", "eps", "potential", "pca", "search", "pairing_precision", "step_scales")
    names += ("ot_method",)
    names += ("ot_batch_size", "superres", "beta", "condition_noise", "device", "log")
    return RunSpec(**{name: getattr(args, name) for name in names}, train=config)


#: train options that describe one invocation, not the run (left out of RUN_DIR/config.toml)
NOT_IN_CONFIG = ("config", "out", "resume", "overwrite", "quiet", "threads", "command")


def config_toml(args) -> str:
    """The resolved ``sdfm train`` options as TOML (options left at None are omitted)."""
    import json

    lines = ["# sdfm train options of this run (sdfm train --config THIS_FILE --out NEW_RUN repeats it)"]
    for key, value in sorted(vars(args).items()):
        if key in NOT_IN_CONFIG or value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))  # a TOML basic string
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def apply_config(parser, train_parser, argv):
    """Re-parses ``argv`` with the options of ``--config FILE.toml`` as defaults (flags still win)."""
    import argparse

    args = parser.parse_args(argv)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(args.config)
    try:
        table = tomllib.loads(path.read_text())
    except OSError as exc:
        raise CliError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"--config: {path} is not valid TOML: {exc}") from None
    actions = {a.dest: a for a in train_parser._actions if a.dest != "help"}
    defaults = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest not in actions or dest in ("config", "help"):
            raise CliError(
                f"--config: {path}: unknown option {key!r} (the keys are sdfm train's option names)"
            )
        action = actions[dest]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise CliError(f"--config: {path}: {key} must be true or false, got {value!r}")
            defaults[dest] = value
            continue
        if isinstance(value, (dict, list)) or isinstance(value, bool):
            raise CliError(f"--config: {path}: {key} must be a number or a string, got {value!r}")
        try:
            converted = action.type(str(value)) if action.type else str(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise CliError(f"--config: {path}: {key} = {value!r}: {exc}") from None
        if action.choices is not None and converted not in action.choices:
            raise CliError(f"--config: {path}: {key} = {value!r} is not one of {list(action.choices)}")
        defaults[dest] = str(value)  # (argparse converts string defaults with the option's type)
    train_parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def cmd_train(args) -> int:
    from sdfm import parallel
    from sdfm.train import fit

    for name in ("data", "coupling", "out"):
        if getattr(args, name) is None:
            raise CliError(f"--{name}: required (on the command line or in --config)")
    if args.coupling not in COUPLINGS:
        raise CliError(f"--coupling: expected one of {sorted(COUPLINGS)}, got {args.coupling!r}")
    check_writable_folder(Path(args.out), "--out")
    spec = spec_from_args(args)
    result = fit(
        spec,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        files={"config.toml": config_toml(args)},
    )
    if not parallel.is_main():
        return 0
    last = result.metrics[-1] if result.metrics else {}
    print(
        f"trained {result.step} steps; loss {last.get('loss', float('nan')):.4f}, "
        f"{last.get('pairs_per_s', 0):.0f} pairs/s -> {args.out}"
    )
    return 0


def cmd_sample(args) -> int:
    import torch

    from sdfm.artifacts.atomic import atomic_write
    from sdfm.evaluation.plots import plot_samples
    from sdfm.samplers import default_method, integrate
    from sdfm.train import load_run

    out = Path(args.out)
    if args.format == "png-folder":
        check_writable_folder(out, "--out")
    elif out.suffix != ".npy":
        raise CliError(f"--out: expected a .npy path, got {args.out}")
    else:
        check_writable_file(out, "--out")
    device = device_from(args.device)
    run = load_run(args.run, device=device, ema=not args.no_ema)
    if args.format == "png-folder" and not run.info["data"].get("image_shape"):
        raise CliError(f"--format: png-folder needs an image run; {args.run} was trained on flat data")
    dim = int(run.info["data"]["shape"][1])
    generator = torch.Generator(device=device).manual_seed(args.seed)
    x0 = torch.randn(args.num, dim, generator=generator, device=device)
    num_classes = run.info["model"]["config"].get("num_classes")
    x0, cond = _sample_conditions(args, run, x0, device)
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

    image_shape = run.info["data"].get("image_shape")
    if args.format == "png-folder":
        written = write_png_folder(samples, out, image_shape, pixel_range(run.info))
        print(f"{len(written)} samples ({solver}, NFE {res.nfe}) -> {out}/ (000000.png ...)")
        return 0

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, samples)

    atomic_write(out, write)
    label = f"{run.info['coupling']['name']}, {solver}, NFE {res.nfe}, step {run.step}"
    from sdfm.extras import MissingExtra

    try:
        png = plot_samples(samples, out.with_suffix(".png"), image_shape=image_shape, title=label)
    except MissingExtra as exc:  # the samples are written; only the picture needs the extra
        png = f"no picture ({exc})"
    print(f"{args.num} samples ({solver}, NFE {res.nfe}) -> {out}, {png}")
    return 0


def _sample_conditions(args, run, x0, device):
    """The noise (cut to the number of conditions) and the conditions of ``sdfm sample``: held-out
    low-resolution images for super-resolution runs, labels for class-conditional ones, else None."""
    import torch

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
    return x0, cond


def pixel_range(info: dict) -> tuple[float, float]:
    """The value range of a run's training pixels: 0..255 for 8-bit data (image folders, uint8 files),
    else the data's own min and max."""
    from sdfm.data import load_dataset

    x = load_dataset(info["data"]["spec"]).x
    if x.dtype == np.uint8:
        return 0.0, 255.0
    lo, hi = float(np.min(x)), float(np.max(x))
    return lo, hi if hi > lo else lo + 1.0


def write_png_folder(samples: np.ndarray, folder: Path, image_shape, value_range) -> list[Path]:
    """One 8-bit PNG per sample (``000000.png`` ...; grey for 1 channel, RGB for 3), each written
    atomically; values mapped from ``value_range`` to 0..255 and clipped."""
    from sdfm.extras import require

    Image = require("PIL.Image", "--format png-folder")  # noqa: N806 - the module's own name

    from sdfm.artifacts.atomic import atomic_write

    c, h, w = image_shape
    if c not in (1, 3):
        raise CliError(f"--format: png-folder writes 1- or 3-channel images, the run's have {c}")
    lo, hi = value_range
    pixels = np.clip(np.rint((samples.reshape(-1, c, h, w) - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, img in enumerate(pixels):
        image = Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0))
        path = folder / f"{i:06d}.png"
        atomic_write(path, lambda p, image=image: image.save(p, format="PNG"))
        written.append(path)
    return written
