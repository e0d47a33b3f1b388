"""The solver's measurements count the float64 argmax (BENCHMARKS.md section 29): certified float32
counts, and the switch to float64 scores where float32 counts are off.

Before section 29 the solver's chi2 measurements (its stop test and the chi2 it reports) counted the
argmax of its float32 scores. They now count the float64 argmax (the float32 winner certified by the
scores' rounding bound, the other rows re-scored in float64 against the exact atoms,
``SemidiscreteProblem.hard_exact``), and a solve whose float32 counts understate a measurement's
exact chi2 by more than tol / 4 goes on in float64 scores.

Two tables, "before" (``problem.CERTIFIED_COUNTS = False``: common.before_29) and "now" alternating
in one process:
- typical problems (default solves at tol 0.05): min seconds of 2 runs each, the MD5 of both
  potentials, whether the switch happened;
- the 3,000-point circle of section 27 (``unusual.py``), where float32 scores pick another atom for
  5% of the noise: the chi2 stop alone and the default (at most 60 s), with an independent chi2 of
  each potential from a float64 brute-force count (2^20 samples, merged near duplicates paired by
  their representative, unbiased: minus (atoms - 1) / samples).

    python benchmarks/solver_counts.py          # 2 threads; writes benchmarks/results/solver_counts.json
    python benchmarks/solver_counts.py --edges  # the 26 edge inputs of section 27, before and now:
                                                # results/solver_counts_edges.json
"""

from __future__ import annotations

import hashlib
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import unusual  # noqa: E402
from certified import solver_problems  # noqa: E402
from common import before_29, machine, save  # noqa: E402
from sdfm.data import load_dataset  # noqa: E402
from sdfm.transport import SemidiscreteSolver  # noqa: E402
from unusual import problems as unusual_problems  # noqa: E402


def gen(seed):
    return torch.Generator().manual_seed(seed)


def student_t(n: int, d: int, dof: int, seed: int = 6) -> torch.Tensor:
    """Student t samples from a seeded generator: a normal over the root of a chi-square / dof."""
    g = gen(seed)
    z = torch.randn(n, d, generator=g)
    return z / (torch.randn(n, d, dof, generator=g).square().sum(2) / dof).sqrt()


def independent_chi2(y, result, samples: int = 1 << 20, seed: int = 11) -> float:
    """Unbiased chi2 of the result's atoms from a float64 brute-force argmax on fresh noise."""
    groups = result.duplicates
    g = result.potential if groups is None else groups.representatives_only(result.potential)
    y64 = y.to(torch.float64)
    bias = g.to(torch.float64) - 0.5 * y64.square().sum(1)
    x = torch.randn(samples, y.shape[1], generator=gen(seed), dtype=torch.float64)
    index = torch.cat([(xb @ y64.T + bias).argmax(1) for xb in x.split(4096)])
    if groups is None:
        b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64)
    else:
        index, b = groups.inverse[index], groups.weights
    m = torch.bincount(index, minlength=b.shape[0]).to(torch.float64) / samples
    return float(((m - b).square() / b).sum()) - (b.shape[0] - 1) / samples


def solve(y, label: str, **options):
    with before_29(label == "before"):
        start = time.perf_counter()
        r = SemidiscreteSolver(**options).solve(y, generator=gen(1))
        return r, time.perf_counter() - start


def typical_rows(repeats: int = 2) -> list[dict]:
    problems = {
        **solver_problems(),
        "Student t (3 dof) 8-d, 10,000": student_t(10_000, 8, dof=3),
        "checkerboard 2-d, 20,000": torch.as_tensor(load_dataset("checkerboard:n=20000").x).float(),
    }
    rows = []
    for name, y in problems.items():
        seconds, digests, results = {"before": [], "now": []}, {}, {}
        for _ in range(repeats):
            for label in ("before", "now"):
                r, s = solve(y, label, tol=0.05)
                seconds[label].append(s)
                digests[label] = hashlib.md5(r.potential.numpy().tobytes()).hexdigest()
                results[label] = r
        row = {
            "problem": name,
            "before_s": min(seconds["before"]),
            "now_s": min(seconds["now"]),
            "now_over_before": min(seconds["now"]) / min(seconds["before"]),
            "identical": digests["before"] == digests["now"],
            "samples_per_target_before": results["before"].samples / y.shape[0],
            "samples_per_target_now": results["now"].samples / y.shape[0],
            "chi2_before": results["before"].chi2,
            "chi2_now": results["now"].chi2,
            "float64_from_step": results["now"].settings["float64_from_step"],
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def circle_rows() -> list[dict]:
    y = torch.tensor(unusual_problems()["circle, 3,000 x 2"], dtype=torch.float32)
    rows = []
    for setting, options in (
        ("chi2 stop alone", {"smooth_tol": None}),
        ("default", {}),
    ):
        for label in ("before", "now"):
            r, s = solve(y, label, tol=0.05, max_seconds=60, **options)
            row = {
                "solve": setting,
                "counts": label,
                "seconds": s,
                "samples_per_target": r.samples / y.shape[0],
                "converged": r.converged,
                "chi2_reported": r.chi2,
                "chi2_independent_float64": independent_chi2(y, r),
                "float64_from_step": r.settings["float64_from_step"],
                "steps": r.steps,
            }
            print(row, flush=True)
            rows.append(row)
    return rows


def edge_rows() -> list[dict]:
    """The 26 edge inputs of section 27 (``unusual.py``: its settings and its independent check),
    before and now."""
    rows = []
    for name, array in unusual_problems().items():
        y = torch.tensor(array, dtype=torch.float32)
        row = {"problem": name}
        for label in ("before", "now"):
            with before_29(label == "before"):
                solver = SemidiscreteSolver(
                    tol=0.05, max_steps=unusual.MAX_STEPS, max_seconds=unusual.MAX_SECONDS
                )
                start = time.perf_counter()
                r = solver.solve(y, generator=gen(0))
                row[f"{label}_s"] = time.perf_counter() - start
            row[f"{label}_samples_per_target"] = r.samples / y.shape[0]
            row[f"{label}_converged"] = r.converged
            row[f"{label}_chi2"] = r.chi2
            row[f"{label}_chi2_independent"] = unusual.check(y, r)[0]
            row[f"{label}_float64_from_step"] = r.settings["float64_from_step"]
            row[f"{label}_md5"] = hashlib.md5(r.potential.numpy().tobytes()).hexdigest()
        row["identical"] = row["before_md5"] == row["now_md5"]
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    torch.set_num_threads(2)
    if sys.argv[1:] == ["--edges"]:
        save("solver_counts_edges", {"machine": machine(), "threads": 2, "rows": edge_rows()})
        return
    out = {"machine": machine(), "threads": 2, "circle": circle_rows(), "typical": typical_rows()}
    save("solver_counts", out)


if __name__ == "__main__":
    main()
