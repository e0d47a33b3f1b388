"""The solver's large high-dimensional regime (``anneal="auto"``, ``noise_level=None``): where to switch.

    python benchmarks/regime.py sweep     # results/regime_sweep.json: annealed vs direct at N = 30,000
    python benchmarks/regime.py curves    # results/regime_curves.json: chi2 against samples per target
    python benchmarks/regime.py seeds     # results/regime_seeds.json: section 17's change, three seeds
    python benchmarks/regime.py steptime  # results/regime_steptime.json: its cost per step, N = 100,000
    python benchmarks/regime.py lowdim    # results/regime_lowdim.json: the larger step on 2-D data
    python benchmarks/regime.py twonn     # results/regime_twonn.json: TwoNN on the benchmark data sets

``sweep``: each problem is solved to tol 0.1 (300 s cap) three times with the same seed: as below
N = 10,240 (annealing, noise level 0.25, averaging power 2), in the direct regime of section 15 (no
annealing, noise level 0.7, power 2, no coarse correction) and in the direct regime now (power 1 and
the coarse-space correction, section 17);
samples per target at the solver's stop, seconds, and chi2 of an independent check on 2^20 fresh
samples. Problems: k-dimensional standard Gaussians rotated into 64 dimensions (k = 4, 6, 8), and the
64-d mixture of 16 rank-16 Gaussians of scale.py (TwoNN dimension printed for each).

``curves``: on that mixture (N = 30,000), the averaged potential is copied at fixed samples per target
and its chi2 measured afterwards on 2^17 fresh samples; the last iterate's chi2 beside it. One run per
configuration, fixed seed; section 15's configurations are pinned to what that section ran.

``seeds``: the same measurement at 12, 15 and 18 samples per target for seeds 0, 1, 2: the direct
regime of section 15, with averaging power 1, and with power 1 and the coarse correction (now).

``steptime``: seconds per hard step (batch 4,096) at N = 100,000 on the mixture, section 15's direct
regime and today's, in alternating rounds of 10 steps after a warm-up round (min and median).

``lowdim``: the 2-D checkerboard of the solver benchmarks (N = 10,000, annealed as always) solved to
the default tol 0.05 with the hard step capped at 0.25 (the default) and at 0.7 x batch / N, seeds 0
and 1. Threads: 2 (set below).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, before_34, machine, save  # noqa: E402
from problems import load, solve_and_check, solve_row  # noqa: E402
from scale import make_data  # noqa: E402
from sdfm.data import load_dataset
from sdfm.transport import SemidiscreteSolver, estimate_marginal, intrinsic_dimension  # noqa: E402
from sdfm.transport._stream import full_precision  # noqa: E402
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem  # noqa: E402
from sdfm.transport.semidiscrete.solver import _Iteration  # noqa: E402

N = 30_000
# Section 15's configurations pin what that section measured: averaging power 2 and no coarse-space
# correction (both off at N = 30,000 > smooth_max_n then); section 17 gave the direct regime power 1
# and the coarse correction at any N.
SECTION15 = {**CELL, "average_power": 2.0, "coarse_size": 0}
ANNEALED = {"anneal": True, "noise_level": 0.25, **SECTION15}  # every N <= 10,240 and low-d data
DIRECT15 = {"anneal": False, "noise_level": 0.7, **SECTION15}  # the direct regime of section 15
# the direct regime of section 17: what the defaults picked on the mixture (NOW; with the cell scales,
# the default before section 24), and forced on every problem of the sweep (DIRECT; power 1 and the
# coarse correction, without the smooth stop)
NOW = {**CELL, "anneal": False, "noise_level": 0.7}
DIRECT = {**NOW, "average_power": 1.0, "smooth_max_n": None, "smooth_tol": None}


def embedded(k: int, n: int = N, d: int = 64) -> np.ndarray:
    """n standard Gaussian points of dimension k rotated into d dimensions (seed 0)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, k)) @ q[:k]).astype(np.float32)


def mixture(n: int = N) -> np.ndarray:
    return np.load(make_data(n, 64))


def cmd_sweep(args):
    problems = {f"gauss{k}-in-64d": lambda k=k: embedded(k) for k in (4, 6, 8)}
    problems["mixture-64d"] = mixture
    rows = []
    for name, make in problems.items():
        y = make()
        dim = intrinsic_dimension(torch.from_numpy(y))
        for label, cfg in (("annealed", ANNEALED), ("direct (section 15)", DIRECT15), ("direct", DIRECT)):
            solver = SemidiscreteSolver(tol=0.1, max_steps=None, max_seconds=args.cap, **cfg)
            row = {"problem": name, "twonn": round(dim, 2), "config": label, **solve_row(solver, y)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    save("regime_sweep", {"machine": machine(), "command": " ".join(sys.argv), "n": N, "rows": rows})


def snapshots(y: torch.Tensor, cfg: dict, marks: list[float], seed: int = 0):
    """(the solve, [(mark, averaged potential, last iterate's potential)]) at the given samples per
    target (noise drawn against the atoms, from the solver's start)."""
    solver = SemidiscreteSolver(tol=None, max_steps=10**9, **cfg)
    problem = SemidiscreteProblem(solver, y, None, torch.Generator().manual_seed(seed), None, None)
    snaps = []
    with full_precision(problem.device):
        run = _Iteration(solver, problem, time.perf_counter())
        state = run.start(None)
        for mark in marks:
            while problem.samples < mark * len(y):
                state = run.step(state, problem.draw_train(run.batch_size(state)))
            avg = state.average if state.average is not None else state.potential
            snaps.append((mark, problem.potential_of(avg), problem.potential_of(state.potential)))
    return run, snaps


def curve(y: torch.Tensor, cfg: dict, marks: list[float], seed: int = 0) -> list[dict]:
    """chi2 of the averaged potential and of the last iterate at the given samples per target."""
    snaps = snapshots(y, cfg, marks, seed)[1]

    def chi2(g):
        gen = torch.Generator().manual_seed(5)
        return estimate_marginal(
            y, g, num_samples=1 << 17, batch_size=8192, generator=gen, with_cost=False
        ).chi2

    return [
        {"samples_per_target": m, "chi2_average": round(chi2(a), 4), "chi2_iterate": round(chi2(p), 4)}
        for m, a, p in snaps
    ]


def cmd_curves(args):
    y = torch.from_numpy(mixture())
    marks = [6.0, 8.0, 10.0, 12.0, 15.0, 18.0, 22.0, 26.0, 30.0]
    configs = {
        "annealed, 0.25 (before)": ANNEALED,
        "no annealing, 0.25": {"anneal": False, "noise_level": 0.25, **SECTION15},
        "no annealing, 0.5": {"anneal": False, "noise_level": 0.5, **SECTION15},
        "no annealing, 0.7 (direct, section 15)": DIRECT15,
        "no annealing, 1.0": {"anneal": False, "noise_level": 1.0, **SECTION15},
        "no annealing, 0.7, power 1 + coarse (direct, now)": NOW,
    }
    out = {}
    for label, cfg in configs.items():
        out[label] = curve(y, cfg, marks)
        print(label, json.dumps(out[label]), flush=True)
    save("regime_curves", {"machine": machine(), "command": " ".join(sys.argv), "n": N, "curves": out})


def cmd_seeds(args):
    """Section 17: the direct regime's averaging power and coarse correction, three seeds."""
    y = torch.from_numpy(mixture())
    configs = {
        "section 15 (power 2, no coarse)": DIRECT15,
        "power 1, no coarse": {**DIRECT15, "average_power": 1.0},
        "power 1 + coarse (now)": NOW,
    }
    out = {label: {} for label in configs}
    for seed in (0, 1, 2):
        for label, cfg in configs.items():
            out[label][seed] = curve(y, cfg, [12.0, 15.0, 18.0], seed=seed)
            print(seed, label, json.dumps(out[label][seed]), flush=True)
    save("regime_seeds", {"machine": machine(), "command": " ".join(sys.argv), "n": N, "curves": out})


def cmd_steptime(args):
    """Section 17: seconds per hard step of section 15's direct regime and of today's (the coarse
    correction's per-step work), at N = 100,000 on the 64-d mixture, in alternating rounds."""
    y = torch.from_numpy(np.load(make_data(100_000, 64)))
    configs = {"section 15": DIRECT15, "now": NOW}
    runs = {}
    for label, cfg in configs.items():
        solver = SemidiscreteSolver(tol=None, max_steps=10**9, **cfg)
        problem = SemidiscreteProblem(solver, y, None, torch.Generator().manual_seed(0), None, None)
        run = _Iteration(solver, problem, time.perf_counter())
        t0 = time.perf_counter()
        with full_precision(problem.device):
            state = run.start(None)
        runs[label] = [run, problem, state, time.perf_counter() - t0, []]
    for rnd in range(args.rounds + 1):  # round 0 warms up (and passes the coarse warm-up)
        for entry in runs.values():
            run, problem, state = entry[:3]
            with full_precision(problem.device):
                t0 = time.perf_counter()
                for _ in range(10):
                    state = run.step(state, problem.draw_train(run.batch_size(state)))
                dt = (time.perf_counter() - t0) / 10
            entry[2] = state
            if rnd > 0:
                entry[4].append(dt)
    out = {
        label: {"start_seconds": round(e[3], 2), "step_seconds": [round(t, 4) for t in e[4]]}
        for label, e in runs.items()
    }
    for label, e in out.items():
        t = sorted(e["step_seconds"])
        e["min"], e["median"] = t[0], t[len(t) // 2]
        print(label, json.dumps(e), flush=True)
    out["ratio_min"] = round(out["now"]["min"] / out["section 15"]["min"], 3)
    out["ratio_median"] = round(out["now"]["median"] / out["section 15"]["median"], 3)
    print("ratio now / section 15:", out["ratio_min"], "(min),", out["ratio_median"], "(median)")
    save("regime_steptime", {"machine": machine(), "command": " ".join(sys.argv), **out})


def cmd_lowdim(args):
    y = load("checkerboard-2d")
    rows = []
    for level in (0.25, 0.7):
        for seed in (0, 1):
            solver = SemidiscreteSolver(anneal=True, noise_level=level, max_seconds=args.cap, **CELL)
            res, seconds, chi2, se = solve_and_check(solver, y, seed)
            row = {
                "noise_level": level,
                "seed": seed,
                "seconds": round(seconds, 1),
                "samples_per_target": round(res.samples / len(y), 1),
                "converged": res.converged,
                "chi2_independent": round(chi2, 4),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    save("regime_lowdim", {"machine": machine(), "command": " ".join(sys.argv), "rows": rows})


def cmd_twonn(args):
    sets = {name: lambda name=name: load(name) for name in ("checkerboard-2d", "digits-64d", "gmm8-64d")}
    sets["mnist1d"] = lambda: np.asarray(load_dataset("mnist1d").x, dtype=np.float32)
    rot = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 64)))[0][:2].astype(np.float32)
    sets["checkerboard-2d rotated into 64-d"] = lambda: load("checkerboard-2d") @ rot
    for k in (2, 4, 8, 12, 16):
        sets[f"gauss{k}-in-64d"] = lambda k=k: embedded(k)
    sets["mixture-64d"] = mixture
    out = {name: round(intrinsic_dimension(torch.from_numpy(make())), 2) for name, make in sets.items()}
    print(json.dumps(out, indent=1))
    save("regime_twonn", {"machine": machine(), "command": " ".join(sys.argv), "twonn": out})


def main():
    torch.set_num_threads(2)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--cap", type=float, default=300.0, help="seconds per solve at most")
    s.set_defaults(fn=cmd_sweep)
    sub.add_parser("curves").set_defaults(fn=cmd_curves)
    sub.add_parser("seeds").set_defaults(fn=cmd_seeds)
    st = sub.add_parser("steptime")
    st.add_argument("--rounds", type=int, default=5, help="alternating rounds of 10 steps per configuration")
    st.set_defaults(fn=cmd_steptime)
    sub.add_parser("twonn").set_defaults(fn=cmd_twonn)
    low = sub.add_parser("lowdim")
    low.add_argument("--cap", type=float, default=120.0, help="seconds per solve at most")
    low.set_defaults(fn=cmd_lowdim)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    with before_34():  # (measured before section 34: its solver, pinned)
        main()
