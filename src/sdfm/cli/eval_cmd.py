"""``sdfm eval`` and ``sdfm demo``."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sdfm.cli.common import CliError, add_image_options, check_writable_folder, device_from


def _step_list(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        ) from None
    if not steps or any(s < 1 for s in steps):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return steps


# long: one add_argument per option of eval and demo, a table rather than logic
def add_eval_parser(sub, positive_int) -> None:
    e = sub.add_parser(
        "eval",
        help="score a trained run at several step budgets against held-out data",
        description=(
            "Integrate the same noise with a fixed-step solver at each step count (and dopri5 with "
            "--adaptive) and compare the samples with held-out data: exact W2, energy distance, "
            "RBF-MMD, and for labelled data the Frechet distance in the features of a classifier "
            "trained on the real training data (cached in the run; not FID). Also the curvature "
            "and transport cost of the flow. Writes RUN_DIR/eval/{metrics.json, report.md, "
            "samples.png, metrics_vs_nfe.png, trajectories.png}."
        ),
    )
    e.add_argument("--run", required=True, help="run folder written by sdfm train")
    e.add_argument(
        "--steps", type=_step_list, default=(1, 2, 4, 8, 16), help="step counts (default 1,2,4,8,16)"
    )
    e.add_argument(
        "--solver",
        choices=["euler", "midpoint", "heun", "rk4", "meanflow"],
        default=None,
        help="fixed-step sampler (default: meanflow for mean-flow runs, euler otherwise)",
    )
    e.add_argument("--adaptive", action="store_true", help="also evaluate dopri5 (rtol = atol = 1e-5)")
    e.add_argument("--num", type=positive_int, default=2000, help="samples per setting (default 2000)")
    e.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    e.add_argument(
        "--reference", default=None, help="held-out data (default: the built-in test split of the run's data)"
    )
    e.add_argument(
        "--fid-weights",
        default=None,
        help="local Inception-v3 FID weights: adds real FID (image runs; sdfm[fid])",
    )
    e.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    e.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval)")
    e.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser(
        "demo",
        help="train I-FM, OT-FM and SD-FM under one budget and write a comparison report",
        description=(
            "Solve the semidiscrete potential, train I-FM, OT-FM (exact, batches of 256) and SD-FM "
            "with the same network, steps, batch and seed, evaluate each at 1, 2, 4, 8, 16 Euler "
            "steps and dopri5 against held-out data, and write DIR/report.md: a three-line verdict, "
            "tables and pictures. By default the numbers come from a 16-d Gaussian mixture (where "
            "batch OT degrades) and the pictures from the 2-D checkerboard (DIR/checkerboard/). An "
            "interrupted demo started again on the same folder resumes its finished methods."
        ),
    )
    d.add_argument(
        "--data",
        default=None,
        help="run the demo on one data set instead: a built-in name (checkerboard, gmm, digits, mnist1d, "
        "...), a tensor or .csv file, or an image folder (default: gmm:d=16,k=8 for the numbers and "
        "checkerboard for the pictures)",
    )
    add_image_options(d)
    d.add_argument(
        "--reference",
        default=None,
        help="held-out data for --data (default: the built-in test split; for a file, a fixed 10%% of it)",
    )
    d.add_argument(
        "--budget",
        choices=["tiny", "quick", "full"],
        default="quick",
        help="quick (default): 3000 training steps per method (1000 for the 2-D pictures), about 4 min for "
        "the default demo on 2 CPU cores; full: 10x the steps and more samples; tiny: a smoke test",
    )
    d.add_argument(
        "--objective",
        choices=["flow", "meanflow"],
        default="flow",
        help="flow (I-FM / OT-FM / SD-FM, default) or meanflow (I-MF / OT-MF / SD-MF one-step models)",
    )
    d.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional models (labelled data: digits, mnist1d, gmm), paired within classes",
    )
    d.add_argument("--out", default="demo", help="output folder (default ./demo)")
    d.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier demo in --out (an unfinished one is resumed without it)",
    )
    d.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")


def _require_cli_extra(command: str) -> None:
    """Fails before any work when the metrics and pictures of ``command`` cannot be made."""
    from sdfm.extras import require

    require("ot", f"{command} (exact W2)")
    require("matplotlib", f"{command} (pictures)")


def cmd_eval(args) -> int:
    from sdfm.evaluation import EvalConfig, evaluate_run

    _require_cli_extra("sdfm eval")
    device = device_from(args.device)
    if args.fid_weights is not None and not Path(args.fid_weights).is_file():
        raise CliError(f"--fid-weights: {args.fid_weights} is not a file (sdfm never downloads weights)")
    if args.fid_weights is not None:
        from sdfm.metrics.fid import fid_metric_class

        try:
            fid_metric_class()
        except RuntimeError as exc:
            raise CliError(f"--fid-weights: {exc}") from None
    from sdfm.train import read_run

    try:
        info = read_run(args.run)
    except ValueError as exc:
        raise CliError(f"--run: {exc}") from None
    out = Path(args.run) / "eval" if args.out is None else Path(args.out)
    check_writable_folder(out, "--run" if args.out is None else "--out")
    if info["coupling"].get("superres"):
        return _eval_superres(args, device, out)
    config = EvalConfig(
        steps=args.steps, solver=args.solver, adaptive=args.adaptive, num=args.num, seed=args.seed
    )
    result = evaluate_run(
        args.run,
        config,
        reference=args.reference,
        device=device,
        ema=not args.no_ema,
        progress=not args.quiet,
        fid_weights=args.fid_weights,
        out=out,
    )
    keys = [k for k in ("w2", "energy", "fd_classifier", "fid") if k in result.rows[-1]]
    print("setting    NFE  " + "  ".join(f"{k:>13}" for k in keys))
    for row in result.rows:
        print(f"{row['setting']:<9} {row['nfe']:>4}  " + "  ".join(f"{row[k]:>13.5g}" for k in keys))
    print(
        f"curvature {result.path['curvature']:.4g}, transport cost {result.path['transport_cost']:.4g}"
        f" -> {out}/report.md"
    )
    return 0


def _eval_superres(args, device, out: Path) -> int:
    from sdfm.evaluation.superres import evaluate_superres_run

    if args.adaptive or args.fid_weights:
        raise CliError("--adaptive/--fid-weights: not available for super-resolution runs (PSNR only)")
    result = evaluate_superres_run(
        args.run,
        steps=args.steps,
        solver=args.solver,
        seed=args.seed,
        reference=args.reference,
        device=device,
        ema=not args.no_ema,
        out=out,
    )
    print("setting    NFE   PSNR (dB)")
    for row in result["rows"]:
        print(f"{row['setting']:<9} {row['nfe']:>4}  {row['psnr']:>9.3f}")
    print(f"upsampled condition: {result['upsampled_psnr']:.3f} dB -> {out}/report.md")
    return 0


def cmd_demo(args) -> int:
    from sdfm.train import RunLock

    _require_cli_extra("sdfm demo")
    out = Path(args.out)
    check_writable_folder(out, "--out")
    with RunLock(out):  # a second demo on the same folder is refused, not interleaved
        return _demo_locked(args, out)


def _demo_locked(args, out: Path) -> int:
    from sdfm.evaluation.demo import OUTPUTS, run_demo

    if args.reference is not None and args.data is None:
        raise CliError("--reference: the held-out data of --data (the default demo has its own)")
    if (out / "report.md").exists() and not args.overwrite:
        raise CliError(
            f"--out: {out} already holds a finished demo; pass --overwrite to replace it or choose another "
            "folder"
        )
    if args.overwrite:
        for name in OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    elif (out / "runs").exists():
        print(
            f"sdfm demo: resuming the unfinished demo in {out} (finished methods are kept)", file=sys.stderr
        )
    device = device_from(args.device)
    log = (lambda *a, **k: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        report = run_demo(
            args.data,
            args.budget,
            out,
            reference=args.reference,
            seed=args.seed,
            device=device,
            progress=not args.quiet,
            log=log,
            objective=args.objective,
            conditional=args.conditional,
        )
    except ValueError as exc:
        if str(exc).startswith("conditional:"):
            raise CliError(f"--{exc}") from None
        raise
    print(f"report -> {report}")
    return 0
