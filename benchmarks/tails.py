"""Heavy tails and tiny far clusters in 2-D: where the defaults are slow or do not converge, and why.

    python benchmarks/tails.py            # results/tails.json
    python benchmarks/tails.py scales     # results/tails_scales.json

``compare``: N = 1,000 targets in 2-D (and one in 16-D) solved with the defaults (tol 0.05, 40 s
budget, solver seed 0, 2 threads), each chi2 checked independently (float64 brute-force argmax on
400,000 fresh samples, bias-corrected, as ``chains.py`` does): Student t with 3 degrees of freedom,
a log-normal, a Cauchy (extremes near 6,000), t3 in 16-D, and a tiny far cluster (10 points of
spread 0.01 at (30, 30) beside 990 standard normal points; its mass is counted on 2^20 fresh samples,
it should be 1%). A standard normal and a 2-D mixture of 8 Gaussians are the references. Each row
also has the solver's last chi2 measurement with the worst smooth-group error it compared
(``smooth_ratio``, in floors) and whether that error held the stop after chi2 passed.

``scales``: the per-cell step scale of the solver (``CellScales.scale()``, read at the end of a
default solve through a wrapper) against the cell's true mean score gap, counted on 2^22 fresh
float64 samples for the returned potential. The solver's step is lr * scale * (1 - m / b): a scale
that is k times the cell's own gap makes the step k times larger than the Newton-like step the
defaults were tuned for. Quantiles over the cells holding at least 0.3 / N of the mass.
"""

from __future__ import annotations

import argparse
import time

import torch

from chains import BUDGET, independent_chi2
from common import CELL, machine, save
from sdfm.transport import SemidiscreteSolver, assign
from sdfm.transport.semidiscrete import parts

N = 1000


def _problems() -> dict[str, tuple[torch.Tensor, int | None]]:
    """name -> (targets, index where the far cluster starts or None)."""
    g = torch.Generator().manual_seed(0)
    t3 = torch.distributions.StudentT(3.0)
    cauchy = torch.distributions.Cauchy(0.0, 1.0)
    torch.manual_seed(0)
    out = {
        "student_t3_2d": (t3.sample((N, 2)), None),
        "lognormal_2d": (torch.exp(torch.randn(N, 2, generator=g)), None),
        "cauchy_2d": (cauchy.sample((N, 2)), None),
        "student_t3_16d": (t3.sample((N, 16)), None),
        "far_cluster_2d": (
            torch.cat([torch.randn(N - 10, 2, generator=g), 30 + 0.01 * torch.randn(10, 2, generator=g)]),
            N - 10,
        ),
        "gaussian_2d": (torch.randn(N, 2, generator=g), None),
    }
    centres = 4 * torch.randn(8, 2, generator=g)
    out["mixture_2d"] = (torch.randn(N, 2, generator=g) + centres[torch.arange(N) % 8], None)
    return out


def _solve(y: torch.Tensor, measured: list | None = None):
    solver = SemidiscreteSolver(tol=0.05, max_seconds=BUDGET, **CELL)

    def keep(state):
        if measured is not None and state.measured is not None and state.measured.step == state.step:
            measured.append(state.measured)

    return solver.solve(y, generator=torch.Generator().manual_seed(0), callback=keep)


def compare() -> None:
    rows = []
    for name, (y, far) in _problems().items():
        start = time.perf_counter()
        measured = []
        r = _solve(y, measured)
        last = measured[-1]
        row = {
            "problem": name,
            "N": y.shape[0],
            "d": y.shape[1],
            "extent": round(float(y.abs().max()), 1),
            "seconds": round(time.perf_counter() - start, 2),
            "samples_per_target": round(r.samples / y.shape[0], 1),
            "converged": r.converged,
            "chi2_independent": round(independent_chi2(y, r.potential), 4),
            "lr_scale": r.settings["lr_scale"],
            "last_measurement": {
                "chi2": round(last.chi2, 4),
                "smooth_ratio": None if last.smooth_ratio is None else round(last.smooth_ratio, 2),
                "smooth_held": last.smooth_held,
            },
        }
        if far is not None:
            gen = torch.Generator().manual_seed(9)
            x = torch.randn(1 << 20, y.shape[1], generator=gen, dtype=torch.float64)
            hit = assign(x, y.double(), r.potential.double()) >= far
            row["far_mass"] = round(float(hit.double().mean()), 4)
            row["far_weight"] = (y.shape[0] - far) / y.shape[0]
        rows.append(row)
        print(row, flush=True)
    save("tails", {"machine": machine(), "budget_seconds": BUDGET, "rows": rows})


def _true_mean_gaps(y: torch.Tensor, potential: torch.Tensor, samples: int = 1 << 22):
    """Per-cell mass [N], mean score gap [N] and the Newton ratio q [N] (mean gap times the density
    of gaps at 0, over the mass: 1/2 for gaps uniform over [0, G]) on fresh float64 samples."""
    y = y.double()
    h = potential.double() - 0.5 * y.square().sum(1)
    gen = torch.Generator().manual_seed(5)
    index, gaps = [], []
    for _ in range(samples >> 18):
        x = torch.randn(1 << 18, y.shape[1], generator=gen, dtype=torch.float64)
        top = (x @ y.T + h).topk(2, dim=1)
        index.append(top.indices[:, 0])
        gaps.append(top.values[:, 0] - top.values[:, 1])
    index, gaps = torch.cat(index), torch.cat(gaps)
    n = y.shape[0]
    hits = torch.bincount(index, minlength=n).double()
    mean_gap = torch.bincount(index, weights=gaps, minlength=n) / hits.clamp_min(1)
    near = torch.bincount(index, weights=(gaps < 0.05 * mean_gap[index]).double(), minlength=n)
    return hits / samples, mean_gap, near / (0.05 * mean_gap.clamp_min(1e-300)) * mean_gap / hits.clamp_min(1)


def scales() -> None:
    last = {}
    original = parts.CellScales.scale

    def recording(self):
        last["scale"] = original(self)
        return last["scale"]

    parts.CellScales.scale = recording
    qs = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    rows = []
    problems = _problems()
    for name in ("gaussian_2d", "mixture_2d", "student_t3_2d", "lognormal_2d"):
        y = problems[name][0]
        r = _solve(y)
        mass, mean_gap, q = _true_mean_gaps(y, r.potential)
        ok = mass > 0.3 / y.shape[0]
        ratio = (last["scale"].cpu() / mean_gap)[ok]
        rows.append(
            {
                "problem": name,
                "converged": r.converged,
                "lr_scale": r.settings["lr_scale"],
                "quantiles": qs.tolist(),
                "solver_scale_over_mean_gap": [round(float(v), 2) for v in torch.quantile(ratio, qs)],
                "newton_ratio_q": [round(float(v), 2) for v in torch.quantile(q[ok], qs)],
                "mean_gap_spread": round(float(mean_gap[ok].max() / mean_gap[ok].min()), 1),
            }
        )
        print(rows[-1], flush=True)
    parts.CellScales.scale = original
    save("tails_scales", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="compare", choices=["compare", "scales"])
    torch.set_num_threads(2)
    {"compare": compare, "scales": scales}[parser.parse_args().what]()
