"""Potential files: round trip, metadata, mismatch refusal, atomic writes."""

import json

import numpy as np
import pytest
import torch

from sdfm.artifacts import atomic_write, load_potential, save_potential
from sdfm.data import fingerprint
from sdfm.transport import SemidiscreteSolver, assign
from tests.conftest import gen


@pytest.fixture(scope="module")
def solved():
    torch.manual_seed(0)
    y = torch.randn(120, 3)
    y = torch.cat([y, y[:5]])  # with duplicates
    w = torch.rand(125, dtype=torch.float64) + 0.5
    res = SemidiscreteSolver(max_steps=30, tol=None).solve(y, w, generator=gen(1))
    return y, w, res


def test_round_trip(tmp_path, solved):
    y, w, res = solved
    path = save_potential(tmp_path / "p.safetensors", res, targets=y, data_name="toy")
    pf = load_potential(path, targets=y)
    assert torch.equal(pf.potential, res.potential) and pf.potential.dtype == torch.float64
    torch.testing.assert_close(pf.weights, w / w.sum())
    assert torch.equal(pf.duplicates.inverse, res.duplicates.inverse)
    assert torch.equal(pf.duplicates.representative, res.duplicates.representative)
    meta = pf.meta
    assert meta["cost"] == "half_sqeuclidean" and meta["num_targets"] == 125 and meta["dim"] == 3
    assert meta["fingerprint"] == fingerprint(y) and meta["data"] == "toy"
    assert meta["chi2"] == res.chi2 and meta["eps"] == res.eps
    # the resolved batch (16 noise samples per distinct atom) is what the file records
    assert meta["solver"]["batch_size"] == 4 * 120 and "sdfm_version" in meta
    json.dumps(meta)  # plain JSON
    # the loaded potential pairs exactly like the solved one
    x = torch.randn(64, 3)
    assert torch.equal(assign(x, y, pf.potential), assign(x, y, res.potential))


def test_mismatch_refused(tmp_path, solved):
    y, _, res = solved
    path = save_potential(tmp_path / "p.safetensors", res, targets=y)
    other = y.clone()
    other[3, 1] += 1e-3
    with pytest.raises(ValueError, match="fingerprint"):
        load_potential(path, targets=other)
    with pytest.raises(ValueError, match="shape"):
        load_potential(path, targets=y[:-1])
    with pytest.raises(ValueError, match="shape"):
        load_potential(path, targets=torch.randn(125, 4))


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        load_potential(bad)
    with pytest.raises(ValueError, match="no such file"):
        load_potential(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"g": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not an sdfm potential"):
        load_potential(tmp_path / "foreign.safetensors")


def _rewrite_meta(path, out, edit):
    """A copy of the potential file at path with its metadata passed through edit (dict -> dict)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["sdfm"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(out), metadata={"sdfm": json.dumps(edit(meta))})
    return out


def test_the_checksum_cannot_be_renamed_away(tmp_path, solved):
    """A flipped bit in the key "checksum" (found by the fuzzer: "chebksum") would skip the check:
    version 2 files need it (version 1 files without one: test_reliability); other versions are
    refused."""
    y, _, res = solved
    path = save_potential(tmp_path / "p.safetensors", res, targets=y)
    assert load_potential(path).meta["format_version"] == 2

    def renamed(meta):
        meta["chebksum"] = meta.pop("checksum")
        return meta

    with pytest.raises(ValueError, match="no checksum"):
        load_potential(_rewrite_meta(path, tmp_path / "r.safetensors", renamed))

    for version in (0, 3, "2"):
        edit = lambda meta, v=version: {**meta, "format_version": v}  # noqa: E731
        with pytest.raises(ValueError, match="format_version"):
            load_potential(_rewrite_meta(path, tmp_path / "v.safetensors", edit))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def failing(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left behind
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new"


def test_fingerprint_depends_on_values_dtype_and_shape():
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert fingerprint(a) == fingerprint(torch.from_numpy(a.copy()))
    assert fingerprint(a) != fingerprint(a.astype(np.float64))
    assert fingerprint(a) != fingerprint(a.reshape(4, 3))
    b = a.copy()
    b[0, 0] = 0.5
    assert fingerprint(a) != fingerprint(b)
