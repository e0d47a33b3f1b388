"""Small N, large d: the solver with the smooth groups' principal directions from a d x d covariance
eigh (the code before, forced by ``EXACT_PCA_MAX_DIM``) against the subspace iteration (today's default
above d = 256), in the same process; chi2 of each potential checked independently on 2^18 fresh
samples (``estimate_marginal``, float64).

    python benchmarks/high_dim.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

import sdfm.transport.smoothness as smoothness
from common import CELL, machine, save
from sdfm.transport import SemidiscreteSolver, estimate_marginal

CASES = [(50, 1000), (50, 4000), (200, 4000), (1000, 2000)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    default_max = smoothness.EXACT_PCA_MAX_DIM
    for n, d in CASES:
        y = torch.randn(n, d, generator=torch.Generator().manual_seed(0)) * torch.linspace(2, 1, d)
        for eps in (0.0, 0.1):
            for name, max_dim in (("exact eigh (before)", 1 << 30), ("subspace iteration", default_max)):
                smoothness.EXACT_PCA_MAX_DIM = max_dim
                t0 = time.perf_counter()
                res = SemidiscreteSolver(eps=eps, **CELL).solve(y, generator=torch.Generator().manual_seed(1))
                seconds = time.perf_counter() - t0
                check = estimate_marginal(
                    y,
                    res.potential,
                    eps=res.eps,
                    num_samples=1 << 18,
                    dtype=torch.float64,
                    generator=torch.Generator().manual_seed(7),
                )
                row = {
                    "n": n,
                    "d": d,
                    "eps": eps,
                    "pca": name,
                    "seconds": seconds,
                    "samples_per_target": res.samples / n,
                    "chi2": res.chi2,
                    "chi2_check": check.chi2,
                }
                rows.append(row)
                print(
                    f"N={n:5d} d={d:5d} eps={eps:3.1f} {name:20s} {seconds:7.2f} s  "
                    f"{row['samples_per_target']:6.0f} spt  chi2 {res.chi2:.4f}  check {check.chi2:.4f}"
                )
    smoothness.EXACT_PCA_MAX_DIM = default_max
    save("high_dim", {"machine": machine(), "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
