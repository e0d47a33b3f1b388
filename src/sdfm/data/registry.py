"""Datasets by name: ``NAME`` or ``NAME:key=value,...`` (e.g. ``gmm:d=64,k=8,n=10000``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdfm.data import bundled, toy
from sdfm.data.files import SUFFIXES, check_data, load_array


@dataclass(frozen=True)
class Dataset:
    """Data points [N, d] as given (no rescaling), optional labels [N], and where they came from."""

    x: np.ndarray
    labels: np.ndarray | None
    name: str
    params: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.x.shape)


def _toy(fn: Callable, default_n: int = 10_000):
    def make(n: int = default_n, seed: int = 0):
        return fn(int(n), seed=int(seed)), None

    return make


def _gmm(n: int = 10_000, d: int = 16, k: int = 8, seed: int = 0, separation: float = 3.0):
    return toy.gaussian_mixture(int(n), d=int(d), k=int(k), seed=int(seed), separation=float(separation))


def _digits():
    return bundled.digits()


#: name -> factory(**params) -> (x, labels)
DATASETS: dict[str, Callable] = {
    "checkerboard": _toy(toy.checkerboard),
    "8gaussians": _toy(toy.eight_gaussians),
    "moons": _toy(toy.moons),
    "spirals": _toy(toy.spirals),
    "gmm": _gmm,
    "digits": _digits,
}


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"gmm:d=64,n=1000"`` -> ``("gmm", {"d": "64", "n": "1000"})``."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"data: cannot parse {item!r} in {spec!r}; expected key=value")
        params[key.strip()] = value.strip()
    return name.strip(), params


def load_dataset(spec: str) -> Dataset:
    """A built-in dataset by name (with optional parameters) or a tensor file by path."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data: expected a dataset name or a file path, got {spec!r}")
    if Path(spec).suffix.lower() in SUFFIXES or Path(spec).exists():
        x, labels = load_array(spec)
        return Dataset(x=x, labels=labels, name=str(spec), params={})
    name, params = parse_spec(spec)
    if name not in DATASETS:
        raise ValueError(
            f"data: unknown dataset {name!r}; built-in: {sorted(DATASETS)}, or a file {SUFFIXES}"
        )
    try:
        x, labels = DATASETS[name](**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data: bad parameters {params} for {name!r}: {exc}") from exc
    return Dataset(x=check_data(np.asarray(x), name), labels=labels, name=name, params=params)
