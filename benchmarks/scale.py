"""Scale: memory-mapped targets, solves at large N, the linear pairing curve, FAISS, 1 vs 2 processes.

    python benchmarks/scale.py data                      # synthetic mixtures as .npy in $SDFM_SCALE_DIR
    python benchmarks/scale.py pairing                   # assign time against N (d = 64, 784) + PNG
    python benchmarks/scale.py plot                      # redraw results/scale_pairing.png
    python benchmarks/scale.py solve --n 100000 --d 64 [--pca K] [--memory-limit B] [--max-seconds T]
                                         [--seed S] [--defaults [--before34|--before35|--before36]]
    python benchmarks/scale.py check --n 100000 --d 64 [--pca K] [--samples M]  # independent chi2
    python benchmarks/scale.py faiss --n 200000 --d 64   # recall / chi2 / speed of flat, IVF, HNSW
    python benchmarks/scale.py memory [--memory-limit B] [--before33]   # peak memory of a short solve
    python benchmarks/scale.py precision                 # solver: float32 vs bf16 scores, N 20,000 x 784
    python benchmarks/scale.py processes                 # 1 vs 2 gloo processes: solve and train

Data: a mixture of 16 low-rank Gaussians (x = m_c + A_c z + 0.1 e, rank 16) written chunk by chunk to
``$SDFM_SCALE_DIR/mix_n{N}_d{d}.npy`` (default /tmp/sdfm_scale) and read back memory-mapped. Peak memory
is sampled from /proc/self/status every 10 ms: ``RssAnon`` (memory the process allocated) and ``VmRSS``
(plus the file pages of the mapping, which the kernel may drop). Results: benchmarks/results/scale_*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import CELL, RESULTS, before_34, before_35, before_36, machine, repeat, save  # noqa: E402
from sdfm.transport import LaguerreCells, PCAProjection, SemidiscreteSolver  # noqa: E402

DIR = Path(os.environ.get("SDFM_SCALE_DIR", "/tmp/sdfm_scale"))


def data_path(n: int, d: int) -> Path:
    return DIR / f"mix_n{n}_d{d}.npy"


def make_data(n: int, d: int, seed: int = 0) -> Path:
    """The mixture as a .npy file (written chunk by chunk; reused if present)."""
    path = data_path(n, d)
    if path.exists():
        return path
    DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k, rank = 16, 16
    means = 2.0 * rng.standard_normal((k, d)).astype(np.float32)
    factors = (rng.standard_normal((k, d, rank)) / np.sqrt(rank)).astype(np.float32)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        c = rng.integers(0, k, m)
        z = rng.standard_normal((m, rank)).astype(np.float32)
        x = (
            means[c]
            + np.einsum("mdr,mr->md", factors[c], z)
            + 0.1 * rng.standard_normal((m, d)).astype(np.float32)
        )
        out[start : start + m] = x
    out.flush()
    del out
    tmp.rename(path)
    return path


def open_targets(path: Path) -> torch.Tensor:
    """A torch view of the memory-mapped file (nothing read yet)."""
    mm = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(mm)


class PeakMemory:
    """Samples RssAnon and VmRSS of this process every 10 ms in a thread; with ``where``, also the
    main thread's innermost frames in sdfm at the highest RssAnon sample (``peak_where``)."""

    def __init__(self, where: bool = False):
        self.peak = {"RssAnon": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._main = threading.main_thread().ident if where else None
        self.where: list[str] = []

    def _read(self):
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in self.peak:
                out[key] = int(line.split()[1]) * 1024
        return out

    def __enter__(self):
        self.start = self._read()

        def run():
            while not self._stop.wait(0.01):
                for k, v in self._read().items():
                    if k == "RssAnon" and v > self.peak[k] and self._main is not None:
                        self.where = _sdfm_frames(sys._current_frames().get(self._main))
                    self.peak[k] = max(self.peak[k], v)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for k, v in self._read().items():
            self.peak[k] = max(self.peak[k], v)

    def report(self) -> dict:
        mib = 1 << 20
        out = {
            "peak_rss_anon_mib": self.peak["RssAnon"] / mib,
            "peak_vm_rss_mib": self.peak["VmRSS"] / mib,
            "start_rss_anon_mib": self.start["RssAnon"] / mib,
        }
        return out if self._main is None else {**out, "peak_where": self.where}


def _sdfm_frames(frame, depth: int = 4) -> list[str]:
    """The innermost ``depth`` frames of a stack that lie in sdfm (file:line function)."""
    import traceback

    frames = [f for f in traceback.extract_stack(frame) if "/sdfm/" in f.filename] if frame else []
    return [f"{f.filename.split('/sdfm/')[-1]}:{f.lineno} {f.name}" for f in frames[-depth:]]


# ------------------------------------------------------------------------------------------------
def cmd_data(args):
    for n, d in ((1_000_000, 64), (200_000, 784)):
        t = time.perf_counter()
        path = make_data(n, d)
        print(f"{path} ({path.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - t:.1f} s)")


def cmd_pairing(args):
    """us per pair of exact pairing (4096 noises) against N targets: linear in N."""
    rows = []
    for d, sizes in (
        (64, (10_000, 30_000, 100_000, 300_000, 1_000_000)),
        (784, (10_000, 30_000, 100_000, 200_000)),
    ):
        full = open_targets(make_data(1_000_000 if d == 64 else 200_000, d))
        for n in sizes:
            y = full[:n].clone()  # in memory
            g = torch.zeros(n, dtype=torch.float64)
            cells = LaguerreCells(y, g)
            x = torch.randn(4096, d, generator=torch.Generator().manual_seed(0))
            cells.assign(x[:8])  # prepares the bias
            t = repeat(lambda cells=cells, x=x: cells.assign(x), repeats=3)
            row = {
                "d": d,
                "n": n,
                "us_per_pair": 1e6 * t["min"] / 4096,
                "ns_per_pair_per_target": 1e9 * t["min"] / 4096 / n,
            }
            row["gflops"] = 2 * n * d * 4096 / t["min"] / 1e9
            if n == sizes[-1]:  # the same scan straight from the memory-mapped file
                mapped = LaguerreCells(full[:n], g)
                mapped.assign(x[:8])
                tm = repeat(lambda mapped=mapped, x=x: mapped.assign(x), repeats=3)
                row["us_per_pair_mmap"] = 1e6 * tm["min"] / 4096
            rows.append(row)
            print(json.dumps(row))
    path = save("scale_pairing", {"machine": machine(), "rows": rows})
    print("->", path, plot_pairing())


def plot_pairing() -> Path:
    """results/scale_pairing.png: us per pair against N (log-log) from results/scale_pairing.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads((RESULTS / "scale_pairing.json").read_text())["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for d in sorted({r["d"] for r in rows}):
        pts = [(r["n"], r["us_per_pair"]) for r in rows if r["d"] == d]
        n, us = zip(*pts, strict=True)
        ax.loglog(n, us, "o-", label=f"d = {d}")
        ax.loglog(n, [us[0] * k / n[0] for k in n], ":", color="gray")
    ax.set_xlabel("N (targets)")
    ax.set_ylabel("us per pair (exact, 4,096 noises)")
    ax.set_title("Pairing time is linear in N (dotted: slope 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = RESULTS / "scale_pairing.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def cmd_solve(args):
    path = make_data(args.n, args.d)
    targets = open_targets(path)
    result = {"n": args.n, "d": args.d, "pca": args.pca, "memory_limit": args.memory_limit, "tol": args.tol}
    with before_34(args.before34), before_35(args.before35), before_36(args.before36), PeakMemory() as mem:
        t0 = time.perf_counter()
        keys = targets
        if args.pca:
            proj = PCAProjection.fit(targets, args.pca)
            keys = proj.project_targets(targets)
            result["pca_explained"] = proj.explained
            result["pca_seconds"] = time.perf_counter() - t0
        # --section15: the direct regime as section 15 ran it (averaging power 2, no coarse correction
        # beyond smooth_max_n), for a side-by-side run with the defaults
        pinned = {"average_power": 2.0, "coarse_size": 0} if args.section15 else {}
        # --defaults: the solver's defaults of today (this script pins section 17's settings, CELL,
        # otherwise); --before34: with h = 0 as the start (what "best" picked on these data before
        # section 34's lifted start)
        pinned.update({"warm_start": "zero"} if args.before34 else {})
        base = {} if args.defaults else CELL
        solver = SemidiscreteSolver(
            tol=args.tol,
            memory_limit=args.memory_limit,
            max_seconds=args.max_seconds,
            max_steps=None,
            **{**base, **pinned},
        )
        trained = [0]  # noise samples of the training steps (the rest are chi2 measurements)
        res = solver.solve(
            keys,
            generator=torch.Generator().manual_seed(args.seed),
            callback=lambda state: trained.__setitem__(0, state.train_samples),
        )
        result["seconds_total"] = time.perf_counter() - t0
    result.update(
        chi2=res.chi2,
        chi2_stderr=res.chi2_stderr,
        converged=res.converged,
        samples=res.samples,
        samples_per_atom=res.samples / args.n,
        train_samples_per_atom=trained[0] / args.n,
        steps=res.steps,
        solve_seconds=res.seconds,
        targets_streamed=res.settings["targets_streamed"],
        warm_start_used=res.settings["warm_start_used"],
        lift=res.settings["lift"],
        average_power_used=res.settings["average_power_used"],
        data_mib=args.n * args.d * 4 / 2**20,
        **mem.report(),
    )
    result["history"] = [
        {"samples": h.samples, "seconds": h.seconds, "chi2": h.chi2}
        for h in res.history
        if h.chi2 is not None
    ]
    name = _solve_name(args, streamed=args.memory_limit == 0)
    torch.save(res.potential, DIR / f"{name}.potential.pt")
    save(name, {"machine": machine(), "command": " ".join(sys.argv), **result})
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))


def _solve_name(args, streamed: bool = False) -> str:
    """The results' name of a solve: size, options, and the seed where it is not 0."""
    name = f"scale_solve_n{args.n}_d{args.d}" + (f"_pca{args.pca}" if args.pca else "")
    name += "_streamed" if streamed else ""
    name += "_before17" if args.section15 else ""
    name += "_defaults" if args.defaults else ""
    name += "_before34" if args.before34 else ""
    name += "_before35" if args.before35 else ""
    name += "_before36" if args.before36 else ""
    return name + (f"_seed{args.seed}" if args.seed else "")


def cmd_check(args):
    """Independent chi2 of a solve's saved potential (--samples fresh samples, 2^20 by default, another
    seed), added to its JSON as chi2_independent."""
    from sdfm.transport import estimate_marginal

    targets = open_targets(make_data(args.n, args.d))
    keys = targets
    if args.pca:
        keys = PCAProjection.fit(targets, args.pca).project_targets(targets)
    name = _solve_name(args)
    potential = torch.load(DIR / f"{name}.potential.pt")
    est = estimate_marginal(
        keys,
        potential,
        num_samples=args.samples,
        batch_size=8192,
        generator=torch.Generator().manual_seed(12345),
        with_cost=False,
    )
    path = RESULTS / f"{name}.json"
    result = json.loads(path.read_text())
    result.update(
        chi2_independent=est.chi2,
        chi2_independent_stderr=est.chi2_stderr,
        chi2_independent_samples=args.samples,
    )
    save(name, result)
    print(name, "independent chi2", est.chi2, "+-", est.chi2_stderr)


def cmd_memory(args):
    """Peak anonymous memory of the solver's start, ``--steps`` hard steps and its final measurement
    (in memory, the defaults), and where in sdfm it was held; ``--before33``: the tight groups'
    neighbour probe (a [256, N] score block and copies of the atoms) and k-means' distance blocks
    as before section 33."""
    from common import before_33

    targets = open_targets(make_data(args.n, args.d))
    solver = SemidiscreteSolver(tol=None, max_steps=args.steps, memory_limit=args.memory_limit)
    with before_33(args.before33), PeakMemory(where=True) as mem:
        t0 = time.perf_counter()
        solver.solve(targets, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - t0
    result = {"n": args.n, "d": args.d, "steps": args.steps, "memory_limit": args.memory_limit}
    result.update(before33=args.before33, seconds=seconds)
    result.update(mem.report())
    name = f"scale_memory_n{args.n}_d{args.d}" + ("_streamed" if args.memory_limit == 0 else "")
    name += "_before33" if args.before33 else ""
    save(name, {"machine": machine(), "command": " ".join(sys.argv), **result})
    print(json.dumps(result, indent=1))


def cmd_precision(args):
    """The solver with float32 scores against bf16 scores with exact re-scoring, same seed."""
    y = open_targets(make_data(args.n, args.d)).clone()
    rows = []
    for score_dtype in (None, "bfloat16"):
        for anneal in (True, False):
            solver = SemidiscreteSolver(
                tol=args.tol, max_seconds=args.max_seconds, score_dtype=score_dtype, anneal=anneal, **CELL
            )
            res = solver.solve(y, generator=torch.Generator().manual_seed(0))
            hard = next((h for h in res.history if h.eps == 0), None)
            row = {
                "scores": score_dtype or "float32",
                "anneal": anneal,
                "seconds": res.seconds,
                "annealing_seconds": None if hard is None or not anneal else hard.seconds,
                "samples_per_atom": res.samples / args.n,
                "chi2": res.chi2,
                "chi2_stderr": res.chi2_stderr,
                "converged": res.converged,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = f"scale_precision_n{args.n}_d{args.d}"
    save(name, {"machine": machine(), "command": " ".join(sys.argv), "n": args.n, "d": args.d, "rows": rows})


def cmd_faiss(args):
    from sdfm.transport.search import FaissCells, search_quality

    y = open_targets(make_data(1_000_000, args.d))[: args.n].clone()
    t = time.perf_counter()
    res = SemidiscreteSolver(tol=args.tol, max_steps=None, max_seconds=args.max_seconds, **CELL).solve(
        y, generator=torch.Generator().manual_seed(0)
    )
    solve_s = time.perf_counter() - t
    cells = LaguerreCells(y, res.potential)
    x = torch.randn(4096, args.d, generator=torch.Generator().manual_seed(1))
    cells.assign(x[:8])
    exact = repeat(lambda: cells.assign(x), repeats=3)["min"]
    rows = [{"kind": "exact (sdfm)", "us_per_pair": 1e6 * exact / 4096, "recall": 1.0}]
    configs = [
        ("flat", {}),
        ("ivf", {"nprobe": 8}),
        ("ivf", {"nprobe": 32}),
        ("ivf", {"nprobe": 128}),
        ("hnsw", {"ef_search": 64}),
        ("hnsw", {"ef_search": 256}),
    ]
    built = {}
    for kind, kw in configs:
        t = time.perf_counter()
        key = kind
        if key not in built:
            built[key] = FaissCells(y, res.potential, kind=kind)
            build_s = time.perf_counter() - t
        else:
            build_s = None
        search = built[key]
        if kind == "ivf":
            search.index.nprobe = kw["nprobe"]
            search.params["nprobe"] = kw["nprobe"]
        if kind == "hnsw":
            search.index.hnsw.efSearch = kw["ef_search"]
            search.params["ef_search"] = kw["ef_search"]
        secs = repeat(lambda search=search: search.assign(x), repeats=3)["min"]
        q = search_quality(search, cells, samples=args.samples, generator=torch.Generator().manual_seed(2))
        row = {
            "kind": kind,
            **dict(search.params),
            "build_seconds": build_s,
            "us_per_pair": 1e6 * secs / 4096,
        }
        row["speedup_vs_exact"] = exact / secs
        row.update(q)
        rows.append(row)
        print(json.dumps(row))
    # HNSW searching the inner products directly (no MIPS-to-L2 reduction): the flat index's keys in an
    # inner-product HNSW graph, queried like the flat index
    import faiss

    flat = built["flat"]
    ip_index = faiss.IndexHNSWFlat(flat.index.d, 32, faiss.METRIC_INNER_PRODUCT)
    ip_index.hnsw.efConstruction = 200
    t = time.perf_counter()
    ip_index.add(flat.index.reconstruct_n(0, flat.index.ntotal))
    build_s = time.perf_counter() - t
    for ef in (64, 256):
        ip_index.hnsw.efSearch = ef
        search = FaissCells.from_index(
            ip_index, kind="flat", num_targets=args.n, dim=args.d, fingerprint="", params={"kind": "flat"}
        )
        secs = repeat(lambda search=search: search.assign(x), repeats=3)["min"]
        q = search_quality(search, cells, samples=args.samples, generator=torch.Generator().manual_seed(2))
        row = {"kind": "hnsw_inner_product", "hnsw_m": 32, "ef_search": ef, "build_seconds": build_s}
        row.update(us_per_pair=1e6 * secs / 4096, speedup_vs_exact=exact / secs, **q)
        build_s = None
        rows.append(row)
        print(json.dumps(row))
    save(
        f"scale_faiss_n{args.n}_d{args.d}",
        {
            "machine": machine(),
            "n": args.n,
            "d": args.d,
            "solve_seconds": solve_s,
            "chi2_potential": res.chi2,
            "rows": rows,
        },
    )


_WORKER = r"""
import json, sys, time, torch, numpy as np, warnings
from sdfm import parallel
from sdfm.transport import SemidiscreteSolver
from sdfm.couplings import SemidiscreteCoupling
from sdfm.models import build_model
from sdfm.train import TrainConfig, train
parallel.init_from_env(torch.device("cpu"))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    y = torch.from_numpy(np.load(sys.argv[1], mmap_mode="r"))[: int(sys.argv[2])].clone()
col = parallel.collective()
solver = SemidiscreteSolver(
    anneal=False, tol=None, max_steps=int(sys.argv[3]), batch_size=4096, preconditioner="cell"
)
t = time.perf_counter()
res = solver.solve(y, generator=torch.Generator().manual_seed(0), collective=col)
solve_s = time.perf_counter() - t
g = res.potential
coupling = SemidiscreteCoupling(y, g, collective=col)
torch.manual_seed(0)
model = build_model("mlp", {"dim": y.shape[1]})
cfg = TrainConfig(steps=int(sys.argv[4]), batch_size=1024, log_every=10**9, checkpoint_every=0)
t = time.perf_counter()
train(model, coupling, cfg, progress=False)
train_s = time.perf_counter() - t
if parallel.is_main():
    torch.save(g, sys.argv[5])
    print(json.dumps({"solve_seconds": solve_s, "train_seconds": train_s, "chi2": res.chi2}))
"""


def cmd_processes(args):
    """The same fixed-length hard-phase solve and SD-FM training with 1 and 2 processes (gloo, CPU):
    1 process with 1 and with 2 threads, 2 processes with 1 thread each."""
    path = make_data(1_000_000, args.d)
    script = DIR / "proc_worker.py"
    script.write_text(_WORKER)
    rows = []
    pots = {}
    for procs, threads in ((1, 1), (1, 2), (2, 1)):
        out = DIR / f"proc_g{procs}_{threads}.pt"
        common = [str(path), str(args.n), str(args.steps), str(args.train_steps), str(out)]
        if procs == 1:
            cmd = [sys.executable, str(script), *common]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={procs}",
                str(script),
                *common,
            ]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        row = {"processes": procs, "threads_per_process": threads}
        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        pots[(procs, threads)] = torch.load(out)
        rows.append(row)
        print(json.dumps(row))
    base = pots[(1, 1)]
    for row in rows:
        row["potential_equal_to_1_process_1_thread"] = bool(
            torch.equal(pots[(row["processes"], row["threads_per_process"])], base)
        )
        row["solve_speedup_vs_1x1"] = rows[0]["solve_seconds"] / row["solve_seconds"]
        row["train_speedup_vs_1x1"] = rows[0]["train_seconds"] / row["train_seconds"]
    print(json.dumps(rows, indent=1))
    save(
        f"scale_processes_n{args.n}_d{args.d}",
        {
            "machine": machine(),
            "command": " ".join(sys.argv),
            "n": args.n,
            "d": args.d,
            "solve_steps": args.steps,
            "train_steps": args.train_steps,
            "rows": rows,
        },
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("data")
    sub.add_parser("pairing")
    sub.add_parser("plot")
    s = sub.add_parser("solve")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--d", type=int, required=True)
    s.add_argument("--pca", type=int, default=None)
    s.add_argument("--tol", type=float, default=0.1)
    s.add_argument("--memory-limit", type=int, default=1 << 30)
    s.add_argument("--max-seconds", type=float, default=None)
    s.add_argument("--quiet", action="store_true")
    c = sub.add_parser("check")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--d", type=int, required=True)
    c.add_argument("--pca", type=int, default=None)
    c.add_argument("--samples", type=int, default=1 << 20, help="fresh noise samples (2^20)")
    for parser in (s, c):
        parser.add_argument(
            "--section15",
            action="store_true",
            help="the direct regime as BENCHMARKS section 15 ran it (averaging power 2, no coarse "
            "correction beyond 16,384 atoms); results named ..._before17",
        )
        parser.add_argument(
            "--defaults",
            action="store_true",
            help="the solver's defaults (without it the solve pins section 17's settings); results "
            "named ..._defaults",
        )
        parser.add_argument(
            "--before34",
            action="store_true",
            help="start from h = 0 and measure as before BENCHMARKS section 34 (the lifted start, the "
            "stop's schedule); results named ..._before34",
        )
        parser.add_argument(
            "--before35",
            action="store_true",
            help="measure the stop on fresh noise as before BENCHMARKS section 35 (not on the steps' "
            "noise); results named ..._before35",
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="the solve's seed (results named ..._seedS if not 0)"
        )
        parser.add_argument(
            "--before36",
            action="store_true",
            help="the lifted start on 256 clusters at any N, as before BENCHMARKS section 36; results "
            "named ..._before36",
        )
    f = sub.add_parser("faiss")
    f.add_argument("--n", type=int, default=200_000)
    f.add_argument("--d", type=int, default=64)
    f.add_argument("--tol", type=float, default=0.1)
    f.add_argument("--samples", type=int, default=65536)
    f.add_argument("--max-seconds", type=float, default=240.0)
    f.add_argument("--quiet", action="store_true")
    m = sub.add_parser("memory")
    m.add_argument("--n", type=int, default=1_000_000)
    m.add_argument("--d", type=int, default=64)
    m.add_argument("--steps", type=int, default=3)
    m.add_argument("--memory-limit", type=int, default=1 << 30)
    m.add_argument("--before33", action="store_true")
    r = sub.add_parser("precision")
    r.add_argument("--n", type=int, default=20_000)
    r.add_argument("--d", type=int, default=784)
    r.add_argument("--tol", type=float, default=0.1)
    r.add_argument("--max-seconds", type=float, default=600.0)
    r.add_argument("--quiet", action="store_true")
    q = sub.add_parser("processes")
    q.add_argument("--n", type=int, default=100_000)
    q.add_argument("--d", type=int, default=64)
    q.add_argument("--steps", type=int, default=60)
    q.add_argument("--train-steps", type=int, default=100)
    args = p.parse_args()
    # the sections measured before section 34 ran its solver: pinned, except for solve --defaults
    # (whose --before34 pins it in cmd_solve, side by side)
    pinned = not (args.cmd == "solve" and args.defaults)
    with before_34(pinned):
        _run(args)


def _run(args):
    {
        "data": cmd_data,
        "pairing": cmd_pairing,
        "plot": lambda args: print(plot_pairing()),
        "solve": cmd_solve,
        "check": cmd_check,
        "faiss": cmd_faiss,
        "memory": cmd_memory,
        "precision": cmd_precision,
        "processes": cmd_processes,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
