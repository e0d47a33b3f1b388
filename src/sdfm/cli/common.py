"""Shared CLI pieces: one-line errors with exit code 2, argument types, devices."""

from __future__ import annotations

import argparse

EXIT_BAD_INPUT = 2
EXIT_IO_ERROR = 1


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C (temporary files removed);
    the command exits 143."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D102
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


_UNITS = {
    "": 1,
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
}


def _bytes(text: str) -> int:
    """A size in bytes: 123, 512MiB, 2GiB, 1.5GB (case-insensitive)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 512MiB, 2GiB or 1000000, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def device_from(name: str | None):
    """``--device`` as a torch device (one-line error when unknown or unavailable)."""
    from sdfm.parallel import parse_device

    try:
        return parse_device(name)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def tensor_view(array):
    """A torch view of a numpy array (copied only if not contiguous). Read-only (memory-mapped) arrays
    are fine: sdfm never writes to the data, so torch's warning about them is silenced."""
    import warnings

    import numpy as np
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array))


def _probe(folder) -> None:
    """Creates and removes a file in ``folder`` (os.access misses read-only mounts and immutable files)."""
    import tempfile

    with tempfile.TemporaryFile(dir=folder):
        pass


def check_writable_folder(path, arg: str) -> None:
    """CliError naming ``arg`` and the path unless ``path`` is (or can be made) a writable folder; checked
    before any work, so that an unwritable ``--out`` is not found after a long solve."""
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CliError(f"{arg}: {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe(path)
    except OSError as exc:
        raise CliError(f"{arg}: cannot write to {path}: {exc.strerror or exc}") from None


def check_writable_file(path, arg: str) -> None:
    """CliError naming ``arg`` and the path unless a file can be written at ``path`` (its folder is
    created if missing; an existing folder or unwritable file at ``path`` is refused)."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise CliError(f"{arg}: {path} is a folder; expected a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise CliError(f"{arg}: cannot write {path}: permission denied")
    check_writable_folder(path.parent, arg)


def add_image_options(parser) -> None:
    """``--image-size`` and ``--channels`` for a command with ``--data`` (image folders)."""
    parser.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        metavar="S",
        help="image folders: resize every image to S x S (bicubic; needed when sizes differ)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=None,
        help="image folders: 1 (grey) or 3 (RGB) channels (default: 1 when every image is grey)",
    )


def data_with_image_options(data: str, image_size: int | None, channels: int | None) -> str:
    """``--data`` with ``--image-size`` / ``--channels`` folded into its ``::`` options (the form
    stored in run.json, so that later commands load the same pixels)."""
    if image_size is None and channels is None:
        return data
    from pathlib import Path

    head, sep, rest = data.partition("::")
    if not Path(head).is_dir():
        raise CliError(f"--image-size/--channels: apply to image folders; {head} is not a folder")
    options = [
        o for o in rest.split(",") if o.strip() and o.split("=")[0].strip() not in ("image_size", "channels")
    ]
    if image_size is not None:
        options.append(f"image_size={image_size}")
    if channels is not None:
        options.append(f"channels={channels}")
    return head + "::" + ",".join(options)
