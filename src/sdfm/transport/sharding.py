"""Targets sharded across processes: each process scores its own contiguous range of atoms.

Layer L0 knows nothing of process groups: the processes talk through a :class:`Collective`, two
plain callables passed in by the caller (``sdfm.parallel.collective()`` builds them from an initialised
process group; tests may pass anything that behaves the same).

The global argmax over shards is exact and equal to the single-process one (ties to the smallest global
index): every process scores the same queries against its shard, then

    best   = all_reduce(local best, max)
    index  = all_reduce(local index if local best == best else total, min)
    second = all_reduce(local second if this process holds index else local best, max)

The entropic (soft) assignment combines the row log-sum-exp the same way
(``m = max_r lse_r``, ``lse = m + log sum_r exp(lse_r - m)``) and all-reduces the column sums (the
assignment histogram), zero outside each process's range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: ``reduce(tensor, op)`` with op in ("sum", "max", "min"): an in-place all-reduce across processes
#: that returns the tensor.
Reduce = Callable[[torch.Tensor, str], torch.Tensor]
#: ``gather(tensor)``: the tensors of every process (same shape) concatenated along dim 0 in rank order.
Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Collective:
    """How the processes of a sharded computation communicate.

    Attributes:
        rank: this process's index (0 .. world_size - 1).
        world_size: number of processes.
        reduce: in-place all-reduce (``"sum"``, ``"max"``, ``"min"``) returning the tensor.
        gather: all-gather along dim 0 (equal shapes), in rank order.
    """

    rank: int
    world_size: int
    reduce: Reduce
    gather: Gather | None = None

    def __post_init__(self):
        if not (isinstance(self.world_size, int) and self.world_size >= 1):
            raise ValueError(f"world_size: expected an integer >= 1, got {self.world_size!r}")
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.world_size):
            raise ValueError(f"rank: expected an integer in [0, {self.world_size}), got {self.rank!r}")
        if not callable(self.reduce):
            raise ValueError("reduce: expected a callable reduce(tensor, op) -> tensor")

    def shard(self, total: int) -> tuple[int, int]:
        """This process's range [start, stop) of ``total`` atoms (contiguous, sizes differ by <= 1)."""
        return shard_range(total, self.rank, self.world_size)


def shard_range(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Balanced contiguous range [start, stop) of ``total`` items for ``rank`` of ``world_size``."""
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def combine_argmax(
    index: torch.Tensor,
    best: torch.Tensor,
    second: torch.Tensor | None,
    collective: Collective,
    total: int,
    start: int,
    stop: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The global (index, best, second) from every process's local ones (index already global).

    A process with an empty shard passes best = second = -inf."""
    gbest = collective.reduce(best.clone(), "max")
    candidate = torch.where(best == gbest, index, torch.full_like(index, total))
    gindex = collective.reduce(candidate, "min")
    gsecond = None
    if second is not None:
        mine = (gindex >= start) & (gindex < stop)
        gsecond = collective.reduce(torch.where(mine, second, best), "max")
    return gindex, gbest, gsecond


def combine_top2(top2, collective: Collective, total: int, start: int, stop: int):
    """The global :class:`~sdfm.transport._stream.Top2` from every process's local one (indices global).

    The runner-up of a process is its second if it holds the global best, else its best; the global
    runner-up is the largest of those (ties to the smallest index)."""
    index, best, second = combine_argmax(top2.index, top2.best, top2.second, collective, total, start, stop)
    mine = (index >= start) & (index < stop)
    proposed = torch.where(mine, top2.second_index, top2.index)
    proposed_value = torch.where(mine, top2.second, top2.best)
    candidate = torch.where(
        (proposed_value == second) & (proposed >= 0), proposed, torch.full_like(proposed, total)
    )
    second_index = collective.reduce(candidate, "min")
    second_index = torch.where(second_index >= total, torch.full_like(second_index, -1), second_index)
    return type(top2)(index, best, second_index, second)


def combine_logsumexp(lse: torch.Tensor, collective: Collective) -> torch.Tensor:
    """log sum_r exp(lse_r) across processes (rows of -inf on every process stay -inf)."""
    top = collective.reduce(lse.clone(), "max")
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = collective.reduce(torch.exp(lse - safe), "sum")
    return safe + torch.log(total)


def all_reduce_columns(local: torch.Tensor, collective: Collective, total: int, start: int) -> torch.Tensor:
    """The full [total] vector of column sums from every process's [stop - start] part."""
    full = torch.zeros(total, dtype=local.dtype, device=local.device)
    full[start : start + local.shape[0]] = local
    return collective.reduce(full, "sum")
