"""Pairing time per training pair: semidiscrete (eps = 0 and eps > 0) against minibatch OT (exact
and Sinkhorn) as the batch n grows, N = 60,000 data points in d = 784 (synthetic), one process.

The paper's claim: SD's cost per pair is flat in n (one O(N d) search per noise), batch OT's grows
(exact O(n^3) / n = O(n^2), Sinkhorn O(n^2 iters) / n). Each entry times ``coupling.sample(n)``
(noise draw, data draw, pairing, gather); min over repeats. A configuration whose estimated time
(from the previous n and its complexity) exceeds --cap seconds is skipped and reported as such.
Also: SD pairing time as a fraction of one U-Net training step at n = 256, 28x28.

    python benchmarks/coupling_cost.py [--cap 240] [--sizes 256,1024,4096,16384]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, repeat, save  # noqa: E402
from sdfm.couplings import MinibatchOTCoupling, SemidiscreteCoupling  # noqa: E402
from sdfm.models import build_model  # noqa: E402
from sdfm.transport import relative_eps_scale  # noqa: E402

N, D = 60_000, 784
#: growth of the per-call time with n, to estimate whether the next size fits in --cap
GROWTH = {"sd eps=0": 1, "sd eps=0.1": 1, "ot exact": 3, "ot sinkhorn": 2}


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = (
        torch.randn(N, D, generator=g) * 0.5
        + torch.randn(10, D, generator=g)[torch.randint(10, (N,), generator=g)]
    )
    potential = torch.randn(N, dtype=torch.float64, generator=g) * 0.1
    return y, potential


def couplings(y, potential) -> dict:
    return {
        "sd eps=0": SemidiscreteCoupling(y, potential),
        "sd eps=0.1": SemidiscreteCoupling(y, potential, eps=0.1 * relative_eps_scale(y)),
        "ot exact": MinibatchOTCoupling(y, method="exact"),
        "ot sinkhorn": MinibatchOTCoupling(y, method="sinkhorn", eps=0.05),
    }


def unet_fraction(y, potential, n: int = 256) -> dict:
    model = build_model("unet", {"image_shape": (1, 28, 28)})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x1 = y[:n]
    g = torch.Generator().manual_seed(123)  # not data()'s seed: its noise would equal the data's

    def step():
        x0 = torch.randn(n, D, generator=g)
        t = torch.rand(n, generator=g)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        loss = (model(xt, t) - (x1 - x0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    sd = SemidiscreteCoupling(y, potential)
    sd_bf16 = SemidiscreteCoupling(y, potential, score_dtype=torch.bfloat16)  # exact, bf16 scores
    check = torch.Generator().manual_seed(77)
    x = torch.randn(n, D, generator=check)
    assert torch.equal(sd.cells.assign(x), sd_bf16.cells.assign(x))
    step_s = repeat(step, repeats=3)
    pair_s = repeat(lambda: sd.sample(n, generator=g), repeats=5)
    pair_bf16 = repeat(lambda: sd_bf16.sample(n, generator=g), repeats=5)
    return {
        "n": n,
        "unet_params": sum(p.numel() for p in model.parameters()),
        "unet_step_s": step_s,
        "sd_pairing_s": pair_s,
        "fraction": pair_s["min"] / step_s["min"],
        "sd_pairing_bf16_s": pair_bf16,
        "fraction_bf16": pair_bf16["min"] / step_s["min"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cap", type=float, default=240.0, help="skip a config whose estimated time exceeds this"
    )
    parser.add_argument("--sizes", default="256,1024,4096,16384")
    parser.add_argument("--unet-only", action="store_true", help="only the U-Net fraction (own JSON file)")
    args = parser.parse_args()
    if args.unet_only:
        y, potential = data()
        frac = unet_fraction(y, potential)
        print(
            f"U-Net step {frac['unet_step_s']['min']:.3f} s; SD pairing {frac['sd_pairing_s']['min']:.3f} s "
            f"(fraction {frac['fraction']:.3f}); bf16 scores + exact re-scoring "
            f"{frac['sd_pairing_bf16_s']['min']:.3f} s (fraction {frac['fraction_bf16']:.3f})",
            flush=True,
        )
        save(
            "unet_fraction",
            {"command": "python benchmarks/coupling_cost.py --unet-only", "machine": machine(), **frac},
        )
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    y, potential = data()
    rows, last = [], {}
    for name, coupling in couplings(y, potential).items():
        for n in sizes:
            if name in last:
                prev_n, prev_s = last[name]
                estimate = prev_s * (n / prev_n) ** GROWTH[name]
                if estimate > args.cap:
                    rows.append({"coupling": name, "n": n, "skipped": True, "estimated_s": estimate})
                    print(f"{name:12s} n={n:6d}  skipped (estimated {estimate:.0f} s > cap)", flush=True)
                    continue
            g = torch.Generator().manual_seed(1)
            reps = 3 if n <= 1024 else 1
            t0 = time.perf_counter()
            timing = repeat(
                lambda c=coupling, n=n, g=g: c.sample(n, generator=g),
                repeats=reps,
                warmup=1 if n <= 1024 else 0,
            )
            last[name] = (n, timing["min"])
            row = {"coupling": name, "n": n, "seconds": timing, "per_pair_us": 1e6 * timing["min"] / n}
            rows.append(row)
            print(
                f"{name:12s} n={n:6d}  {timing['min']:8.3f} s/batch  {row['per_pair_us']:9.1f} us/pair "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    frac = unet_fraction(y, potential)
    print(
        f"U-Net step (n=256, 28x28, {frac['unet_params']} params): {frac['unet_step_s']['min']:.3f} s; "
        f"SD pairing: {frac['sd_pairing_s']['min']:.3f} s; fraction {frac['fraction']:.3f}",
        flush=True,
    )
    save(
        "coupling_cost",
        {
            "command": "python benchmarks/coupling_cost.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "N": N,
            "d": D,
            "rows": rows,
            "unet_fraction": frac,
        },
    )
    plot(rows, RESULTS / "coupling_cost.png")


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in GROWTH:
        pts = [(r["n"], r["per_pair_us"]) for r in rows if r["coupling"] == name and not r.get("skipped")]
        if pts:
            ax.plot(*zip(*pts, strict=True), "-o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size n")
    ax.set_ylabel("pairing time per pair (us)")
    ax.set_title(f"N = {N:,}, d = {D}, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
