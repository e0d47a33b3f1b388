"""Chains of narrow cells (issue 14, section 1: "long chains of cells"): targets on or near a line in
d > 1, curves in 2-D and 3-D, the built-in two-moons set. Each problem is solved with the defaults
and with the piece that handles it switched off (``exact_1d=False`` for the collinear ones, which
turns off the line detection, ``lr_control=False`` for the others), side by side in one process,
under the same time budget, plus problems where neither piece should change anything.

    python benchmarks/chains.py            # results/chains.json
    python benchmarks/chains.py steps      # results/chains_steps.json
    python benchmarks/chains.py pairing    # results/chains_pairing.json

``steps``: why the step control exists. The iterate's own chi2 (the solver's running mean of the
batches', last history entry) with the fixed default step on the spiral, the 2-D mixture and a ring,
and the spiral solved with a fixed lr = 0.005 (both with ``lr_control=False``).

``pairing``: the float32 rounding of a line's chain of cells. The exact potential of 10,000 atoms on
a line in 2-D (solved in float64, targets then stored in float32) is counted on 2^20 fresh samples by
``estimate_marginal`` (which scores lines in float64) and by float32 scores of the same targets
(centred keys and a bias shifted to max 0, cast to float32: pairing's float32 path).

chi2 is measured independently: float64 brute-force argmax of <x, y_j> + g_j - |y_j|^2 / 2 on
400,000 fresh noise samples (seed 123), bias-corrected. tol 0.05, solver seed 0, 2 threads.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import CELL, machine, save
from sdfm.data.registry import DATASETS
from sdfm.transport import SemidiscreteSolver, assign, estimate_marginal
from sdfm.transport.diagnostics import chi2_from_counts

BUDGET = 40.0


def _curve(n: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(n, 1, generator=g)
    if kind == "line_2d":
        return torch.cat([1.7 * t + 0.4, 0.3 + 0 * t], 1)
    if kind == "line_16d":
        return t @ torch.randn(1, 16, generator=g) / 4
    if kind == "noisy_line_2d":
        return torch.cat([1.7 * t, 1e-3 * torch.randn(n, 1, generator=g)], 1)
    if kind == "spiral_2d":
        r = 3 * t.abs() + 0.5
        return torch.cat([r * torch.cos(4 * t), r * torch.sin(4 * t)], 1)
    if kind == "helix_3d":
        return torch.cat([torch.cos(3 * t), torch.sin(3 * t), 0.3 * t], 1)
    if kind == "mixture_2d":
        return torch.randn(n, 2, generator=g) + 4 * torch.randn(8, 2, generator=g)[torch.arange(n) % 8]
    raise ValueError(kind)


def _builtin(name: str) -> torch.Tensor:
    return torch.as_tensor(DATASETS[name]()[0]).float()


PROBLEMS = {
    "line_2d": (lambda: _curve(1000, "line_2d"), "exact_1d"),
    "line_16d": (lambda: _curve(1000, "line_16d"), "exact_1d"),
    "noisy_line_2d (1e-3)": (lambda: _curve(1000, "noisy_line_2d"), "exact_1d"),
    "spiral_2d": (lambda: _curve(1000, "spiral_2d"), "lr_control"),
    "helix_3d": (lambda: _curve(1000, "helix_3d"), "lr_control"),
    "moons (built-in)": (lambda: _builtin("moons"), "lr_control"),
    "mixture_2d": (lambda: _curve(1000, "mixture_2d"), "lr_control"),
    "checkerboard (built-in)": (lambda: _builtin("checkerboard"), "lr_control"),
    "spirals (built-in)": (lambda: _builtin("spirals"), "lr_control"),
    "gmm 16-d (built-in)": (lambda: _builtin("gmm"), "lr_control"),
    "digits (built-in)": (lambda: _builtin("digits"), "lr_control"),
}


def independent_chi2(y: torch.Tensor, potential: torch.Tensor, n: int = 400_000) -> float:
    x = torch.randn(n, y.shape[1], generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    counts = torch.bincount(assign(x, y.double(), potential.double()), minlength=y.shape[0])
    m, w = counts.double() / n, 1.0 / y.shape[0]
    return float(((m - w) ** 2 / w).sum()) - (y.shape[0] - 1) / n


def run(y: torch.Tensor, **options) -> dict:
    start = time.perf_counter()
    r = SemidiscreteSolver(tol=0.05, max_seconds=BUDGET, **{**CELL, **options}).solve(
        y, generator=torch.Generator().manual_seed(0)
    )
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "samples_per_target": round(r.samples / y.shape[0], 1),
        "converged": r.converged,
        "chi2_independent": round(independent_chi2(y, r.potential), 4),
        "method": r.settings["method"],
        "lr_scale": r.settings["lr_scale"],
    }


def compare() -> None:
    rows = []
    for name, (make, piece) in PROBLEMS.items():
        y = make()
        row = {"problem": name, "N": y.shape[0], "d": y.shape[1], "piece": piece}
        row["default"] = run(y)
        row["without"] = run(y, **{piece: False})
        rows.append(row)
        d, w = row["default"], row["without"]
        print(
            f"{name:26s} N={y.shape[0]:6d} d={y.shape[1]:3d} | default {d['seconds']:6.2f} s "
            f"{d['samples_per_target']:8.1f} spt chi2 {d['chi2_independent']:.4f} ({d['method']}, "
            f"lr x {d['lr_scale']:.4g}) | {piece}=False {w['seconds']:6.2f} s "
            f"{w['samples_per_target']:8.1f} spt chi2 {w['chi2_independent']:.4f}",
            flush=True,
        )
    save("chains", {"machine": machine(), "budget_seconds": BUDGET, "rows": rows})


def _ring(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    angle = 6.28 * torch.rand(n, 1, generator=g)
    return torch.cat([torch.cos(angle), torch.sin(angle)], 1) * (3 + 0.1 * torch.randn(n, 1, generator=g))


def steps() -> None:
    rows = []
    for name, y in (
        ("spiral_2d", _curve(1000, "spiral_2d")),
        ("mixture_2d", _curve(1000, "mixture_2d")),
        ("ring_2d", _ring(1000)),
    ):
        r = SemidiscreteSolver(tol=0.05, max_seconds=10.0, lr_control=False, **CELL).solve(
            y, generator=torch.Generator().manual_seed(0)
        )
        rows.append(
            {
                "problem": name,
                "lr": 0.35,
                "chi2_iterate": round(r.history[-1].chi2_iterate, 3),
                "converged": r.converged,
                "seconds": round(r.seconds, 2),
            }
        )
        print(rows[-1], flush=True)
    y = _curve(1000, "spiral_2d")
    row = {"problem": "spiral_2d", "lr": 0.005, **run(y, lr=0.005, lr_control=False)}
    rows.append(row)
    print(row, flush=True)
    save("chains_steps", {"machine": machine(), "rows": rows})


def pairing() -> None:
    y64 = _curve(10_000, "line_2d").double()
    r = SemidiscreteSolver(**CELL).solve(y64, generator=torch.Generator().manual_seed(0))
    y = y64.float()
    n = 1 << 20
    est = estimate_marginal(y, r.potential, num_samples=n, generator=torch.Generator().manual_seed(2))
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(2))
    # float32 scores as pairing computed them before (centred keys, bias shifted to max 0, cast)
    mean = y.double().mean(0)
    bias64 = r.potential - 0.5 * y.double().square().sum(1) + y.double() @ mean
    bias, keys = (bias64 - bias64.max()).float(), (y.double() - mean).float()
    counts = torch.zeros(y.shape[0], dtype=torch.long)
    for part in x.split(8192):
        counts += torch.bincount((part @ keys.T + bias).argmax(1), minlength=y.shape[0])
    out = {
        "machine": machine(),
        "N": 10_000,
        "samples": n,
        "method": r.settings["method"],
        "chi2_float64_scores": round(est.chi2, 4),
        "chi2_float32_scores": round(chi2_from_counts(counts), 4),
        "sampling_floor": round(10_000 / n, 4),
    }
    print(out, flush=True)
    save("chains_pairing", out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="compare", choices=["compare", "steps", "pairing"])
    torch.set_num_threads(2)
    {"compare": compare, "steps": steps, "pairing": pairing}[parser.parse_args().what]()
