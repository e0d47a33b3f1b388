"""Pruned exact search (cluster bounds) against the dense scan: pairing speed, fraction scored, solves.

    python benchmarks/pruned.py pairing --threads 2      # results/pruned_pairing.json
    python benchmarks/pruned.py solve --n 30000 --threads 2   # results/pruned_solve_n30000.json
    python benchmarks/pruned.py masked --threads 2       # results/pruned_masked.json
    python benchmarks/pruned.py trials --threads 2       # results/pruned_trials.json
    python benchmarks/pruned.py speed --threads 2        # results/pruned_speed.json
    python benchmarks/pruned.py shift --threads 2        # results/pruned_shift.json
    python benchmarks/pruned.py solve-now --n 30000 --threads 2   # results/pruned_solve_now_n30000.json
    python benchmarks/pruned.py solve-now --n 100000 --rounds 1 --threads 2

``pairing``: for each data set and N, the same 2,048 noises are paired by the dense scan
(``LaguerreCells(pruning="off")``) and by the pruned search (``pruning="on"``), min of 3 after a
warm-up; the indices must agree. Reported: build time of the bounds (k-means, sorted copy), seconds
per 2,048 pairs, the speed-up, the fraction of atoms the pruned search scored and its estimated cost
(what ``pruning="auto"`` decides on). Potentials: zero (every N), a solved one where a solve to chi2
0.05 fits (N <= ``--solve-max-n``), and the converged N = 100,000 mixture potential that
``scale.py solve --n 100000 --d 64`` saved, when present.

``solve``: the default solver on the 2-D checkerboard with ``pruning="off"`` and ``"on"``, same seed.

``masked``: pairing through :class:`~sdfm.couplings.SemidiscreteCoupling` on data with merged copies
(masked at -1e30 in the coupling's potential): 100,000 1-D Gaussian points (solved exactly, the
solver's merged near duplicates) and 100,000 checkerboard points rounded to a 0.01 grid (exact
copies, zero potential). Each mode (dense scan; pruned before section 30's margin and now; "auto"
before and now) answers the same 40 calls of 4,096 noises, after one warm-up call that builds the
bounds; median and min seconds per call, the fraction of atoms scored and the calls pruned.

``trials``: what a trial of ``pruning="auto"`` costs before and after section 30's probe. One-shot
pairing (a fresh ``LaguerreCells`` per call, as ``assign`` makes: the bounds built, then the trial)
of 4,096 noises at N = 100,000 on the checkerboard, the 64-d mixture and a 64-d Gaussian, min of 3;
then the default solver on the 64-d mixture at N = 30,000 (tol 0.1, seed 0), whose first calls are
trials, before and now alternating, min of 2.

``speed``: the pruned search before and after section 31 (bounds in place, cluster visits merged in
one reduction): ``LaguerreCells(pruning="on").assign`` (the certified pairing: best and runner-up)
and the plain argmax (``Scorer.argmax``) of 4,096 noises, zero potential, on the checkerboard at
N = 10^5 and 10^6 and a 3-D Gaussian at 10^5, against the dense scan; before and now alternate in
rounds, min of 5. Then 300 steps of the default solver on the 30,000-point checkerboard with
``pruning="on"``, before and now (min of 2), and whether the potentials are bit for bit equal.

``shift``: the shifted distance bound of section 32 (the potential's linear trend per cluster taken
out) against the bounds before it, on potentials a solve produces: the checkerboard at N = 10^5
(zero potential, and the default solver's potential after 90 s), a 3-D Gaussian at N = 30,000 and
the checkerboard at 30,000 (zero, and solved to tol 0.1). ``LaguerreCells(pruning="on").assign``
of 4,096 noises, before and now alternating in 5 rounds, min; the fraction of atoms scored; the
indices checked against the dense scan. Then 300 steps of the default solver (``pruning="auto"``)
on the 30,000-point checkerboard, before and now, with the potentials' MD5.

``solve-now``: the default solver (``pruning="auto"``, tol 0.05, seed 0) on the checkerboard of
``--n`` points with the pruned search of before section 30 (sections 30-32 all undone) and now,
alternating for ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, before_30, before_31, before_32, before_34, machine, repeat, save  # noqa: E402
from scale import make_data, open_targets  # noqa: E402
from sdfm.data.toy import checkerboard  # noqa: E402
from sdfm.transport import LaguerreCells, SemidiscreteSolver  # noqa: E402


def dataset(name: str, n: int) -> torch.Tensor:
    if name == "checkerboard-2d":
        return torch.from_numpy(checkerboard(n, seed=0)).float()
    if name == "mixture-64d":  # scale.py's 16 low-rank Gaussians (rank 16), memory-mapped
        return open_targets(make_data(n, 64))
    if name == "gauss-64d":
        return torch.randn(n, 64, generator=torch.Generator().manual_seed(0))
    raise ValueError(name)


def pair_case(name, n, potential, label, queries, repeats) -> dict:
    y = dataset(name, n)
    x = torch.randn(queries, y.shape[1], generator=torch.Generator().manual_seed(1))
    dense = LaguerreCells(y, potential, pruning="off")
    pruned = LaguerreCells(y, potential, pruning="on")
    t = time.perf_counter()
    first = pruned.assign(x[:8])  # builds the bounds
    build = time.perf_counter() - t
    del first
    t_dense = repeat(lambda: dense.assign(x), repeats=repeats, warmup=1)
    t_pruned = repeat(lambda: pruned.assign(x), repeats=repeats, warmup=1)
    same = int((dense.assign(x) == pruned.assign(x)).sum())
    bounds = next(iter(pruned.pruning._bounds.values()))
    row = {
        "data": name,
        "n": n,
        "potential": label,
        "clusters": bounds.num_clusters,
        "build_s": build,
        "dense_s": t_dense["min"],
        "pruned_s": t_pruned["min"],
        "speedup": t_dense["min"] / t_pruned["min"],
        "fraction_scored": pruned.pruning.last_fraction,
        "estimated_cost": pruned.pruning.last_cost,
        "same_index": same,
        "queries": queries,
    }
    print(
        f"{name:16s} N={n:>9,d} {label:22s} K={row['clusters']:5d} build {build:6.1f}s "
        f"dense {row['dense_s']:.3f}s pruned {row['pruned_s']:.3f}s x{row['speedup']:.1f} "
        f"scored {row['fraction_scored']:.4f} est. cost {row['estimated_cost']:.2f} same {same}/{queries}",
        flush=True,
    )
    return row


def cmd_pairing(args) -> None:
    rows = []
    for name, sizes in (
        ("checkerboard-2d", (10_000, 100_000, 1_000_000)),
        ("mixture-64d", (100_000, 1_000_000)),
        ("gauss-64d", (100_000,)),
    ):
        for n in sizes:
            rows.append(pair_case(name, n, torch.zeros(n, dtype=torch.float64), "zero", args.queries, 3))
            stored = Path(args.potential_dir) / f"scale_solve_n{n}_d64.potential.pt"
            if name == "mixture-64d" and stored.exists():  # scale.py solve's converged potential
                rows.append(
                    pair_case(name, n, torch.load(stored), "solved (scale.py, chi2 0.06)", args.queries, 3)
                )
            elif n <= args.solve_max_n:
                y = dataset(name, n)
                res = SemidiscreteSolver(tol=0.05, max_seconds=args.solve_seconds, **CELL).solve(
                    y, generator=torch.Generator().manual_seed(0)
                )
                label = f"solved (chi2 {res.chi2:.2f})"
                row = pair_case(name, n, res.potential, label, args.queries, 3)
                row["solve_chi2"] = res.chi2
                rows.append(row)
    save("pruned_pairing", {"machine": machine(), "command": " ".join(sys.argv), "rows": rows})


def cmd_solve(args) -> None:
    y = dataset("checkerboard-2d", args.n)
    out = {"machine": machine(), "command": " ".join(sys.argv), "n": args.n, "runs": {}}
    results = {}
    for mode in ("off", "on"):
        t = time.perf_counter()
        res = SemidiscreteSolver(pruning=mode, max_seconds=args.max_seconds, **CELL).solve(
            y, generator=torch.Generator().manual_seed(0)
        )
        results[mode] = res
        out["runs"][mode] = {
            "seconds": time.perf_counter() - t,
            "chi2": res.chi2,
            "samples_per_target": res.samples / args.n,
            "steps": res.steps,
            "converged": res.converged,
            "pruning_used": res.settings["pruning_used"],
        }
        print(mode, out["runs"][mode], flush=True)
    diff = (results["on"].potential - results["off"].potential).abs().max()
    out["max_potential_difference"] = float(diff)
    out["speedup"] = out["runs"]["off"]["seconds"] / out["runs"]["on"]["seconds"]
    print("speed-up", out["speedup"], "max |g_on - g_off|", float(diff))
    save(f"pruned_solve_n{args.n}", out)


def masked_data() -> dict:
    from sdfm.transport.duplicates import find_duplicates

    gauss = torch.randn(100_000, 1, generator=torch.Generator().manual_seed(0))
    res = SemidiscreteSolver().solve(gauss, generator=torch.Generator().manual_seed(0))
    board = torch.from_numpy(np.round(checkerboard(100_000, seed=0), 2)).float()
    return {
        "1-D Gaussian 100,000 (solved)": (gauss, res.potential, res.duplicates),
        "checkerboard 100,000 on a 0.01 grid (zero potential)": (
            board,
            torch.zeros(100_000, dtype=torch.float64),
            find_duplicates(board),
        ),
    }


def masked_mode(y, g, groups, mode: str, before: bool, queries: list) -> dict:
    from sdfm.couplings import SemidiscreteCoupling

    with before_30(before):
        coupling = SemidiscreteCoupling(y, g, duplicates=groups, pruning=mode)
        coupling.cells.assign(queries[0])  # warm-up: builds the bounds
        times, index = [], []
        for x in queries:
            t = time.perf_counter()
            index.append(coupling.cells.assign(x))
            times.append(time.perf_counter() - t)
    used = coupling.cells.pruning_used
    return {
        "median_s": float(np.median(times)),
        "min_s": min(times),
        "fraction_scored": used["last_fraction_scored"],
        "pruned_calls": used["pruned_calls"],
        "dense_calls": used["dense_calls"],
        "index": torch.cat(index),
    }


def cmd_masked(args) -> None:
    out = {"machine": machine(), "command": " ".join(sys.argv), "rows": []}
    modes = (("dense", "off", False), ("pruned, before", "on", True), ("pruned, now", "on", False))
    modes += (("auto, before", "auto", True), ("auto, now", "auto", False))
    for name, (y, g, groups) in masked_data().items():
        gen = torch.Generator().manual_seed(1)
        queries = [torch.randn(4096, y.shape[1], generator=gen) for _ in range(40)]
        rows = {label: masked_mode(y, g, groups, mode, before, queries) for label, mode, before in modes}
        reference = rows["dense"]["index"]
        for label, row in rows.items():
            row["same_index"] = bool(torch.equal(row.pop("index"), reference))
            row.update(data=name, mode=label, copies=int(y.shape[0] - groups.representative.shape[0]))
            print(row, flush=True)
            out["rows"].append(row)
    save("pruned_masked", out)


def alternating_solves(y: torch.Tensor, before, rounds: int = 2, **options) -> list[dict]:
    """Rounds of the solver (seed 0) with the code of ``before`` (a context manager of common.py)
    and without it: seconds, samples per target, chi2, the potential's MD5, pruning."""
    import hashlib

    rows = []
    for run in range(rounds):
        for label in ("before", "now"):
            with before(label == "before"):
                t = time.perf_counter()
                res = SemidiscreteSolver(**options).solve(y, generator=torch.Generator().manual_seed(0))
                row = {"run": run, "solver": label, "seconds": time.perf_counter() - t, "chi2": res.chi2}
                row.update(
                    samples_per_target=res.samples / y.shape[0], pruning_used=res.settings["pruning_used"]
                )
                row["md5"] = hashlib.md5(res.potential.numpy().tobytes()).hexdigest()
            print(row, flush=True)
            rows.append(row)
    return rows


def cmd_trials(args) -> None:
    out = {"machine": machine(), "command": " ".join(sys.argv), "one_shot": [], "solve": []}
    x_by_d = {d: torch.randn(4096, d, generator=torch.Generator().manual_seed(1)) for d in (2, 64)}
    for name in ("checkerboard-2d", "mixture-64d", "gauss-64d"):
        y = dataset(name, 100_000).contiguous()
        g, x = torch.zeros(100_000, dtype=torch.float64), x_by_d[y.shape[1]]
        row = {"data": name, "n": 100_000}
        for label, mode, before in (
            ("dense", "off", False),
            ("auto, before", "auto", True),
            ("auto, now", "auto", False),
        ):
            with before_30(before):
                row[label] = repeat(
                    lambda m=mode, y=y, g=g, x=x: LaguerreCells(y, g, pruning=m).assign(x),
                    repeats=3,
                    warmup=0,
                )["min"]
        row["before / now"] = row["auto, before"] / row["auto, now"]
        print(row, flush=True)
        out["one_shot"].append(row)
    out["solve"] = alternating_solves(dataset("mixture-64d", 30_000), before_30, tol=0.1)
    save("pruned_trials", out)


def speed_row(name: str, y: torch.Tensor) -> dict:
    from sdfm.transport.pruned import Pruning
    from sdfm.transport.scoring import Scorer

    n = y.shape[0]
    g = torch.zeros(n, dtype=torch.float64)
    x = torch.randn(4096, y.shape[1], generator=torch.Generator().manual_seed(1))
    z = y - y.mean(0)
    bias = -0.5 * y.square().sum(1)
    bias = bias - bias.max()
    dense = LaguerreCells(y, g, pruning="off")
    pruned, scorer = LaguerreCells(y, g, pruning="on"), Scorer(z, n, pruning=Pruning("on"))
    want = dense.assign(x)
    times = {key: [] for key in ("dense", "assign before", "assign now", "argmax before", "argmax now")}
    for _ in range(5):
        times["dense"].append(repeat(lambda: dense.assign(x), repeats=1, warmup=0)["min"])
        for label in ("before", "now"):
            with before_31(label == "before"):
                assert torch.equal(pruned.assign(x), want)
                times[f"assign {label}"].append(repeat(lambda: pruned.assign(x), repeats=1, warmup=0)["min"])
                times[f"argmax {label}"].append(
                    repeat(lambda: scorer.argmax(x, bias), repeats=1, warmup=0)["min"]
                )
    row = {"data": name, "n": n, **{key: min(value) for key, value in times.items()}}
    row["assign speed-up"] = row["assign before"] / row["assign now"]
    row["argmax speed-up"] = row["argmax before"] / row["argmax now"]
    row["assign now vs dense"] = row["dense"] / row["assign now"]
    row["fraction scored"] = pruned.pruning.last_fraction
    return row


def cmd_speed(args) -> None:
    out = {"machine": machine(), "command": " ".join(sys.argv), "rows": [], "solve": []}
    gauss = torch.randn(100_000, 3, generator=torch.Generator().manual_seed(0))
    for name, y in (
        ("checkerboard-2d", dataset("checkerboard-2d", 100_000)),
        ("checkerboard-2d", dataset("checkerboard-2d", 1_000_000)),
        ("gauss-3d", gauss),
    ):
        row = speed_row(name, y)
        print(row, flush=True)
        out["rows"].append(row)
    y = dataset("checkerboard-2d", 30_000)
    out["solve"] = alternating_solves(y, before_31, tol=None, max_steps=300, pruning="on")
    save("pruned_speed", out)


def shift_row(name: str, y: torch.Tensor, g: torch.Tensor, label: str) -> dict:
    x = torch.randn(4096, y.shape[1], generator=torch.Generator().manual_seed(1))
    dense = LaguerreCells(y, g, pruning="off")
    want = dense.assign(x)
    cells = {}
    for mode in ("before", "now"):
        with before_32(mode == "before"):
            cells[mode] = LaguerreCells(y, g, pruning="on")
            assert torch.equal(cells[mode].assign(x), want)  # builds the bounds
    times = {"dense": [], "before": [], "now": []}
    for _ in range(5):
        times["dense"].append(repeat(lambda: dense.assign(x), repeats=1, warmup=0)["min"])
        for mode in ("before", "now"):  # (float64 keys get bounds of their own later: the switch)
            with before_32(mode == "before"):
                times[mode].append(repeat(lambda m=mode: cells[m].assign(x), repeats=1, warmup=0)["min"])
    row = {"data": name, "n": y.shape[0], "potential": label, **{k: min(v) for k, v in times.items()}}
    row.update({f"fraction {m}": cells[m].pruning.last_fraction for m in ("before", "now")})
    row["speed-up"] = row["before"] / row["now"]
    return row


def cmd_shift(args) -> None:
    out = {"machine": machine(), "command": " ".join(sys.argv), "rows": [], "solve": []}
    problems = []
    y = dataset("checkerboard-2d", 100_000)
    res = SemidiscreteSolver(max_seconds=90).solve(y, generator=torch.Generator().manual_seed(0))
    problems += [("checkerboard-2d", y, torch.zeros(100_000, dtype=torch.float64), "zero")]
    problems += [("checkerboard-2d", y, res.potential, f"default solve, 90 s (chi2 {res.chi2:.2f})")]
    for name, y in (
        ("gauss-3d", torch.randn(30_000, 3, generator=torch.Generator().manual_seed(0))),
        ("checkerboard-2d", dataset("checkerboard-2d", 30_000)),
    ):
        res = SemidiscreteSolver(tol=0.1).solve(y, generator=torch.Generator().manual_seed(0))
        problems += [(name, y, torch.zeros(y.shape[0], dtype=torch.float64), "zero")]
        problems += [(name, y, res.potential, f"solved (chi2 {res.chi2:.3f})")]
    for name, y, g, label in problems:
        row = shift_row(name, y, g, label)
        print(row, flush=True)
        out["rows"].append(row)
    out["solve"] = alternating_solves(dataset("checkerboard-2d", 30_000), before_32, tol=None, max_steps=300)
    save("pruned_shift", out)


@contextlib.contextmanager
def before_sections_30_to_32(on: bool = True):
    with before_30(on), before_31(on), before_32(on):
        yield


def cmd_solve_now(args) -> None:
    y = dataset("checkerboard-2d", args.n)
    out = {"machine": machine(), "command": " ".join(sys.argv), "n": args.n}
    out["solve"] = alternating_solves(
        y, before_sections_30_to_32, rounds=args.rounds, max_seconds=args.max_seconds
    )
    save(f"pruned_solve_now_n{args.n}", out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", choices=("pairing", "solve", "masked", "trials", "speed", "shift", "solve-now")
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--solve-seconds", type=float, default=60.0)
    parser.add_argument("--solve-max-n", type=int, default=10_000)
    parser.add_argument("--potential-dir", default="/tmp/sdfm_scale", help="scale.py solve's potentials")
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--max-seconds", type=float, default=1200.0)
    parser.add_argument("--rounds", type=int, default=2, help="solve-now: rounds of before and now")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    np.random.seed(0)
    commands = {"pairing": cmd_pairing, "solve": cmd_solve, "masked": cmd_masked, "trials": cmd_trials}
    commands.update(speed=cmd_speed, shift=cmd_shift)
    commands["solve-now"] = cmd_solve_now
    commands[args.what](args)


if __name__ == "__main__":
    with before_34():  # (measured before section 34: its solver, pinned)
        main()
