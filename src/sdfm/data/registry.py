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
    """The spec of held-out data for a dataset spec (``split=test``, same other parameters; fresh
    draws for generated sets, the test part for digits and MNIST-1D, the held-out fraction of a file
    or image folder); None for ``digits:split=all`` and for files without a ``holdout`` fraction,
    which leave nothing held out."""
    if not isinstance(spec, str):
        return None
    if is_file_spec(spec):
        path, options = _file_options(spec)
        if _holdout(path, options) == 0 or options.get("split", "train") != "train":
            return None
        return _join(path, {**options, "split": "test"}, sep="::")
    name, params = parse_spec(spec)
    if name not in DATASETS or params.get("split", "train") != "train":
        return None
    return _join(name, {**params, "split": "test"}, sep=":")


def reference_spec(reference: str, data: str) -> str:
    """A user's held-out ``reference`` for a run on ``data``: an image folder is read whole
    (``split=all``) with the run's image size and channels unless its own options say otherwise."""
    if not is_file_spec(reference):
        return reference
    head, options = _file_options(reference)
    if not Path(head).is_dir():
        return reference
    if is_file_spec(data):
        _, run_options = _file_options(data)
        for key in ("image_size", "channels"):
            if key in run_options:
                options.setdefault(key, run_options[key])
    options.setdefault("split", "all")
    return _join(head, options, sep="::")


def _join(head: str, params: dict, sep: str) -> str:
    return head + sep + ",".join(f"{k}={v}" for k, v in params.items())


def is_file_spec(spec: str) -> bool:
    """Whether ``spec`` names a file or folder (``PATH`` or ``PATH::key=value,...``) rather than a
    built-in dataset."""
    path, sep, _ = spec.partition("::")
    return bool(sep) or Path(path).suffix.lower() in SUFFIXES or Path(path).exists()


#: options of a file or folder spec ``PATH::key=value,...``
FILE_OPTIONS = ("image_size", "channels", "holdout", "split", "label")
#: the held-out fraction of image folders when no ``holdout`` is given (files: 0)
FOLDER_HOLDOUT = 0.1


def _file_options(spec: str) -> tuple[str, dict]:
    path, _, rest = spec.partition("::")
    _, options = parse_spec("x:" + rest)
    unknown = sorted(set(options) - set(FILE_OPTIONS))
    if unknown:
        raise ValueError(f"data: unknown option {unknown[0]!r} in {spec!r}; options: {list(FILE_OPTIONS)}")
    return path, options


def _holdout(path: str, options: dict) -> float:
    try:
        frac = float(options.get("holdout", FOLDER_HOLDOUT if Path(path).is_dir() else 0.0))
    except ValueError:
        raise ValueError(f"data: holdout={options['holdout']!r}: expected a fraction in [0, 1)") from None
    if not 0 <= frac < 1:
        raise ValueError(f"data: holdout={frac}: expected a fraction in [0, 1)")
    return frac


def heldout_rows(n: int, fraction: float, labels: np.ndarray | None) -> np.ndarray:
    """Sorted indices of the held-out rows: ``fraction`` of each class (of all rows without labels),
    rounded, at least one row held out and at least one of each class kept; a fixed permutation
    (numpy seed 0), so the split is the same in every command."""
    rng = np.random.default_rng(0)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    out = []
    for idx in groups:
        k = min(int(np.floor(fraction * idx.size + 0.5)), idx.size - 1)
        out.append(rng.permutation(idx)[:k])
    test = np.sort(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)
    if test.size == 0 and n > 1 and labels is None:
        test = np.sort(rng.permutation(n)[:1])
    return test


def _load_file(spec: str) -> Dataset:
    """A tensor file, .csv table or image folder, with its options and held-out split."""
    path, options = _file_options(spec)
    folder = Path(path).is_dir()
    image_opts = {k: options[k] for k in ("image_size", "channels") if k in options}
    if image_opts and not folder:
        raise ValueError(f"data: {sorted(image_opts)} apply to image folders; {path} is a file")
    if "label" in options and Path(path).suffix.lower() != ".csv":
        raise ValueError(f"data: label= names a column of a .csv file; {path} is not one")
    try:
        size = int(image_opts["image_size"]) if "image_size" in image_opts else None
        channels = int(image_opts["channels"]) if "channels" in image_opts else None
    except ValueError as exc:
        raise ValueError(f"data: bad image option in {spec!r}: {exc}") from None
    if folder:
        from sdfm.data.images import load_image_folder

        images = load_image_folder(path, size=size, channels=channels)
        x, labels = images.x.reshape(images.x.shape[0], -1), images.labels
        image_shape = tuple(int(v) for v in images.x.shape[1:])
        extra = {"classes": list(images.classes)} if images.classes else {}
    else:
        x, labels = load_array(path, label=options.get("label"))
        image_shape, extra = image_shape_of(path), {}
    split = options.get("split", "train")
    if split not in ("train", "test", "all"):
        raise ValueError(f"data: split={split!r}: expected train, test or all")
    fraction = _holdout(path, options)
    params = {**options, **extra}
    if fraction > 0 and split != "all":
        test = heldout_rows(x.shape[0], fraction, labels)
        keep = test if split == "test" else np.setdiff1d(np.arange(x.shape[0]), test)
        x = np.asarray(x[keep])
        labels = None if labels is None else labels[keep]
        params.update(holdout=fraction, split=split, rows=int(keep.size))
    return Dataset(x=x, labels=labels, name=path, params=params, image_shape=image_shape)


def load_dataset(spec: str) -> Dataset:
    """A built-in dataset by name (with optional parameters: ``gmm:d=64,n=1000``), or a tensor file,
    .csv table or image folder by path, with options after ``::`` (``imgs/::image_size=32,channels=1``,
    ``x.npy::holdout=0.1``; ``split=train`` (default) / ``test`` / ``all`` picks the part of a
    ``holdout`` split; image folders hold out 0.1 by default)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data: expected a dataset name or a file path, got {spec!r}")
    if is_file_spec(spec):
        return _load_file(spec)
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
