"""GPU benchmark at N = 10^6, d = 3072 (run by benchmarks/gpu.sh; under 8 minutes on one GPU).

1. Data: a mixture of 16 low-rank Gaussians generated on the device in chunks (12 GiB in float32).
2. Pairing throughput of exact ``assign`` (65,536 noises): float32 scores, and bf16 scores with exact
   float64 re-scoring of the candidates (``score_dtype=torch.bfloat16``); pairs/s and the fraction of
   rows whose index differs between the two (0: both exact).
3. Solver at full d with a time budget (``--solve-seconds``): chi2 reached, samples, samples/s; once
   with float32 scores and once with bf16 scores and exact re-scoring (``score_dtype="bfloat16"``).
4. Solver in a 256-d PCA space of the same data, same budget (the paper's route for large images).

    python benchmarks/gpu.py --out results.json [--n 1000000] [--d 3072] [--device cuda]

Every stage writes its numbers into the JSON as soon as it ends (a timeout keeps what finished).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402
from sdfm.transport import LaguerreCells, PCAProjection, SemidiscreteSolver  # noqa: E402


def mixture(n, d, device, seed=0, k=16, rank=16):
    g = torch.Generator(device=device).manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, device=device)
    factors = torch.randn(k, d, rank, generator=g, device=device) / math.sqrt(rank)
    out = torch.empty(n, d, device=device)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        c = torch.randint(0, k, (m,), generator=g, device=device)
        z = torch.randn(m, rank, 1, generator=g, device=device)
        out[start : start + m] = (
            means[c] + (factors[c] @ z).squeeze(-1) + 0.1 * torch.randn(m, d, generator=g, device=device)
        )
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=3072)
    p.add_argument("--device", default="cuda")
    p.add_argument("--queries", type=int, default=65536)
    p.add_argument("--solve-seconds", type=float, default=150.0)
    p.add_argument("--pca", type=int, default=256)
    p.add_argument("--pca-seconds", type=float, default=150.0)
    args = p.parse_args()
    device = torch.device(args.device)
    report = {"machine": machine(), "n": args.n, "d": args.d, "device": str(device)}
    out = Path(args.out)

    def write():
        out.write_text(json.dumps(report, indent=2, default=str))

    t = time.perf_counter()
    y = mixture(args.n, args.d, device)
    sync(device)
    report["data_seconds"] = time.perf_counter() - t
    write()

    # pairing throughput
    g = torch.zeros(args.n, dtype=torch.float64, device=device)
    x = torch.randn(
        args.queries, args.d, generator=torch.Generator(device=device).manual_seed(1), device=device
    )
    idx = {}
    for name, dtype in (("fp32", None), ("bf16_exact", torch.bfloat16)):
        cells = LaguerreCells(y, g, score_dtype=dtype)
        cells.assign(x[:64])  # prepares keys
        sync(device)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            idx[name] = cells.assign(x)
            sync(device)
            times.append(time.perf_counter() - t)
        best = min(times)
        report[f"pairing_{name}"] = {
            "seconds": best,
            "pairs_per_s": args.queries / best,
            "tflops": 2 * args.n * args.d * args.queries / best / 1e12,
        }
        del cells
        write()
    report["pairing_rows_differing"] = int((idx["fp32"] != idx["bf16_exact"]).sum())
    write()

    # solver at full d, time-boxed
    stages = (
        ("solve_full", y, args.solve_seconds, None),
        ("solve_full_bf16", y, args.solve_seconds, "bfloat16"),
        ("solve_pca", None, args.pca_seconds, None),
    )
    for name, keys, seconds, score_dtype in stages:
        t = time.perf_counter()
        extra = {"score_dtype": score_dtype}
        if keys is None:
            proj = PCAProjection.fit(y, args.pca, device=device)
            keys = proj.project_targets(y)
            extra.update(pca=args.pca, explained=proj.explained, pca_seconds=time.perf_counter() - t)
        # memory_limit: the solver copies the centred targets (and a bf16 copy) onto the device
        solver = SemidiscreteSolver(
            tol=0.1, max_seconds=seconds, max_steps=None, score_dtype=score_dtype, memory_limit=1 << 36
        )
        res = solver.solve(keys, generator=torch.Generator(device=device).manual_seed(0))
        report[name] = {
            **extra,
            "chi2": res.chi2,
            "chi2_stderr": res.chi2_stderr,
            "converged": res.converged,
            "samples": res.samples,
            "samples_per_atom": res.samples / args.n,
            "seconds": res.seconds,
            "samples_per_s": res.samples / res.seconds,
            "history": [(h.samples, h.seconds, h.chi2) for h in res.history if h.chi2 is not None],
        }
        write()
    if device.type == "cuda":
        report["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    write()
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()
