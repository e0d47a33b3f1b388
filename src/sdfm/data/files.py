"""Tensor files: .npy / .npz / .pt / .safetensors holding [N, ...] data (and optional labels), and
numeric .csv tables (optional header; a label column found by name)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

#: Keys looked up, in order, in a file that holds several arrays.
DATA_KEYS = ("x", "data", "X", "samples", "arr_0")
LABEL_KEYS = ("labels", "y", "label", "targets")
SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors", ".csv")
#: header names of a .csv label column (case-insensitive), unless one is named with ``label=``
CSV_LABEL_COLUMNS = ("label", "labels", "class", "target", "y")


class DataError(ValueError):
    """Bad data or an unreadable data file (a ValueError whose message starts with 'data:')."""


def _pick(arrays: dict, path: Path):
    names = list(arrays)
    data_key = next((k for k in DATA_KEYS if k in arrays), None)
    if data_key is None:
        candidates = [k for k in names if k not in LABEL_KEYS]
        if len(candidates) != 1:
            raise DataError(f"data: {path} holds arrays {names}; name the data one of {list(DATA_KEYS)}")
        data_key = candidates[0]
    label_key = next((k for k in LABEL_KEYS if k in arrays and k != data_key), None)
    return arrays[data_key], (arrays[label_key] if label_key else None)


def _to_numpy(value, path: Path, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bfloat16:
            value = value.to(torch.float32)
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise DataError(f"data: {path} holds a {type(value).__name__} as {what}, expected an array")


_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
}


def _safetensors_memmap(path: Path) -> dict | None:
    """The arrays of a safetensors file memory-mapped (read-only), or None if one has a dtype numpy
    cannot hold (bf16). Layout: 8-byte little-endian header size, JSON header, then the data; each
    tensor's ``data_offsets`` are relative to the end of the header."""
    import json
    import struct

    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            return None
        start, stop = info["data_offsets"]
        shape = tuple(info["shape"])
        if int(np.prod(shape)) * np.dtype(dtype).itemsize != stop - start:
            raise DataError(f"data: {path}: tensor {name!r} has inconsistent offsets")
        if stop == start:
            out[name] = np.zeros(shape, dtype=dtype)
            continue
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + size + start, shape=shape)
    return out


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_csv(path: Path, label: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric table: float64 data [N, d] and int64 labels [N] or None.

    The first row is a header when any of its cells is not a number. The label column is the one
    named ``label`` (a header name, or a 0-based column index), else a header column called one of
    :data:`CSV_LABEL_COLUMNS`; integer labels >= 0 are kept, others (strings, negatives) are numbered
    in sorted order. Blank lines are skipped. Read by numpy's C parser; when that fails, a line-by-line
    pass names the line and column of the first cell that is not a number (DataError)."""
    header, width, col = _csv_layout(path, label)
    try:
        data, raw = _csv_fast(path, header is not None, width, col)
    except (ValueError, UserWarning):
        data, raw = _csv_checked(path, header is not None, width, col)
    if data.shape[0] == 0:
        raise DataError(f"data: {path} has a header and no rows")
    return data, None if raw is None else _csv_labels(raw)


def _csv_layout(path: Path, label: str | None) -> tuple[list[str] | None, int, int | None]:
    """(header or None, number of columns, label column or None) from the first non-blank line."""
    import csv

    with path.open(newline="") as fh:
        first = next((r for r in csv.reader(fh) if r and any(c.strip() for c in r)), None)
    if first is None:
        raise DataError(f"data: {path} is empty")
    header = [c.strip() for c in first] if any(_float(c) is None for c in first) else None
    width = len(first)
    col = None
    if label is not None:
        if header and label in header:
            col = header.index(label)
        elif label.isdigit() and int(label) < width:
            col = int(label)
        else:
            raise DataError(f"data: label={label!r}: no such column in {path} (columns: {header or width})")
    elif header:
        lower = [h.lower() for h in header]
        col = next((lower.index(n) for n in CSV_LABEL_COLUMNS if n in lower), None)
    return header, width, col


def _csv_fast(path: Path, has_header: bool, width: int, col: int | None):
    import warnings

    # every column is read (usecols would ignore the extra cells of a ragged row): numbers only, or
    # all as text when a label column is there, its other columns then converted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (an empty table warns: treat it as a failure, then checked)
        table = np.loadtxt(
            path, delimiter=",", skiprows=int(has_header), ndmin=2, dtype=float if col is None else str
        )
    if table.shape[1] != width:
        raise ValueError("column count")
    if col is None:
        return table, None
    data = np.delete(table, col, axis=1).astype(np.float64)
    return data, [v.strip() for v in table[:, col]]


def _csv_checked(path: Path, has_header: bool, width: int, col: int | None):
    """The slow path: every line checked, DataError naming the first bad line and column."""
    import csv

    rows, raw = [], []
    with path.open(newline="") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            if not row or not any(c.strip() for c in row):
                continue
            if has_header:
                has_header = False
                continue
            if len(row) != width:
                raise DataError(f"data: {path} line {line} has {len(row)} columns, expected {width}")
            values = []
            for j, cell in enumerate(row):
                if j == col:
                    raw.append(cell.strip())
                    continue
                value = _float(cell)
                if value is None:
                    raise DataError(f"data: {path} line {line} column {j + 1}: {cell!r} is not a number")
                values.append(value)
            rows.append(values)
    data = np.asarray(rows, dtype=np.float64).reshape(len(rows), width - (col is not None))
    return data, (raw if col is not None else None)


def _csv_labels(raw: list[str]) -> np.ndarray:
    """Integer labels >= 0 as they are; anything else numbered in sorted order of the names."""
    ints = [int(v) if v.lstrip("-").isdigit() else None for v in raw]
    if all(v is not None and v >= 0 for v in ints):
        return np.asarray(ints, dtype=np.int64)
    index = {name: k for k, name in enumerate(sorted(set(raw)))}
    return np.asarray([index[v] for v in raw], dtype=np.int64)


def _read(path: Path, *, mmap: bool = True, label: str | None = None):
    """Raw (data, labels) as stored in a tensor file (labels None when absent)."""
    suffix = path.suffix.lower()
    labels = None
    try:
        if suffix == ".csv":
            data, labels = read_csv(path, label)
        elif suffix == ".npy":
            data = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                data, labels = _pick({k: z[k] for k in z.files}, path)
        elif suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                data, labels = _pick(obj, path)
            else:
                data = obj
        elif mmap and (mapped := _safetensors_memmap(path)) is not None:
            data, labels = _pick(mapped, path)
        else:
            from safetensors.numpy import load_file

            try:
                data, labels = _pick(load_file(str(path)), path)
            except TypeError:  # bf16 tensors are not representable in numpy
                from safetensors.torch import load_file as load_torch

                data, labels = _pick(load_torch(str(path)), path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is an unreadable file
        raise DataError(f"data: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    return data, labels


def stored_shape(path: str | Path) -> tuple[int, ...] | None:
    """The shape of the data array as stored in a tensor file (before flattening), or None."""
    try:
        path = Path(path)
        if path.suffix.lower() == ".npy":
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        data, _ = _read(path, mmap=True)
        return tuple(data.shape)
    except Exception:  # noqa: BLE001 - the shape is a hint; load_array reports read errors
        return None


def load_array(
    path: str | Path, *, mmap: bool = True, label: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads data [N, ...] (and labels [N] if present) from a tensor file.

    Returns the data flattened to [N, d] (memory-mapped for .npy when possible; values as
    stored, no rescaling) and the labels or None. Raises ValueError with a one-line reason for a
    missing, unreadable, empty, non-numeric or non-finite file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"data: unsupported file type {suffix!r} ({path}); use one of {SUFFIXES}")
    data, labels = _read(path, mmap=mmap, label=label)
    data = _to_numpy(data, path, "data")
    if labels is not None:
        labels = _to_numpy(labels, path, "labels")
    data = check_data(data, str(path))
    if labels is not None and (labels.ndim != 1 or labels.shape[0] != data.shape[0]):
        raise DataError(f"data: labels in {path} have shape {labels.shape}, expected [{data.shape[0]}]")
    return data, labels


def check_data(data: np.ndarray, where: str = "data") -> np.ndarray:
    """Flattens [N, ...] to [N, d] and refuses empty, non-numeric or non-finite data."""
    if data.dtype.kind not in "biuf":
        raise DataError(f"data: {where} has non-numeric dtype {data.dtype}")
    if data.ndim == 0:
        raise DataError(f"data: {where} is a scalar, expected [N, ...]")
    if data.ndim == 1:
        data = data.reshape(-1, 1)
    if data.shape[0] == 0 or int(np.prod(data.shape[1:])) == 0:
        raise DataError(f"data: {where} is empty (shape {data.shape})")
    data = data.reshape(data.shape[0], -1)
    if data.dtype.kind == "f":
        for start in range(0, data.shape[0], 65536):
            block = np.asarray(data[start : start + 65536])
            if not np.isfinite(block).all():
                bad = int((~np.isfinite(block)).sum())
                raise DataError(f"data: {where} contains NaN or Inf ({bad} in rows from {start})")
    return data


def fingerprint(data) -> str:
    """sha256 of an [N, d] array's dtype, shape and C-order bytes (streamed; no full copy)."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        data = data.numpy()
    data = np.asarray(data)
    h = hashlib.sha256()
    h.update(f"{data.dtype.str}|{tuple(data.shape)}|".encode())
    rows = max(1, (1 << 24) // max(1, data[0].nbytes if data.shape[0] else 1))
    for start in range(0, data.shape[0], rows):
        h.update(np.ascontiguousarray(data[start : start + rows]).tobytes())
    return h.hexdigest()
