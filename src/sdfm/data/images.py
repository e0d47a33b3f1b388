"""Folders of images: PNG / JPEG files, with one subfolder per class giving labels (the torchvision
``ImageFolder`` layout), or all in one folder without labels.

Images are read with Pillow, converted to ``channels`` (1: grey, 3: RGB; default: 1 when every image
is grey, else 3; 16-bit grey images are scaled to 8 bits, not clipped), optionally resized to
``size`` x ``size`` (bicubic), and cached once as a uint8
``[N, C, H, W]`` ``.npy`` (memory-mapped on the next load) beside a JSON fingerprint of the folder: the
relative path, size and modification time of every file and the options. A changed, added or removed
file makes a new cache; the folder itself is never written to. The cache lives in
``$SDFM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/sdfm/images``, i.e. ``~/.cache/sdfm/images``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdfm.data.files import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_FORMAT = "sdfm.image-cache"
#: Pillow modes read as one grey channel
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(frozen=True)
class ImageFolder:
    """The decoded folder: pixels uint8 [N, C, H, W] (memory-mapped from the cache), labels [N] or
    None, the class names (subfolder names, label i = classes[i]) and the image files in row order."""

    x: np.ndarray
    labels: np.ndarray | None
    classes: tuple[str, ...]
    files: tuple[str, ...]
    cache: Path | None


def cache_dir() -> Path:
    """Where decoded folders are cached (``$SDFM_CACHE_DIR``, else the XDG cache folder)."""
    if os.environ.get("SDFM_CACHE_DIR"):
        return Path(os.environ["SDFM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdfm" / "images"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def scan(folder: Path) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """The image files of ``folder`` as (relative path, label) in a fixed order, and the class names.

    Subfolders are classes (sorted by name; files found recursively inside each); without subfolders
    the images are unlabelled (label -1). Hidden files and folders are skipped. DataError naming the
    file for a non-image file, images beside class folders, or an empty folder."""
    if not folder.is_dir():
        raise DataError(f"data: {folder} is not a folder")
    entries = sorted(filter(_visible, folder.iterdir()))
    subfolders = [p for p in entries if p.is_dir()]
    files = [p for p in entries if p.is_file()]

    def check(path: Path) -> None:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"data: {path} is not an image (expected {', '.join(IMAGE_SUFFIXES)} files)")

    found: list[tuple[str, int]] = []
    if subfolders:
        if files:
            raise DataError(
                f"data: {files[0]} lies beside class folders in {folder}; put every image in a class "
                "subfolder (one per class) or all of them in one folder without subfolders"
            )
        for label, sub in enumerate(subfolders):
            for root, dirs, names in os.walk(sub):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(n for n in names if not n.startswith(".")):
                    path = Path(root) / name
                    check(path)
                    found.append((str(path.relative_to(folder)), label))
        classes = tuple(p.name for p in subfolders)
    else:
        for path in files:
            check(path)
            found.append((path.name, -1))
        classes = ()
    if not found:
        raise DataError(f"data: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found, classes


def _key(folder: Path, found, size: int | None, channels: int | None) -> tuple[str, dict]:
    """The cache key: sha256 of the options and every file's path, size and mtime."""
    listing = []
    for rel, label in found:
        st = (folder / rel).stat()
        listing.append([rel, label, st.st_size, st.st_mtime_ns])
    fp = {"folder": str(folder.resolve()), "size": size, "channels": channels, "files": listing}
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:32], fp


def _open(path: Path):
    from sdfm.extras import require

    require("PIL.Image", "reading image folders")
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()  # decodes now: a truncated file fails here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"data: cannot read the image {path}: {exc}") from None
    return img


def _decode(folder: Path, found, size: int | None, channels: int | None, progress: bool) -> np.ndarray:
    from sdfm.extras import require

    Image = require("PIL.Image", "reading image folders")  # noqa: N806 - the module's own name
    from tqdm.auto import tqdm

    if channels is None:  # grey only when every image is grey
        channels = 1
        for rel, _ in found:
            with Image.open(folder / rel) as img:
                if img.mode not in GREY_MODES:
                    channels = 3
                    break
    out = None
    first = None
    bar = tqdm(found, desc="decoding images", unit="img", disable=not progress or len(found) < 200)
    for i, (rel, _) in enumerate(bar):
        img = _to_8bit(_open(folder / rel), Image)
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(found), *arr.shape), dtype=np.uint8)
            first = rel
        elif arr.shape != out.shape[1:]:
            raise DataError(
                f"data: {folder / rel} is {arr.shape[2]}x{arr.shape[1]} but {folder / first} is "
                f"{out.shape[3]}x{out.shape[2]}; pass --image-size to resize every image to one size"
            )
        out[i] = arr
    return out


#: high-bit-depth grey modes, which Pillow's convert("L") would clip at 255 instead of scaling
WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I": 65535, "F": None}


def _to_8bit(img, image_module):
    """16-bit (and 32-bit integer) grey images scaled to 8 bits (value / 257, rounded); float images
    clipped to 0..255. Other modes are returned as they are."""
    if img.mode not in WIDE_MODES:
        return img
    arr = np.asarray(img, dtype=np.float64)
    if WIDE_MODES[img.mode] is not None:
        arr = arr / 257.0
    return image_module.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def load_image_folder(
    folder: str | Path, *, size: int | None = None, channels: int | None = None, progress: bool = True
) -> ImageFolder:
    """Reads (or loads from the cache) an image folder; see the module docstring."""
    from sdfm.artifacts.atomic import atomic_write

    folder = Path(folder)
    if size is not None and not 1 <= size <= 4096:
        raise DataError(f"data: --image-size: expected 1..4096 pixels, got {size}")
    if channels not in (None, 1, 3):
        raise DataError(f"data: --channels: expected 1 or 3, got {channels}")
    found, classes = scan(folder)
    key, fp = _key(folder, found, size, channels)
    cache = cache_dir() / f"{key}.npy"
    meta_path = cache.with_suffix(".json")
    labels = np.array([label for _, label in found], dtype=np.int64) if classes else None
    files = tuple(rel for rel, _ in found)
    if cache.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            x = np.load(cache, mmap_mode="r", allow_pickle=False)
            if (
                meta.get("format") == CACHE_FORMAT
                and meta.get("fingerprint") == fp
                and list(x.shape) == meta["shape"]
            ):
                return ImageFolder(x, labels, classes, files, cache)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    x = _decode(folder, found, size, channels, progress)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)

        def save(p: Path) -> None:
            with open(p, "wb") as fh:  # (np.save on a path would append .npy to the temporary name)
                np.save(fh, x)

        atomic_write(cache, save)
        meta = {"format": CACHE_FORMAT, "fingerprint": fp, "shape": list(x.shape), "classes": list(classes)}
        atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta)))  # last: marks the cache complete
        x = np.load(cache, mmap_mode="r", allow_pickle=False)
    except OSError:  # an unwritable cache only costs a decode next time
        cache = None
    return ImageFolder(x, labels, classes, files, cache)
