"""Input validation shared by the transport functions: clear ValueErrors naming the argument."""

from __future__ import annotations

import math

import numpy as np
import torch

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(value, name: str) -> torch.Tensor:
    """Converts array-likes to a tensor; refuses non-numeric input with a ValueError."""
    if isinstance(value, torch.Tensor):
        t = value
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is a bad input
            raise ValueError(f"{name}: cannot convert {type(value).__name__} to a tensor") from exc
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name}: expected numeric data, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name}: expected real numeric data, got dtype {t.dtype}")
    return t


def check_finite(t: torch.Tensor, name: str, rows: int = 1 << 14) -> None:
    """Refuses NaN / Inf; checks row blocks so that no [N, d] mask is ever allocated."""
    if not t.is_floating_point():
        return
    flat = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
    for start in range(0, flat.shape[0], rows):
        block = flat[start : start + rows]
        if not bool(torch.isfinite(block).all()):
            bad = int((~torch.isfinite(block)).sum())
            raise ValueError(
                f"{name}: contains NaN or Inf ({bad} in rows {start}..{start + block.shape[0] - 1}; "
                f"shape {tuple(t.shape)})"
            )


def as_targets(targets, name: str = "targets", check_values: bool = True) -> torch.Tensor:
    """Targets [N, d]: floating (integers are promoted to float32), N >= 1, d >= 1, finite."""
    t = as_tensor(targets, name)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [N, d], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if check_values:
        check_finite(t, name)
    return t


def as_queries(x, d: int, name: str = "x") -> torch.Tensor:
    """Queries [n, d] with the same d as the targets; floating and finite."""
    t = as_tensor(x, name)
    if t.dim() != 2 or t.shape[1] != d:
        raise ValueError(f"{name}: expected shape [n, {d}] to match targets [N, {d}], got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    check_finite(t, name)
    return t


def as_potential(potential, n_targets: int, name: str = "potential") -> torch.Tensor:
    t = as_tensor(potential, name)
    if t.dim() != 1 or t.shape[0] != n_targets:
        raise ValueError(f"{name}: expected shape [{n_targets}] (one value per target), got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    check_finite(t, name)
    return t


def as_weights(weights, n_targets: int, name: str = "weights") -> torch.Tensor | None:
    """Target weights [N], positive and finite, normalised to sum 1 (float64). None = uniform."""
    if weights is None:
        return None
    t = as_tensor(weights, name)
    if t.dim() != 1 or t.shape[0] != n_targets:
        raise ValueError(f"{name}: expected shape [{n_targets}] (one per target), got {tuple(t.shape)}")
    t = t.to(torch.float64)
    check_finite(t, name)
    if bool((t <= 0).any()):
        raise ValueError(
            f"{name}: all weights must be > 0 ({int((t <= 0).sum())} are not); "
            "drop atoms that should carry no mass"
        )
    return t / t.sum()


def check_eps(eps, name: str = "eps") -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a number >= 0, got {eps!r}") from exc
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {eps!r}")
    return value


def check_positive_int(value, name: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def as_labels(labels, n: int, name: str) -> torch.Tensor:
    """Integer class labels [n] >= 0 as int64."""
    t = as_tensor(labels, name)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: expected shape [{n}] (one class per row), got {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class labels, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name}: class labels must be >= 0, got {int(t.min())}")
    return t
