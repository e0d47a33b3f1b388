"""Mass errors along smooth functions of the data (the errors chi2 hardly sees), and the solver's cost,
with the default solver, without its coarse-space correction, and with the previous defaults
(``legacy`` of ``small_problems.py``).

Each potential is checked independently of the solver: chi2 on 2^20 fresh samples
(``estimate_marginal``), and the mass of groups of atoms built here, not by sdfm: quartiles of the
radius |y - mean|, quartiles along the top two principal directions (numpy SVD), and 16 k-means
clusters (scikit-learn). A group's error is compared with the floor the chi2 itself implies, plus the
check's own sampling noise: floor_G = sqrt(chi2 sum_{j in G} b_j^2 + b_G (1 - b_G) / M) / b_G. A ratio
of error to floor well above 3 is a smooth bias.

    python benchmarks/smooth_errors.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import machine, save, set_before_26
from sdfm.data import load_dataset
from sdfm.transport import SemidiscreteSolver, estimate_marginal
from small_problems import legacy

PROBLEMS = {
    "checkerboard-2d": "checkerboard:n=10000",
    "checkerboard-2k": "checkerboard:n=2000",
    "digits-64d": "digits:split=all",
    "mnist1d-40d": "mnist1d",
    "gmm8-64d": "gmm:d=64,k=8,n=10000",
}
CONFIGS = {"default": {}, "no coarse": {"coarse_size": 0}, "legacy": None}
CHECK = 1 << 20


def groups(y: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.cluster import KMeans

    z = y.astype(np.float64) - y.mean(0)
    out = {}
    r = np.linalg.norm(z, axis=1)
    out["radius"] = np.searchsorted(np.quantile(r, [0.25, 0.5, 0.75]), r)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    for i in range(min(2, y.shape[1])):
        p = z @ vt[i]
        out[f"pc{i + 1}"] = np.searchsorted(np.quantile(p, [0.25, 0.5, 0.75]), p)
    out["clusters"] = KMeans(16, n_init=3, random_state=0).fit(z).labels_
    return out


def smooth_report(labels: dict[str, np.ndarray], mass: np.ndarray, chi2: float) -> dict:
    n = mass.shape[0]
    b = np.full(n, 1.0 / n)
    out = {}
    for family, lab in labels.items():
        k = int(lab.max()) + 1
        mg = np.bincount(lab, mass, k)
        bg = np.bincount(lab, b, k)
        floor = np.sqrt(max(chi2, 0.0) * np.bincount(lab, b * b, k) + bg * (1 - bg) / CHECK) / bg
        rel = (mg - bg) / bg
        g = int(np.argmax(np.abs(rel) / floor))
        out[family] = {
            "relative_error": float(rel[g]),
            "floor": float(floor[g]),
            "ratio": float(abs(rel[g]) / floor[g]),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--max-seconds", type=float, default=120.0, help="cap per solve")
    p.add_argument(
        "--warm-start", default="best", help="the default solver's warm_start (zero: before section 25)"
    )
    p.add_argument("--out", default="smooth_errors", help="results/OUT.json")
    p.add_argument("--before-26", action="store_true", help="the adaptive scales before section 26")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    before = set_before_26(args.before_26)
    rows = []
    for name in args.problems.split(","):
        y = np.ascontiguousarray(load_dataset(PROBLEMS[name]).x, dtype=np.float32)
        labels = groups(y)
        for config, settings in CONFIGS.items():
            t = time.perf_counter()
            if settings is None:
                settings = legacy(y.shape[0])
            else:
                settings = {"warm_start": args.warm_start, **before, **settings}
            res = SemidiscreteSolver(max_seconds=args.max_seconds, **settings).solve(
                torch.from_numpy(y), generator=torch.Generator().manual_seed(0)
            )
            seconds = time.perf_counter() - t
            est = estimate_marginal(
                torch.from_numpy(y),
                res.potential,
                num_samples=CHECK,
                generator=torch.Generator().manual_seed(12345),
                with_cost=False,
            )
            smooth = smooth_report(labels, est.mass.numpy(), est.chi2)
            row = {
                "problem": name,
                "shape": list(y.shape),
                "config": config,
                "seconds": seconds,
                "samples_per_target": res.samples / y.shape[0],
                "converged": res.converged,
                "chi2": est.chi2,
                "chi2_stderr": est.chi2_stderr,
                "smooth": smooth,
            }
            rows.append(row)
            worst = max(smooth.values(), key=lambda e: e["ratio"])
            fam = max(smooth, key=lambda f: smooth[f]["ratio"])
            print(
                f"{name:16s} {config:10s} {seconds:6.1f}s spt {row['samples_per_target']:6.0f} "
                f"chi2 {est.chi2:.4f}±{est.chi2_stderr:.4f} "
                f"worst {fam} {100 * worst['relative_error']:+.2f}% "
                f"(floor {100 * worst['floor']:.2f}%, {worst['ratio']:.1f}x)",
                flush=True,
            )
    path = save(
        args.out, {"machine": machine(), "threads": args.threads, "warm_start": args.warm_start, "rows": rows}
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
