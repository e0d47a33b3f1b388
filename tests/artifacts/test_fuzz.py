"""Fuzzing the loaders (hypothesis): truncated, bit-flipped and byte-edited potential files, FAISS
index files, checkpoints, run.json and data files. Every mutation either loads exactly what was saved
(a flip in ignorable padding) or is refused with a ValueError naming the file: never another exception,
a silently different value, or a read outside the given folder."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdfm.artifacts import load_potential, save_potential
from sdfm.data import load_dataset
from sdfm.train import TrainConfig, load_checkpoint, read_run, train
from sdfm.transport import SemidiscreteSolver
from tests.conftest import gen

FUZZ = settings(
    max_examples=int(os.environ.get("SDFM_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def _mutations():
    """(kind, position in [0, 1), new byte, cut fraction)."""
    return st.tuples(
        st.sampled_from(["flip", "byte", "truncate", "zero_run"]),
        st.floats(0, 1, exclude_max=True),
        st.integers(0, 255),
        st.integers(0, 7),
    )


def _mutate(blob: bytes, mutation) -> bytes:
    kind, where, value, bit = mutation
    i = int(where * len(blob))
    b = bytearray(blob)
    if kind == "flip":
        b[i] ^= 1 << bit
    elif kind == "byte":
        b[i] = value
    elif kind == "truncate":
        return bytes(b[:i])
    else:
        b[i : i + 64] = bytes(len(b[i : i + 64]))
    return bytes(b)


@pytest.fixture(scope="module")
def potential_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pot")
    y = torch.randn(40, 3, generator=gen(0))
    y[5] = y[4]  # a duplicate: the file also holds groups
    res = SemidiscreteSolver(tol=0.3).solve(y, torch.rand(40, generator=gen(2)) + 0.5, generator=gen(1))
    path = folder / "g.safetensors"
    save_potential(path, res, targets=y)
    return path


@FUZZ
@given(mutation=_mutations())
def test_fuzz_potential_file(potential_file, tmp_path_factory, mutation):
    original = load_potential(potential_file)
    path = tmp_path_factory.mktemp("m") / "g.safetensors"
    path.write_bytes(_mutate(potential_file.read_bytes(), mutation))
    try:
        loaded = load_potential(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert torch.equal(loaded.potential, original.potential) and loaded.meta == original.meta
    assert torch.equal(loaded.weights, original.weights)
    assert torch.equal(loaded.duplicates.inverse, original.duplicates.inverse)


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory):
    from sdfm.couplings import IndependentCoupling
    from sdfm.models import build_model

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = build_model("mlp", {"dim": 2, "hidden": 8, "depth": 1})
    coupling = IndependentCoupling(torch.randn(64, 2, generator=gen(0)))
    train(model, coupling, TrainConfig(steps=3, batch_size=8, log_every=1), run, progress=False)
    return run / "checkpoints" / "step_00000003"


@FUZZ
@given(name=st.sampled_from(["model.safetensors", "state.pt", "state.json"]), mutation=_mutations())
def test_fuzz_checkpoint(checkpoint_folder, tmp_path_factory, name, mutation):
    original = load_checkpoint(checkpoint_folder)
    folder = tmp_path_factory.mktemp("c") / checkpoint_folder.name
    shutil.copytree(checkpoint_folder, folder)
    (folder / name).write_bytes(_mutate((folder / name).read_bytes(), mutation))
    try:
        loaded = load_checkpoint(folder)
    except ValueError as exc:
        assert str(folder) in str(exc)
        return
    assert loaded.step == original.step and loaded.meta == original.meta
    assert all(torch.equal(loaded.model[k], v) for k, v in original.model.items())


@FUZZ
@given(mutation=_mutations())
def test_fuzz_run_json(tmp_path_factory, mutation):
    run = tmp_path_factory.mktemp("r")
    info = {
        "format": "sdfm.run",
        "data": {"spec": "checkerboard", "fingerprint": "ab", "shape": [100, 2], "image_shape": None},
        "normalization": {"mode": "standard", "shift": [0.0, 0.0], "scale": 1.0},
        "model": {"name": "mlp", "config": {"dim": 2, "hidden": 8, "depth": 1}},
        "coupling": {"name": "independent"},
        "train": {},
        "seed": 0,
    }
    text = json.dumps(info).encode()
    (run / "run.json").write_bytes(_mutate(text, mutation))
    try:
        got = read_run(run)
    except ValueError as exc:
        assert "run.json" in str(exc)
        return
    assert isinstance(got, dict) and got["model"]["config"]["dim"] == got["data"]["shape"][1]


def test_fuzz_index_file(tmp_path):
    pytest.importorskip("faiss")
    from sdfm.artifacts import load_index, save_index
    from sdfm.transport.search import FaissCells

    keys = torch.randn(300, 4, generator=gen(0))
    g = torch.zeros(300, dtype=torch.float64)
    path = tmp_path / "i.safetensors"
    save_index(path, FaissCells(keys, g, kind="ivf", data_fingerprint="fp"))
    blob = path.read_bytes()
    rng = np.random.default_rng(0)
    refused = 0
    for trial in range(80):
        kind = ["flip", "byte", "truncate", "zero_run"][trial % 4]
        mutated = tmp_path / f"m{trial}.safetensors"
        mutated.write_bytes(_mutate(blob, (kind, rng.random(), int(rng.integers(256)), int(rng.integers(8)))))
        try:
            load_index(mutated, g, shape=(300, 4), data_fingerprint="fp")
        except ValueError as exc:
            assert str(mutated) in str(exc)
            refused += 1
    assert refused >= 70


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.array([{"a": 1}], dtype=object), "cannot read"),
        (np.ones((5, 2), dtype=np.complex64), "non-numeric"),
        (np.ones((0, 2), dtype=np.float32), "empty"),
        (np.array([[1.0, np.nan]]), "NaN"),
    ],
)
def test_hostile_data_files_are_refused(tmp_path, array, match):
    path = tmp_path / "x.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(ValueError, match=match):
        load_dataset(str(path))


def test_npy_with_a_huge_crafted_header_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000), }"
    header = header + " " * (200_000 - len(header)) + "\n"
    path.write_bytes(b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode())
    with pytest.raises(ValueError, match="x.npy"):
        load_dataset(str(path))


def test_bool_and_int8_data_are_numbers(tmp_path):
    """bool (binary) and int8 data are legitimate: read as their values, not refused."""
    for array in (np.eye(4, dtype=bool), np.arange(8, dtype=np.int8).reshape(4, 2)):
        path = tmp_path / "x.npy"
        np.save(path, array)
        assert np.array_equal(
            np.asarray(load_dataset(str(path)).x, dtype=np.float64), array.astype(np.float64)
        )
