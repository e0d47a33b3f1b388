"""Range checks for numbers read from users and from files (layer L0).

``check_int("depth", value, low=0, high=1024)`` returns the value or raises ValueError naming the
argument, its bounds and what it got. Used by configs and by the loaders of run.json, potential and
checkpoint metadata, so that a hostile or corrupt number (a depth of 1e9, a negative count, NaN) is
refused before anything is allocated.
"""

from __future__ import annotations

import math
import numbers


def _where(name: str, where: str | None) -> str:
    return f"{where}: {name}" if where else name


def _bounds(low, high, low_open: bool = False) -> str:
    if high is None:
        return "" if low is None else f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" <= {high}"
    return f" in {'(' if low_open else '['}{low}, {high}]"


def check_int(
    name: str,
    value,
    *,
    low: int | None = None,
    high: int | None = None,
    none: bool = False,
    where: str | None = None,
):
    """``value`` as an int in [low, high] (either bound may be None; bools, floats and strings are
    refused); None when ``none``."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{_where(name, where)}: expected an integer, got {value!r:.60}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{_where(name, where)}: expected an integer{_bounds(low, high)}, got {value}")
    return value


def check_float(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    none: bool = False,
    where: str | None = None,
):
    """``value`` as a finite float in [low, high] (``(low, high]`` with ``low_open``); None when ``none``."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{_where(name, where)}: expected a number, got {value!r:.60}")
    value = float(value)
    bad = not math.isfinite(value)
    bad |= low is not None and (value <= low if low_open else value < low)
    bad |= high is not None and value > high
    if bad:
        left = "(" if low_open else "["
        raise ValueError(
            f"{_where(name, where)}: expected a finite number in {left}{low}, {high}], got {value}"
        )
    return value


def check_type(name: str, value, kind: type | tuple, *, where: str | None = None):
    """``value`` if it is a ``kind`` (e.g. dict, str), else ValueError naming what it is."""
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{_where(name, where)}: expected {names}, got {type(value).__name__}")
    return value
