"""The per-cell step scales and the coarse correction's trust bound: the designs behind the opt-in
``preconditioner="adaptive"`` (the default since BENCHMARKS.md section 24) measured against the cell
scales, the default before it (sections 21-24).

    python benchmarks/step_designs.py           # results/step_designs.json
    python benchmarks/step_designs.py --problems cauchy_2d --out step_designs_cauchy
    python benchmarks/step_designs.py pairs     # results/step_designs_pairs.json
    python benchmarks/step_designs.py --designs cell adaptive --out step_designs_quantile  # section 22

``compare``: each problem solved with tol 0.05, solver seed 0 and at most 6,000 steps (2 threads), by
the solver with the cell scales, by three designs patched into it for the run (and all three together), and by
the solver's own option ``preconditioner="adaptive"``; chi2 checked independently (float64
brute-force argmax, 400,000 fresh samples, as ``chains.py``):

- ``cell``: a cell's step scale is its running mean score gap (decay 0.99 per step) plus a prior
  of one sample, of constant weight, at the global gap measured at the start. When a cell gets no
  samples its own weight decays and the prior takes over, so an empty cell's scale returns to the
  global gap whatever its own.
- ``fading prior``: the prior's weight decays like the samples' (0.99 per step), so a cell keeps the
  scale it last measured; a cell never hit keeps the global gap.
- ``fading prior + runner-up gaps``: as above, and each sample's gap also counts for its second-best
  atom: the gap is how far that atom's h is from winning the sample, the scale an empty cell needs.
- ``coarse trust in face units``: the coarse correction's trust bound measures the move of the face
  between atoms j and k in x (``|dh_j - dh_k| / |y_j - y_k|``) against the cell's width (its mean gap
  over its mean distance to its runner-ups), and its reach bound uses the larger of the cell's gap and
  its coarse functions' mass over flux; ``cell`` measures both in the cell's gap, which for a face
  between far-apart atoms is many times stricter.
- ``adaptive``: all three, and the restart of an average that lags the iterate.

Problems: the built-in 8gaussians, checkerboard, moons, gmm, digits and MNIST-1D (normalised as
``sdfm solve`` does), the chain-of-cells spiral and helix of ``chains.py``, the N = 1,000 2-D
problems of ``tails.py`` (standard normal, 8-component mixture, Student t, log-normal, one tiny far
cluster; Cauchy only when named), two tiny far clusters on opposite sides (10 points each at
(30, 30) and (-30, -30)), and clustered data: 4,000 points in 200 tight clusters (spread 0.02, centres
spread 5) in 2-D and in 100 such clusters in 8-D; the far clusters' mass is counted on 2^20 fresh
samples.

``pairs``: why the built-in 8gaussians is slow with the cell scales: its chi2 on 2^22 fresh samples after
700 steps, the share of that chi2 on the tenth of atoms whose nearest neighbour is closest, and the
cells left empty, against the same for the fading prior and the adaptive option.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch

from chains import PROBLEMS, independent_chi2
from common import CELL, ZERO_START, AdaptiveBefore26, machine, save
from sdfm.data.normalize import Normalization
from sdfm.data.registry import load_dataset
from sdfm.transport import SemidiscreteSolver, assign
from sdfm.transport.semidiscrete import coarse, parts
from tails import _problems

#: design -> (fading prior, runner-up gaps, coarse bounds in face units) patched into the solver with
#: the cell scales (the default before section 24, "cell"); "adaptive" is the solver's own option (all
#: three and the restart of a lagging average; the default since section 24)
DESIGNS = {
    "cell": (False, False, False),
    "fading prior": (True, False, False),
    "fading prior + runner-up gaps": (True, True, False),
    "coarse trust in face units": (False, False, True),
    "all three": (True, True, True),
    "adaptive": None,
}
#: problems run only when named (``--problems``): Cauchy data, which no design solves
ONLY_WHEN_NAMED = ("cauchy_2d",)
#: the budget of every solve (steps, not seconds, so that a rerun gives the same numbers)
MAX_STEPS = 6000


def _builtin(name: str) -> torch.Tensor:
    x = load_dataset(name).x
    return torch.as_tensor(Normalization.fit(x).apply(x))


def _all_problems() -> dict[str, tuple[torch.Tensor, list[int]]]:
    """name -> (targets, start indices of the far clusters)."""
    out = {
        name: (_builtin(name), [])
        for name in ("8gaussians", "checkerboard", "moons", "gmm", "digits", "mnist1d")
    }
    for name, (y, far) in _problems().items():
        if name != "student_t3_16d":
            out[name] = (y, [] if far is None else [far])
    out["spiral_2d"] = (PROBLEMS["spiral_2d"][0](), [])
    out["helix_3d"] = (PROBLEMS["helix_3d"][0](), [])
    g = torch.Generator().manual_seed(0)
    base = torch.randn(980, 2, generator=g)
    clusters = [30 + 0.01 * torch.randn(10, 2, generator=g), -30 + 0.01 * torch.randn(10, 2, generator=g)]
    out["two_far_clusters_2d"] = (torch.cat([base, *clusters]), [980, 990])
    out["200_tight_clusters_2d"] = (_tight_clusters(2, 200, 4000, seed=7), [])
    out["100_tight_clusters_8d"] = (_tight_clusters(8, 100, 4000, seed=3), [])
    return out


def _tight_clusters(d: int, k: int, n: int, seed: int) -> torch.Tensor:
    """n points in k tight clusters (spread 0.02) whose centres are spread 5 in d dimensions."""
    g = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(k, d, generator=g)
    return centres[torch.arange(n) % k] + 0.02 * torch.randn(n, d, generator=g)


class _FadingScales(AdaptiveBefore26):
    """The adaptive option's cell scales (the prior's weight fades with the samples'), with or without
    the runner-up gaps."""

    runner_up = False

    def update(self, index, best, second, second_index=None):
        super().update(index, best, second, second_index if self.runner_up else None)


@contextlib.contextmanager
def _design(name: str):
    """Patches the solver's parts for one design while the block runs."""
    saved = dict(parts.PRECONDITIONERS)
    saved_init = coarse.CoarseCorrection.__init__
    try:
        fading, runner_up, face = DESIGNS[name] or (False, False, False)
        parts.PRECONDITIONERS["adaptive"] = AdaptiveBefore26  # the adaptive scales of sections 21-25
        if fading:
            _FadingScales.runner_up = runner_up
            parts.PRECONDITIONERS["cell"] = _FadingScales
        if face:
            init = saved_init

            def face_init(self, *args, **kwargs):
                init(self, *args, **{**kwargs, "face_units": True})

            coarse.CoarseCorrection.__init__ = face_init
        yield
    finally:
        parts.PRECONDITIONERS.clear()
        parts.PRECONDITIONERS.update(saved)
        coarse.CoarseCorrection.__init__ = saved_init


def _far_mass(y: torch.Tensor, potential: torch.Tensor, starts: list[int]) -> list[float]:
    x = torch.randn(1 << 20, y.shape[1], generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    index = assign(x, y.double(), potential.double())
    bounds = [*starts, y.shape[0]]
    return [
        round(float(((index >= lo) & (index < hi)).double().mean()), 4)
        for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]


def compare(problems: list[str] | None, designs: list[str] | None, out: str) -> None:
    rows = []
    for name, (y, far) in _all_problems().items():
        if (name not in problems) if problems else name in ONLY_WHEN_NAMED:
            continue
        for design in designs or DESIGNS:
            with _design(design):
                start = time.perf_counter()
                options = {**ZERO_START, "empty_rise": False} if design == "adaptive" else CELL
                solver = SemidiscreteSolver(tol=0.05, max_steps=MAX_STEPS, **options)
                r = solver.solve(y, generator=torch.Generator().manual_seed(0))
                seconds = time.perf_counter() - start
            row = {
                "problem": name,
                "N": y.shape[0],
                "design": design,
                "seconds": round(seconds, 2),
                "samples_per_target": round(r.samples / y.shape[0], 1),
                "converged": r.converged,
                "chi2_independent": round(independent_chi2(y, r.potential), 4),
                "lr_scale": r.settings["lr_scale"],
            }
            if far:
                row["far_mass"] = _far_mass(y, r.potential, far)
                row["far_weight"] = 10 / y.shape[0]
            rows.append(row)
            print(row, flush=True)
    save(out, {"machine": machine(), "max_steps": MAX_STEPS, "rows": rows})


def pairs() -> None:
    y = _builtin("8gaussians").double()
    n = y.shape[0]
    dist = torch.cdist(y, y).fill_diagonal_(math.inf).min(1).values
    close = dist < dist.quantile(0.1)
    rows = []
    for design in ("cell", "fading prior", "adaptive"):
        options = {**ZERO_START, "empty_rise": False} if design == "adaptive" else CELL
        with _design(design):
            r = SemidiscreteSolver(tol=None, max_steps=700, **options).solve(
                y.float(), generator=torch.Generator().manual_seed(0)
            )
        counts = torch.zeros(n, dtype=torch.float64)
        gen = torch.Generator().manual_seed(7)
        for _ in range(4):
            x = torch.randn(1 << 20, 2, generator=gen, dtype=torch.float64)
            counts += torch.bincount(assign(x, y, r.potential.double()), minlength=n).double()
        m, w = counts / (1 << 22), 1.0 / n
        part = (m - w) ** 2 / w
        row = {
            "design": design,
            "steps": r.steps,
            "samples_per_target": round(r.samples / n, 1),
            "chi2": round(float(part.sum()) - (n - 1) / (1 << 22), 4),
            "share_of_closest_tenth": round(float(part[close].sum() / part.sum()), 3),
            "empty_cells": int((m < 0.1 * w).sum()),
            "median_nn_distance": round(float(dist.median()), 5),
            "median_nn_distance_of_empty": round(float(dist[m < 0.1 * w].median()), 5)
            if (m < 0.1 * w).any()
            else None,
        }
        rows.append(row)
        print(row, flush=True)
    save("step_designs_pairs", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "pairs"])
    parser.add_argument("--problems", nargs="*", help="a subset of the problems (default: all)")
    parser.add_argument("--designs", nargs="*", choices=list(DESIGNS), help="a subset of the designs")
    parser.add_argument("--out", default="step_designs", help="results/OUT.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.mode == "pairs":
        pairs()
    else:
        compare(args.problems, args.designs, args.out)
