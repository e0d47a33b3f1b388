"""Variance reduction of the training noise in the large high-dimensional regime: does it lower the
solver's chi2 at a fixed number of samples per target, and at what cost per sample? A measurement of
designs (issue 14, section 2), not a solver mode: the solver is unchanged by it.

    python benchmarks/variance.py qmc        # results/variance_qmc_n30000.json
    python benchmarks/variance.py subspace   # results/variance_subspace_n30000.json
    python benchmarks/variance.py fused      # results/variance_fused_n30000.json
    python benchmarks/variance.py solve      # results/variance_solve_n30000.json

Problem: the 64-d mixture of 16 rank-16 Gaussians of scale.py, N = 30,000 (the direct regime: no
annealing, power-1 averaging, coarse correction). chi2 is measured independently on 2^20 fresh
i.i.d. samples (seed 7).

``qmc``: the default solver, run for 12 training samples per target (``max_steps``, tol None), with
its noise drawn i.i.d. (the default), as scrambled Sobol points in all 64 dimensions through the
normal quantile function, or as Sobol points along the data's top 16 principal directions and
i.i.d. noise in the other 48 (the stratification that could reach the cells' large-scale modes).
Two seeds each.

``subspace``: conditional Monte Carlo. Each noise x is split as x = z + U U^T x for a random
k-dimensional subspace U; M points z + U w_m (w_m a Latin hypercube of N(0, I_k)) stand in for x,
each marginally N(0, I), so the fraction f_j of them in cell j is an unbiased mass estimate whose
variance per draw is E[sum_j f_j^2] (1 for a single point: chi2 at a fixed number of draws scales
with it). The points cost O(N k) flops each instead of O(N d); the script times one batch of 4,096
draws scored by the solver's own dense scan (best and runner-up of every row) against the same
draws with their M points (score block c + (w - U^T x) (U^T y)^T, row max, in blocks of 256 draws
x 1,024 atoms), in one process, min of 3. The potential is the i.i.d. run's result. Then the solver
runs again with its hard-phase counts taken from the M points of each of its draws (k = 4 and 8,
M = 8; the same draws, gaps and coarse flux; patched in for this measurement) to the same 12 draws
per target.

``fused``: the cost of the points when their score block is never written: the block's k
multiply-adds and its row max fused by ``torch.compile`` (inductor, C++), values only (the best
score of every point, not yet its atom), against the dense scan and the blocked scan above, for
k = 8, M = 8 and k = 16, M = 16 on random keys of the same shape, min of 3 after a warm-up.

``solve``: whole solves to tol 0.1 (seed 0), the default against the same solver with its hard-phase
counts from subspace points (k = 8, M = 8 and k = 16, M = 16) scored by ``points_argmax``: the fused
block's row max per chunk, the chunk that held each point's best score, and only that chunk
re-scored for the atom (checked against the points scored densely; compiled before the clock
starts). Time, samples per target (draws, measurements included) and chi2.
Threads: 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, before_34, machine, repeat, save  # noqa: E402
from scale import make_data  # noqa: E402
from sdfm.transport import SemidiscreteSolver  # noqa: E402
from sdfm.transport._stream import stream_top2  # noqa: E402
from sdfm.transport.diagnostics import chi2_from_counts, chi2_stderr_from_counts  # noqa: E402

N, D, SPT, BATCH = 30000, 64, 12, 4096
DESIGNS = ((1, 8), (2, 8), (4, 8), (8, 8), (16, 16))  # (k, M)
SOLVED = ((4, 8), (8, 8))  # designs whose counts drive a solve (SubspaceCounts)
SOLVE_DESIGNS = ((8, 8), (16, 16))  # designs of the `solve` command (fused scan, to tol 0.1)


class Mixture:
    """The targets, their centred keys and the independent chi2."""

    def __init__(self, n: int):
        self.y = torch.from_numpy(np.load(make_data(n, D)))
        self.n = n
        self.keys = (self.y - self.y.mean(0)).float()
        self.sqnorm = (self.y.double() ** 2).sum(1)
        self.basis = torch.linalg.svd(self.keys, full_matrices=False)[2].T.double()  # [d, d]

    def chi2(self, h: torch.Tensor, samples: int = 1 << 20) -> tuple[float, float]:
        gen, hf = torch.Generator().manual_seed(7), h.float()
        counts = torch.zeros(self.n, dtype=torch.float64)
        for _ in range(samples // 8192):
            z = torch.randn(8192, D, generator=gen)
            counts += torch.bincount(torch.addmm(hf, z, self.keys.T).argmax(1), minlength=self.n)
        return chi2_from_counts(counts), chi2_stderr_from_counts(counts)

    def sampler(self, mode: str, seed: int):
        """The solver's noise sampler: None (i.i.d.), "sobol" (64-d) or "pc16" (16 principal dims)."""
        if mode == "iid":
            return None
        k = D if mode == "sobol" else int(mode[2:])
        engine = torch.quasirandom.SobolEngine(k, scramble=True, seed=100 + seed)

        def noise(m, d, generator=None, device=None, dtype=torch.float32):
            u = engine.draw(m, dtype=torch.float64).clamp_(2.0**-53, 1.0 - 2.0**-53)
            q = math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
            rest = torch.randn(m, d - k, generator=generator, dtype=torch.float64)
            return (torch.cat([q, rest], 1) @ self.basis.T).to(dtype)

        return noise

    def solve(self, mode: str, seed: int) -> tuple[torch.Tensor, dict]:
        t = time.perf_counter()
        solver = SemidiscreteSolver(tol=None, max_steps=SPT * self.n // BATCH, **CELL)
        res = solver.solve(
            self.y, generator=torch.Generator().manual_seed(seed), noise=self.sampler(mode, seed)
        )
        h = res.potential - 0.5 * self.sqnorm
        chi2, se = self.chi2(h)
        row = {
            "noise": mode,
            "seed": seed,
            "train_samples_per_target": res.steps * BATCH / self.n,
            "chi2_independent": chi2,
            "chi2_independent_stderr": se,
            "seconds": time.perf_counter() - t,
            "average_power_used": res.settings.get("average_power_used"),
            "coarse_used": res.settings.get("coarse_used"),
        }
        print(row, flush=True)
        return h, row


def qmc(mix: Mixture) -> dict:
    rows = [mix.solve(mode, seed)[1] for mode in ("iid", "sobol", "pc16") for seed in (0, 1)]
    return {"runs": rows}


def _points(x, u, m: int, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets U^T (x_m - x) [B, M, k] of each draw's M points, their Latin hypercube w [B, M, k])."""
    b, k = x.shape[0], u.shape[1]
    strata = torch.argsort(torch.rand(b, m, k, generator=gen), dim=1).double()
    grid = (strata + torch.rand(b, m, k, generator=gen, dtype=torch.float64)) / m
    w = math.sqrt(2.0) * torch.special.erfinv(2.0 * grid.clamp(1e-12, 1 - 1e-12) - 1.0)
    return w.to(x.dtype) - (x @ u)[:, None, :], w


def inner_points(x, keys, h, k: int, m: int, gen) -> torch.Tensor:
    """The best atoms [B, M] of each draw's M points in a random k-dim subspace."""
    u = torch.linalg.qr(torch.randn(D, k, generator=gen))[0]
    delta, _ = _points(x, u, m, gen)
    c = torch.addmm(h.float(), x, keys.T)  # [B, N]
    return (c[:, None, :] + delta @ (keys @ u).T[None]).argmax(2)


def herfindahl(cells: torch.Tensor) -> float:
    """Mean over draws of sum_j f_j^2 (f_j: the fraction of a draw's points in cell j)."""
    m = cells.shape[1]
    same = (cells[:, :, None] == cells[:, None, :]).double().sum((1, 2))
    return float((same / (m * m)).mean())


def scan_inner(x, keys, h, u, delta, chunk: int = 1024, rows: int = 256) -> torch.Tensor:
    """Best atom of every point z + U w of every draw, in blocks of draws x atoms (timed; the
    fastest blocking of those tried: a [rows, M, chunk] block stays in cache)."""
    a = keys @ u  # [N, k]
    index = torch.zeros(delta.shape[:2], dtype=torch.long)
    for r in range(0, x.shape[0], rows):
        xr, dr = x[r : r + rows], delta[r : r + rows]
        best = torch.full(dr.shape[:2], -float("inf"))
        part = torch.zeros(dr.shape[:2], dtype=torch.long)
        for start in range(0, keys.shape[0], chunk):
            c = torch.addmm(h[start : start + chunk], xr, keys[start : start + chunk].T)
            s = torch.baddbmm(c[:, None, :], dr, a[start : start + chunk].T.expand(xr.shape[0], -1, -1))
            v, i = s.max(2)
            better = v > best
            best, part = torch.where(better, v, best), torch.where(better, i + start, part)
        index[r : r + rows] = part
    return index


class SubspaceCounts:
    """Patches the solver's hard-phase masses with the M points of each draw (weight 1 / M each):
    the solver sees the same draws, gaps and coarse flux; only its counts change. Scored densely
    here (the chi2 it reaches, not its time, is measured)."""

    def __init__(self, k: int, m: int, fast: bool = False):
        self.k, self.m, self.gen = k, m, torch.Generator().manual_seed(11)
        self.fast = fast  # score the points with points_argmax (fused block) instead of densely

    def __enter__(self):
        from sdfm.transport.semidiscrete import solver as module

        self.module, self.original, self.steps = module, module._Iteration._masses, 0
        patch = self

        def masses(iteration, state, x):
            mass, chi2 = patch.original(iteration, state, x)
            if state.eps > 0 or state.annealing:
                return mass, chi2
            u = torch.linalg.qr(torch.randn(D, patch.k, generator=patch.gen, dtype=torch.float64))[0]
            delta, _ = _points(x.double(), u, patch.m, patch.gen)
            problem = iteration.problem
            if patch.fast:
                bias = problem.bias(state.potential)
                idx = points_argmax(x, problem.scorer.keys, bias, u.to(x.dtype), delta.to(x.dtype))
            else:
                pts = (x[:, None, :] + (delta @ u.T).to(x.dtype)).reshape(-1, D)
                idx, _, _ = problem.hard(pts, state.potential)
            counts = torch.bincount(idx.reshape(-1), minlength=problem.n).to(torch.float64)
            patch.steps += 1
            return counts / (patch.m * x.shape[0]), chi2

        module._Iteration._masses = masses
        return self

    def __exit__(self, *exc):
        self.module._Iteration._masses = self.original


def subspace(mix: Mixture) -> dict:
    h, base = mix.solve("iid", 0)
    gen = torch.Generator().manual_seed(3)
    hf = h.float()
    x = torch.randn(BATCH, D, generator=gen)
    plain = repeat(lambda: stream_top2(x, mix.keys, hf, chunk=512), repeats=3)
    out = {"potential": base, "batch": BATCH, "dense_scan_seconds": plain["min"], "designs": []}
    for k, m in DESIGNS:
        sums = [herfindahl(inner_points(x[i : i + 64], mix.keys, h, k, m, gen)) for i in range(0, 512, 64)]
        u = torch.linalg.qr(torch.randn(D, k, generator=gen))[0]
        delta = torch.randn(BATCH, m, k, generator=gen)
        timed = repeat(lambda: scan_inner(x, mix.keys, hf, u, delta), repeats=3)  # noqa: B023
        var = float(np.mean(sums))
        row = {
            "k": k,
            "points": m,
            "sum_f2_per_draw": var,
            "seconds": timed["min"],
            "cost_vs_dense": timed["min"] / plain["min"],
            # variance x cost per draw, relative to one i.i.d. sample scanned densely (< 1 pays)
            "variance_times_cost": var * timed["min"] / plain["min"],
        }
        print(row, flush=True)
        out["designs"].append(row)
    out["solves"] = [base]
    for k, m in SOLVED:
        with SubspaceCounts(k, m):
            row = mix.solve("iid", 0)[1]
        out["solves"].append({**row, "k": k, "points": m})
    return out


def _fused_block(k: int):
    def block(c, delta, a_t):  # c [R, C], delta [R, M, k], a_t [k, C] -> [R, M] max over C
        s = c[:, None, :]
        for j in range(k):
            s = s + delta[:, :, j, None] * a_t[j][None, None, :]
        return s.amax(2)

    return torch.compile(block, dynamic=False)


def scan_fused(x, keys, h, a_t, delta, block, chunk: int = 1024, rows: int = 256) -> torch.Tensor:
    """Best score [B, M] of every point, the block fused (values only)."""
    out = torch.empty(delta.shape[:2])
    for r in range(0, x.shape[0], rows):
        best = torch.full(delta[r : r + rows].shape[:2], -float("inf"))
        for start in range(0, keys.shape[0], chunk):
            c = torch.addmm(h[start : start + chunk], x[r : r + rows], keys[start : start + chunk].T)
            best = torch.maximum(best, block(c, delta[r : r + rows], a_t[:, start : start + chunk]))
        out[r : r + rows] = best
    return out


def points_argmax(x, keys, bias, basis, offsets, rows: int = 256) -> torch.Tensor:
    """Best atom [B, M] of every point x_i + basis offsets[i, m] (keys centred): the fused block's
    row max per chunk (compiled for full blocks, batched GEMM for the ragged ones), the chunk that
    held each point's best score, then only that chunk re-scored for its atom."""
    b, m, k = offsets.shape
    chunk = max(64, (1 << 21) // (rows * m))
    if k not in _BLOCKS:  # one compiled block per k (setdefault would re-wrap it every call)
        _BLOCKS[k] = _fused_block(k)
    block = _BLOCKS[k]
    best = torch.full((b, m), -float("inf"))
    where = torch.zeros((b, m), dtype=torch.long)
    for start in range(0, keys.shape[0], chunk):
        y, h = keys[start : start + chunk], bias[start : start + chunk]
        a_t = (y @ basis).T.contiguous()
        for r in range(0, b, rows):
            c = torch.addmm(h, x[r : r + rows], y.T)
            if c.shape == (rows, chunk):
                v = block(c, offsets[r : r + rows], a_t)
            else:
                ragged = a_t.expand(c.shape[0], -1, -1)
                v = torch.baddbmm(c[:, None, :], offsets[r : r + rows], ragged).amax(2)
            better = v > best[r : r + rows]
            best[r : r + rows] = torch.where(better, v, best[r : r + rows])
            where[r : r + rows] = torch.where(better, start, where[r : r + rows])
    index = torch.empty((b, m), dtype=torch.long)
    for start in torch.unique(where).tolist():
        y, h = keys[start : start + chunk], bias[start : start + chunk]
        ri, mi = (where == start).nonzero(as_tuple=True)
        scores = torch.addmm(h, x[ri], y.T) + offsets[ri, mi] @ (y @ basis).T
        index[ri, mi] = scores.argmax(1) + start
    return index


_BLOCKS: dict = {}


def solve(mix: Mixture) -> dict:
    """The default solver to tol 0.1 against the same with subspace-point counts (fused scan)."""
    out = {"tol": 0.1, "runs": []}
    x = torch.randn(300, D, generator=torch.Generator().manual_seed(9))
    for k, m in ((0, 0), *SOLVE_DESIGNS):
        if k:  # check the scan against the points scored densely, then compile it outside the timing
            u = torch.linalg.qr(torch.randn(D, k, generator=torch.Generator().manual_seed(k)))[0]
            delta, _ = _points(x, u, m, torch.Generator().manual_seed(1))
            pts = (x[:, None, :] + delta @ u.T).reshape(-1, D)
            ref = torch.addmm(torch.zeros(mix.n), pts, mix.keys.T).argmax(1).view(300, m)
            warm = torch.randn(BATCH, m, k)
            points_argmax(torch.randn(BATCH, D), mix.keys, torch.zeros(mix.n), u, warm)
            assert bool((points_argmax(x, mix.keys, torch.zeros(mix.n), u, delta) == ref).all())
        patch = SubspaceCounts(k, m, fast=True) if k else contextlib.nullcontext()
        t = time.perf_counter()
        with patch:
            res = SemidiscreteSolver(tol=0.1, **CELL).solve(mix.y, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - t
        chi2, se = mix.chi2(res.potential - 0.5 * mix.sqnorm)
        row = {
            "k": k,
            "points": m,
            "seconds": seconds,
            "samples_per_target": res.samples / mix.n,
            "steps": res.steps,
            "point_steps": patch.steps if k else 0,
            "chi2_solver": res.chi2,
            "chi2_independent": chi2,
            "chi2_independent_stderr": se,
        }
        print(row, flush=True)
        out["runs"].append(row)
    return out


def fused(n: int) -> dict:
    gen = torch.Generator().manual_seed(5)
    keys, h = torch.randn(n, D, generator=gen), torch.randn(n, generator=gen)
    x = torch.randn(BATCH, D, generator=gen)
    plain = repeat(lambda: stream_top2(x, keys, h, chunk=512), repeats=3)["min"]
    out = {"dense_scan_seconds": plain, "designs": []}
    for k, m in ((8, 8), (16, 16)):
        u = torch.linalg.qr(torch.randn(D, k, generator=gen))[0]
        delta, a_t = torch.randn(BATCH, m, k, generator=gen), (keys @ u).T.contiguous()
        block = _fused_block(k)
        blocked = repeat(lambda: scan_inner(x, keys, h, u, delta), repeats=3)["min"]  # noqa: B023
        fast = repeat(lambda: scan_fused(x, keys, h, a_t, delta, block), repeats=3)["min"]  # noqa: B023
        row = {
            "k": k,
            "points": m,
            "blocked_seconds": blocked,
            "fused_values_seconds": fast,
            "blocked_point_vs_dense_score": (blocked / plain - 1) / m,
            "fused_point_vs_dense_score": (fast / plain - 1) / m,
        }
        print(row, flush=True)
        out["designs"].append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["qmc", "subspace", "fused", "solve"])
    p.add_argument("--n", type=int, default=N)
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.command == "fused":
        out = fused(args.n)
    else:
        mix = Mixture(args.n)
        out = {"qmc": qmc, "subspace": subspace, "solve": solve}[args.command](mix)
    out.update(n=args.n, d=D, machine=machine(), command=f"benchmarks/variance.py {args.command}")
    print(save(f"variance_{args.command}_n{args.n}", out).read_text())


if __name__ == "__main__":
    with before_34():  # (measured before section 34: its solver, pinned)
        main()
