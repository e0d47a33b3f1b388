"""Certified float32 pairing (BENCHMARKS.md section 28): speed and exactness against the plain
float32 argmax that ``LaguerreCells.assign`` returned before.

For each problem, one potential (a short default solve, as training would use), then in one process,
alternating, min and median of 5 calls on the same float32 noise:
- "before": the plain float32 argmax (``scorer.argmax``: the dense scan with the one-level block
  reduction of before section 28, ``common.before_28``, or the pruned search where
  ``pruning="auto"`` takes it), what ``assign`` returned before section 28;
- "two-level": the same float32 argmax with the two-level block reduction (``block_top``);
- "now": ``assign`` (float32 top two, the rows the float32 bound cannot certify re-scored in
  float64).
Both are compared with an independent float64 brute-force argmax (a plain matmul in chunks of
queries; copies of an atom mapped to its first index): the rows each gets wrong, and the fraction of
rows "now" re-scored in float64. The noise: 16,384 rows (n = 256 for the per-step batch of
training in the second table).

    python benchmarks/certified.py        # 2 threads; writes benchmarks/results/certified.json
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import before_28, before_34, machine, repeat, save  # noqa: E402
from sdfm.data import load_dataset  # noqa: E402
from sdfm.transport import LaguerreCells, SemidiscreteSolver  # noqa: E402
from sdfm.transport._stream import full_precision  # noqa: E402


def gen(seed):
    return torch.Generator().manual_seed(seed)


def problems():
    """name -> (targets [N, d], number of leading distinct atoms or None: rows at and beyond it
    copy rows from the start)."""
    g = gen(0)
    centres = 3 * torch.randn(8, 16, generator=g)
    mix = torch.randn(10_000, 16, generator=g) + centres[torch.randint(0, 8, (10_000,), generator=g)]
    theta = torch.rand(3000, generator=g) * 2 * math.pi
    base = torch.randn(5000, 8, generator=g)
    student = torch.distributions.StudentT(3.0).sample((10_000, 8))
    return {
        "mixture 16-d": (mix, None),
        "digits (64-d)": (torch.as_tensor(load_dataset("digits").x).float(), None),
        "Gaussian 64-d": (torch.randn(20_000, 64, generator=g), None),
        "Gaussian 64-d, 10^5": (torch.randn(100_000, 64, generator=g), None),
        "Gaussian 784-d": (0.3 * torch.randn(5000, 784, generator=g), None),
        "checkerboard 2-d, 10^5": (torch.as_tensor(load_dataset("checkerboard:n=100000").x).float(), None),
        "Student t (3 dof) 8-d": (student, None),
        "offset 1e3, float64 16-d": ((torch.randn(10_000, 16, generator=g) + 1e3).double(), None),
        "circle 3,000 x 2": (2 * torch.stack([theta.cos(), theta.sin()], 1), None),
        "5,000 atoms + 5,000 copies, 8-d": (torch.cat([base, base]), 5000),
    }


def reference(x, y, g, distinct):
    """float64 brute force, copies mapped to their first index."""
    y64 = y.to(torch.float64)
    bias = g.to(torch.float64) - 0.5 * y64.square().sum(1)
    index = torch.cat([(xb.to(torch.float64) @ y64.T + bias).argmax(1) for xb in x.split(2048)])
    return index if distinct is None else index.remainder(distinct)


def measure(name, y, distinct, n, repeats):
    torch.manual_seed(0)
    solve_y = y if distinct is None else y[:distinct]
    start = time.perf_counter()
    result = SemidiscreteSolver(tol=0.1, max_seconds=60).solve(solve_y.float(), generator=gen(1))
    solve_s = time.perf_counter() - start
    g = result.potential
    if distinct is not None:
        g = torch.cat([g, g])
    x = torch.randn(n, y.shape[1], generator=gen(2))
    cells = LaguerreCells(y, g)
    keys = cells._keys(x.device, torch.float32)

    def float32():
        with full_precision(x.device):
            return keys.scorer.argmax(x, keys.bias)[0]

    def before():
        with before_28():
            return float32()

    now_index, before_index = cells.assign(x), before()
    truth = reference(x, y, g, distinct)
    _, best, second = keys.scorer.argmax(x, keys.bias, top2=True)
    rescored = float(keys.certificate.uncertain(x, best, second).double().mean())
    times = {"before": [], "two_level": [], "now": []}
    for _ in range(repeats):  # alternating, so that all see the same machine
        for label, fn in (("before", before), ("two_level", float32), ("now", lambda: cells.assign(x))):
            t = repeat(fn, repeats=1, warmup=0)["min"]
            times[label].append(t)
    row = {
        "problem": name,
        "N": int(y.shape[0]),
        "d": int(y.shape[1]),
        "n": n,
        "solve_s": solve_s,
        "solve_chi2": result.chi2,
        "pruning": cells.pruning_used,
        **{f"{k}_s": {"min": min(v), "median": sorted(v)[repeats // 2]} for k, v in times.items()},
        "wrong_before": int((before_index != truth).sum()),
        "wrong_now": int((now_index != truth).sum()),
        "rescored_fraction": rescored,
    }
    row["speedup_min"] = row["before_s"]["min"] / row["now_s"]["min"]
    row["speedup_median"] = row["before_s"]["median"] / row["now_s"]["median"]
    print(
        f"{name:34s} n={n:6d} before {row['before_s']['min'] * 1e3:8.1f} ms  two-level "
        f"{row['two_level_s']['min'] * 1e3:8.1f} ms  now {row['now_s']['min'] * 1e3:8.1f} ms  "
        f"x{row['speedup_min']:.2f}  wrong {row['wrong_before']} -> "
        f"{row['wrong_now']}  re-scored {100 * rescored:.3f}%",
        flush=True,
    )
    return row


def solver_problems() -> dict[str, torch.Tensor]:
    """The solves of ``--solver`` (and of solver_counts.py, which adds two)."""
    g = gen(5)
    centres = 3 * torch.randn(8, 16, generator=g)
    return {
        "mixture 16-d, 10,000": torch.randn(10_000, 16, generator=g)
        + centres[torch.randint(0, 8, (10_000,), generator=g)],
        "Gaussian 64-d, 8,000": torch.randn(8000, 64, generator=g),
        "digits (64-d)": torch.as_tensor(load_dataset("digits").x).float(),
    }


def solver_rows(repeats: int = 2) -> list[dict]:
    rows = []
    for name, y in solver_problems().items():
        out = {"before": [], "now": []}
        digests = {}
        for _ in range(repeats):
            for label in ("before", "now"):
                with before_28(label == "before"):
                    start = time.perf_counter()
                    r = SemidiscreteSolver(tol=0.05).solve(y, generator=gen(1))
                    out[label].append(time.perf_counter() - start)
                digests[label] = hashlib.md5(r.potential.numpy().tobytes()).hexdigest()
        row = {
            "problem": name,
            "before_s": min(out["before"]),
            "now_s": min(out["now"]),
            "speedup": min(out["before"]) / min(out["now"]),
            "md5_before": digests["before"],
            "md5_now": digests["now"],
            "identical": digests["before"] == digests["now"],
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=None, help="run the problems whose name contains this")
    parser.add_argument("--solver", action="store_true", help="the solver with both block reductions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.solver:
        save("certified_solver", {"machine": machine(), "threads": args.threads, "rows": solver_rows()})
        return
    rows = []
    for name, (y, distinct) in problems().items():
        if args.only and args.only not in name:
            continue
        for n in (16_384, 256):
            rows.append(measure(name, y, distinct, n, args.repeats))
    if not args.only:
        save("certified", {"machine": machine(), "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    with before_34():  # (measured before section 34: its solver, pinned)
        main()
