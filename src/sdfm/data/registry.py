"""Datasets by name: ``NAME`` or ``NAME:key=value,...`` (e.g. ``gmm:d=64,k=8,n=10000``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdfm.data import bundled, toy
from sdfm.data.files import SUFFIXES, check_data, load_array, stored_shape


@dataclass(frozen=True)
class Dataset:
    """Data points [N, d] as given (no rescaling), optional labels [N], and where they came from."""

    x: np.ndarray
    labels: np.ndarray | None
    name: str
    params: dict = field(default_factory=dict)
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) when the rows are images

    @property
    def num_classes(self) -> int | None:
        """1 + the largest label (labels are 0..K-1), or None without labels."""
        return None if self.labels is None else int(self.labels.max()) + 1

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.x.shape)


#: second seed word of the held-out draws of generated datasets (split=test)
_TEST_STREAM = 0x7E57


def _split_seed(seed, split: str):
    """The train split keeps the plain seed (so ``NAME`` and ``NAME:split=train`` are the same data);
    the test split draws from an independent numpy stream."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    return int(seed) if split == "train" else [int(seed), _TEST_STREAM]


def _toy(fn: Callable, default_n: int = 10_000):
    def make(n: int = default_n, seed: int = 0, split: str = "train"):
        return fn(int(n), seed=_split_seed(seed, split)), None

    return make


def _gmm(
    n: int = 10_000, d: int = 16, k: int = 8, seed: int = 0, separation: float = 3.0, split: str = "train"
):
    drawn = _split_seed(seed, split)
    sample_seed = None if split == "train" else drawn
    return toy.gaussian_mixture(
        int(n), d=int(d), k=int(k), seed=int(seed), separation=float(separation), sample_seed=sample_seed
    )


def _digits(split: str = "train"):
    return bundled.digits(split)


def _mnist1d(n: int = 5000, split: str = "train", seed: int = 42):
    return bundled.mnist1d(int(n), split=split, seed=int(seed))


#: built-in datasets whose rows are images: name -> (C, H, W)
IMAGE_SHAPES = {"digits": (1, 8, 8)}
#: built-in datasets whose rows are 1-D signals (scored by a 1-D convolutional classifier)
SIGNALS = frozenset({"mnist1d"})


#: name -> factory(**params) -> (x, labels)
DATASETS: dict[str, Callable] = {
    "checkerboard": _toy(toy.checkerboard),
    "8gaussians": _toy(toy.eight_gaussians),
    "moons": _toy(toy.moons),
    "spirals": _toy(toy.spirals),
    "gmm": _gmm,
    "digits": _digits,
    "mnist1d": _mnist1d,
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


def heldout_spec(spec: str) -> str | None:
    """The spec of held-out data for a built-in dataset spec (``split=test``, same other parameters;
    fresh draws for generated sets, the test part for digits and MNIST-1D); None for files and for
    ``digits:split=all``, which leave nothing held out."""
    if not isinstance(spec, str) or Path(spec).suffix.lower() in SUFFIXES or Path(spec).exists():
        return None
    name, params = parse_spec(spec)
    if name not in DATASETS or params.get("split", "train") != "train":
        return None
    params = {**params, "split": "test"}
    return name + ":" + ",".join(f"{k}={v}" for k, v in params.items())


def load_dataset(spec: str) -> Dataset:
    """A built-in dataset by name (with optional parameters) or a tensor file by path."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data: expected a dataset name or a file path, got {spec!r}")
    if Path(spec).suffix.lower() in SUFFIXES or Path(spec).exists():
        x, labels = load_array(spec)
        return Dataset(x=x, labels=labels, name=str(spec), params={}, image_shape=image_shape_of(spec))
    name, params = parse_spec(spec)
    if name not in DATASETS:
        raise ValueError(
            f"data: unknown dataset {name!r}; built-in: {sorted(DATASETS)}, or a file {SUFFIXES}"
        )
    try:
        x, labels = DATASETS[name](**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data: bad parameters {params} for {name!r}: {exc}") from exc
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
    return Dataset(
        x=check_data(np.asarray(x), name),
        labels=labels,
        name=name,
        params=params,
        image_shape=IMAGE_SHAPES.get(name),
    )


def image_shape_of(path: str | Path) -> tuple[int, int, int] | None:
    """(C, H, W) of a file's rows when it holds [N, H, W] or [N, C, H, W] (C <= 4), else None."""
    shape = stored_shape(path)
    if shape is None:
        return None
    if len(shape) == 3:
        return (1, int(shape[1]), int(shape[2]))
    if len(shape) == 4 and shape[1] <= 4:
        return (int(shape[1]), int(shape[2]), int(shape[3]))
    return None
