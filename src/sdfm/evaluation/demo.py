"""``sdfm demo``: I-FM, OT-FM and SD-FM under one budget, with a report that opens with its verdict.

The default demo has two parts. The numbers come from a 16-dimensional Gaussian mixture
(``gmm:d=16,k=8``, 10,000 points), where exact OT within batches of 256 is far from the full OT map
and SD-FM's one- and two-step samples are several times better; the pictures come from the 2-D
checkerboard (``OUT/checkerboard/``), where both OT couplings are good and the straight paths are
easy to see. ``--data NAME|FILE`` runs one part on any data set instead.

Every finished method leaves its evaluation in its run folder, so an interrupted demo started again
on the same folder resumes: finished methods are not trained again, an unfinished one continues from
its last checkpoint, and the solved potential is reused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sdfm.evaluation.compare import (
    BUDGETS,
    Budget,
    Comparison,
    compare,
    demo_methods,
    prepare,
    scorer_for,
)
from sdfm.evaluation.evaluate import CLASSIFIER_FILE

#: the default demo's data: numbers where batch OT degrades, pictures where paths are easy to see
NUMBERS_DATA = "gmm:d=16,k=8"
PICTURES_DATA = "checkerboard"
PICTURES_DIR = "checkerboard"
#: what a demo writes in its folder (removed by ``--overwrite``)
OUTPUTS = ("runs", "potentials", PICTURES_DIR, "report.md", "metrics.json", "chi2.png", CLASSIFIER_FILE)
OUTPUTS += ("samples.png", "metrics_vs_nfe.png", "trajectories.png")


@dataclass(frozen=True)
class Part:
    """One data set of a demo: its spec, held-out reference, budget and folder."""

    role: str  # "numbers" (the verdict's data), "pictures" or "main" (a one-set demo)
    data: str
    reference: str | None
    budget: Budget
    out: Path


def pictures_budget(budget: Budget) -> Budget:
    """The 2-D pictures' budget: a third of the training, fixed-step settings only."""
    return replace(budget, steps=max(1, budget.steps // 3), eval_steps=(1, 2, 4, 8), adaptive=False)


def demo_parts(
    data: str | None, budget: Budget, out: Path, reference: str | None = None, conditional: bool = False
) -> list[Part]:
    """The parts of a demo: numbers and pictures by default (numbers only when class-conditional: the
    checkerboard has no labels), else the one data set given."""
    if data is None and conditional:
        return [Part("main", NUMBERS_DATA, None, budget, out)]
    if data is None:
        return [
            Part("numbers", NUMBERS_DATA, None, budget, out),
            Part("pictures", PICTURES_DATA, None, pictures_budget(budget), out / PICTURES_DIR),
        ]
    return [Part("main", data, reference, budget, out)]


def run_demo(
    data: str | None = None,
    budget: str | Budget = "quick",
    out: str | Path = "demo",
    *,
    reference: str | None = None,
    seed: int = 0,
    device="cpu",
    progress: bool = True,
    log=print,
    objective: str = "flow",
    conditional: bool = False,
    resume: bool = True,
) -> Path:
    """Runs the demo into ``out`` and returns ``out/report.md`` (see the module docstring).

    ``data`` None runs the default two-part demo; a dataset spec or file runs one part on it, held
    out by ``reference`` (default: the built-in test split, or 10% of a file). ``objective="meanflow"``
    trains mean-flow models (I-MF / OT-MF / SD-MF); ``conditional`` class-conditional ones."""
    name, budget = _budget(budget)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    methods = demo_methods(objective, conditional)
    parts = demo_parts(data, budget, out, reference, conditional)
    done: list[tuple[Part, Comparison, float]] = []
    for part in parts:
        t_part = time.perf_counter()
        data_spec = part.data if part.reference is not None else _with_holdout(part.data)
        prep = prepare(data_spec, reference=part.reference)
        log(
            f"sdfm demo ({part.role}): {part.data} [{prep.train.shape[0]}, {prep.train.shape[1]}], "
            f"{part.budget.steps} training steps per method -> {part.out}"
        )
        scorer = scorer_for(prep, part.out / CLASSIFIER_FILE, seed=seed)
        if conditional and scorer is None:
            raise ValueError(f"conditional: {part.data} has no labels")
        cmp = compare(
            prep,
            part.out,
            methods=methods,
            budget=part.budget,
            seed=seed,
            device=device,
            scorer=scorer,
            progress=progress,
            log=log,
            resume=resume,
        )
        done.append((part, cmp, time.perf_counter() - t_part))
    total = time.perf_counter() - t0
    for part, cmp, seconds in reversed(done):  # the pictures' report first: the main one links to it
        report = _write_part_report(part, cmp, name, seed, methods, objective, conditional, device, seconds,
                                    total, done)  # fmt: skip
    log(f"sdfm demo: {total:.0f} s")
    return report


def _with_holdout(data: str) -> str:
    """A file without a reference holds out 10% (a fixed split); built-in sets have their own."""
    from sdfm.data import heldout_spec
    from sdfm.data.registry import is_file_spec

    if heldout_spec(data) is None and is_file_spec(data) and "holdout=" not in data:
        return data + ("," if "::" in data else "::") + "holdout=0.1"
    return data


#: energy distances within this factor of the best are called on par in the verdict
TIE = 1.05


def verdict(results: dict, floor_name: str = "real training data") -> list[str]:
    """Three lines: which method is best at the first two fixed-step settings (energy distance) and by
    how much, and the floor (the real training data scored the same way; dopri5 when evaluated)."""
    lines = []
    first = next(iter(results.values()))
    fixed = [r["setting"] for r in first.rows if r["setting"] not in ("data", "dopri5")][:2]
    for setting in fixed:
        scores = {m: next(r for r in res.rows if r["setting"] == setting) for m, res in results.items()}
        order = sorted(scores, key=lambda m: scores[m]["energy"])
        best = order[0]
        tied = [m for m in order[1:] if scores[m]["energy"] <= TIE * scores[best]["energy"]]
        rest = ", ".join(
            f"{scores[m]['energy'] / max(scores[best]['energy'], 1e-300):.1f}x below {m} "
            f"({scores[m]['energy']:.3g})"
            for m in order[1:]
        )
        w2 = ", ".join(f"{m} {scores[m]['w2']:.3g}" for m in results)
        steps = scores[best]["nfe"]
        winner = (
            f"**{best}** is best"
            if not tied
            else f"**{best}** and {' and '.join(tied)} are on par (within {100 * (TIE - 1):.0f}%)"
        )
        lines.append(
            f"- **{steps} step{'s' if steps != 1 else ''}** ({setting}): {winner}, energy distance "
            f"{scores[best]['energy']:.3g}: {rest} (W2: {w2})."
        )
    floor = next((r for r in first.rows if r["setting"] == "data"), None)
    dopri = {m: next((r for r in res.rows if r["setting"] == "dopri5"), None) for m, res in results.items()}
    line = (
        f"- **Floor**: {floor_name} against the same held-out points: energy {floor['energy']:.3g}"
        if floor
        else ""
    )
    if all(dopri.values()):
        line += (
            "; with dopri5 (adaptive, "
            + ", ".join(f"{m} {r['energy']:.3g} at NFE {r['nfe']}" for m, r in dopri.items())
            + ")"
        )
    lines.append(line + ".")
    return lines


# long: the report's prose (notes, timings, verdict, links) in one place, a template rather than logic
def _write_part_report(part, cmp, name, seed, methods, objective, conditional, device, seconds, total, done):
    from sdfm.evaluation.plots import plot_chi2
    from sdfm.evaluation.report import write_report

    prep = cmp.prepared
    pot = cmp.potentials.get((0.0, conditional))
    extra = []
    if pot is not None and pot.history:
        plot_chi2(pot.history, part.out / "chi2.png", tol=pot.tol)
        extra = [
            "What stopped the semidiscrete solver: the chi2 of its averaged potential, measured on "
            "fresh noise, fell below tol:",
            "",
            "![chi2](chi2.png)",
            "",
        ]
    notes = []
    if part.role in ("numbers", "main"):
        notes += ["**Verdict**", "", *verdict(cmp.results), ""]
    notes += _notes(part, prep, name, seed, methods, pot, objective, conditional, cmp, seconds, device)
    if part.role == "numbers":
        pictures = next(p for p, _, _ in done if p.role == "pictures")
        notes += [
            "",
            f"Pictures: the same three methods on the 2-D `{pictures.data}` "
            f"([{PICTURES_DIR}/report.md]({PICTURES_DIR}/report.md) has its tables; "
            f"{pictures.budget.steps} steps per method), where samples and paths are easiest to see. "
            "The samples of this 16-d mixture further below are drawn on its top two principal "
            "directions.",
            "",
            f"![2-D samples]({PICTURES_DIR}/samples.png)",
            "",
            f"![2-D paths]({PICTURES_DIR}/trajectories.png)",
            "",
            f"Total wall time {total:.0f} s on {_threads()} ({device}).",
        ]
    if cmp.scorer is not None and cmp.scorer.test_accuracy is not None:
        notes += [
            "",
            f"Classifier (trained on the real training data, cached in {CLASSIFIER_FILE}): held-out accuracy "
            f"{cmp.scorer.test_accuracy:.3f}. Its Frechet distance is not FID.",
        ]
    payload = {"data": part.data, "budget": name, "seed": seed, "objective": objective}
    payload |= {"conditional": conditional, "timings": cmp.timings, "total_s": seconds}
    if pot is not None:
        payload["potential"] = {k: getattr(pot, k) for k in ("chi2", "chi2_stderr", "seconds", "samples")}
    title = f"sdfm demo: {' vs '.join(m.name for m in methods)} on {part.data}"
    return write_report(
        part.out,
        cmp.results,
        title=title,
        image_shape=prep.dataset.image_shape,
        display=prep.normalization.undo,
        notes=notes,
        extra=extra,
        payload=payload,
    )


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def _budget(budget: str | Budget) -> tuple[str, Budget]:
    """(name, Budget) of a budget given by name or as a Budget ("custom")."""
    if not isinstance(budget, str):
        return "custom", budget
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {sorted(BUDGETS)}, got {budget!r}")
    return budget, BUDGETS[budget]


def _notes(part, prep, name, seed, methods, pot, objective, conditional, cmp, seconds, device) -> list[str]:
    """The report's notes after the verdict: data, budget, methods, timings."""
    budget = part.budget
    solved = (
        f"potential chi2 {pot.chi2:.4f} ± {pot.chi2_stderr:.4f} after {pot.samples / 1e6:.2f}M noise "
        f"samples, {pot.seconds:.1f} s."
        if pot is not None
        else ""
    )
    return [
        f"Data `{part.data}` ({prep.train.shape[0]} training points, d = {prep.train.shape[1]}); "
        f"held-out reference `{prep.reference_name}` ({prep.reference.shape[0]} points; metrics use a "
        f"fixed subset of {min(budget.num, prep.reference.shape[0])}). "
        f"Budget `{name}`: MLP (width {budget.hidden}, {budget.depth} residual blocks), "
        f"{budget.steps} steps of batch {budget.batch_size}, lr {budget.lr}, "
        f"seed {seed}, the same for every method; EMA weights evaluated. {budget.num} samples per setting "
        "from the same noise. Distances in normalised units (data minus mean, divided by one global scale).",
        "",
        f"Methods: **{methods[0].name}** independent pairs; **{methods[1].name}** exact OT within batches "
        f"of 256 (scipy's assignment); **{methods[2].name}** semidiscrete OT pairs (eps = 0): {solved}"
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
        f"Wall time of this part {seconds:.0f} s on {_threads()} ({device}); methods finished in an earlier "
        "(interrupted) run keep their first timings.",
    ]


__all__ = ["NUMBERS_DATA", "PICTURES_DATA", "run_demo", "verdict"]
