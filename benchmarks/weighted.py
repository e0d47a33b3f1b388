"""Weighted targets: the step's residual floor and noise cap per cell (section 27).

    python benchmarks/weighted.py            # results/weighted.json

Target weights that span decades (log-uniform weights, Zipf weights, one heavy atom, k-means
centres weighted by their cluster sizes, rounded data whose duplicates merge), each solved two ways
(tol 0.05, solver seeds 0-2, at most 6,000 steps and 30 s):

- ``before``: every cell's expected count per batch taken as batch / N, as before section 27
  (``before_27`` of ``common.py``): a cell of weight b_j << 1 / N had its residual clipped at -3
  although a single hit means 1 - 1 / (batch b_j), and its step capped as if it were counted N b_j
  times more often than it is;
- ``now``: both per cell, from batch b_j (the default);
- ``now, eval_samples 2^17``: the same with chi2 measurements of 131,072 samples instead of about
  9,000, on the problem whose lightest weights are below 1e-4 / N (a measurement of M samples rarely
  sees cells far lighter than 1 / M, and can pass while a few of them hold hundreds of times their
  weight).

A uniform-weight control is solved both ways too (the two must agree bit for bit). The check is
independent: 10^6 float64 samples assigned by brute force (``assign``; merged copies taken out as the
coupling does), chi2 over the groups of merged targets by the unbiased estimate
sum_j (M p_j^2 - p_j) / ((M - 1) b_j) - 1 (p_j the fraction of the M samples in cell j), which stays
unbiased where a cell's mass is many times its weight (the usual correction (N - 1) / M assumes
p_j close to b_j).
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import before_27, group_counts, machine, save  # noqa: E402
from sdfm.transport import SemidiscreteSolver, chi2_from_counts  # noqa: E402

MAX_STEPS, MAX_SECONDS, CHECK, SEEDS = 6000, 30.0, 1_000_000, (0, 1, 2)


def _log_uniform(rng, n: int, low: float) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), 0.0, size=n))


def _kmeans_weighted(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    km = KMeans(k, n_init=1, random_state=0).fit(points)
    return km.cluster_centers_, np.bincount(km.labels_, minlength=k).astype(float)


def problems() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(0)
    out = {
        "uniform weights (control), 1,000 x 2": (rng.normal(size=(1000, 2)), np.ones(1000)),
        "log-uniform 1e-4..1, 1,000 x 2": (rng.normal(size=(1000, 2)), _log_uniform(rng, 1000, 1e-4)),
        "log-uniform 1e-6..1, 1,000 x 2": (rng.normal(size=(1000, 2)), _log_uniform(rng, 1000, 1e-6)),
        "log-uniform 1e-4..1, 2,000 x 64": (rng.normal(size=(2000, 64)), _log_uniform(rng, 2000, 1e-4)),
        "Zipf (1 / rank), 5,000 x 8": (rng.normal(size=(5000, 8)), 1.0 / np.arange(1, 5001)),
    }
    heavy = np.ones(1000)
    heavy[0] = 999.0
    out["one atom holds half, 1,000 x 2"] = (rng.normal(size=(1000, 2)), heavy)
    u = rng.uniform(-2, 2, size=(100_000, 2))
    u = u[(np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 0]
    out["k-means 500 of a checkerboard (cluster sizes)"] = _kmeans_weighted(u, 500)
    out["k-means 300 of Student t 2 dof (cluster sizes)"] = _kmeans_weighted(
        rng.standard_t(2, size=(20_000, 2)), 300
    )
    out["rounded Gaussian (merged), log-uniform 1e-3..1, 1,000 x 2"] = (
        np.round(rng.normal(size=(1000, 2)), 1),
        _log_uniform(rng, 1000, 1e-3),
    )
    return {
        k: (torch.tensor(y, dtype=torch.float32), torch.tensor(w, dtype=torch.float32))
        for k, (y, w) in out.items()
    }


def check(y: torch.Tensor, w: torch.Tensor, result) -> tuple[float, float]:
    """(unbiased chi2 over the groups of merged targets, the largest mass / weight of a group)."""
    counts, b = group_counts(y, (w / w.sum()).double(), result, CHECK, 100_000)
    return chi2_from_counts(counts, b), float((counts / CHECK / b).max())


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for name, (y, w) in problems().items():
        light = float(w.min() / w.sum() * y.shape[0]) < 1e-4
        for label in ("before", "now") + (("now, eval_samples 2^17",) if light else ()):
            extra = {"eval_samples": 1 << 17} if label.startswith("now,") else {}
            for seed in SEEDS:
                with before_27(label == "before"):
                    solver = SemidiscreteSolver(
                        tol=0.05, max_steps=MAX_STEPS, max_seconds=MAX_SECONDS, **extra
                    )
                    start = time.perf_counter()
                    r = solver.solve(y, w, generator=torch.Generator().manual_seed(seed))
                    seconds = time.perf_counter() - start
                chi2, worst = check(y, w, r)
                row = {
                    "problem": name,
                    "N": y.shape[0],
                    "d": y.shape[1],
                    "min_weight_times_n": float(w.min() / w.sum() * y.shape[0]),
                    "variant": label,
                    "seed": seed,
                    "seconds": round(seconds, 2),
                    "samples_per_target": round(r.samples / y.shape[0], 1),
                    "converged": r.converged,
                    "chi2_solver": round(r.chi2, 4),
                    "chi2_independent": round(chi2, 4),
                    "max_mass_over_weight": round(worst, 1),
                    "potential_md5": hashlib.md5(r.potential.numpy().tobytes()).hexdigest(),
                }
                print(row, flush=True)
                rows.append(row)
    save("weighted", {"machine": machine(), "max_steps": MAX_STEPS, "max_seconds": MAX_SECONDS, "rows": rows})


if __name__ == "__main__":
    main()
