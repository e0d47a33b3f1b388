"""Datasets by name and tensor files."""

import numpy as np
import pytest
import torch

from sdfm.data import DATASETS, load_array, load_dataset


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_builtin_datasets(name):
    ds = load_dataset(name if name == "digits" else f"{name}:n=500")
    assert ds.x.ndim == 2 and np.isfinite(ds.x).all()
    if name == "mnist1d":  # n signals generated, 80% of them in the train split
        assert ds.x.shape == (400, 40) and ds.num_classes == 10
    elif name != "digits":
        assert ds.x.shape[0] == 500
    again = load_dataset(name if name == "digits" else f"{name}:n=500")
    assert np.array_equal(ds.x, again.x)  # seeded


def test_mnist1d_split_and_global_state():
    state = np.random.get_state()[1].copy()
    train = load_dataset("mnist1d:n=1000")
    test = load_dataset("mnist1d:n=1000,split=test")
    assert train.x.shape == (800, 40) and test.x.shape == (200, 40) and test.labels.shape == (200,)
    assert np.array_equal(np.random.get_state()[1], state)  # the package's global seeding is undone
    assert load_dataset("digits").image_shape == (1, 8, 8) and train.image_shape is None


def test_dataset_parameters_and_errors():
    ds = load_dataset("gmm:d=32,k=4,n=100,seed=3")
    assert ds.x.shape == (100, 32) and ds.labels.shape == (100,)
    assert load_dataset("digits").x.max() == 16.0  # as given, no rescaling
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="bad parameters"):
        load_dataset("gmm:q=1")
    with pytest.raises(ValueError, match="key=value"):
        load_dataset("gmm:d")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".safetensors"])
def test_tensor_files_round_trip(tmp_path, suffix):
    x = np.random.default_rng(0).normal(size=(20, 3, 2)).astype(np.float32)
    labels = np.arange(20)
    path = tmp_path / f"d{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, x=x, labels=labels)
    elif suffix == ".pt":
        torch.save({"x": torch.from_numpy(x), "labels": torch.from_numpy(labels)}, path)
    else:
        from safetensors.numpy import save_file

        save_file({"x": x, "labels": labels}, str(path))
    data, lab = load_array(path)
    assert data.shape == (20, 6) and np.array_equal(np.asarray(data), x.reshape(20, 6))
    if suffix != ".npy":
        assert np.array_equal(lab, labels)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_array(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load_array(tmp_path / "junk.npy")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="NaN"):
        load_array(tmp_path / "nan.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty"):
        load_array(tmp_path / "empty.npy")
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="non-numeric"):
        load_array(tmp_path / "str.npy")
    (tmp_path / "x.tsv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported"):
        load_array(tmp_path / "x.tsv")
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="name the data"):
        load_array(tmp_path / "two.npz")


def test_heldout_splits():
    from sdfm.data import heldout_spec, load_dataset

    assert heldout_spec("checkerboard:n=500") == "checkerboard:n=500,split=test"
    assert heldout_spec("digits") == "digits:split=test"
    assert heldout_spec("digits:split=all") is None and heldout_spec("x.npy") is None
    train, test = load_dataset("checkerboard:n=500"), load_dataset("checkerboard:n=500,split=test")
    assert train.x.shape == test.x.shape and not np.allclose(train.x, test.x)
    np.testing.assert_array_equal(train.x, load_dataset("checkerboard:n=500,split=train").x)
    # digits: disjoint 80/20 split of the 1797 images
    tr, te, al = load_dataset("digits"), load_dataset("digits:split=test"), load_dataset("digits:split=all")
    assert tr.x.shape == (1438, 64) and te.x.shape == (359, 64) and al.x.shape == (1797, 64)
    rows = {r.tobytes() for r in al.x}
    assert len({r.tobytes() for r in tr.x} & {r.tobytes() for r in te.x}) <= len(al.x) - len(rows)
    # gmm: fresh points of the same mixture (same means), labels included
    a = load_dataset("gmm:d=4,n=20000")
    b = load_dataset("gmm:d=4,n=20000,split=test")
    assert not np.allclose(a.x[:10], b.x[:10])
    for k in range(8):
        np.testing.assert_allclose(a.x[a.labels == k].mean(0), b.x[b.labels == k].mean(0), atol=0.1)
    with pytest.raises(ValueError, match="split"):
        load_dataset("checkerboard:split=val")
