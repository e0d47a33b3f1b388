"""Pairing throughput of sdfm.transport.assign against the dense matmul of the same shapes.

flops = 2 n N d per call. The reference is torch.mm(x, y.T) into a preallocated [n, N] output
(pure GEMM, no allocation), measured in the same process, interleaved with assign. Also measures the
peak extra memory of assign for N = 1,000,000, d = 64 in a fresh subprocess (RSS high-water mark
after the inputs are allocated: the kernel's peak-RSS mark VmHWM is reset through
/proc/self/clear_refs just before the call, so earlier transients do not hide it).

    python benchmarks/pairing.py            # CPU (default), writes benchmarks/results/pairing.json
    python benchmarks/pairing.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import machine, repeat, save  # noqa: E402
from sdfm.transport import assign  # noqa: E402


def throughput(n: int, big_n: int, d: int, device: str, repeats: int, eps: float = 0.0) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=gen)
    y = torch.randn(big_n, d, device=device, generator=gen)
    g = torch.randn(big_n, dtype=torch.float64, device=device, generator=gen) * 0.1
    out = torch.empty(n, big_n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    flops = 2.0 * n * big_n * d
    mm = repeat(lambda: torch.mm(x, y.T, out=out), repeats, sync=sync)
    kw = {"eps": eps, "generator": gen} if eps > 0 else {}
    sd = repeat(lambda: assign(x, y, g, **kw), repeats, sync=sync)
    return {
        "n": n,
        "N": big_n,
        "d": d,
        "eps": eps,
        "matmul_s": mm,
        "assign_s": sd,
        "matmul_gflops": flops / mm["min"] / 1e9,
        "assign_gflops": flops / sd["min"] / 1e9,
        "fraction_of_matmul": mm["min"] / sd["min"],
        "fraction_of_matmul_median": mm["median"] / sd["median"],
    }


MEMORY_SCRIPT = r"""
import sys, torch
from pathlib import Path
torch.set_num_threads({threads})
from sdfm.transport import assign
n, N, d, eps = {n}, {N}, {d}, {eps}
y = torch.randn(N, d); g = torch.zeros(N, dtype=torch.float64); x = torch.randn(n, d)
gen = torch.Generator().manual_seed(0)
assign(x[:8], y[:1000], g[:1000], eps=eps, generator=gen)   # warm up kernels on a small problem

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

Path("/proc/self/clear_refs").write_text("5")   # reset the peak-RSS mark (VmHWM) to the current RSS
base = status("VmRSS")
assign(x, y, g, eps=eps, generator=gen)
print(status("VmHWM") - base)
"""


def peak_extra_memory(n: int, big_n: int, d: int, eps: float) -> int:
    code = MEMORY_SCRIPT.format(threads=torch.get_num_threads(), n=n, N=big_n, d=d, eps=eps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def lowp_rows(repeats: int) -> list[dict]:
    """assign with float32 scores against bf16 scores + exact float64 re-scoring (same results)."""
    from sdfm.transport import LaguerreCells

    rows = []
    cases = [("gaussian", 1024, 50_000, 64), ("gaussian", 1024, 50_000, 256), ("gaussian", 256, 60_000, 784)]
    cases.append(("clustered", 256, 60_000, 784))
    for kind, n, big_n, d in cases:
        gen = torch.Generator().manual_seed(0)
        y = torch.randn(big_n, d, generator=gen)
        if kind == "clustered":  # 10 clusters of std 0.5 (benchmarks/coupling_cost.py's data)
            y = 0.5 * y + torch.randn(10, d, generator=gen)[torch.randint(10, (big_n,), generator=gen)]
        g = 0.1 * torch.randn(big_n, dtype=torch.float64, generator=gen)
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(99))
        exact, lowp = LaguerreCells(y, g), LaguerreCells(y, g, score_dtype=torch.bfloat16)
        same = bool(torch.equal(exact.assign(x), lowp.assign(x)))
        t32 = repeat(lambda c=exact, x=x: c.assign(x), repeats)
        t16 = repeat(lambda c=lowp, x=x: c.assign(x), repeats)
        rows.append(
            {
                "data": kind,
                "n": n,
                "N": big_n,
                "d": d,
                "fp32_s": t32,
                "bf16_s": t16,
                "same_result": same,
                "speedup": t32["min"] / t16["min"],
            }
        )
        print(
            f"{kind:9s} n={n} N={big_n} d={d}: fp32 {t32['min']:.3f} s, bf16+rescore {t16['min']:.3f} s, "
            f"speed-up {t32['min'] / t16['min']:.2f}, same result {same}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--N", type=int, default=50_000)
    parser.add_argument("--dims", default="2,16,64,256,512")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory measurement")
    parser.add_argument("--lowp-only", action="store_true", help="only float32 vs bf16 scores")
    args = parser.parse_args()
    if args.lowp_only:
        rows = lowp_rows(args.repeats)
        save(
            "pairing_lowp",
            {"command": "python benchmarks/pairing.py --lowp-only", "machine": machine(), "rows": rows},
        )
        return

    rows, gumbel = [], None
    for d in [] if args.memory_only else [int(v) for v in args.dims.split(",")]:
        row = throughput(args.n, args.N, d, args.device, args.repeats)
        rows.append(row)
        print(
            f"d={d:4d}  matmul {row['matmul_gflops']:7.1f} GFLOP/s  assign {row['assign_gflops']:7.1f}"
            f" GFLOP/s  fraction {row['fraction_of_matmul']:.2f}"
            f" (median {row['fraction_of_matmul_median']:.2f})",
            flush=True,
        )
    if not args.memory_only:
        gumbel = throughput(args.n, args.N, 256, args.device, args.repeats, eps=0.1)
        print(f"eps>0 (Gumbel) d=256: fraction of matmul {gumbel['fraction_of_matmul']:.2f}", flush=True)
    memory = []
    if args.device == "cpu":
        for n, eps in [(1024, 0.0), (65536, 0.0), (1024, 0.5)]:
            extra = peak_extra_memory(n, 1_000_000, 64, eps)
            memory.append({"n": n, "N": 1_000_000, "d": 64, "eps": eps, "peak_extra_bytes": extra})
            print(f"peak extra memory N=1e6 d=64 n={n} eps={eps}: {extra / 2**20:.1f} MiB", flush=True)
    name = f"pairing_{args.device.split(':')[0]}" + ("_memory" if args.memory_only else "")
    path = save(
        name,
        {
            "command": "python benchmarks/pairing.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "throughput": rows,
            "gumbel": gumbel,
            "memory": memory,
        },
    )
    print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    main()
