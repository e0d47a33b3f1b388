"""The solver benchmark problems (the core issue's three, a small 1-D one) and the independent chi2 check."""

from __future__ import annotations

import numpy as np
import torch

from sdfm.data import load_dataset
from sdfm.transport import estimate_marginal

PROBLEMS = {
    "checkerboard-2d": "checkerboard:n=10000",  # (i) 10,000 points in d = 2
    "digits-64d": "digits:split=all",  # (ii) scikit-learn digits, 1797 x 64, values 0..16
    "gmm8-64d": "gmm:d=64,k=8,n=10000",  # (iii) 10,000 points, 8-component mixture in d = 64
    "sorted1d-64": None,  # (iv) 64 points in 1-D: sort(1.7 z + 0.4), z standard normal (seed 0)
}

CHECK_SAMPLES = 1 << 20  # >= 10^6 fresh noise samples for every reported chi2


def load(name: str) -> np.ndarray:
    if name == "sorted1d-64":
        z = np.random.default_rng(0).standard_normal(64)
        return np.sort(1.7 * z + 0.4).astype(np.float32)[:, None]
    return np.ascontiguousarray(load_dataset(PROBLEMS[name]).x, dtype=np.float32)


def independent_chi2(y: np.ndarray, potential, seed: int = 12345) -> tuple[float, float]:
    """chi2 (and stderr) of a potential in sdfm's convention, on CHECK_SAMPLES fresh samples."""
    est = estimate_marginal(
        torch.from_numpy(y),
        torch.as_tensor(np.asarray(potential), dtype=torch.float64),
        num_samples=CHECK_SAMPLES,
        batch_size=8192,
        generator=torch.Generator().manual_seed(seed),
        with_cost=False,
    )
    return est.chi2, est.chi2_stderr


def solve_and_check(solver, y: np.ndarray, seed: int = 0, callback=None):
    """(result, seconds, independent chi2, its stderr) of one seeded solve of y."""
    import time

    t0 = time.perf_counter()
    res = solver.solve(torch.from_numpy(y), generator=torch.Generator().manual_seed(seed), callback=callback)
    seconds = time.perf_counter() - t0
    return (res, seconds, *independent_chi2(y, res.potential))


def solve_row(solver, y: np.ndarray, seed: int = 0) -> dict:
    """One seeded solve of y as a results row: seconds, samples per target, whether it converged,
    the solver's chi2 and the independent one (with its stderr)."""
    res, seconds, chi2, se = solve_and_check(solver, y, seed)
    return {
        "seconds": round(seconds, 1),
        "samples_per_target": round(res.samples / len(y), 1),
        "converged": res.converged,
        "chi2_solver": round(res.chi2, 4),
        "chi2_independent": round(chi2, 4),
        "chi2_independent_se": round(se, 4),
    }
