"""Training several couplings under one budget and comparing them: ``sdfm demo`` and the quality
benchmark.

Every method gets the same network (same initial weights), steps, batch size, learning rate and
seeds; only the coupling differs. The semidiscrete potential is solved once per (data, eps, seed)
and saved in each SD-FM run, so every run folder can be re-evaluated with ``sdfm eval``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdfm.evaluation.evaluate import CLASSIFIER_FILE, ClassifierScorer, cached_scorer, evaluate_model
from sdfm.evaluation.results import EvalConfig, EvalResult


@dataclass(frozen=True)
class Method:
    """A coupling to compare: ``coupling`` is independent | minibatch-ot | semidiscrete; ``eps`` is the
    relative eps of the semidiscrete potential; ``ot_batch_size`` the exact OT batch (None = the
    training batch); ``objective`` flow | meanflow; ``conditional``: a class-conditional model, paired
    within classes (label dropout ``label_dropout``)."""

    name: str
    coupling: str
    eps: float = 0.0
    ot_batch_size: int | None = 256
    objective: str = "flow"
    conditional: bool = False
    label_dropout: float = 0.1

    def __post_init__(self):
        if self.coupling not in ("independent", "minibatch-ot", "semidiscrete"):
            raise ValueError(
                f"coupling: expected independent, minibatch-ot or semidiscrete, got {self.coupling!r}"
            )
        if self.objective not in ("flow", "meanflow"):
            raise ValueError(f"objective: expected flow or meanflow, got {self.objective!r}")

    @property
    def slug(self) -> str:
        return self.name.lower().replace(" ", "-").replace("=", "").replace(".", "")


#: the three methods of ``sdfm demo``: I-FM, OT-FM (exact, n = 256), SD-FM (eps = 0)
DEMO_METHODS = (
    Method("I-FM", "independent"),
    Method("OT-FM", "minibatch-ot"),
    Method("SD-FM", "semidiscrete"),
)


def demo_methods(objective: str = "flow", conditional: bool = False) -> tuple[Method, ...]:
    """The demo's three couplings for an objective: I-FM / OT-FM / SD-FM, or I-MF / OT-MF / SD-MF for
    mean flows; class-conditional (pairing within classes) when ``conditional``."""
    tag = "MF" if objective == "meanflow" else "FM"
    return tuple(
        Method(
            m.name.replace("FM", tag),
            m.coupling,
            objective=objective,
            conditional=conditional,
        )
        for m in DEMO_METHODS
    )


@dataclass(frozen=True)
class Budget:
    """Training and evaluation sizes of a comparison."""

    steps: int
    batch_size: int = 256
    hidden: int = 256
    depth: int = 4
    lr: float = 1e-3
    num: int = 2000
    path_num: int = 500
    eval_steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    adaptive: bool = True
    solver_seconds: float | None = 120.0
    solver_steps: int = 100_000
    checkpoint_every: int = 0


#: quick: <= 5 minutes on 2 CPU cores for the 2-D default; full: ~10x the training
BUDGETS = {
    # tiny caps the solve by steps, not seconds, so that it is repeatable on a busy machine
    "tiny": Budget(
        steps=30,
        hidden=32,
        depth=1,
        num=128,
        path_num=32,
        eval_steps=(1, 2),
        solver_seconds=None,
        solver_steps=40,
    ),
    "quick": Budget(steps=3000),
    "full": Budget(steps=30000, num=5000, path_num=1000, solver_seconds=600.0),
}


@dataclass
class Prepared:
    """A dataset ready for training: normalised [N, d] targets and held-out reference."""

    spec: str
    dataset: object
    normalization: object
    train: np.ndarray
    reference: np.ndarray
    reference_labels: np.ndarray | None
    reference_name: str
    fingerprint_raw: str
    fingerprint_train: str


def prepare(spec: str, *, reference: str | None = None) -> Prepared:
    """Loads ``spec``, fits the normalisation, and loads the held-out reference (``split=test``)."""
    from sdfm.data import fingerprint, heldout_spec, load_dataset
    from sdfm.data.normalize import Normalization

    dataset = load_dataset(spec)
    norm = Normalization.fit(dataset.x, "standard")
    train = norm.apply(dataset.x)
    ref_spec = reference or heldout_spec(spec)
    if ref_spec is None:
        raise ValueError(f"data: {spec!r} has no held-out split; pass a reference dataset")
    ref = load_dataset(ref_spec)
    return Prepared(
        spec=spec,
        dataset=dataset,
        normalization=norm,
        train=train,
        reference=norm.apply(ref.x),
        reference_labels=ref.labels,
        reference_name=ref_spec,
        fingerprint_raw=fingerprint(np.ascontiguousarray(dataset.x)),
        fingerprint_train=fingerprint(train),
    )


def solve_potential(
    prep: Prepared,
    *,
    eps: float,
    seed: int,
    budget: Budget,
    device,
    progress: bool = False,
    conditional: bool = False,
):
    """The semidiscrete potential for the normalised data (default solver, tol 0.05, time cap); per
    class (:func:`sdfm.transport.solve_per_class`, the time cap per class) when ``conditional``."""
    from sdfm.progress import solve_bar
    from sdfm.transport import SemidiscreteSolver, solve_per_class

    targets = torch.from_numpy(prep.train).to(device)
    solver = SemidiscreteSolver(
        eps=eps, device=str(device), max_seconds=budget.solver_seconds, max_steps=budget.solver_steps
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    if conditional and prep.dataset.labels is None:
        raise ValueError(f"conditional: {prep.spec} has no labels")
    with solve_bar(tol=solver.tol, num_targets=targets.shape[0], disable=not progress) as bar:
        if conditional:
            labels = torch.from_numpy(prep.dataset.labels)
            return solve_per_class(solver, targets, labels, generator=generator, callback=bar)
        return solver.solve(targets, generator=generator, callback=bar)


def train_method(
    method: Method,
    prep: Prepared,
    run_dir: str | Path,
    *,
    budget: Budget,
    seed: int,
    device,
    potential=None,
    progress: bool = False,
):
    """Trains one method into ``run_dir`` (a run folder ``sdfm eval`` / ``sdfm sample`` can read) with
    the run recipe :func:`sdfm.train.fit`; ``potential`` is the solver result for semidiscrete methods
    (solved once for all of them, saved in the run and loaded by the recipe). Returns the TrainResult."""
    from sdfm.artifacts import save_potential
    from sdfm.train import RunSpec, TrainConfig, fit

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if method.conditional and prep.dataset.labels is None:
        raise ValueError(f"method: {method.name} is conditional but {prep.spec} has no labels")
    potential_file = None
    if method.coupling == "semidiscrete":
        if potential is None:
            raise ValueError(f"potential: method {method.name} is semidiscrete and needs a solved potential")
        potential_file = run_dir / "potential.safetensors"
        save_potential(
            potential_file,
            potential,
            fingerprint=prep.fingerprint_train,
            targets=torch.from_numpy(prep.train),
            data_name=prep.spec,
            extra={"seed": seed},
        )
    config = TrainConfig(
        steps=budget.steps,
        batch_size=budget.batch_size,
        lr=budget.lr,
        seed=seed,
        checkpoint_every=budget.checkpoint_every,
    )
    spec = RunSpec(
        data=prep.spec,
        coupling=method.coupling,
        width=budget.hidden,
        depth=budget.depth,
        objective=method.objective,
        conditional=method.conditional,
        label_dropout=method.label_dropout if method.conditional else None,
        potential=None if potential_file is None else str(potential_file),
        ot_batch_size=(method.ot_batch_size or budget.batch_size)
        if method.coupling == "minibatch-ot"
        else None,
        train=config,
        device=str(device),
    )
    with torch.random.fork_rng(devices=[]):  # the same initial weights for every method
        return fit(spec, run_dir, progress=progress, log=lambda message: None)


def scorer_for(prep: Prepared, cache: Path | None, *, seed: int = 0) -> ClassifierScorer | None:
    """The classifier for labelled data, trained once on the normalised training data (cached)."""
    return cached_scorer(
        cache,
        prep.fingerprint_train,
        train=prep.train,
        labels=prep.dataset.labels,
        name=prep.dataset.name,
        image_shape=prep.dataset.image_shape,
        reference=prep.reference,
        ref_labels=prep.reference_labels,
        seed=seed,
    )


@dataclass
class Comparison:
    """Results of one comparison: per method the evaluation, plus solver results and timings."""

    results: dict[str, EvalResult]
    potentials: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    prepared: Prepared | None = None
    scorer: ClassifierScorer | None = None


def compare(
    prep: Prepared,
    out: str | Path,
    *,
    methods=DEMO_METHODS,
    budget: Budget = BUDGETS["quick"],
    seed: int = 0,
    device="cpu",
    scorer: ClassifierScorer | None = None,
    progress: bool = False,
    log=print,
) -> Comparison:
    """Solves the potentials, trains each method into ``out/runs/<slug>`` and evaluates it."""
    out = Path(out)
    device = torch.device(device)
    cmp = Comparison(results={}, prepared=prep, scorer=scorer)
    config = EvalConfig(
        steps=budget.eval_steps, adaptive=budget.adaptive, num=budget.num, path_num=budget.path_num, seed=seed
    )
    for method in methods:
        t0 = time.perf_counter()
        potential = None
        if method.coupling == "semidiscrete":
            key = (method.eps, method.conditional)
            if key not in cmp.potentials:
                cmp.potentials[key] = solve_potential(
                    prep,
                    eps=method.eps,
                    seed=seed,
                    budget=budget,
                    device=device,
                    progress=progress,
                    conditional=method.conditional,
                )
                res = cmp.potentials[key]
                log(
                    f"  potential eps={method.eps}{' per class' if method.conditional else ''}: chi2 "
                    f"{res.chi2:.4f} ± {res.chi2_stderr:.4f} in {res.seconds:.1f} s"
                )
            potential = cmp.potentials[key]
        t1 = time.perf_counter()
        run_dir = out / "runs" / method.slug
        result = train_method(
            method,
            prep,
            run_dir,
            budget=budget,
            seed=seed,
            device=device,
            potential=potential,
            progress=progress,
        )
        t2 = time.perf_counter()
        num_classes = int(prep.dataset.num_classes) if method.conditional else None
        ev = evaluate_model(
            result.ema,
            prep.reference,
            config=config,
            scorer=scorer,
            train_data=prep.train,
            num_classes=num_classes,
        )
        t3 = time.perf_counter()
        ev.info.update(method=method.name, run=str(run_dir), steps=budget.steps, seed=seed)
        cmp.results[method.name] = ev
        cmp.timings[method.name] = {"solve_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2}
        best = min((r for r in ev.rows if r["setting"] != "data"), key=lambda r: r["nfe"])
        log(
            f"  {method.name}: trained {budget.steps} steps in {t2 - t1:.1f} s;"
            f" {best['setting']} W2 {best['w2']:.4f}"
        )
    return cmp


def run_demo(
    data: str = "checkerboard",
    budget: str | Budget = "quick",
    out: str | Path = "demo",
    *,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
    log=print,
    objective: str = "flow",
    conditional: bool = False,
) -> Path:
    """``sdfm demo``: I-FM, OT-FM (exact, n = 256) and SD-FM on ``data`` with one budget; writes
    ``out/report.md`` with metric tables, metric-vs-NFE curves, samples, trajectories and the
    solver's chi2 curve (``out/chi2.png``), and the runs in ``out/runs/``. Returns the report path.

    ``objective="meanflow"`` trains mean-flow models (I-MF / OT-MF / SD-MF, sampled by mean-flow
    jumps); ``conditional`` class-conditional ones (pairs within classes; accuracy given the label)."""
    from sdfm.evaluation.plots import plot_chi2
    from sdfm.evaluation.report import write_report

    name, budget = _budget(budget)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prep = prepare(data)
    log(
        f"sdfm demo: {data} [{prep.train.shape[0]}, {prep.train.shape[1]}], budget {name} "
        f"({budget.steps} training steps per method) -> {out}"
    )
    scorer = scorer_for(prep, out / CLASSIFIER_FILE, seed=seed)
    if conditional and scorer is None:
        raise ValueError(f"conditional: {data} has no labels")
    methods = demo_methods(objective, conditional)
    cmp = compare(
        prep,
        out,
        methods=methods,
        budget=budget,
        seed=seed,
        device=device,
        scorer=scorer,
        progress=progress,
        log=log,
    )
    pot = cmp.potentials[(0.0, conditional)]
    history = getattr(pot, "history", None)  # (a per-class solve has one curve per class: not drawn)
    if history is not None:
        plot_chi2(history, out / "chi2.png", tol=pot.settings.get("tol", 0.05))
    total = time.perf_counter() - t0
    notes = _demo_notes(
        data, prep, name, budget, seed, methods, pot, objective, conditional, cmp, total, device
    )
    if scorer is not None and scorer.test_accuracy is not None:
        notes += [
            "",
            f"Classifier (trained on the real training data, cached in {CLASSIFIER_FILE}): held-out accuracy "
            f"{scorer.test_accuracy:.3f}. Its Frechet distance is not FID.",
        ]
    chi2_plot = ["Semidiscrete solver: measured chi2 of the potential's marginal against the noise seen:"]
    extra = [*chi2_plot, "", "![chi2](chi2.png)", ""] if history is not None else []
    payload = {"data": data, "budget": name, "seed": seed, "objective": objective, "conditional": conditional}
    payload |= {"timings": cmp.timings, "total_s": total}
    payload["potential"] = {k: getattr(pot, k) for k in ("chi2", "chi2_stderr", "seconds", "samples")}
    report = write_report(
        out,
        cmp.results,
        title=f"sdfm demo: {' vs '.join(m.name for m in methods)} on {data}",
        image_shape=prep.dataset.image_shape,
        display=prep.normalization.undo,
        notes=notes,
        extra=extra,
        payload=payload,
    )
    log(f"sdfm demo: report -> {report} ({total:.0f} s)")
    return report


def _budget(budget: str | Budget) -> tuple[str, Budget]:
    """(name, Budget) of a budget given by name or as a Budget ("custom")."""
    if not isinstance(budget, str):
        return "custom", budget
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {sorted(BUDGETS)}, got {budget!r}")
    return budget, BUDGETS[budget]


def _demo_notes(data, prep, name, budget, seed, methods, pot, objective, conditional, cmp, total, device):
    """The demo report's opening notes: data, budget, methods, timings."""
    return [
        f"Data `{data}` ({prep.train.shape[0]} training points, d = {prep.train.shape[1]}); "
        f"held-out reference `{prep.reference_name}` ({prep.reference.shape[0]} points; metrics use a "
        f"fixed subset of {min(budget.num, prep.reference.shape[0])}). "
        f"Budget `{name}`: MLP (width {budget.hidden}, {budget.depth} residual blocks), "
        f"{budget.steps} steps of batch {budget.batch_size}, lr {budget.lr}, "
        f"seed {seed}, the same for every method; EMA weights evaluated. {budget.num} samples per setting "
        "from the same noise. Distances in normalised units (data minus mean, divided by one global scale).",
        "",
        f"Methods: **{methods[0].name}** independent pairs; **{methods[1].name}** exact OT within batches "
        f"of 256 (scipy's assignment); **{methods[2].name}** semidiscrete OT pairs (eps = 0): potential "
        f"chi2 {pot.chi2:.4f} ± {pot.chi2_stderr:.4f} after {pot.samples / 1e6:.2f}M noise samples, "
        f"{pot.seconds:.1f} s."
        + (
            " Mean-flow models u(x, t, r) (MeanFlow objective), sampled by mean-flow jumps; dopri5 "
            "integrates u(x, t, t)."
            if objective == "meanflow"
            else ""
        )
        + (
            " Class-conditional models (label dropout 0.1); pairs within each class (OT per class of "
            "the batch, one semidiscrete potential per class); samples with labels drawn from the class "
            "frequencies, no guidance."
            if conditional
            else ""
        ),
        "",
        "| method | solve (s) | train (s) | evaluate (s) |",
        "|---|---|---|---|",
        *[
            f"| {m} | {t['solve_s']:.1f} | {t['train_s']:.1f} | {t['eval_s']:.1f} |"
            for m, t in cmp.timings.items()
        ],
        "",
        f"Total wall time {total:.0f} s on {torch.get_num_threads()} CPU threads ({device}).",
    ]


__all__ = [
    "BUDGETS",
    "DEMO_METHODS",
    "Budget",
    "Comparison",
    "Method",
    "compare",
    "demo_methods",
    "prepare",
    "run_demo",
]
