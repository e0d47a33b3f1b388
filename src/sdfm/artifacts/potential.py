"""Potential files: safetensors with ``g`` [N] float64 and self-describing JSON metadata.

Layout:
    tensors   ``g`` [N] float64 (1/2 |x - y|^2 convention: the cell of x is
              argmax_j <x, y_j> + g_j - |y_j|^2 / 2); ``weights`` [N] float64 when not uniform;
              ``groups`` [N] int64 (duplicate group of each target) when targets repeat;
              ``pca_components`` [K, d], ``pca_mean`` [d], ``pca_variances`` [K] (float64) when the
              potential was solved in a PCA space (:class:`sdfm.transport.PCAProjection`).
    metadata  key ``sdfm``: JSON with format, cost, convention, eps, chi2 (and its standard error),
              the worst mass errors along smooth functions of the data (``smooth_errors``, see
              :mod:`sdfm.transport.smoothness`), N, d, the sha256 fingerprint of the target array,
              data name, solver settings, work done, the sdfm version, and ``checksum``: the sha256
              of every tensor (name, dtype, shape, bytes) and of the rest of the metadata.
Files are written atomically. Loading verifies the checksum (a flipped bit in g or in the metadata is
refused), validates every tensor's shape, dtype and range and the metadata's types and bounds before
anything is allocated from them, and raises ValueError naming the file; against other data (shape or
fingerprint) it raises ValueError too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdfm.artifacts.atomic import atomic_write
from sdfm.artifacts.checksum import checksum
from sdfm.checks import check_float, check_int, check_type
from sdfm.data.files import fingerprint as data_fingerprint
from sdfm.transport.duplicates import DuplicateGroups
from sdfm.transport.projection import PCAProjection
from sdfm.transport.semidiscrete import SemidiscreteResult

FORMAT = "sdfm.potential"
#: 2: the checksum is required (version 1 files, written before sdfm stored one, load without it)
FORMAT_VERSION = 2
COST = "half_sqeuclidean"
CONVENTION = "cell(x) = argmax_j <x, y_j> + g_j - |y_j|^2 / 2"


@dataclass(frozen=True)
class PotentialFile:
    """A loaded potential: g [N] float64, optional weights and duplicate groups, and metadata;
    ``classes`` [N] for a class-conditional potential (:func:`sdfm.transport.solve_per_class`)."""

    potential: torch.Tensor
    weights: torch.Tensor | None
    duplicates: DuplicateGroups | None
    meta: dict = field(repr=False)
    classes: torch.Tensor | None = None
    projection: PCAProjection | None = None

    @property
    def eps(self) -> float:
        return float(self.meta["eps"])

    @property
    def chi2(self) -> float:
        return float(self.meta["chi2"])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.meta["num_targets"]), int(self.meta["dim"])

    def check_targets(self, targets, *, fingerprint: str | None = None) -> None:
        """Raises ValueError unless ``targets`` [N, d] are the data this potential was solved for."""
        n, d = self.shape
        shape = tuple(targets.shape) if targets is not None else None
        if shape is not None and (len(shape) != 2 or shape != (n, d)):
            raise ValueError(
                f"potential: solved for data of shape [{n}, {d}], got data of shape {list(shape)}"
            )
        fp = fingerprint or (data_fingerprint(targets) if targets is not None else None)
        if fp is not None and fp != self.fingerprint:
            raise ValueError(
                f"potential: solved for data with fingerprint {self.fingerprint[:12]}…, "
                f"got different data (fingerprint {fp[:12]}…) of the same shape [{n}, {d}]"
            )


def save_potential(
    path: str | Path,
    result: SemidiscreteResult,
    *,
    targets=None,
    fingerprint: str | None = None,
    data_name: str | None = None,
    extra: dict | None = None,
    projection: PCAProjection | None = None,
) -> Path:
    """Writes ``result`` to ``path`` (atomically) with the fingerprint of ``targets`` [N, d].

    Give ``targets`` (hashed here) or a precomputed ``fingerprint`` of the same array. With
    ``projection`` the potential was solved for the projected targets; the file stores the projection
    and the fingerprint and shape of the full targets.
    """
    from safetensors.torch import save_file

    g = result.potential.detach().to(torch.float64).cpu().contiguous()
    n = int(g.shape[0])
    if targets is None and fingerprint is None:
        raise ValueError("targets: give the data (or its fingerprint) the potential was solved for")
    if targets is not None:
        if tuple(targets.shape)[0] != n or len(targets.shape) != 2:
            raise ValueError(f"targets: shape {list(targets.shape)} does not match the potential's [{n}]")
        fingerprint = fingerprint or data_fingerprint(targets)
    dim = int(targets.shape[1]) if targets is not None else int(result.settings.get("dim", -1))
    if projection is not None:
        if targets is None:
            dim = projection.dim
        elif projection.dim != dim:
            raise ValueError(f"projection: made for d = {projection.dim}, the targets have d = {dim}")
    tensors = {"g": g}
    if projection is not None:
        tensors["pca_components"] = projection.components.to(torch.float64).cpu().contiguous()
        tensors["pca_mean"] = projection.mean.to(torch.float64).cpu().contiguous()
        tensors["pca_variances"] = projection.variances.to(torch.float64).cpu().contiguous()
    if result.weights is not None:
        tensors["weights"] = result.weights.detach().to(torch.float64).cpu().contiguous()
    if result.duplicates is not None:
        tensors["groups"] = result.duplicates.inverse.to(torch.int64).cpu().contiguous()
    classes = getattr(result, "classes", None)  # class-conditional result
    if classes is not None:
        tensors["classes"] = classes.to(torch.int64).cpu().contiguous()
    meta = _metadata(result, n, dim, fingerprint, data_name, classes, projection, extra)
    meta = json.loads(json.dumps(meta, default=_json_default))  # the stored (JSON) form, for the checksum
    meta["checksum"] = checksum(tensors, meta)
    text = json.dumps(meta, sort_keys=True)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"sdfm": text}))


def _metadata(result, n: int, dim: int, fingerprint: str, data_name, classes, projection, extra) -> dict:
    """The JSON metadata of a potential file (before its checksum)."""
    import sdfm

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cost": COST,
        "convention": CONVENTION,
        "eps": result.eps,
        "eps_relative": result.settings.get("eps") if result.settings.get("relative_eps") else None,
        "chi2": result.chi2,
        "chi2_stderr": result.chi2_stderr,
        "chi2_samples": result.chi2_samples,
        "converged": result.converged,
        "num_targets": n,
        "dim": dim,
        "fingerprint": fingerprint,
        "data": data_name,
        "duplicates": 0 if result.duplicates is None else result.duplicates.num_duplicates,
        "solver": result.settings,
        "smooth_errors": [e.as_dict() for e in getattr(result, "smooth_errors", [])],
        "steps": result.steps,
        "samples": result.samples,
        "seconds": result.seconds,
        "sdfm_version": sdfm.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if classes is not None:
        meta["conditional"] = True
        meta["chi2_per_class"] = {str(c): v for c, v in result.chi2_per_class.items()}
    if projection is not None:
        meta["pca"] = {
            "k": projection.k,
            "explained": projection.explained,
            "total_variance": projection.total_variance,
        }
    if extra:
        meta.update(extra)
    return meta


def _json_default(value):
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in potential metadata")


def _tensor(tensors: dict, name: str, n: int | None, *, floating: bool):
    t = tensors.get(name)
    if t is None:
        return None
    if floating != t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: dtype {t.dtype} (expected {'floating' if floating else 'integer'})")
    if n is not None and (t.dim() != 1 or t.shape[0] != n):
        raise ValueError(f"{name}: shape {list(t.shape)}, expected [{n}]")
    if floating and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    return t


def _validated(tensors: dict, meta: dict):
    """(g, weights, duplicates, classes, projection) of a potential file, every field checked."""
    n = check_int("num_targets", meta.get("num_targets"), low=1, high=1 << 40)
    dim = check_int("dim", meta.get("dim"), low=1, high=1 << 24)
    check_float("eps", meta.get("eps"), low=0)
    check_type("fingerprint", meta.get("fingerprint"), str)
    g = _tensor(tensors, "g", n, floating=True).to(torch.float64)
    weights = _tensor(tensors, "weights", n, floating=True)
    if weights is not None and not (bool((weights >= 0).all()) and float(weights.sum()) > 0):
        raise ValueError("weights: expected weights >= 0 with a positive sum")
    duplicates = None
    inverse = _tensor(tensors, "groups", n, floating=False)
    if inverse is not None:
        inverse = inverse.to(torch.int64)
        if int(inverse.min()) < 0 or int(inverse.max()) >= n:
            raise ValueError(
                f"groups: expected group ids in [0, {n}), got [{int(inverse.min())}, {int(inverse.max())}]"
            )
        num_groups = int(inverse.max()) + 1
        first = torch.full((num_groups,), n, dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
        if int(first.max()) >= n:
            raise ValueError("groups: some group ids below the largest have no member")
        w = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else weights
        duplicates = DuplicateGroups(inverse=inverse, representative=first, weights=w / w.sum())
    classes = _tensor(tensors, "classes", n, floating=False)
    if classes is not None and int(classes.min()) < 0:
        raise ValueError("classes: expected labels >= 0")
    projection = None
    if "pca_components" in tensors:
        comps = _tensor(tensors, "pca_components", None, floating=True).to(torch.float64)
        mean = _tensor(tensors, "pca_mean", dim, floating=True)
        variances = _tensor(tensors, "pca_variances", None, floating=True)
        if mean is None or variances is None or comps.dim() != 2 or comps.shape[1] != dim:
            raise ValueError(
                f"pca_components: shape {list(comps.shape)}, or pca_mean / pca_variances missing"
            )
        if variances.dim() != 1 or variances.shape[0] != comps.shape[0]:
            raise ValueError(f"pca_variances: shape {list(variances.shape)}, expected [{comps.shape[0]}]")
        pca = check_type("pca", meta.get("pca"), dict)
        projection = PCAProjection(
            components=comps,
            mean=mean.to(torch.float64),
            variances=variances.to(torch.float64),
            total_variance=check_float("pca.total_variance", pca.get("total_variance"), low=0, low_open=True),
        )
    return g, weights, duplicates, classes, projection


def load_potential(path: str | Path, *, targets=None, fingerprint: str | None = None) -> PotentialFile:
    """Reads a potential file; with ``targets`` (or a fingerprint) checks it matches the data."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"potential: no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("sdfm")
            names = set(fh.keys())
            tensors = {k: fh.get_tensor(k) for k in names}
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        raise ValueError(f"potential: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if raw is None or "g" not in tensors:
        raise ValueError(f"potential: {path} is not an sdfm potential file (no 'sdfm' metadata)")
    try:
        meta = check_type("metadata", json.loads(raw), dict)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r:.40}, expected {FORMAT}")
        version = check_int("format_version", meta.get("format_version"), low=1, high=FORMAT_VERSION)
        stored = meta.get("checksum")
        if stored is None and version >= 2:  # (a flipped bit in its name would skip the check)
            raise ValueError("no checksum in the metadata (modified or corrupt)")
        if stored is not None and stored != checksum(tensors, meta):
            raise ValueError("the checksum of its tensors and metadata does not match (modified or corrupt)")
        parts = _validated(tensors, meta)
    except (ValueError, RecursionError) as exc:  # (RecursionError: absurdly nested JSON)
        raise ValueError(f"potential: {path}: {str(exc) or type(exc).__name__}") from None
    g, weights, duplicates, classes, projection = parts
    out = PotentialFile(
        potential=g.to(torch.float64),
        weights=weights,
        duplicates=duplicates,
        meta=meta,
        classes=classes,
        projection=projection,
    )
    if targets is not None or fingerprint is not None:
        out.check_targets(targets, fingerprint=fingerprint)
    return out
