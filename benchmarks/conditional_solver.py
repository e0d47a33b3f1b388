"""Class-conditional potentials: one solve per class into one vector g [N], checked and timed.

For each labelled problem: solve_per_class (default solver, tol 0.05) against one unconditional solve
of the same data (time, noise samples, chi2); the per-class chi2 re-measured independently with
masked pairing on 400k fresh noise (unbiased estimator from the counts); and the cost of the choice
"one vector; each class's noise scans only its class's targets, gathered chunk by chunk" against
"one copy of the data per class" (pairing a batch of 4096 noises of one class).

    python benchmarks/conditional_solver.py

Writes benchmarks/results/conditional_solver.json and prints a table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, machine, repeat, save  # noqa: E402
from sdfm.data import load_dataset  # noqa: E402
from sdfm.data.normalize import Normalization  # noqa: E402
from sdfm.transport import LaguerreCells, SemidiscreteSolver, assign, solve_per_class  # noqa: E402

PROBLEMS = {"digits": "digits", "mnist1d": "mnist1d", "gmm16": "gmm:d=16,k=8"}


def main() -> None:
    rows = []
    for name, spec in PROBLEMS.items():
        ds = load_dataset(spec)
        y = torch.from_numpy(Normalization.fit(ds.x, "standard").apply(ds.x))
        labels = torch.from_numpy(ds.labels).long()
        t0 = time.perf_counter()
        cond = solve_per_class(
            SemidiscreteSolver(**CELL), y, labels, generator=torch.Generator().manual_seed(0)
        )
        cond_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = SemidiscreteSolver(**CELL).solve(y, generator=torch.Generator().manual_seed(0))
        plain_s = time.perf_counter() - t0
        # independent re-measurement: masked pairing of fresh noise with classes drawn from p(c)
        cells = LaguerreCells(y, cond.potential, classes=labels)
        gen = torch.Generator().manual_seed(123)
        counts = torch.zeros(len(y), dtype=torch.float64)
        per = 100_000
        for _ in range(4):
            c = torch.multinomial(cond.class_probs, per, replacement=True, generator=gen)
            x = torch.randn(per, y.shape[1], generator=gen)
            counts += torch.bincount(cells.assign(x, classes=c), minlength=len(y)).double()
        chi2_c = {}
        for k in labels.unique().tolist():
            c = counts[labels == k]
            n, b = float(c.sum()), 1.0 / c.numel()
            # unbiased: E[c_j (c_j - 1)] = n (n - 1) m_j^2, so chi2 = sum m_j^2 / b_j - 1 without the
            # N_c / n bias of the plug-in estimate
            chi2_c[k] = float((c * (c - 1)).sum() / (n * (n - 1) * b)) - 1.0
        # one vector + class scan against one data copy per class: pairing 4096 noises of class 0
        k0 = labels == 0
        x = torch.randn(4096, y.shape[1], generator=gen)
        c0 = torch.zeros(4096, dtype=torch.long)
        sub = LaguerreCells(y[k0].contiguous(), cond.potential[k0])
        grouped = repeat(lambda cells=cells, x=x, c0=c0: cells.assign(x, classes=c0), repeats=7)
        copy = repeat(lambda sub=sub, x=x: sub.assign(x), repeats=7)
        ref = torch.nonzero(k0).squeeze(1)[sub.assign(x)]
        same = bool(torch.equal(ref, cells.assign(x, classes=c0)))
        one_shot = assign(x, y, cond.potential, classes=c0, target_classes=labels)
        same = same and bool(torch.equal(ref, one_shot))
        rows.append(
            {
                "problem": name,
                "n": len(y),
                "d": y.shape[1],
                "classes": int(labels.max()) + 1,
                "per_class_s": cond_s,
                "per_class_samples": cond.samples,
                "per_class_chi2": cond.chi2,
                "per_class_chi2_stderr": cond.chi2_stderr,
                "per_class_chi2_max": max(cond.chi2_per_class.values()),
                "remeasured_chi2_weighted": sum(float(cond.class_probs[k]) * v for k, v in chi2_c.items()),
                "remeasured_chi2_max": max(chi2_c.values()),
                "unconditional_s": plain_s,
                "unconditional_samples": plain.samples,
                "unconditional_chi2": plain.chi2,
                "grouped_pairing_s": grouped["median"],
                "copy_pairing_s": copy["median"],
                "scan_equals_copy": same,
            }
        )
        print(rows[-1], flush=True)
    save("conditional_solver", {"machine": machine(), "rows": rows})
    print(
        "| problem | N x d, classes | per-class solve: s / samples / chi2 (max class) "
        "| re-measured chi2 (max class) | unconditional solve: s / samples / chi2 "
        "| pairing 4096 of one class: class scan / per-class copy |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['problem']} | {r['n']} x {r['d']}, {r['classes']} | {r['per_class_s']:.1f} s / "
            f"{r['per_class_samples'] / 1e6:.2f}M / {r['per_class_chi2']:.4f} "
            f"({r['per_class_chi2_max']:.4f}) | {r['remeasured_chi2_weighted']:.4f} "
            f"({r['remeasured_chi2_max']:.4f}) | {r['unconditional_s']:.1f} s / "
            f"{r['unconditional_samples'] / 1e6:.2f}M / {r['unconditional_chi2']:.4f} | "
            f"{1e3 * r['grouped_pairing_s']:.1f} ms / {1e3 * r['copy_pairing_s']:.1f} ms "
            f"({'same pairs' if r['scan_equals_copy'] else 'DIFFERENT pairs'}) |"
        )


if __name__ == "__main__":
    main()
