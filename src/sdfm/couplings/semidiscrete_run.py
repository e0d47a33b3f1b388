"""The semidiscrete coupling of a training run (SD-FM): its potential loaded from a file (checked against
the data) or solved and saved in the run (per class for class-conditional runs, in the top principal
directions with ``pca``, for the augmented cost with continuous conditions), optionally with a FAISS
index over the fixed potential's keys. Registered as ``semidiscrete`` (:mod:`sdfm.couplings.registry`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdfm import parallel
from sdfm.couplings.registry import register_coupling
from sdfm.couplings.semidiscrete import SemidiscreteCoupling, augmented_coupling

POTENTIAL_FILE = "potential.safetensors"
INDEX_FILE = "index.safetensors"


@register_coupling(
    "semidiscrete",
    options=("eps", "potential", "pca", "search", "pairing_precision", "step_scales"),
    conditions=True,
)
def build_semidiscrete(spec, ctx):
    """(coupling, run.json entry) of a semidiscrete run; see the module docstring."""
    if ctx.conditions is not None:
        return _augmented(spec, ctx)
    labels = ctx.labels if spec.conditional else None
    if parallel.active() and spec.conditional:
        raise ValueError("torchrun: --conditional semidiscrete runs need one process (for now)")
    if ctx.stored is not None:  # resume: the run's own potential, whatever the spec says of eps
        path = Path(ctx.stored["potential"])
        potential = _load(spec, ctx, path if path.is_absolute() else ctx.run_dir / path, None, labels)
    elif spec.potential:
        if spec.step_scales is not None:
            raise ValueError(
                "--step-scales: only used when the run solves its potential, not with --potential"
            )
        potential = _load(spec, ctx, Path(spec.potential), spec.eps, labels)
    else:
        potential = _solve(spec, ctx, labels)
    g, eps_abs, weights, dups, name, projection = potential
    info = {"potential": name, "eps": eps_abs, "eps_relative": spec.eps or 0.0}
    if projection is not None:
        info["pca"] = projection.k
    lowp = spec.pairing_precision == "bf16"
    if lowp and eps_abs > 0:
        raise ValueError("--pairing-precision: bf16 scores are exact for eps = 0 only")
    if lowp and spec.conditional:
        raise ValueError("--pairing-precision: bf16 scores do not support --conditional pairing yet")
    if lowp and parallel.active():
        raise ValueError("--pairing-precision: bf16 scores need one process (for now)")
    kind = ctx.stored.get("search", "exact") if ctx.stored is not None else spec.search
    search = None
    if kind != "exact":
        if eps_abs > 0 or spec.conditional or lowp or parallel.active():
            raise ValueError("--search: a FAISS index pairs eps = 0, unconditional, one process only")
        search = _index(ctx, kind, g, projection)
        info["search"] = kind
    coupling = SemidiscreteCoupling(
        ctx.targets,
        g,
        eps=eps_abs,
        weights=weights,
        duplicates=dups,
        labels=ctx.labels,
        score_dtype=torch.bfloat16 if lowp else None,
        conditional=spec.conditional,
        projection=projection,
        collective=parallel.collective(),
        search=search,
    )
    return coupling, (ctx.stored if ctx.stored is not None else info)


def _load(spec, ctx, path: Path, eps, labels):
    """A potential file for these data, checked (fingerprint, classes, eps, PCA)."""
    from sdfm.artifacts import load_potential

    pf = load_potential(path)
    if pf.fingerprint == ctx.fingerprint_raw and ctx.fingerprint_raw != ctx.fingerprint_train:
        raise ValueError(
            f"--potential: {path} was solved for the data as given (sdfm solve --normalize none), but "
            "training uses normalised data; solve with the default --normalize standard, train with "
            "--normalize none, or omit --potential to solve in the run"
        )
    pf.check_targets(ctx.targets, fingerprint=ctx.fingerprint_train)
    if labels is not None and (pf.classes is None or not torch.equal(pf.classes, labels.cpu())):
        raise ValueError(
            f"--potential: {path} is not a class-conditional potential for these labels "
            "(omit --potential to solve one per class)"
        )
    if labels is None and pf.classes is not None:
        raise ValueError(f"--potential: {path} is class-conditional; pass --conditional")
    if eps is not None and abs(float(pf.meta.get("eps_relative", pf.eps)) - eps) > 1e-12:
        raise ValueError(f"--eps: {eps} differs from the potential's eps ({pf.meta.get('eps_relative')})")
    if spec.pca is not None and (pf.projection is None or pf.projection.k != spec.pca):
        raise ValueError(f"--pca: {path} was not solved in {spec.pca} principal directions")
    name = POTENTIAL_FILE if path == ctx.run_dir / POTENTIAL_FILE else str(path.resolve())
    return pf.potential, pf.eps, pf.weights, pf.duplicates, name, pf.projection


def _solve(spec, ctx, labels):
    """The potential solved for the run's data and saved in the run (rank 0 writes)."""
    from sdfm.artifacts import save_potential
    from sdfm.progress import solve_bar
    from sdfm.transport import PCAProjection, SemidiscreteSolver, solve_per_class

    out = ctx.run_dir / POTENTIAL_FILE
    main_rank = parallel.is_main()
    solver = SemidiscreteSolver(eps=spec.eps or 0.0, device=str(ctx.device), **_step_scales(spec))
    projection, keys = None, ctx.targets
    if spec.pca is not None:
        if spec.pca > ctx.targets.shape[1]:
            raise ValueError(f"--pca: {spec.pca} components for data of dimension {ctx.targets.shape[1]}")
        projection = PCAProjection.fit(ctx.targets, spec.pca)
        keys = projection.project_targets(ctx.targets)
    if main_rank:
        ctx.log(f"solving the semidiscrete potential for {ctx.data_name} -> {out}")
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)  # the same on every process
    with solve_bar(
        tol=solver.tol, num_targets=keys.shape[0], disable=not (ctx.progress and main_rank)
    ) as bar:
        if labels is not None:  # class-conditional: one sub-problem per class
            res = solve_per_class(solver, keys, labels, generator=gen, callback=bar)
        else:
            res = solver.solve(keys, generator=gen, callback=bar, collective=parallel.collective())
    if main_rank:
        save_potential(
            out,
            res,
            fingerprint=ctx.fingerprint_train,
            targets=ctx.targets,
            data_name=ctx.data_name,
            extra={"seed": ctx.seed},
            projection=projection,
        )
        ctx.log(f"potential chi2 {res.chi2:.4f} ± {res.chi2_stderr:.4f}, {res.seconds:.1f} s")
    parallel.barrier()
    return res.potential, res.eps, res.weights, res.duplicates, POTENTIAL_FILE, projection


def _index(ctx, kind: str, g, projection):
    """The run's FAISS index: loaded on resume (refused if built for another potential), else built
    over the pairing keys and saved in the run."""
    from sdfm.artifacts import load_index, save_index
    from sdfm.transport.search import FaissCells

    path = ctx.run_dir / INDEX_FILE
    keys = ctx.targets if projection is None else projection.project_targets(ctx.targets)
    if ctx.stored is not None:
        return load_index(path, g, shape=tuple(keys.shape), data_fingerprint=ctx.fingerprint_train)
    cells = FaissCells(keys, g, kind=kind, data_fingerprint=ctx.fingerprint_train)
    save_index(path, cells)
    return cells


def _augmented(spec, ctx):
    """Continuous conditions (super-resolution): the augmented potential, solved and saved in the run,
    or loaded from it on resume."""
    from sdfm.artifacts import load_potential, save_potential
    from sdfm.data import fingerprint
    from sdfm.transport import SemidiscreteSolver, augmented_keys

    if parallel.active():
        raise ValueError("torchrun: --superres runs need one process (for now)")
    task, z = ctx.task, ctx.conditions
    keys = augmented_keys(ctx.targets, z, task.beta)
    fp_keys = fingerprint(keys.cpu().numpy())
    path = ctx.run_dir / POTENTIAL_FILE
    if ctx.stored is not None:
        pf = load_potential(path)
        pf.check_targets(keys, fingerprint=fp_keys)
        coupling = SemidiscreteCoupling(
            ctx.targets,
            pf.potential,
            eps=pf.eps,
            weights=pf.weights,
            duplicates=pf.duplicates,
            conditions=z,
            beta=task.beta,
        )
        return coupling, ctx.stored
    ctx.log(f"solving the augmented potential (beta {task.beta:g}) -> {path}")
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    solver = SemidiscreteSolver(device=str(ctx.device), **_step_scales(spec))
    coupling, res = augmented_coupling(
        ctx.targets, z, task.beta, generator=gen, solver=solver, progress=ctx.progress
    )
    save_potential(
        path, res, fingerprint=fp_keys, targets=keys, data_name=ctx.data_name, extra={"seed": ctx.seed}
    )
    ctx.log(f"potential chi2 {res.chi2:.4f} ± {res.chi2_stderr:.4f}, {res.seconds:.1f} s")
    mismatch = res.settings.get("condition_mismatch")
    if mismatch:
        ctx.log(
            f"condition mismatch: {100 * mismatch['left']:.1f}% of pairs leave their condition "
            f"(mean |z0 - z_j| {mismatch['relative_distance']:.3f} of a random pair's)"
        )
    return coupling, {"potential": POTENTIAL_FILE, "eps": res.eps, "eps_relative": 0.0}


def _step_scales(spec) -> dict:
    """The solver option that ``--step-scales`` sets (none when it is not given: the solver's default)."""
    return {} if spec.step_scales is None else {"preconditioner": spec.step_scales}
