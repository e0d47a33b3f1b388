"""Training several couplings under one budget and comparing them: ``sdfm demo`` and the quality
benchmark.

Every method gets the same network (same initial weights), steps, batch size, learning rate and
seeds; only the coupling differs. The semidiscrete potential is solved once per (data, eps, seed)
and saved in each SD-FM run, so every run folder can be re-evaluated with ``sdfm eval``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sdfm.evaluation.evaluate import ClassifierScorer, cached_scorer, evaluate_model
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
    from sdfm.data.registry import reference_spec

    dataset = load_dataset(spec)
    norm = Normalization.fit(dataset.x, "standard")
    train = norm.apply(dataset.x)
    ref_spec = reference_spec(reference, spec) if reference else heldout_spec(spec)
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
    progress: bool | str = False,
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
    label = progress if isinstance(progress, str) else "solve"
    with solve_bar(tol=solver.tol, num_targets=targets.shape[0], desc=label, disable=not progress) as bar:
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
    progress: bool | str = False,
    resume: bool = False,
):
    """Trains one method into ``run_dir`` (a run folder ``sdfm eval`` / ``sdfm sample`` can read) with
    the run recipe :func:`sdfm.train.fit`; ``potential`` is the solver result (or a potential file
    written for ``prep``) for semidiscrete methods (solved once for all of them, saved in the run and
    loaded by the recipe). ``resume`` continues a run the folder already holds. Returns the
    TrainResult."""
    from sdfm.train import RunSpec, TrainConfig, fit

    run_dir = Path(run_dir)
    if method.conditional and prep.dataset.labels is None:
        raise ValueError(f"method: {method.name} is conditional but {prep.spec} has no labels")
    resume = resume and _same_run(run_dir, prep, budget)
    run_dir.mkdir(parents=True, exist_ok=True)
    potential_file = None
    if method.coupling == "semidiscrete":
        if potential is None:
            raise ValueError(f"potential: method {method.name} is semidiscrete and needs a solved potential")
        potential_file = run_dir / "potential.safetensors"
        _store_potential(potential_file, potential, prep, seed)
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
        return fit(spec, run_dir, resume=resume, progress=progress, log=lambda message: None)


def _same_run(run_dir: Path, prep: Prepared, budget: Budget) -> bool:
    """Whether ``run_dir`` holds a run of these data and budget to continue; a run of other data or
    another budget (in a comparison's own folder) is removed."""
    import shutil

    from sdfm.train import read_run

    try:
        info = read_run(run_dir)
        same = info["data"].get("train_fingerprint") == prep.fingerprint_train
        same = same and info["train"].get("steps") == budget.steps
    except ValueError:  # no run.json, or a damaged one
        same = False
    if not same and run_dir.exists():
        shutil.rmtree(run_dir)
    return same


def _store_potential(path: Path, potential, prep: Prepared, seed: int) -> None:
    """Writes a solver result (with its chi2 history) or copies a potential file to ``path``."""
    from sdfm.artifacts import save_potential
    from sdfm.artifacts.atomic import atomic_write

    if isinstance(potential, (str, Path)):
        if Path(potential).resolve() != path.resolve():
            data = Path(potential).read_bytes()
            atomic_write(path, lambda p: p.write_bytes(data))
        return
    history = [
        [h.samples, h.chi2, h.chi2_stderr]
        for h in getattr(potential, "history", None) or []
        if h.chi2 is not None
    ]
    if hasattr(potential, "history") and (not history or history[-1][0] != potential.samples):
        history.append([potential.samples, potential.chi2, potential.chi2_stderr])  # the final measurement
    save_potential(
        path,
        potential,
        fingerprint=prep.fingerprint_train,
        targets=torch.from_numpy(prep.train),
        data_name=prep.spec,
        extra={"seed": seed, "chi2_history": history},
    )


@dataclass(frozen=True)
class PotentialSummary:
    """What a comparison reports of a solved potential (from the solver or from its file)."""

    chi2: float
    chi2_stderr: float
    samples: int
    seconds: float
    tol: float | None
    history: list | None  # entries with .samples, .chi2, .chi2_stderr (None for per-class potentials)
    path: Path

    @classmethod
    def from_file(cls, path: Path, prep: Prepared, seed: int, conditional: bool) -> PotentialSummary | None:
        """The potential stored at ``path`` for these data, seed and conditioning; None otherwise."""
        from types import SimpleNamespace

        from sdfm.artifacts import load_potential

        if not path.is_file():
            return None
        try:
            pf = load_potential(path, targets=torch.from_numpy(prep.train))
        except ValueError:
            return None
        if pf.meta.get("seed") != seed or (pf.classes is not None) != conditional:
            return None
        hist = pf.meta.get("chi2_history") or []
        history = [SimpleNamespace(samples=s, chi2=c, chi2_stderr=e) for s, c, e in hist] or None
        m = pf.meta
        return cls(
            m["chi2"], m["chi2_stderr"], m["samples"], m["seconds"], m["solver"].get("tol"), history, path
        )


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
    resume: bool = False,
) -> Comparison:
    """Solves the potentials, trains each method into ``out/runs/<slug>`` and evaluates it.

    Every finished method leaves ``out/runs/<slug>/demo_eval.{json,npz}``; with ``resume`` a method
    whose evaluation is there (for this budget and seed) is not trained again, an unfinished run
    continues from its last checkpoint, and a solved potential (``out/potentials/``) is reused."""
    out = Path(out)
    device = torch.device(device)
    cmp = Comparison(results={}, prepared=prep, scorer=scorer)
    config = EvalConfig(
        steps=budget.eval_steps, adaptive=budget.adaptive, num=budget.num, path_num=budget.path_num, seed=seed
    )
    for method in methods:
        run_dir = out / "runs" / method.slug
        done = _finished(run_dir, budget, seed, prep) if resume else None
        if done is not None:
            cmp.results[method.name] = done
            cmp.timings[method.name] = done.info["timings"]
            if method.coupling == "semidiscrete":
                _potential(cmp, out, prep, method, budget, seed, device, progress, log, resume)
            log(f"  {method.name}: finished earlier in {run_dir} (resumed)")
            continue
        t0 = time.perf_counter()
        potential = None
        if method.coupling == "semidiscrete":
            potential = _potential(cmp, out, prep, method, budget, seed, device, progress, log, resume).path
        t1 = time.perf_counter()
        label = f"{method.name} train" if progress else False
        result = train_method(
            method, prep, run_dir, budget=budget, seed=seed, device=device, potential=potential,
            progress=label, resume=resume,
        )  # fmt: skip
        t2 = time.perf_counter()
        num_classes = int(prep.dataset.num_classes) if method.conditional else None
        ev = evaluate_model(
            result.ema,
            prep.reference,
            config=config,
            scorer=scorer,
            train_data=prep.train,
            num_classes=num_classes,
            progress=f"{method.name} eval" if progress else False,
        )
        t3 = time.perf_counter()
        timings = {"solve_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2}
        ev.info.update(method=method.name, run=str(run_dir), steps=budget.steps, seed=seed, timings=timings)
        ev.info.update(budget=asdict(budget), data_fingerprint=prep.fingerprint_train)
        ev.save(run_dir / DEMO_EVAL)
        cmp.results[method.name] = ev
        cmp.timings[method.name] = timings
        best = min((r for r in ev.rows if r["setting"] != "data"), key=lambda r: r["nfe"])
        log(
            f"  {method.name}: trained {budget.steps} steps in {t2 - t1:.1f} s, evaluated in {t3 - t2:.1f} s;"
            f" {best['setting']} W2 {best['w2']:.4f}"
        )
    return cmp


#: the stem of a finished method's evaluation in its run folder (resumable comparisons)
DEMO_EVAL = "demo_eval"


def _finished(run_dir: Path, budget: Budget, seed: int, prep: Prepared) -> EvalResult | None:
    """The saved evaluation of a method finished with this budget, seed and data, or None."""
    if not (run_dir / f"{DEMO_EVAL}.json").is_file():
        return None
    try:
        ev = EvalResult.load(run_dir / DEMO_EVAL)
    except ValueError:
        return None
    info = ev.info
    same = info.get("budget") == _json_roundtrip(asdict(budget)) and info.get("seed") == seed
    return ev if same and info.get("data_fingerprint") == prep.fingerprint_train else None


def _json_roundtrip(value):
    import json

    return json.loads(json.dumps(value))


def _potential(cmp, out, prep, method, budget, seed, device, progress, log, resume) -> PotentialSummary:
    """The potential of ``method`` (eps, conditioning): solved once per comparison and saved in
    ``out/potentials/`` (reused from there when resuming)."""
    key = (method.eps, method.conditional)
    if key in cmp.potentials:
        return cmp.potentials[key]
    path = out / "potentials" / f"eps{method.eps:g}{'-per-class' if method.conditional else ''}.safetensors"
    found = PotentialSummary.from_file(path, prep, seed, method.conditional) if resume else None
    if found is None:
        res = solve_potential(
            prep,
            eps=method.eps,
            seed=seed,
            budget=budget,
            device=device,
            progress=f"{method.name} solve" if progress else False,
            conditional=method.conditional,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        _store_potential(path, res, prep, seed)
        found = PotentialSummary.from_file(path, prep, seed, method.conditional)
        log(
            f"  potential eps={method.eps}{' per class' if method.conditional else ''}: chi2 "
            f"{res.chi2:.4f} ± {res.chi2_stderr:.4f} in {res.seconds:.1f} s"
        )
    cmp.potentials[key] = found
    return found


__all__ = [
    "BUDGETS",
    "DEMO_METHODS",
    "Budget",
    "Comparison",
    "Method",
    "compare",
    "demo_methods",
    "prepare",
]
