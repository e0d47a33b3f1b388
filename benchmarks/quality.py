"""Sample quality across step budgets: I-FM, OT-FM (exact, n = 256), SD-FM (eps = 0 and 0.1 relative);
class-conditional models (--suite conditional); mean-flow models (--suite meanflow).

A small-scale version of the paper's Table 2 (arXiv 2509.25519). For each problem and
seed, every method trains the same MLP (same initial weights, steps, batch 256, lr 1e-3, EMA 0.999)
through sdfm.evaluation.compare, and is evaluated with the same noise at 1, 2, 4, 8, 16 Euler steps
and dopri5 (rtol = atol = 1e-5, NFE reported) against held-out data: exact W2 (POT), energy
distance, and for labelled data the Frechet distance in the features of one classifier per problem
trained on the real training data (not FID). Mean and standard deviation over the seeds.

    python benchmarks/quality.py [--problems checkerboard,gmm16,digits,mnist1d] [--seeds 0,1,2]
                                 [--steps 3000] [--num 2000] [--tag quality]

Suites (--suite, default quality; --tag defaults to the suite's name):
- ``conditional``: class-conditional I-FM, OT-FM (exact OT within each class of the batch of 256) and
  SD-FM (one semidiscrete potential per class) on digits and MNIST-1D, label dropout 0.1, labels drawn
  from the class frequencies, no guidance; Euler 1, 2, 4, 8 steps; classifier accuracy given the label
  and classifier Frechet distance.
- ``meanflow``: I-MF and SD-MF (MeanFlow objective, the same MLP with the interval embedding) on the
  checkerboard, gmm16 and digits; 1 and 2 mean-flow jumps.

Writes benchmarks/results/TAG.json (every row) and TAG.md (tables) and prints the tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, save  # noqa: E402
from sdfm.evaluation.compare import BUDGETS, Method, compare, prepare, scorer_for  # noqa: E402

PROBLEMS = {
    "checkerboard": "checkerboard",  # 10,000 x 2
    "gmm16": "gmm:d=16,k=8",  # 10,000 x 16, 8 components
    "digits": "digits",  # 1,438 x 64 (train split)
    "mnist1d": "mnist1d",  # 4,000 x 40 (train split)
}
METHODS = (
    Method("I-FM", "independent"),
    Method("OT-FM", "minibatch-ot", ot_batch_size=256),
    Method("SD-FM eps=0", "semidiscrete", eps=0.0),
    Method("SD-FM eps=0.1", "semidiscrete", eps=0.1),
)

#: suite -> problems, methods, evaluated step counts, dopri5?, metric keys
SUITES = {
    "quality": (tuple(PROBLEMS), METHODS, (1, 2, 4, 8, 16), True, ("w2", "energy", "fd_classifier")),
    "conditional": (
        ("digits", "mnist1d"),
        (
            Method("I-FM", "independent", conditional=True),
            Method("OT-FM", "minibatch-ot", ot_batch_size=256, conditional=True),
            Method("SD-FM", "semidiscrete", conditional=True),
        ),
        (1, 2, 4, 8),
        False,
        ("accuracy", "fd_classifier"),
    ),
    "meanflow": (
        ("checkerboard", "gmm16", "digits"),
        (
            Method("I-MF", "independent", objective="meanflow"),
            Method("SD-MF", "semidiscrete", objective="meanflow"),
        ),
        (1, 2),
        False,
        ("w2", "energy", "fd_classifier"),
    ),
}


def _cell(values) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.4g} ± {s:.2g}"


def tables(payload: dict) -> list[str]:
    lines = []
    for prob, runs in payload["problems"].items():
        keys = [k for k in payload.get("keys", ("w2", "energy", "fd_classifier")) if k in runs["rows"][-1]]
        settings = list(dict.fromkeys(r["setting"] for r in runs["rows"] if r["setting"] != "data"))
        adaptive = "dopri5" in settings
        for key in keys:
            better = "higher" if key == "accuracy" else "lower"
            lines += [f"**{prob}: {key}** (mean ± sd over seeds {payload['seeds']}; {better} is better)", ""]
            nfe = {
                m: _cell([r["nfe"] for r in runs["rows"] if r["setting"] == "dopri5" and r["method"] == m])
                for m in payload["methods"]
            }
            lines.append("| method | " + " | ".join(settings) + (" | dopri5 NFE |" if adaptive else " |"))
            lines.append("|---|" + "---|" * (len(settings) + int(adaptive)))
            for m in payload["methods"]:
                cells = [
                    _cell([r[key] for r in runs["rows"] if r["setting"] == s and r["method"] == m])
                    for s in settings
                ]
                lines.append(f"| {m} | " + " | ".join(cells) + (f" | {nfe[m]} |" if adaptive else " |"))
            floor = [r[key] for r in runs["rows"] if r["setting"] == "data" and key in r]
            if floor:
                lines += [
                    f"| *real training data* | {_cell(floor)} |" + " |" * (len(settings) - 1 + adaptive)
                ]
            lines.append("")
        curv = "; ".join(
            f"{m}: {_cell([p['curvature'] for p in runs['paths'] if p['method'] == m])}"
            for m in payload["methods"]
        )
        chi2 = "; ".join(f"eps={e}: {_cell(v)}" for e, v in runs["chi2"].items())
        lines += [f"{prob}: path curvature (rk4-32) {curv}.", "", f"{prob}: potential chi2 {chi2}.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="quality")
    parser.add_argument("--problems", default=None, help="comma-separated (default: the suite's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=BUDGETS["quick"].steps)
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    problems, methods, eval_steps, adaptive, keys = SUITES[args.suite]
    problems = args.problems.split(",") if args.problems else problems
    tag = args.tag or args.suite
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = BUDGETS["quick"]
    budget = type(budget)(
        **{
            **budget.__dict__,
            "steps": args.steps,
            "num": args.num,
            "eval_steps": eval_steps,
            "adaptive": adaptive,
        }
    )
    payload = {
        "machine": machine(),
        "suite": args.suite,
        "budget": budget.__dict__,
        "seeds": seeds,
        "methods": [m.name for m in methods],
        "keys": list(keys),
        "problems": {},
    }
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for prob in problems:
            spec = PROBLEMS[prob]
            prep = prepare(spec)
            scorer = scorer_for(prep, None, seed=0)  # one classifier per problem: comparable distances
            runs = {
                "spec": spec,
                "rows": [],
                "paths": [],
                "chi2": {},
                "timings": [],
                "classifier_test_accuracy": None if scorer is None else scorer.test_accuracy,
            }
            for seed in seeds:
                print(f"{prob} seed {seed}", flush=True)
                cmp = compare(
                    prep,
                    Path(tmp) / prob / str(seed),
                    methods=methods,
                    budget=budget,
                    seed=seed,
                    scorer=scorer,
                    log=lambda msg: print(msg, flush=True),
                )
                for m, res in cmp.results.items():
                    runs["rows"] += [{**r, "method": m, "seed": seed} for r in res.rows]
                    runs["paths"].append({**res.path, "method": m, "seed": seed})
                    runs["timings"].append({**cmp.timings[m], "method": m, "seed": seed})
                for (eps, _conditional), pot in cmp.potentials.items():
                    runs["chi2"].setdefault(str(eps), []).append(pot.chi2)
            payload["problems"][prob] = runs
            payload["seconds"] = time.perf_counter() - t_all
            save(tag, payload)  # after every problem: partial results survive an interruption
    lines = tables(payload)
    (RESULTS / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"total {payload['seconds']:.0f} s")


if __name__ == "__main__":
    main()
