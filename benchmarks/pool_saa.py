"""Sample-average approximation (SAA) of the semi-dual on a fixed pool of noise: how far below the
averaged stochastic ascent's chi2 it gets, and what it costs. A measurement, not a solver mode.

    python benchmarks/pool_saa.py --n 30000                    # results/pool_saa_n30000.json
    python benchmarks/pool_saa.py --n 100000                   # results/pool_saa_n100000.json
    python benchmarks/pool_saa.py --n 30000 --stale-cache      # results/pool_saa_n30000_stale.json
    python benchmarks/pool_saa.py --n 30000 --certify          # results/pool_saa_n30000_certify.json

Problem: the 64-d mixture of 16 rank-16 Gaussians of scale.py (the large high-dimensional regime).
A pool of ``k N`` i.i.d. standard normal samples is drawn once (seed 1). Then:

1. ``epoch``: the default solver (tol None, direct regime) runs one pass over the pool: everything it
   draws (its start's gap estimate, its training batches, its measurement after 5 samples per target)
   comes from the pool's rows in order until they run out, then from fresh noise (its last batches
   and its final check). Its averaged potential is the baseline at the same samples; the SAA below
   uses the rows it drew from the pool.
2. ``cache``: each pool row's top-K atoms (K = 16) at that potential, scored densely (fp32).
3. ``jacobi``: full-batch steps on the pool's exact counts c_j, restricted to the cached candidates:
   h_j += lr s_j max(1 - c_j / (k), -3), s_j the mean gap between the best and second-best cached
   score of the rows in cell j (frozen at the first step), lr 0.5; every atom's rise since the cache
   is clamped to one mean gap (an atom in no row's candidates would otherwise grow unseen).
   After ``--iters`` steps the cache is rebuilt at the last iterate (it counts the rows whose cached
   best atom was not the true one) and as many steps follow; the result is the average of the second
   half of that round's iterates.
   ``--stale-cache`` instead caches each training batch's top-K during the epoch, at the iterate that
   scored it (no extra scoring pass; early rows are stale), and runs one round without rebuilding.
   ``--certify`` (with the stale cache) also keeps each batch's iterate and counts the pool rows whose
   stale cache provably still holds their best atom at a later potential h: the best cached score at
   h reaches the K-th score at the batch's iterate h_b plus the largest rise h_j - h_b,j of any atom
   (or of any atom but the top 1% or 5% risers, which a partial rebuild would score as extra
   columns). Only the uncertified rows would need scoring again for an exact cache.

chi2 of every potential is measured independently on 2^20 fresh samples (seed 7). The cost is
reported as rows scored densely per target (the epoch's training rows, plus k per cache pass).
Threads: 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, before_34, machine, save  # noqa: E402
from scale import make_data  # noqa: E402
from sdfm.transport import SemidiscreteSolver  # noqa: E402
from sdfm.transport.diagnostics import chi2_from_counts, chi2_stderr_from_counts  # noqa: E402

CANDIDATES = 16
BLOCK = 2048


class Pool:
    """The pool's rows, the centred atoms, and dense scoring against them."""

    def __init__(self, y: torch.Tensor, k: float):
        self.n, self.d = y.shape
        self.keys = y - y.mean(0)
        self.sqnorm = (y.double() ** 2).sum(1)
        self.x = torch.randn(int(k * self.n), self.d, generator=torch.Generator().manual_seed(1))
        self.offset = 0
        self.batches: list[tuple[int, int]] = []

    def replay(self, n, d, generator=None, device=None, dtype=None):
        """Noise sampler for the solver: the pool's rows in order, then fresh noise."""
        if self.offset + n > self.x.shape[0]:
            return torch.randn(n, d, generator=generator, dtype=dtype)
        start, self.offset = self.offset, self.offset + n
        self.batches.append((start, n))
        return self.x[start : start + n].to(dtype)

    def topk(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h-free scores (float64) and indices [m, K] of each row's K best atoms at h."""
        hf, vals, idx = h.float(), [], []
        for a in range(0, x.shape[0], BLOCK):
            v, j = torch.addmm(hf, x[a : a + BLOCK], self.keys.T).topk(CANDIDATES, dim=1)
            vals.append(v.double() - h[j])
            idx.append(j)
        return torch.cat(vals), torch.cat(idx)

    def chi2(self, h: torch.Tensor, samples: int = 1 << 20) -> tuple[float, float]:
        """chi2 and its standard error on fresh samples (seed 7)."""
        gen, hf = torch.Generator().manual_seed(7), h.float()
        counts = torch.zeros(self.n, dtype=torch.float64)
        for _ in range(samples // 8192):
            z = torch.randn(8192, self.d, generator=gen)
            counts += torch.bincount(torch.addmm(hf, z, self.keys.T).argmax(1), minlength=self.n)
        return chi2_from_counts(counts), chi2_stderr_from_counts(counts)


def jacobi(pool: Pool, raw, idx, h, iters: int, lr: float = 0.5):
    """Full-batch steps on the cached candidates; returns (last iterate, average of the second half)."""
    k = raw.shape[0] / pool.n
    top = torch.topk(raw + h[idx], 2, dim=1).values
    theta = float((top[:, 0] - top[:, 1]).mean())
    start, scale, avg, count = h.clone(), None, h.clone(), 0
    for it in range(iters):
        v2, i2 = torch.topk(raw + h[idx], 2, dim=1)
        cell = idx.gather(1, i2[:, :1]).squeeze(1)
        counts = torch.bincount(cell, minlength=pool.n).double()
        if scale is None:
            gaps = torch.bincount(cell, weights=v2[:, 0] - v2[:, 1], minlength=pool.n)
            scale = torch.where(counts > 0, gaps / counts.clamp(min=1), theta)
        h = torch.minimum(h + lr * scale * (1 - counts / k).clamp(min=-3), start + theta)
        if it >= iters // 2:
            count += 1
            avg += (h - avg) / count
    return h, avg


def certified(raw, idx, batch_of, iterates, h, extra: float) -> float:
    """Fraction of cached rows whose K candidates provably hold the best atom at h (see --certify);
    the ``extra`` fraction of atoms that rose most is left out of the bound (scored as columns)."""
    rise = h[None, :] - iterates  # [batches, n]
    if extra > 0:
        rise[:, rise.max(0).values.topk(int(extra * h.numel())).indices] = -float("inf")
    kth = raw[:, -1] + iterates[batch_of, idx[:, -1]]
    best = (raw + h[idx]).max(1).values
    return float((best >= kth + rise.max(1).values[batch_of]).double().mean())


def run(n: int, k: float, iters: int, stale: bool, certify: bool = False) -> dict:
    y = torch.from_numpy(np.load(make_data(n, 64)))
    pool = Pool(y, k)
    rows: list[torch.Tensor] = []
    cached: list[tuple[torch.Tensor, torch.Tensor]] = []
    iterates: list[torch.Tensor] = []

    def keep(state):  # --stale-cache: the batch's top-K at the iterate after its step
        if stale and pool.batches and not state.annealing:
            start, size = pool.batches.pop(0)
            rows.append(torch.arange(start, start + size))
            cached.append(pool.topk(pool.x[start : start + size], state.potential))
            if certify:
                iterates.append(state.potential.double().clone())
        pool.batches.clear()

    t0 = time.perf_counter()
    solver = SemidiscreteSolver(tol=None, max_steps=max(1, pool.x.shape[0] // 4096), **CELL)
    res = solver.solve(y, generator=torch.Generator().manual_seed(0), noise=pool.replay, callback=keep)
    out = {"n": n, "k": k, "candidates": CANDIDATES, "iters": iters, "stale_cache": stale}
    out["epoch"] = {"rows_per_target": pool.offset / n, "seconds": time.perf_counter() - t0}
    h = res.potential - 0.5 * pool.sqnorm
    out["epoch"]["chi2_independent"] = pool.chi2(h)
    t1 = time.perf_counter()
    if stale:
        ra = torch.cat(rows)
        raw, idx = torch.cat([c[0] for c in cached]), torch.cat([c[1] for c in cached])
        _, avg = jacobi(pool, raw, idx, h, iters)
        passes, wrong = 0, None
        out["pool_rows_per_target"] = ra.numel() / n
        if certify:
            its = torch.stack(iterates)
            batch_of = torch.cat([torch.full((c[1].shape[0],), b) for b, c in enumerate(cached)])
            out["certified"] = {
                f"{name}_extra{extra}": certified(raw, idx, batch_of, its, hh, extra)
                for name, hh in (("pass", h), ("saa", avg))
                for extra in (0.0, 0.01, 0.05)
            }
    else:
        raw, idx = pool.topk(pool.x[: pool.offset], h)
        h1, _ = jacobi(pool, raw, idx, h, iters)
        before = idx.gather(1, (raw + h1[idx]).argmax(1, keepdim=True)).squeeze(1)
        raw, idx = pool.topk(pool.x[: pool.offset], h1)
        wrong = int((before != idx[:, 0]).sum())
        _, avg = jacobi(pool, raw, idx, h1, iters)
        passes = 2
        out["pool_rows_per_target"] = pool.offset / n
    out["saa"] = {
        "seconds": time.perf_counter() - t1,
        "cache_passes": passes,
        "wrong_at_rebuild": wrong,
        "rows_scored_per_target": pool.offset / n * (1 + passes),
        "chi2_independent": pool.chi2(avg),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30000)
    p.add_argument("--k", type=float, default=12.0, help="pool size in samples per target")
    p.add_argument("--iters", type=int, default=50, help="Jacobi steps per round")
    p.add_argument("--stale-cache", action="store_true")
    p.add_argument("--certify", action="store_true", help="stale cache: count the certified rows")
    args = p.parse_args()
    torch.set_num_threads(2)
    stale = args.stale_cache or args.certify
    out = run(args.n, args.k, args.iters, stale, args.certify)
    out["machine"] = machine()
    name = f"pool_saa_n{args.n}" + ("_certify" if args.certify else "_stale" if stale else "")
    print(save(name, out).read_text())


if __name__ == "__main__":
    with before_34():  # (measured before section 34: its solver, pinned)
        main()
