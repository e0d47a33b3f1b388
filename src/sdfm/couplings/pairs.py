"""SD-FM pairs for your own training loop (torchcfm, Meta's flow_matching, or plain PyTorch).

    pairs = SemidiscretePairs.fit(y, path="potential.safetensors")  # solve once; re-used next time
    x0, x1 = pairs(256)                                              # noise and its OT-paired data
    loader = DataLoader(pairs.dataset(256), batch_size=None, num_workers=2)

Units: everything is in the units of ``y`` as you pass it. ``SemidiscretePairs`` does not normalise
(``sdfm train`` does, and stores the normalisation in its run): if your training code standardises its
data, pass the standardised ``y``. The source is N(0, I) in the same space.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdfm.couplings.semidiscrete import SemidiscreteCoupling
from sdfm.progress import SolveBar
from sdfm.protocols import Pairs
from sdfm.transport.validate import as_targets


class SemidiscretePairs:
    """Draws (x0, x1) pairs of the semidiscrete OT coupling from N(0, I) to data ``y`` [N, d].

    Build it with :meth:`fit` (solves the potential, optionally saving it and re-using a saved one)
    or :meth:`load` (a potential file written by :meth:`save`, ``sdfm solve --normalize none`` or
    ``save_potential``). Calling it returns ``(x0, x1)``, or ``(x0, x1, labels)`` for labelled
    class-conditional pairs; :meth:`sample` returns the full :class:`~sdfm.protocols.Pairs` (with the
    data index). Pass your own noise as ``x0=`` (then x1 is its cell's data point).

    Attributes:
        coupling: the underlying :class:`~sdfm.couplings.SemidiscreteCoupling`.
        chi2: the marginal error of the potential (measured by the solver or stored in the file).
        generator: the default random stream (seeded by ``seed``), on the data's device.
    """

    def __init__(self, coupling: SemidiscreteCoupling, *, chi2: float, result=None, seed: int = 0, meta=None):
        self.coupling = coupling
        self.meta = dict(meta or {})
        self.chi2 = float(chi2)
        self.result = result
        self.seed = int(seed)
        self.generator = torch.Generator(device=coupling.device).manual_seed(self.seed)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        y,
        *,
        labels=None,
        weights=None,
        eps: float = 0.0,
        tol: float = 0.05,
        path: str | Path | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
        progress: bool = False,
        **solver_options,
    ) -> SemidiscretePairs:
        """Solves the potential for ``y`` [N, d] (tensor or array; units as given).

        Args:
            labels: class labels [N]: one potential per class, each noise paired within a class drawn
                from the class masses; calls then return ``(x0, x1, labels)``.
            weights: positive data weights [N] (default uniform).
            eps: relative entropic regularisation (0: the exact argmax pairing).
            tol: stop when chi2 <= tol (with 97.5% confidence).
            path: a potential file: loaded when it holds a potential for exactly these data (and
                labels, eps); otherwise solved and saved there (atomically).
            seed: seeds the solver and the pairs' generator.
            device: where the data, the solve and the pairs live (default: the device of ``y``).
            progress: a tqdm bar with chi2 against tol.
            solver_options: other :class:`~sdfm.transport.SemidiscreteSolver` options.
        """
        from sdfm.transport import SemidiscreteSolver, solve_per_class

        y = _as_data(y, device)
        if path is not None and Path(path).is_file():
            try:
                found = cls.load(path, y, labels=labels, seed=seed)
            except ValueError:
                found = None  # other data, labels or a damaged file: solve again and replace it
            if found is not None and _same_eps(found, eps) and _same_weights(found, weights):
                return found
        solver = SemidiscreteSolver(eps=eps, tol=tol, device=str(y.device), **solver_options)
        gen = torch.Generator(device=y.device).manual_seed(int(seed))
        bar = SolveBar(tol=tol, num_targets=y.shape[0], disable=not progress)
        try:
            if labels is not None:
                labels = torch.as_tensor(labels).to(torch.long)
                res = solve_per_class(solver, y, labels, weights=weights, generator=gen, callback=bar)
            else:
                res = solver.solve(y, weights=weights, generator=gen, callback=bar)
        finally:
            bar.close()
        pairs = cls(SemidiscreteCoupling.from_result(y, res), chi2=res.chi2, result=res, seed=seed)
        if path is not None:
            pairs.save(path)
        return pairs

    @classmethod
    def load(cls, path: str | Path, y, *, labels=None, seed: int = 0, device=None) -> SemidiscretePairs:
        """From a potential file solved for exactly ``y`` (and ``labels`` for a per-class potential);
        ValueError naming the mismatch otherwise."""
        from sdfm.artifacts import load_potential

        y = _as_data(y, device)
        pf = load_potential(path, targets=y)
        if (pf.classes is None) != (labels is None):
            raise ValueError(
                f"labels: {path} holds a {'per-class' if pf.classes is not None else 'plain'} potential; "
                f"{'pass' if pf.classes is not None else 'do not pass'} labels"
            )
        kwargs = {}
        if labels is not None:
            labels = torch.as_tensor(labels).to(torch.long)
            if not torch.equal(pf.classes, labels.cpu()):
                raise ValueError(f"labels: differ from the classes {path} was solved with")
            kwargs = {"labels": labels, "conditional": True}
        coupling = SemidiscreteCoupling(
            y,
            pf.potential,
            eps=pf.eps,
            weights=pf.weights,
            duplicates=pf.duplicates,
            projection=pf.projection,
            **kwargs,
        )
        return cls(coupling, chi2=pf.chi2, seed=seed, meta=pf.meta)

    def save(self, path: str | Path) -> Path:
        """Writes the potential (with the data's fingerprint) for :meth:`load` / ``fit(path=...)``."""
        from sdfm.artifacts import save_potential

        if self.result is None:
            raise ValueError("save: this sampler was loaded from a file; copy that file instead")
        return save_potential(path, self.result, targets=self.coupling.data)

    # ---- drawing -----------------------------------------------------------------------------
    @property
    def labelled(self) -> bool:
        return self.coupling.conditional

    def sample(self, batch_size: int | None = None, *, x0=None, generator=None) -> Pairs:
        """The pairs of ``batch_size`` fresh noise samples, or of your own noise ``x0`` [n, d]."""
        gen = self.generator if generator is None else generator
        if x0 is None:
            if batch_size is None:
                raise ValueError("batch_size: give the number of pairs, or your own noise as x0")
            return self.coupling.sample(batch_size, generator=gen)
        if batch_size is not None and batch_size != x0.shape[0]:
            raise ValueError(f"batch_size: {batch_size} differs from x0's {x0.shape[0]} rows")
        return self.coupling.pair(x0, generator=gen)

    def __call__(self, batch_size: int | None = None, *, x0=None, generator=None):
        """``(x0, x1)``, or ``(x0, x1, labels)`` for class-conditional pairs."""
        p = self.sample(batch_size, x0=x0, generator=generator)
        return (p.x0, p.x1, p.cond) if self.labelled else (p.x0, p.x1)

    def dataset(self, batch_size: int, *, seed: int | None = None, steps: int | None = None) -> PairDataset:
        """An :class:`torch.utils.data.IterableDataset` of pair batches (see :class:`PairDataset`)."""
        return PairDataset(self, batch_size, seed=self.seed if seed is None else seed, steps=steps)


class PairDataset(torch.utils.data.IterableDataset):
    """Batches of SD-FM pairs for a ``DataLoader(dataset, batch_size=None, num_workers=...)``.

    Each item is one batch ``(x0, x1)`` (or ``(x0, x1, labels)``) of ``batch_size`` pairs. Every
    DataLoader worker, and every process of a torch.distributed job, draws from its own stream, so no
    two workers yield the same noise: in the main process (``num_workers=0``) the stream is seeded by
    (seed, rank) and iterating again continues it; in a worker it is seeded by (seed, rank, the
    worker's seed), which the DataLoader draws afresh for every epoch from its own generator (pass
    ``generator=`` to the DataLoader, or seed torch, for repeatable epochs). ``steps`` bounds the
    number of batches per worker and epoch (default: endless). Workers pair on the CPU: keep the
    sampler's data on the CPU when ``num_workers > 0``.
    """

    def __init__(self, pairs: SemidiscretePairs, batch_size: int, *, seed: int = 0, steps: int | None = None):
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps: expected a positive integer or None, got {steps!r}")
        self.pairs, self.batch_size, self.seed, self.steps = pairs, batch_size, int(seed), steps
        self._generators: dict = {}

    def stream_seed(self) -> int:
        """The seed of this stream: distinct per (seed, rank) in the main process, per (seed, rank,
        worker seed) in a DataLoader worker (a new worker seed every epoch)."""
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else 1 + int(info.seed) % (1 << 62)
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return (self.seed * 1_000_003 + rank * 10_007 + worker * 7_919) % (1 << 63)

    def __iter__(self):
        seed = self.stream_seed()
        gen = self._generators.get(seed)
        if gen is None:
            gen = self._generators[seed] = torch.Generator(device=self.pairs.coupling.device).manual_seed(
                seed
            )
        count = 0
        while self.steps is None or count < self.steps:
            yield self.pairs(self.batch_size, generator=gen)
            count += 1


def _as_data(y, device) -> torch.Tensor:
    """``y`` as checked targets [N, d] (floating, finite) on ``device`` (default: where it is)."""
    y = as_targets(y, "y")
    return y if device is None else y.to(device)


def _same_weights(pairs: SemidiscretePairs, weights) -> bool:
    """Whether a loaded potential was solved with these data weights (None: uniform)."""
    stored = pairs.coupling.weights
    if weights is None or stored is None:
        return weights is None and stored is None
    w = torch.as_tensor(weights, dtype=torch.float64).cpu()
    return w.shape == stored.shape and torch.allclose(w / w.sum(), stored.double().cpu(), rtol=1e-12, atol=0)


def _same_eps(pairs: SemidiscretePairs, eps: float) -> bool:
    """Whether a loaded potential was solved with the relative ``eps`` asked for."""
    stored = pairs.meta.get("eps_relative", pairs.coupling.eps)
    return stored is not None and abs(float(stored) - float(eps)) <= 1e-12
