"""Near duplicates and tight groups of atoms: the solver before and after (BENCHMARKS.md section 23).

    python benchmarks/near_duplicates.py           # results/near_duplicates.json
    python benchmarks/near_duplicates.py audit     # results/near_duplicates_audit.json
    python benchmarks/near_duplicates.py cost      # results/near_duplicates_cost.json

``compare``: data with jittered copies of their points, solved with tol 0.05, solver seed 0 and at
most 3,000 steps (2 threads) by the solver as it was before (exact duplicates merged only, no merged
start: ``RESOLUTION_FACTOR = 0``, ``tight_start=False``) and as it is (atoms closer than the scores
resolve merged; tight groups started from a merged solve). Problems: 500 standard normal points in
2-D with a copy of each moved by delta N(0, I) (delta from 1e-6 to 1e-2; their spacing is about
0.05), the same in 8-D (spacing about 1.2), 1,000 points in 2-D of which 10% or 25% have such a copy
at 1e-3, and the built-in digits (normalised as ``sdfm solve`` does) with a copy of each at 1e-3.
chi2 is checked independently: the coupling of the result pairs 2^18 fresh float64 noise samples
(merged cells split at random among their members, as ``SemidiscreteCoupling`` does) and the pairs
are counted per target.

``audit``: for every problem of ``small_problems.py``, ``problems.py``, ``chains.py``, ``tails.py``
and ``step_designs.py`` (BENCHMARKS 11, 14, 19-22), how many atoms the new defaults merge and whether
the merged start runs (the share of atoms with r_1 < r_8 / 64 against its threshold): where neither
happens, the solver's trajectory there is the one measured before.

``cost``: the searches' time on standard normal data (min of 3): the near-duplicate search at the
solver's radius against the exact-duplicate hashing alone (N = 10^6, d = 64), and the tight-group
neighbour search (k-d tree: 131,072 atoms in 2-D; dense: 32,768 atoms in 64-d).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from common import CELL, machine, save
from sdfm.couplings import SemidiscreteCoupling
from sdfm.data.normalize import Normalization
from sdfm.data.registry import load_dataset
from sdfm.transport import SemidiscreteSolver, duplicates
from sdfm.transport.semidiscrete import tight
from sdfm.transport.semidiscrete.problem import SemidiscreteProblem

MAX_STEPS = 3000


def _copies(base: torch.Tensor, fraction: float, delta: float, seed: int) -> torch.Tensor:
    """base and a copy moved by delta N(0, I) of its first ``fraction`` of points."""
    g = torch.Generator().manual_seed(seed)
    k = int(round(fraction * base.shape[0]))
    return torch.cat([base, base[:k] + delta * torch.randn(k, base.shape[1], generator=g)])


def _problems() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base2, base8 = torch.randn(500, 2, generator=g), torch.randn(500, 8, generator=g)
    out = {
        f"twins_2d_delta{delta:g}": _copies(base2, 1.0, delta, 1) for delta in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
    }
    out.update({f"twins_8d_delta{delta:g}": _copies(base8, 1.0, delta, 2) for delta in (1e-6, 1e-3)})
    base = torch.randn(1000, 2, generator=g)
    out.update({f"copies_{int(100 * f)}pct_2d_delta0.001": _copies(base, f, 1e-3, 3) for f in (0.1, 0.25)})
    x = load_dataset("digits").x
    digits = torch.as_tensor(Normalization.fit(x).apply(x)).float()
    out["digits_twins_delta0.001"] = _copies(digits, 1.0, 1e-3, 4)
    return out


def coupling_chi2(y: torch.Tensor, result, n: int = 1 << 18) -> float:
    """Independent chi2 of the result's pairs per target on fresh float64 noise."""
    coupling = SemidiscreteCoupling.from_result(y.double(), result)
    x = torch.randn(n, y.shape[1], generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    index = coupling.pair(x, generator=torch.Generator().manual_seed(124)).index
    m, w = torch.bincount(index, minlength=y.shape[0]).double() / n, 1.0 / y.shape[0]
    return float(((m - w) ** 2 / w).sum()) - (y.shape[0] - 1) / n


@contextlib.contextmanager
def _before():
    """The solver as it was: exact duplicates merged only (and no merged start, by its option)."""
    saved = duplicates.RESOLUTION_FACTOR
    duplicates.RESOLUTION_FACTOR = 0
    try:
        yield
    finally:
        duplicates.RESOLUTION_FACTOR = saved


def _run(y: torch.Tensor, before: bool) -> dict:
    with _before() if before else contextlib.nullcontext():
        start = time.perf_counter()
        r = SemidiscreteSolver(tol=0.05, max_steps=MAX_STEPS, tight_start=not before, **CELL).solve(
            y, generator=torch.Generator().manual_seed(0)
        )
        seconds = time.perf_counter() - start
    used = r.settings["tight_start_used"]
    return {
        "converged": r.converged,
        "samples_per_target": round(r.samples / y.shape[0], 1),
        "seconds": round(seconds, 2),
        "steps": r.steps,
        "chi2_solver": round(r.chi2, 4),
        "chi2_independent": round(coupling_chi2(y, r), 4),
        "merged_as_duplicates": 0 if r.duplicates is None else r.duplicates.num_duplicates,
        "merged_start": None if used is None else {k: used[k] for k in ("groups", "merged_atoms", "samples")},
    }


def compare(out: str) -> None:
    rows = []
    for name, y in _problems().items():
        row = {"problem": name, "N": y.shape[0], "d": y.shape[1]}
        row["before"] = _run(y, before=True)
        row["after"] = _run(y, before=False)
        rows.append(row)
        b, a = row["before"], row["after"]
        print(
            f"{name:28s} before: {b['samples_per_target']:8.0f} spt conv={b['converged']!s:5} "
            f"chi2 {b['chi2_independent']:.3f} {b['seconds']:6.1f}s | after: {a['samples_per_target']:6.0f} "
            f"spt conv={a['converged']!s:5} chi2 {a['chi2_independent']:.3f} {a['seconds']:6.1f}s "
            f"merged {a['merged_as_duplicates']} start {a['merged_start']}",
            flush=True,
        )
    save(
        out, {"machine": machine(), "threads": torch.get_num_threads(), "max_steps": MAX_STEPS, "rows": rows}
    )


def _audited() -> dict[str, torch.Tensor]:
    """The problems of sections 11, 14 and 19-22 (as their scripts build them)."""
    import chains
    import problems as peers
    import small_problems
    import tails
    from step_designs import _all_problems

    out = {f"[11] {k}": torch.as_tensor(v) for k, v in small_problems.problems().items()}
    out.update({f"[14] {k}": torch.as_tensor(peers.load(k)) for k in peers.PROBLEMS})
    out.update({f"[19] {k}": make() for k, (make, _) in chains.PROBLEMS.items()})
    out.update({f"[20] {k}": y for k, (y, _) in tails._problems().items()})
    out.update({f"[21-22] {k}": y for k, (y, _) in _all_problems().items()})
    return out


def audit(out: str) -> None:
    rows = []
    for name, y in _audited().items():
        problem = SemidiscreteProblem(SemidiscreteSolver(), y, None, torch.Generator().manual_seed(0), None)
        row = {"problem": name, "N": y.shape[0], "d": y.shape[1]}
        row["merged_as_duplicates"] = 0 if problem.duplicates is None else problem.duplicates.num_duplicates
        row["merge_radius"] = problem.merge_radius
        dist, _ = tight.neighbour_distances(tight.AtomView.of_problem(problem), tight.NEIGHBOURS)
        row["share_below_trigger"] = round(
            float((dist[:, 0] < tight.TRIGGER_RATIO * dist[:, -1]).double().mean()), 4
        )
        row["merged_start_runs"] = tight.tight_groups(problem) is not None
        rows.append(row)
        print(row, flush=True)
    save(out, {"machine": machine(), "min_fraction": tight.MIN_FRACTION, "rows": rows})


def _best(fn, *args, repeats: int = 3, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


def cost(out: str) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1_000_000, 64, generator=g)
    radius = duplicates.resolution_radius(y, torch.float32)
    row = {
        "near_duplicates_1e6x64": {
            "radius": radius,
            "exact_hashing_s": _best(duplicates.find_duplicates, y),
            "with_radius_s": _best(duplicates.find_duplicates, y, radius=radius),
        }
    }
    del y
    for name, (n, d) in {"kd_tree_131072x2": (131072, 2), "dense_32768x64": (32768, 64)}.items():
        atoms = torch.randn(n, d, generator=g, dtype=torch.float64)
        row[name] = _best(tight.neighbour_distances, atoms, tight.NEIGHBOURS)
    print(row, flush=True)
    save(out, {"machine": machine(), "threads": torch.get_num_threads(), **row})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["compare", "audit", "cost"], default="compare")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "audit":
        audit("near_duplicates_audit")
    elif args.what == "cost":
        cost("near_duplicates_cost")
    else:
        compare("near_duplicates")


if __name__ == "__main__":
    main()
