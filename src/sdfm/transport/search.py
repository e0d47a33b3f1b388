"""Approximate (or exact) pairing through a FAISS index, once the potential is fixed.

With g fixed, the cell of x is a static maximum-inner-product search over augmented keys:

    argmax_j <x, y_j - c> + h_j  =  argmax_j <[x, s], [y_j - c, h_j / s]>    (h_j = g_j - |y_j|^2/2 - shift)

``kind="flat"`` searches these inner products exhaustively (exact up to float32 rounding; FAISS's
BLAS kernels). ``"ivf"`` and ``"hnsw"`` search approximately after the usual MIPS-to-nearest-neighbour
reduction (Bachrach et al. 2014): keys k_j get one more coordinate sqrt(M^2 - |k_j|^2), queries a 0,
so that |q - k_j|^2 = |q|^2 + M^2 - 2 <q, k_j> and the nearest key is the best-scoring one. Their recall
against exact pairing and the chi2 of the coupling they induce are what to check
(:func:`search_quality`; BENCHMARKS.md). ``faiss`` is the optional extra ``sdfm[faiss]``.

The index belongs to one (targets, potential): :attr:`FaissCells.fingerprint` hashes the potential,
the shape and the data fingerprint; ``sdfm.artifacts.load_index`` refuses an index built for another
potential.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from sdfm.transport import validate
from sdfm.transport._stream import chunk_size_for, target_chunks
from sdfm.transport.assign import center_and_sqnorms

KINDS = ("flat", "ivf", "hnsw")


def faiss_module():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FAISS is not installed: pip install 'sdfm[faiss]' (or faiss-cpu / faiss-gpu)"
        ) from exc
    return faiss


def potential_fingerprint(
    potential: torch.Tensor, shape: tuple[int, int], data_fingerprint: str | None
) -> str:
    """sha256 of the potential's float64 bytes, the targets' shape and their fingerprint."""
    h = hashlib.sha256()
    h.update(f"{tuple(shape)}|{data_fingerprint or ''}|".encode())
    h.update(potential.detach().to(torch.float64).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FaissCells:
    """Laguerre cells of a fixed potential searched with a FAISS index (eps = 0 pairing).

    Args:
        targets: data points [N, d] (any device; may be memory-mapped: keys are built chunk by chunk).
        potential: g [N] (1/2 |x - y|^2 convention).
        kind: ``"flat"`` (exact inner products), ``"ivf"`` (inverted lists) or ``"hnsw"`` (graph).
        nlist: IVF lists (default ~4 sqrt(N)); nprobe: lists searched per query (default
            max(1, nlist // 16)).
        hnsw_m: HNSW graph degree (default 32); ef_search: HNSW search breadth (default 128);
            ef_construction: HNSW build breadth (default 200).
        train_size: points used to train the IVF quantiser (default min(N, 64 nlist)).
        data_fingerprint: the targets' fingerprint (``sdfm.data.fingerprint``), folded into
            :attr:`fingerprint` so the index is tied to the data as well as to the potential.
        seed: randomness of the IVF training sample.

    A saved index is restored with :meth:`from_index` (``sdfm.artifacts.load_index`` does it and checks
    the fingerprint).
    """

    def __init__(
        self,
        targets,
        potential,
        *,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 200,
        train_size: int | None = None,
        data_fingerprint: str | None = None,
        seed: int = 0,
    ):
        faiss = faiss_module()
        targets = validate.as_targets(targets)
        n, d = targets.shape
        potential = validate.as_potential(potential, n)
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("train_size", train_size)):
            validate.check_positive_int(value, name)
        for name, value in (
            ("hnsw_m", hnsw_m),
            ("ef_search", ef_search),
            ("ef_construction", ef_construction),
        ):
            validate.check_positive_int(value, name, allow_none=False)
        self.kind, self.num_targets, self.dim = kind, n, d
        self.fingerprint = potential_fingerprint(potential, (n, d), data_fingerprint)
        chunk = chunk_size_for(1, n, d)
        center, sq = center_and_sqnorms(targets, device=torch.device("cpu"), chunk=chunk)
        h = potential.cpu().to(torch.float64) - 0.5 * sq
        h = h - h.max()
        self.scale = math.sqrt(d)  # the query's extra coordinate (|x| of a standard Gaussian)
        width = d + 1 if kind == "flat" else d + 2
        self.nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 per list
        self.nprobe = nprobe or max(1, self.nlist // 16)
        self.params = {"kind": kind}
        # keys [y - c, h / s] (plus the reduction coordinate) in float32, built chunk by chunk
        keys = np.empty((n, width), dtype=np.float32)
        for start, stop, z in target_chunks(targets, chunk, device=torch.device("cpu"), dtype=torch.float64):
            keys[start:stop, :d] = (z - center).numpy()
            keys[start:stop, d] = (h[start:stop] / self.scale).numpy()
        if kind != "flat":
            norms = np.square(keys[:, : d + 1].astype(np.float64)).sum(1)
            keys[:, d + 1] = np.sqrt(np.maximum(norms.max() - norms, 0.0))
        if kind == "flat":
            self.index = faiss.IndexFlatIP(width)
            self.index.add(keys)
        elif kind == "ivf":
            quantizer = faiss.IndexFlatL2(width)
            self.index = faiss.IndexIVFFlat(quantizer, width, self.nlist, faiss.METRIC_L2)
            size = min(n, train_size or 64 * self.nlist)
            pick = np.random.default_rng(seed).choice(n, size=size, replace=False)
            self.index.train(keys[np.sort(pick)])
            self.index.add(keys)
        else:
            self.index = faiss.IndexHNSWFlat(width, hnsw_m, faiss.METRIC_L2)
            self.index.hnsw.efConstruction = ef_construction
            self.index.add(keys)
        if kind == "ivf":
            self.index.nprobe = self.nprobe
            self.params.update(nlist=self.nlist, nprobe=self.nprobe)
        if kind == "hnsw":
            self.index.hnsw.efSearch = ef_search
            self.params.update(hnsw_m=hnsw_m, ef_search=ef_search)

    @classmethod
    def from_index(cls, index, *, kind: str, num_targets: int, dim: int, fingerprint: str, params: dict):
        """A :class:`FaissCells` around an index built earlier (by :meth:`__init__`, then saved)."""
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if int(index.ntotal) != num_targets:
            raise ValueError(f"index: holds {int(index.ntotal)} keys, expected {num_targets}")
        self = cls.__new__(cls)
        self.kind, self.num_targets, self.dim = kind, int(num_targets), int(dim)
        self.fingerprint, self.params, self.index = fingerprint, dict(params), index
        self.scale = math.sqrt(dim)
        if kind == "ivf":
            self.index.nprobe = int(params["nprobe"])
        if kind == "hnsw":
            self.index.hnsw.efSearch = int(params["ef_search"])
        return self

    def assign(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """The (approximate) cell of each noise sample x [n, d]: int64 [n] on ``x.device``."""
        x = validate.as_queries(x, self.dim)
        q = np.empty((x.shape[0], self.dim + (1 if self.kind == "flat" else 2)), dtype=np.float32)
        q[:, : self.dim] = x.detach().cpu().to(torch.float32).numpy()
        q[:, self.dim] = self.scale
        if self.kind != "flat":
            q[:, self.dim + 1] = 0.0
        _, idx = self.index.search(q, 1)
        return torch.from_numpy(idx[:, 0].astype(np.int64)).to(x.device)


def search_quality(search, cells, *, samples: int = 65536, generator: torch.Generator | None = None) -> dict:
    """Recall of ``search.assign`` against exact pairing (``cells``, a :class:`LaguerreCells`) on fresh
    Gaussian noise, and the chi2 (± stderr) of the marginal each induces on ``samples`` samples."""
    from sdfm.transport.diagnostics import MarginalAccumulator

    d = cells.targets.shape[1]
    hits = 0
    acc = {
        k: MarginalAccumulator(cells.num_targets, cells.weights, device="cpu") for k in ("search", "exact")
    }
    done = 0
    while done < samples:
        m = min(4096, samples - done)
        x = torch.randn(m, d, generator=generator)
        approx, exact = search.assign(x).cpu(), cells.assign(x).cpu()
        hits += int((approx == exact).sum())
        acc["search"].add_index(approx)
        acc["exact"].add_index(exact)
        done += m
    out = {"recall": hits / samples, "samples": samples}
    for name, a in acc.items():
        out[f"chi2_{name}"], out[f"chi2_{name}_stderr"] = a.chi2()
    return out
