"""Several processes (``torchrun``): the process group, the transport collective, per-rank seeds.

``torchrun --nproc_per_node=P sdfm solve|train ...`` starts P processes with the usual environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); :func:`init_from_env` joins them into one
process group (NCCL on CUDA, gloo on CPU) and :func:`collective` hands ``sdfm.transport`` the two
operations it needs (all-reduce and all-gather) as plain callables, so that the transport layer never
imports ``torch.distributed``.

Conventions: rank 0 writes files and logs; every process derives its random stream from
``rank_seed(seed, rank)`` (rank 0 keeps ``seed``, so one process reproduces a single-process run).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from sdfm.transport.sharding import Collective

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def launched() -> bool:
    """True when this process was started by torchrun (or anything setting WORLD_SIZE) with P > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that writes files and logs."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Joins the torchrun process group (once) and returns this process's device.

    On CUDA every process takes ``cuda:LOCAL_RANK`` (NCCL); on CPU the backend is gloo. A single
    process (no WORLD_SIZE > 1) is left alone and gets ``device`` back."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s random stream: ``seed`` for rank 0, well separated for the others."""
    return int(seed) + 1_000_003 * int(rank)


def _reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    if op not in _OPS:
        raise ValueError(f"op: expected one of {list(_OPS)}, got {op!r}")
    dist.all_reduce(tensor, op=_OPS[op])
    return tensor


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


def collective() -> Collective | None:
    """The transport collective of the current process group (None in a single process)."""
    if not active():
        return None
    return Collective(rank=dist.get_rank(), world_size=dist.get_world_size(), reduce=_reduce, gather=_gather)


def gather_objects(obj) -> list:
    """Every process's ``obj`` (picklable), in rank order ([obj] in a single process)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def mean_scalar(value: float, device: torch.device) -> float:
    """The mean of a float over the processes (itself in a single process)."""
    if not active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) / dist.get_world_size()


def parse_device(name: str | None) -> torch.device:
    """``--device`` as a torch device (None: cpu); ValueError naming the option when it is unknown or
    CUDA is not available."""
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name} requested but CUDA is not available")
    return device
