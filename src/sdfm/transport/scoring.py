"""One scorer for every reduction over the atoms: argmax (with the runner-up), softmax column sums and
log-sum-exp of ``alpha <x, y_j - center> + bias_j``, streamed chunk by chunk and, when the atoms are
sharded across processes, combined into the global answer.

:class:`~sdfm.transport.LaguerreCells` (pairing) and the solver both score through a :class:`Scorer`;
they differ only in what they hand it: LaguerreCells the targets with their mean as ``center``, the
solver its own centred copy of the distinct atoms (or, beyond its memory limit, the targets read
through ``subset``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sdfm.transport._stream import (
    LowpKeys,
    Top2,
    chunk_size_for,
    stream_argmax,
    stream_argmax_lowp,
    stream_logsumexp,
    stream_softmax_columns,
    stream_top2,
)
from sdfm.transport.certified import ScoreCertificate, exact_argmax
from sdfm.transport.pruned import Pruning
from sdfm.transport.sharding import (
    Collective,
    all_reduce_columns,
    combine_argmax,
    combine_logsumexp,
    combine_top2,
)


@dataclass(frozen=True)
class Scorer:
    """Scores over atoms ``lo .. lo + M - 1`` of ``num_atoms`` (all of them without a collective).

    Attributes:
        keys: the rows to score: atom ``lo + i`` is ``keys[i]`` (or ``keys[subset[i]]``), on any device
            and in any dtype (chunks are moved and cast to the queries').
        num_atoms: number of atoms over every process (the length of a bias vector).
        lo: this process's first atom.
        center: subtracted from every key chunk (None: keys are used as they are).
        subset: rows of ``keys`` holding this process's atoms (None: ``keys[i]``).
        collective: atoms sharded across processes (None: one process holds them all).
        chunk_size: atoms per score block (None: automatic, about 2M scores per block on the CPU,
            128M on CUDA).
        pruning: when to find the argmax with cluster bounds instead of scanning every atom
            (:class:`~sdfm.transport.pruned.Pruning`; None: always the dense scan). Applies to the
            plain argmax and top-2 of keys held whole (no ``subset``); the answer is the dense one.
    """

    keys: torch.Tensor
    num_atoms: int
    lo: int = 0
    center: torch.Tensor | None = None
    subset: torch.Tensor | None = None
    collective: Collective | None = None
    chunk_size: int | None = None
    pruning: Pruning | None = None

    @property
    def dim(self) -> int:
        return int(self.keys.shape[1])

    @property
    def hi(self) -> int:
        """One past this process's last atom."""
        local = self.keys.shape[0] if self.subset is None else self.subset.shape[0]
        return self.lo + int(local)

    def chunk(self, n: int, device: torch.device | None = None) -> int:
        """Atoms per score block for n queries on ``device`` (larger blocks on CUDA)."""
        return chunk_size_for(n, self.num_atoms, self.dim, self.chunk_size, device)

    def argmax(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        *,
        alpha: float = 1.0,
        top2: bool = False,
        gumbel: torch.Generator | None | bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Global (atom index [n], best score [n], second-best score [n] or None) of each query x [n, d].

        ``bias`` [num_atoms] is the score bias of every atom (this process reads its own range);
        ``gumbel`` adds i.i.d. Gumbel noise to every score (a generator, or None for the global one).
        Ties go to the smallest atom index, on one process or many.
        """

        def dense(rows: torch.Tensor):
            kw = {"alpha": alpha, "top2": top2, "gumbel": gumbel, "subset": self.subset}
            found = stream_argmax(rows, self.keys, bias[self.lo : self.hi], **self._scan(rows), **kw)
            return (*found, None)

        pruned = alpha == 1.0 and gumbel is False and self._pruned(x, bias, "score" if top2 else None, dense)
        index, best, second, _ = pruned if pruned else dense(x)
        if self.collective is None:
            return index, best, second
        if top2 and second is None:  # a one-atom shard has no second best
            second = torch.full_like(best, float("-inf"))
        return combine_argmax(
            index + self.lo, best, second, self.collective, self.num_atoms, self.lo, self.hi
        )

    def exact_argmax(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        bias64: torch.Tensor,
        center64: torch.Tensor,
        certificate: ScoreCertificate,
        atoms: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Global atom index [n] of the float64 argmax of each query x [n, d], ties to the smallest
        index (:func:`~sdfm.transport.certified.exact_argmax`): for the rows whose scan the
        ``certificate`` did not prove. ``bias`` [num_atoms] as scanned, ``bias64`` the same in
        float64, ``center64`` the exact centre; ``atoms(positions)``: this process's exact centred
        atoms in float64 (default: the keys, cast and centred by ``center64``)."""
        lo, hi = self.lo, self.hi
        pos, value = exact_argmax(
            x,
            self.keys,
            bias[lo:hi],
            bias64[lo:hi],
            self.center,
            center64,
            certificate,
            chunk=self.chunk(x.shape[0], x.device),
            subset=self.subset,
            atoms=atoms,
        )
        if self.collective is None:
            return pos + lo
        return combine_argmax(pos + lo, value, None, self.collective, self.num_atoms, lo, hi)[0]

    def top2(self, x: torch.Tensor, bias: torch.Tensor) -> Top2:
        """The best and second-best atom of each query x [n, d] (global indices and scores)."""

        def dense(rows: torch.Tensor):
            found = stream_top2(
                rows, self.keys, bias[self.lo : self.hi], **self._scan(rows), subset=self.subset
            )
            return found.index, found.best, found.second, found.second_index

        pruned = self._pruned(x, bias, "index", dense) or dense(x)
        local = Top2(pruned[0], pruned[1], pruned[3], pruned[2])
        shifted = torch.where(local.second_index >= 0, local.second_index + self.lo, local.second_index)
        local = Top2(local.index + self.lo, local.best, shifted, local.second)
        if self.collective is None:
            return local
        return combine_top2(local, self.collective, self.num_atoms, self.lo, self.hi)

    def _scan(self, x: torch.Tensor) -> dict:
        """The dense scan's block size and centre for the queries x (keyword arguments)."""
        return {"chunk": self.chunk(x.shape[0], x.device), "center": self.center, "positions": True}

    def _pruned(self, x: torch.Tensor, bias: torch.Tensor, second: str | None, dense):
        """(position, best, second score, second position) from the cluster-bound search, or None
        when the dense scan is to be used (no pruning, a ``subset``, or ``pruning`` says so);
        ``dense(rows)`` answers the rows that a probe leaves to the dense scan
        (:meth:`~sdfm.transport.pruned.Pruning.search`)."""
        if self.pruning is None or self.subset is not None:
            return None
        if not self.pruning.wanted(self.hi - self.lo, x.device):
            return None
        bounds = self.pruning.bounds(self.keys, self.center, x.dtype, x.device)
        return self.pruning.search(bounds, x, bias[self.lo : self.hi], second, dense)

    def argmax_lowp(
        self, x: torch.Tensor, lowp: LowpKeys, *, top2: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The exact argmax from low-precision scores re-scored in float64 (one process; see
        :func:`~sdfm.transport._stream.stream_argmax_lowp`): ``lowp`` holds the rounded keys and the
        bias, ``self.keys`` the rows re-scored."""
        return stream_argmax_lowp(
            x, lowp, targets=self.keys, chunk=self.chunk(x.shape[0], x.device), top2=top2
        )

    def softmax_columns(
        self, x: torch.Tensor, bias: torch.Tensor, *, alpha: float, squares: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Column sums [num_atoms] (float64) of the row softmax of the scores, their sums of squares
        (or None) and the row log-sum-exp [n], normalised over every process's atoms."""
        col = self.collective
        sums, sq, lse = stream_softmax_columns(
            x,
            self.keys,
            bias[self.lo : self.hi],
            chunk=self.chunk(x.shape[0], x.device),
            center=self.center,
            alpha=alpha,
            squares=squares,
            subset=self.subset,
            combine_lse=None if col is None else (lambda lse: combine_logsumexp(lse, col)),
        )
        if col is None:
            return sums, sq, lse
        sums = all_reduce_columns(sums, col, self.num_atoms, self.lo)
        if sq is not None:
            sq = all_reduce_columns(sq, col, self.num_atoms, self.lo)
        return sums, sq, lse

    def logsumexp(self, x: torch.Tensor, bias: torch.Tensor, *, alpha: float) -> torch.Tensor:
        """Row log-sum-exp [n] of the scores over every process's atoms."""
        lse = stream_logsumexp(
            x,
            self.keys,
            bias[self.lo : self.hi],
            chunk=self.chunk(x.shape[0], x.device),
            center=self.center,
            alpha=alpha,
            subset=self.subset,
        )
        return lse if self.collective is None else combine_logsumexp(lse, self.collective)
