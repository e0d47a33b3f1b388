"""The ``sdfm`` command. Bad input gives a one-line error on stderr and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from sdfm.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_IO_ERROR,
    CliError,
    Terminated,
    _bytes,
    _nonneg_float,
    _Parser,
    _positive_int,
    add_image_options,
    check_writable_file,
    data_with_image_options,
    device_from,
    tensor_view,
)
from sdfm.extras import MissingExtra


# long: one add_argument per option of solve, index and info, a table rather than logic
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sdfm",
        description="Flow matching with semidiscrete optimal-transport couplings.",
    )
    from importlib.metadata import version

    parser.add_argument("--version", action="version", version=f"sdfm {version('sdfm')}")
    sub = parser.add_subparsers(dest="command", required=True)

    solve = sub.add_parser(
        "solve",
        help="fit the semidiscrete OT potential from Gaussian noise to a dataset",
        description=(
            "Fit the dual potential g of the semidiscrete OT problem from N(0, I) to the data "
            "and write it to a safetensors file. DATA is a built-in name (checkerboard, "
            "8gaussians, moons, spirals, gmm, digits, mnist1d; parameters as NAME:key=value,...), a "
            ".npy/.npz/.pt/.safetensors/.csv file holding [N, ...] or a folder of images."
        ),
    )
    solve.add_argument("--data", required=True, help="dataset name, tensor or .csv file, or image folder")
    add_image_options(solve)
    solve.add_argument("--out", required=True, help="output potential file (.safetensors)")
    solve.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="positive weights of the data points, one per row of --data (a .npy/.npz/.pt/.safetensors/"
        ".csv file holding [N]; normalised to sum 1; default uniform): e.g. k-means centres weighted "
        "by their cluster sizes",
    )
    solve.add_argument(
        "--eps",
        type=_nonneg_float,
        default=0.0,
        help="entropic regularisation, relative to the cost std (default 0)",
    )
    solve.add_argument(
        "--absolute-eps",
        action="store_true",
        help="read --eps in cost units instead of relative to the cost std",
    )
    solve.add_argument(
        "--steps", type=_positive_int, default=100_000, help="maximum number of steps (default 100000)"
    )
    solve.add_argument(
        "--max-seconds", type=_nonneg_float, default=None, help="time budget in seconds (default none)"
    )
    solve.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="noise samples per hard-phase step (default min(4096, max(256, 4 N)))",
    )
    solve.add_argument(
        "--tol",
        type=_nonneg_float,
        default=0.05,
        help="stop at this chi2 (default 0.05; 0 = run to --steps/--max-seconds)",
    )
    solve.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    solve.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu)")
    solve.add_argument(
        "--chunk-size", type=_positive_int, default=None, help="targets per score block (default automatic)"
    )
    solve.add_argument(
        "--pca",
        type=_positive_int,
        default=None,
        metavar="K",
        help="solve for the cost 1/2 |P x - P y|^2 in the data's top-K principal directions "
        "(the projection is stored with the potential)",
    )
    solve.add_argument(
        "--memory-limit",
        type=_bytes,
        default=1 << 30,
        help="bytes the solver may spend on its own copy of the targets (default 1GiB; larger "
        "targets, e.g. a memory-mapped .npy, are streamed chunk by chunk; 0 always streams)",
    )
    solve.add_argument(
        "--pairing-precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="scores of the hard phase and chi2 checks: fp32, or bf16/fp16 with exact float64 "
        "re-scoring (the same assignments; faster where low-precision matmuls are: GPUs, high d)",
    )
    solve.add_argument(
        "--pruning",
        choices=["auto", "on", "off"],
        default="auto",
        help="exact argmax through k-means cluster bounds that skip most targets: auto (default: tried "
        "from 20,000 targets on CPU, kept while its estimated cost is below 0.8 of the dense scan's: "
        "low-dimensional data at large N), on, "
        "off (score every target). The same pairs either way",
    )
    solve.add_argument(
        "--step-scales",
        choices=["adaptive", "cell"],
        default="adaptive",
        help="the per-cell step scales: adaptive (default: scales that follow each cell, coarse moves "
        "bounded in x), or cell (the default before BENCHMARKS.md section 24: 1.2-4x more samples on "
        "2-D and 3-D data, does not finish tight or tiny far clusters)",
    )
    solve.add_argument(
        "--warm-start",
        choices=["best", "zero", "radial", "lifted"],
        default="best",
        help="the first potential: best (default: h = 0 or the radial start, whichever a probe batch "
        "counts closer to the weights; the radial start solves heavy-tailed 2-D data; on large "
        "high-dimensional data h = 0 or the lifted start), zero (the default before BENCHMARKS.md "
        "section 25: better for a tiny far cluster), radial, or lifted (a solve on N / 100 k-means "
        "clusters, 256 to 1,024, lifted to the atoms by each coarse cell's Gaussian map; sections 34, 36)",
    )
    solve.add_argument(
        "--normalize",
        choices=["standard", "none"],
        default="standard",
        help="standard (default, as sdfm train): solve for the data minus its mean, divided by one global "
        "scale (stored with the potential), so that `sdfm train --potential` takes the file; none: the "
        "data as given. Above --memory-limit the normalised copy is a temporary memory-mapped file beside "
        "--out, streamed like the data as given",
    )
    solve.add_argument("--quiet", action="store_true", help="no progress bar")
    solve.add_argument(
        "--save-on-interrupt",
        action="store_true",
        help="on Ctrl-C / SIGTERM, measure the potential so far and save it as OUT_STEM.interrupted"
        ".safetensors (its chi2 in the metadata); without it an interrupted solve writes nothing",
    )

    from sdfm.cli.train_cmd import add_train_parser

    add_train_parser(sub, _positive_int, _nonneg_float)
    from sdfm.cli.eval_cmd import add_eval_parser

    add_eval_parser(sub, _positive_int)

    index = sub.add_parser(
        "index",
        help="build a FAISS index over a fixed potential, measure its recall and chi2, save it",
        description=(
            "Build a FAISS index (sdfm[faiss]) over the keys of a potential solved by sdfm solve for "
            "DATA, measure on fresh noise its recall against exact pairing and the chi2 of the "
            "coupling it induces, and write it (tied to the potential by fingerprint)."
        ),
    )
    index.add_argument("--data", required=True, help="the data the potential was solved for")
    add_image_options(index)
    index.add_argument("--potential", required=True, help="potential file (.safetensors)")
    index.add_argument("--out", required=True, help="output index file (.safetensors)")
    index.add_argument("--kind", choices=["flat", "ivf", "hnsw"], default="ivf", help="index (default ivf)")
    index.add_argument("--nlist", type=_positive_int, default=None, help="IVF lists (default ~4 sqrt(N))")
    index.add_argument("--nprobe", type=_positive_int, default=None, help="IVF lists searched per query")
    index.add_argument(
        "--ef-search", type=_positive_int, default=128, help="HNSW search breadth (default 128)"
    )
    index.add_argument(
        "--check", type=int, default=65536, help="noise samples for recall and chi2 (default 65536; 0: skip)"
    )
    index.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    info = sub.add_parser("info", help="print the metadata of a potential file")
    info.add_argument("path", help="potential file (.safetensors)")
    for command in sub.choices.values():
        command.add_argument(
            "--threads",
            type=_positive_int,
            default=None,
            help="CPU threads for torch (default: what torch picks, one per core); on a shared or busy "
            "machine set it to the cores you may use (an oversubscribed pool can run several times slower)",
        )
    return parser


def _solver_from_args(args, device):
    """The :class:`~sdfm.transport.SemidiscreteSolver` of ``sdfm solve`` options."""
    from sdfm.transport import SemidiscreteSolver

    max_seconds = args.max_seconds if args.max_seconds else None
    return SemidiscreteSolver(
        eps=args.eps,
        relative_eps=not args.absolute_eps,
        tol=args.tol if args.tol > 0 else None,
        max_steps=args.steps,
        max_seconds=max_seconds,
        batch_size=args.batch_size,
        device=str(device),
        chunk_size=args.chunk_size,
        memory_limit=args.memory_limit,
        score_dtype={"fp32": None, "bf16": "bfloat16", "fp16": "float16"}[args.pairing_precision],
        pruning=args.pruning,
        preconditioner=args.step_scales,
        warm_start=args.warm_start,
    )


def _print_solve(result, args, out, n: int) -> None:
    """The last lines of ``sdfm solve``: chi2, work done, the worst smooth mass error."""
    status = "converged" if result.converged else "NOT converged"
    print(
        f"chi2 {result.chi2:.4f} ± {result.chi2_stderr:.4f} ({status}, tol {args.tol}), "
        f"eps {result.eps:.4g}, {result.samples} samples ({result.samples / n:.0f} per target), "
        f"{result.steps} steps, {result.seconds:.1f} s -> {out}"
    )
    used = result.settings.get("pruning_used") or {}
    if used.get("pruned_calls"):
        print(
            f"pruned search: {used['pruned_calls']} of {used['pruned_calls'] + used['dense_calls']} argmax "
            f"calls, the last scored {100 * used['last_fraction_scored']:.1f}% of the targets"
        )
    if result.duplicates is not None:
        radius = result.settings.get("merge_radius", 0.0)
        print(
            f"{result.duplicates.num_duplicates} targets merged with another as duplicates (exact copies, "
            f"or closer than {radius:.2g}, the scores' resolution): their pairs are split at random"
        )
    switched = result.settings.get("float64_from_step")
    if switched is not None:
        print(
            f"float64 scores from step {switched}: the float32 scores' own counts understated the exact "
            "chi2 (near ties in many rows)"
        )
    tight_used = result.settings.get("tight_start_used")
    if tight_used:
        print(
            f"tight groups: started from a solve with {tight_used['merged_atoms']} close targets merged "
            f"into their groups ({tight_used['samples']} of the samples)"
        )
    dim = result.settings.get("intrinsic_dimension")
    if dim is not None:
        what = "ran" if result.settings.get("annealed") else "skipped (large, high-dimensional atoms)"
        print(f"intrinsic dimension of the targets {dim:.1f} (TwoNN): annealing {what}")
    if result.smooth_errors:
        worst = max(result.smooth_errors, key=lambda e: e.ratio)
        print(
            f"worst smooth mass error: {worst.family} group {worst.group} {100 * worst.relative_error:+.2f}% "
            f"({worst.ratio:.1f}x its floor {100 * worst.floor:.2f}%; all: sdfm info {out})"
        )


def _solve_data(args, scratch):
    """The dataset, its normalisation and the array ``sdfm solve`` solves for. ``--normalize none``:
    the data as given, in their own dtype, still memory-mapped. standard: float32 in the training
    units, in memory when that copy fits in ``--memory-limit``, else written block by block to a
    memory-mapped file in the folder ``scratch`` (so the solver streams it, as it streams the data as
    given, and the memory bound holds)."""
    import numpy as np

    from sdfm.data import load_dataset
    from sdfm.data.normalize import Normalization

    dataset = load_dataset(args.data)
    norm = Normalization.fit(dataset.x, args.normalize)
    if args.normalize == "none":
        return dataset, norm, np.ascontiguousarray(dataset.x)
    n, d = dataset.x.shape
    if n * d * 4 <= args.memory_limit:
        return dataset, norm, norm.apply(dataset.x)
    path = Path(scratch) / "normalised.npy"
    copy = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rows = max(1, (64 << 20) // max(1, 8 * d))  # blocks of about 64 MiB of float64 work
    for start in range(0, n, rows):
        copy[start : start + rows] = norm.apply(dataset.x[start : start + rows])
    copy.flush()
    del copy
    return dataset, norm, np.load(path, mmap_mode="r")


def _solve_weights(path, n: int):
    """The weights [N] of ``sdfm solve --weights FILE`` (float64, positive, finite), or None."""
    if path is None:
        return None
    import torch

    from sdfm.data.files import load_array
    from sdfm.transport import validate

    try:
        w, _ = load_array(path, mmap=False)
        if w.shape[1] != 1:
            raise ValueError(f"expected one weight per data point ([{n}] or [{n}, 1]), got shape {w.shape}")
        return validate.as_weights(torch.from_numpy(w.reshape(-1).astype("float64")), n, name="--weights")
    except ValueError as exc:
        message = str(exc).removeprefix("data: ")
        raise CliError(message if message.startswith("--weights") else f"--weights: {message}") from exc


def cmd_solve(args) -> int:
    import tempfile

    from sdfm import parallel

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CliError(f"--out: expected a .safetensors path, got {args.out}")
    check_writable_file(out, "--out")
    device = parallel.init_from_env(device_from(args.device))
    # (beside --out: the disk the user chose for the results; removed on exit and on Ctrl-C)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".sdfm-solve-") as scratch:
        return _solve_to(args, out, device, *_solve_data(args, scratch))


def _print_solve_header(args, out, name: str, shape, weights, projection) -> None:
    """The first line of ``sdfm solve``: the data, their units, weights, PCA and processes."""
    from sdfm import parallel

    n, d = shape
    world = parallel.world_size()
    pca = (
        "" if projection is None else f", PCA {args.pca} ({100 * projection.explained:.1f}% of the variance)"
    )
    procs = "" if world == 1 else f", {world} processes"
    units = "as given" if args.normalize == "none" else "normalised as sdfm train does"
    weighted = ""
    if weights is not None:
        low, high = float(weights.min()) * n, float(weights.max()) * n
        weighted = f", weights from {args.weights} ({low:.2g} to {high:.2g} / N)"
    print(f"sdfm solve: {name} [{n}, {d}] ({units}){weighted}{pca}{procs} -> {out}", file=sys.stderr)


def _solve_to(args, out, device, dataset, norm, data) -> int:
    """The solve of ``sdfm solve`` on prepared ``data``, saved to ``out`` (see cmd_solve)."""
    import torch

    from sdfm import parallel
    from sdfm.artifacts import save_potential
    from sdfm.data import fingerprint
    from sdfm.progress import solve_bar
    from sdfm.transport import PCAProjection

    main_rank = parallel.is_main()
    targets = tensor_view(data)
    projection = None
    keys = targets
    if args.pca is not None:
        if args.pca > data.shape[1]:
            raise CliError(f"--pca: {args.pca} components for data of dimension {data.shape[1]}")
        projection = PCAProjection.fit(targets, args.pca, device=device)
        keys = projection.project_targets(targets)
    if args.pairing_precision != "fp32" and (args.eps > 0 or parallel.world_size() > 1):
        raise CliError(
            f"--pairing-precision: {args.pairing_precision} scores are exact for --eps 0 in one process only"
        )
    solver = _solver_from_args(args, device)
    n, d = data.shape
    weights = _solve_weights(args.weights, n)
    if main_rank:
        _print_solve_header(args, out, dataset.name, (n, d), weights, projection)
    # the same seed on every process: they score the same noise against their own shards
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with solve_bar(tol=solver.tol, num_targets=n, disable=args.quiet or not main_rank) as bar:
        result = solver.solve(
            keys,
            weights,
            generator=generator,
            callback=bar,
            collective=parallel.collective(),
            stop_on_interrupt=args.save_on_interrupt,
        )
    interrupted = bool(result.settings.get("interrupted"))
    if interrupted:
        out = out.with_name(out.stem + ".interrupted.safetensors")
    if main_rank:
        save_potential(
            out,
            result,
            fingerprint=fingerprint(data),
            targets=targets,
            data_name=args.data,
            extra={"seed": args.seed, "normalization": norm.to_dict()},
            projection=projection,
        )
    parallel.barrier()
    if interrupted:
        if main_rank:
            print(
                f"sdfm solve: interrupted after {result.steps} steps; the potential so far (chi2 "
                f"{result.chi2:.4f} ± {result.chi2_stderr:.4f}) -> {out}",
                file=sys.stderr,
            )
        raise Terminated if result.settings["interrupted"] == Terminated.__name__ else KeyboardInterrupt
    if not main_rank:
        return 0
    _print_solve(result, args, out, n)
    return 0


def cmd_index(args) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from sdfm.artifacts import load_potential, save_index
    from sdfm.data import load_dataset
    from sdfm.data.normalize import Normalization
    from sdfm.transport import LaguerreCells
    from sdfm.transport.search import FaissCells, search_quality

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CliError(f"--out: expected a .safetensors path, got {args.out}")
    check_writable_file(out, "--out")
    dataset = load_dataset(args.data)
    pf = load_potential(args.potential)
    stored = pf.meta.get("normalization")  # the units the potential was solved in (sdfm solve)
    x = dataset.x
    if stored is not None and stored.get("mode") != "none":
        x = Normalization.from_dict(stored, dim=x.shape[1]).apply(x)
    targets = tensor_view(np.ascontiguousarray(x))
    pf = load_potential(args.potential, targets=targets)
    if pf.eps > 0 or pf.classes is not None:
        raise CliError("--potential: a FAISS index pairs eps = 0, unconditional potentials only")
    keys = targets if pf.projection is None else pf.projection.project_targets(targets)
    try:
        search = FaissCells(
            keys,
            pf.potential,
            kind=args.kind,
            nlist=args.nlist,
            nprobe=args.nprobe,
            ef_search=args.ef_search,
            data_fingerprint=pf.fingerprint,
            seed=args.seed,
        )
    except ImportError as exc:
        raise CliError(str(exc)) from None
    print(
        f"sdfm index: {args.kind} {search.params} over [{keys.shape[0]}, {keys.shape[1]}] keys",
        file=sys.stderr,
    )
    if args.check > 0:
        if args.check < 2:
            raise CliError(f"--check: expected 0 (skip) or at least 2 noise samples, got {args.check}")
        cells = LaguerreCells(keys, pf.potential, weights=pf.weights)
        q = search_quality(
            search, cells, samples=args.check, generator=torch.Generator().manual_seed(args.seed)
        )
        print(
            f"recall {q['recall']:.4f} on {args.check} noise samples; chi2 {q['chi2_search']:.4f} "
            f"± {q['chi2_search_stderr']:.4f} (exact pairing: {q['chi2_exact']:.4f} "
            f"± {q['chi2_exact_stderr']:.4f})"
        )
    save_index(out, search)
    print(f"-> {out}")
    return 0


def cmd_info(args) -> int:
    import json

    from sdfm.artifacts import load_potential

    pf = load_potential(args.path)
    shown = dict(pf.meta)
    if pf.weights is not None:  # a tensor of the file, summarised (uniform weights are not stored)
        n = int(pf.weights.shape[0])
        w = pf.weights / pf.weights.sum()
        shown["weights"] = {"min_times_n": float(w.min()) * n, "max_times_n": float(w.max()) * n}
    print(json.dumps(shown, indent=2, sort_keys=True))
    return 0


def set_threads(n: int) -> None:
    """torch's intra-op threads (and inter-op threads when not yet started)."""
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(n)


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from sdfm.cli.train_cmd import apply_config

        train_parser = parser._subparsers._group_actions[0].choices["train"]
        try:
            args = apply_config(parser, train_parser, argv)
        except CliError as exc:
            print(f"sdfm train: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_BAD_INPUT
    from sdfm.cli.eval_cmd import cmd_demo, cmd_eval
    from sdfm.cli.train_cmd import cmd_sample, cmd_train

    handlers = {
        "solve": cmd_solve,
        "info": cmd_info,
        "index": cmd_index,
        "train": cmd_train,
        "sample": cmd_sample,
        "eval": cmd_eval,
        "demo": cmd_demo,
    }
    previous = None
    with contextlib.suppress(ValueError):  # (only the main thread may install handlers)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    name = f"sdfm {args.command}"
    if args.threads is not None:
        set_threads(args.threads)
    try:
        if getattr(args, "image_size", None) is not None or getattr(args, "channels", None) is not None:
            if args.data is None:
                raise CliError("--image-size/--channels: apply to an image folder given with --data")
            args.data = data_with_image_options(args.data, args.image_size, args.channels)
        return handlers[args.command](args)
    except (CliError, ValueError, MissingExtra) as exc:
        message = " ".join(str(exc).split())
        print(f"{name}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the file system refused (disk full, permissions, ...): one line, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{name}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_IO_ERROR
    except KeyboardInterrupt as exc:
        signal_name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("interrupt", 130)
        print(
            f"{name}: stopped by {signal_name}; every file written is complete (no partial file was left)",
            file=sys.stderr,
        )
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
