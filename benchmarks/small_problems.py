"""Small problems: noise samples per target of the solver from N = 16 to 1,000 in d = 1, 2, 16.

For every problem the default solver runs with several seeds; each potential is checked on 2^20 fresh
samples (``estimate_marginal``, independent of the solver's own measurements) and, in 1-D, by the
closed-form Gaussian masses of its cells (scipy's normal CDF at the cell boundaries). The same
problems also run with the defaults of the solver before this benchmark existed (``legacy``: per-cell
SGD at lr 0.1, batches of 4096 (annealing 1024), measurements of at least 2^14 samples every 5x that
much training, no exact 1-D solve, no quasi-random draws, no coarse correction, no smooth-error stop;
emulated with today's solver, whose measurement schedule differs in detail), capped at
``--legacy-seconds`` each, and the 1-D problems with today's
stochastic solver without the quantile solve (``exact_1d=False``).

    python benchmarks/small_problems.py --threads 2 [--seeds 3] [--legacy-seconds 10] [--only 1d] [--out NAME]
        [--warm-start zero]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from common import machine, save, set_before_26
from sdfm.data import load_dataset
from sdfm.transport import SemidiscreteSolver, estimate_marginal


def legacy(n: int, tol: float = 0.05) -> dict:
    """The solver's defaults before this benchmark existed, as settings of today's solver."""
    return dict(
        preconditioner="cell",
        empty_rise=False,
        warm_start="zero",
        exact_1d=False,
        lr=0.1,
        batch_size=4096,
        anneal_batch_size=1024,
        quasi_random=False,
        coarse_size=0,
        smooth_tol=None,
        eval_every=5.0,
        eval_samples=int(min(1 << 22, max(1 << 14, math.ceil(10.0 * math.sqrt(2.0 * n) / tol)))),
    )


def problems() -> dict[str, np.ndarray]:
    out = {}
    for n in (16, 64, 256, 1000):
        for d in (1, 2, 16):
            out[f"gmm n={n} d={d}"] = load_dataset(f"gmm:d={d},k=4,n={n}").x
        z = np.random.default_rng(1).standard_normal(n)
        out[f"sorted1d n={n}"] = np.sort(1.7 * z + 0.4)[:, None]  # the y = sort(1.7 z + 0.4)
        out[f"student3-1d n={n}"] = np.random.default_rng(2).standard_t(3, n)[:, None]
        out[f"student3-16d n={n}"] = np.random.default_rng(5).standard_t(3, (n, 16))
        t = np.random.default_rng(3).uniform(0, 2 * np.pi, n)
        r = 3 + 0.1 * np.random.default_rng(4).standard_normal(n)
        out[f"ring-2d n={n}"] = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def closed_form_chi2_1d(y: np.ndarray, potential: torch.Tensor) -> float:
    """chi2 of a 1-D potential from the N(0, 1) mass of each cell (scipy's CDF at the boundaries of
    the sorted cells); NaN if some cell is empty (the boundaries are not increasing)."""
    from scipy.stats import norm

    x = y[:, 0].astype(np.float64)
    g = potential.double().numpy()
    order = np.argsort(x)
    xs = x[order]
    h = g[order] - 0.5 * xs**2
    uniq = np.diff(xs) > 0
    if not uniq.all():
        return float("nan")
    bnd = -(np.diff(h)) / np.diff(xs)
    if (np.diff(bnd) < 0).any():
        return float("nan")
    mass = np.diff(np.concatenate([[0.0], norm.cdf(bnd), [1.0]]))
    return float((mass**2 * len(xs)).sum() - 1.0)


def run(y: np.ndarray, settings: dict, seed: int, max_seconds: float | None) -> dict:
    yt = torch.from_numpy(y)
    t = time.perf_counter()
    res = SemidiscreteSolver(max_seconds=max_seconds, **settings).solve(
        yt, generator=torch.Generator().manual_seed(seed)
    )
    seconds = time.perf_counter() - t
    est = estimate_marginal(
        yt, res.potential, num_samples=1 << 20, generator=torch.Generator().manual_seed(99), with_cost=False
    )
    out = {
        "seed": seed,
        "seconds": seconds,
        "samples_per_target": res.samples / y.shape[0],
        "steps": res.steps,
        "method": res.settings.get("method", "stochastic"),
        "converged": res.converged,
        "chi2_solver": res.chi2,
        "chi2_independent": est.chi2,
        "chi2_independent_se": est.chi2_stderr,
    }
    if y.shape[1] == 1:
        out["chi2_closed_form"] = closed_form_chi2_1d(y, res.potential)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--legacy-seconds", type=float, default=10.0, help="cap per legacy solve (0: skip legacy)")
    p.add_argument("--only", default="", help="run the problems whose name contains this")
    p.add_argument("--out", default="small_problems", help="results/OUT.json")
    p.add_argument(
        "--warm-start", default="best", help="the default solver's warm_start (zero: before section 25)"
    )
    p.add_argument("--before-26", action="store_true", help="the adaptive scales before section 26")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    before = set_before_26(args.before_26)
    rows = []
    for name, y in problems().items():
        if args.only not in name:
            continue
        new = [run(y, {"warm_start": args.warm_start, **before}, s, None) for s in range(args.seeds)]
        row = {"problem": name, "n": y.shape[0], "d": y.shape[1], "default": new}
        if args.legacy_seconds > 0:
            row["legacy"] = run(y, legacy(y.shape[0]), 0, args.legacy_seconds)
            if y.shape[1] == 1:  # the stochastic solver with today's defaults, without the quantile solve
                row["stochastic_1d"] = run(y, {"exact_1d": False}, 0, args.legacy_seconds)
        rows.append(row)
        spt = [r["samples_per_target"] for r in new]
        chi2 = [r["chi2_independent"] for r in new]
        closed = [r.get("chi2_closed_form", math.nan) for r in new]
        line = (
            f"{name:20s} default: spt max {max(spt):7.0f} s max {max(r['seconds'] for r in new):6.2f} "
            f"indep chi2 max {max(chi2):.4f} closed {max(closed):.4f}"
        )
        if "legacy" in row:
            lg = row["legacy"]
            line += (
                f" | legacy: spt {lg['samples_per_target']:8.0f} s {lg['seconds']:6.2f} "
                f"indep {lg['chi2_independent']:.4f} conv {lg['converged']}"
            )
        if "stochastic_1d" in row:
            st = row["stochastic_1d"]
            line += f" | stochastic: spt {st['samples_per_target']:8.0f} indep {st['chi2_independent']:.4f}"
        print(line, flush=True)
    path = save(
        args.out, {"machine": machine(), "threads": args.threads, "warm_start": args.warm_start, "rows": rows}
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
