"""Inputs from the edges of what users bring, solved with the defaults and checked independently.

    python benchmarks/unusual.py            # results/unusual.json

Tiny N (1-3 points), d up to 3,000, binary and one-hot vectors, coordinates scaled from 1e-3 to 1e3,
offsets of 1e3 and 1e5, data scaled by 1e-4 and 1e4, a lattice (ties), spheres, integer 1-D data with
many duplicates, far 1-D clusters, a tiny class beside a large one, a circle and a Swiss roll, a single
outlier at 1e3, 10^5 points in 1-D, tight clusters in 512-d and a uniform cube. Each is solved with the
defaults (tol 0.05, solver seed 0, at most 6,000 steps and 60 s); chi2 is checked on 400,000 fresh
float64 samples assigned by brute force (``assign``; merged copies taken out as the coupling does), by
the unbiased estimate sum_j (M p_j^2 - p_j) / ((M - 1) b_j) - 1 (``chi2_from_counts``) over the
groups of merged targets. "empty" counts the groups no check sample reaches (about exp(-400,000 b_j)
of a group is expected to be: at N = 10^5, 1.8% of them).

    python benchmarks/unusual.py circle     # results/unusual_circle.json

The circle of 3,000 points, where float32 scores cannot tell the nearest atoms apart: along the
direction of x the scores of neighbouring atoms differ by about |x| R dtheta^2 / 2 (4e-6 here), near
float32's resolution of scores of size |x| R. Solved with the chi2 stop alone (``smooth_tol=None``)
in float32 and with ``dtype="float64"`` (the default smooth stop, 60 s), each potential's chi2
measured by ``estimate_marginal`` on 2^20 samples with float32 and with float64 scores.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import group_counts, machine, save  # noqa: E402
from sdfm.transport import SemidiscreteSolver, assign, chi2_from_counts  # noqa: E402

MAX_STEPS, MAX_SECONDS, CHECK = 6000, 60.0, 400_000


def problems() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {
        "N = 1, d = 2": rng.normal(size=(1, 2)),
        "N = 2, d = 1": rng.normal(size=(2, 1)),
        "N = 2, d = 5": rng.normal(size=(2, 5)),
        "N = 3, d = 100": rng.normal(size=(3, 100)),
        "Gaussian 300 x 3,000": rng.normal(size=(300, 3000)),
        "binary 2,000 x 1,024 (p = 0.1)": (rng.uniform(size=(2000, 1024)) < 0.1) * 1.0,
        "scales 1e-3..1e3, 2,000 x 8": rng.normal(size=(2000, 8)) * np.logspace(-3, 3, 8),
        "offset 1e3, 2,000 x 4": rng.normal(size=(2000, 4)) + 1e3,
        "offset 1e5, 2,000 x 4": rng.normal(size=(2000, 4)) + 1e5,
        "scale 1e-4, 2,000 x 3": rng.normal(size=(2000, 3)) * 1e-4,
        "scale 1e4, 2,000 x 3": rng.normal(size=(2000, 3)) * 1e4,
    }
    out["lattice 20 x 20"] = (
        np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2) / 10 - 0.95
    )
    s = rng.normal(size=(1000, 10))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    out["unit sphere, 1,000 x 10"] = s
    out["sphere of radius 5, 1,000 x 10"] = 5 * s
    out["Poisson counts, 1,000 x 1 (duplicates)"] = rng.poisson(3.0, size=(1000, 1)) * 1.0
    out["1-D clusters at -100 and 100, 5,000"] = np.concatenate(
        [rng.normal(size=(2500, 1)) - 100, rng.normal(size=(2500, 1)) + 100]
    )
    out["one-hot 50 x 50"] = np.eye(50)
    out["one-hot labels 1,000 x 10 (duplicates)"] = np.eye(10)[rng.integers(0, 10, 1000)]
    out["a class of 5 beside 5,000, 2-D"] = np.concatenate(
        [rng.normal(size=(5000, 2)), rng.normal(size=(5, 2)) * 0.1 + [3, 3]]
    )
    t = rng.uniform(0, 2 * np.pi, 3000)
    out["circle, 3,000 x 2"] = np.stack([np.cos(t), np.sin(t)], 1) * 2
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=5000))
    out["Swiss roll, 5,000 x 3"] = (
        np.stack([t * np.cos(t), 21 * rng.uniform(size=5000), t * np.sin(t)], 1) / 10
    )
    out["Gaussian + one point at 1e3, 1,001 x 2"] = np.concatenate([rng.normal(size=(1000, 2)), [[1e3, 0]]])
    out["1-D Gaussian, 100,000"] = rng.normal(size=(100_000, 1))
    c = rng.normal(size=(10, 512)) * 10
    out["10 tight clusters, 2,000 x 512"] = c[rng.integers(0, 10, 2000)] + 0.01 * rng.normal(size=(2000, 512))
    out["cubed exponential, 3,000 x 1"] = rng.exponential(size=(3000, 1)) ** 3
    out["uniform cube, 5,000 x 5"] = rng.uniform(size=(5000, 5))
    return out


def check(y: torch.Tensor, result) -> tuple[float, int, int]:
    """(unbiased chi2 over the groups of merged targets, groups no sample reaches, groups)."""
    n = y.shape[0]
    counts, b = group_counts(y, torch.full((n,), 1.0 / n, dtype=torch.float64), result, CHECK, 50_000)
    return chi2_from_counts(counts, b), int((counts == 0).sum()), int(b.shape[0])


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for name, array in problems().items():
        y = torch.tensor(array, dtype=torch.float32)
        solver = SemidiscreteSolver(tol=0.05, max_steps=MAX_STEPS, max_seconds=MAX_SECONDS)
        start = time.perf_counter()
        r = solver.solve(y, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        chi2, empty, groups = check(y, r)
        row = {
            "problem": name,
            "N": y.shape[0],
            "d": y.shape[1],
            "seconds": round(seconds, 2),
            "samples_per_target": round(r.samples / y.shape[0], 1),
            "method": r.settings.get("method"),
            "converged": r.converged,
            "chi2_solver": round(r.chi2, 4),
            "chi2_independent": round(chi2, 4),
            "empty_groups": empty,
            "groups": groups,
        }
        print(row, flush=True)
        rows.append(row)
    save("unusual", {"machine": machine(), "max_steps": MAX_STEPS, "max_seconds": MAX_SECONDS, "rows": rows})


def circle() -> None:
    from sdfm.transport import estimate_marginal

    torch.set_num_threads(2)
    y = torch.tensor(problems()["circle, 3,000 x 2"], dtype=torch.float32)
    rows = []
    for label, options in (
        ("float32, chi2 stop alone", {"smooth_tol": None}),
        ("float64", {"dtype": "float64"}),
    ):
        solver = SemidiscreteSolver(tol=0.05, max_steps=MAX_STEPS, max_seconds=MAX_SECONDS, **options)
        start = time.perf_counter()
        r = solver.solve(y, generator=torch.Generator().manual_seed(0))
        row = {
            "solve": label,
            "seconds": round(time.perf_counter() - start, 2),
            "samples_per_target": round(r.samples / y.shape[0], 1),
            "converged": r.converged,
            "chi2_solver": round(r.chi2, 4),
        }
        for dtype in (torch.float32, torch.float64):
            m = estimate_marginal(
                y,
                r.potential,
                duplicates=r.duplicates,
                num_samples=1 << 20,
                generator=torch.Generator().manual_seed(1),
                dtype=dtype,
                with_cost=False,
            )
            row[f"chi2_{str(dtype).split('.')[1]}_scores"] = round(m.chi2, 4)
        x = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        g = r.potential if r.duplicates is None else r.duplicates.representatives_only(r.potential)
        row["float32_vs_float64_pairs_differ"] = float(
            (assign(x, y.double(), g.double()) != assign(x.float(), y, g)).double().mean()
        )
        print(row, flush=True)
        rows.append(row)
    save("unusual_circle", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    circle() if sys.argv[1:] == ["circle"] else main()
