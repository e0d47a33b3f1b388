"""Data as people keep it: image folders (ImageFolder layout, cached), .csv tables, held-out splits."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdfm.cli.main import main
from sdfm.data import heldout_spec, load_dataset
from sdfm.data import images as images_mod

TINY = ["--steps", "6", "--batch-size", "16", "--width", "8", "--quiet"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SDFM_CACHE_DIR", str(tmp_path / "cache"))


def make_folder(root, classes=("cat", "dog"), per_class=10, size=(12, 12), mode="L", seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = (rng.random(shape) * 100 + 100 * c).astype(np.uint8)
            Image.fromarray(pixels, mode=None).convert(mode).save(root / name / f"{i:03d}.png")
    return root


def test_folder_layout_labels_split_and_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", per_class=10)
    train = load_dataset(str(root))
    test = load_dataset(heldout_spec(str(root)))
    assert train.image_shape == (1, 12, 12) and train.x.dtype == np.uint8
    assert train.params["classes"] == ["cat", "dog"] and train.params["holdout"] == 0.1
    assert train.x.shape[0] + test.x.shape[0] == 20 and test.x.shape[0] == 2
    assert sorted(test.labels.tolist()) == [0, 1]  # stratified: one of each class held out
    full = load_dataset(f"{root}::split=all")
    rows = {r.tobytes() for r in full.x}
    assert {r.tobytes() for r in train.x} | {r.tobytes() for r in test.x} == rows
    assert not {r.tobytes() for r in train.x} & {r.tobytes() for r in test.x}
    # the pixels are the files' pixels (class 0 of the first file, in sorted order)
    first = np.asarray(Image.open(root / "cat" / "000.png"))
    assert np.array_equal(full.x[0].reshape(12, 12), first)

    # the next load is served from the cache without decoding
    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images_mod, "_decode", no_decode)
    again = load_dataset(str(root))
    assert np.array_equal(again.x, train.x)
    # a changed file makes a new cache
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "dog" / "000.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(str(root))


def test_resize_channels_and_rgb(tmp_path):
    root = make_folder(tmp_path / "rgb", per_class=3, size=(10, 10), mode="RGB")
    d = load_dataset(str(root))
    assert d.image_shape == (3, 10, 10)
    grey = load_dataset(f"{root}::image_size=16,channels=1")
    assert grey.image_shape == (1, 16, 16) and grey.x.shape[1] == 256
    flat = make_folder(tmp_path / "flat", classes=("a",), per_class=4)
    assert load_dataset(f"{flat}::holdout=0").labels.tolist() == [0, 0, 0, 0]  # one class folder
    # files directly in the folder have no labels
    for f in (flat / "a").iterdir():
        f.rename(flat / f.name)
    (flat / "a").rmdir()
    d = load_dataset(f"{flat}::holdout=0")
    assert d.labels is None and d.x.shape == (4, 144)


def _run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("case", ["truncated", "mixed", "empty", "not-image", "beside-classes"])
def test_bad_folders_one_line_naming_the_file(tmp_path, capsys, case):
    root = tmp_path / "bad"
    if case != "empty":
        make_folder(root, per_class=2)
    else:
        root.mkdir()
    culprit = root
    if case == "truncated":
        culprit = root / "cat" / "001.png"
        culprit.write_bytes(culprit.read_bytes()[:60])
    elif case == "mixed":
        culprit = root / "dog" / "big.png"
        Image.fromarray(np.zeros((20, 14), np.uint8)).save(culprit)
    elif case == "not-image":
        culprit = root / "dog" / "notes.txt"
        culprit.write_text("hello")
    elif case == "beside-classes":
        culprit = root / "stray.png"
        Image.fromarray(np.zeros((12, 12), np.uint8)).save(culprit)
    code, err = _run_cli(capsys, "solve", "--data", str(root), "--out", str(tmp_path / "g.safetensors"))
    assert code == 2 and len(err) == 1 and str(culprit) in err[0], err
    if case == "mixed":  # resizing makes them one size
        code, _ = _run_cli(
            capsys,
            "solve",
            "--data",
            str(root),
            "--image-size",
            "8",
            "--out",
            str(tmp_path / "g.safetensors"),
            "--quiet",
        )
        assert code == 0


def test_folder_solve_train_eval_sample_chain(tmp_path, capsys):
    """solve (normalised as train does) -> train --potential --model unet --conditional is refused for a
    plain potential, works unconditional; a conditional run solves its own; eval uses the held-out
    10%; sample writes one PNG per sample."""
    root = make_folder(tmp_path / "imgs", per_class=15, size=(9, 9))
    pot = tmp_path / "g.safetensors"
    assert main(["solve", "--data", str(root), "--image-size", "8", "--out", str(pot), "--quiet"]) == 0
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(root),
        "--image-size",
        "8",
        "--coupling",
        "semidiscrete",
        "--model",
        "unet",
    ]
    assert main([*args, "--potential", str(pot), "--out", str(run), *TINY]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["image_shape"] == [1, 8, 8] and info["data"]["params"]["holdout"] == 0.1
    assert info["data"]["shape"][0] == 26  # 2 of each 15-image class held out (1.5 rounded up)
    run2 = tmp_path / "run2"
    assert main([*args, "--conditional", "--out", str(run2), *TINY]) == 0
    assert main(["eval", "--run", str(run2), "--steps", "1", "--num", "32", "--quiet"]) == 0
    report = (run2 / "eval" / "report.md").read_text()
    assert "split=test" in report and "(4 points)" in report
    pngs = tmp_path / "pngs"
    assert (
        main(["sample", "--run", str(run2), "--format", "png-folder", "--out", str(pngs), "--num", "5"]) == 0
    )
    files = sorted(pngs.glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    img = Image.open(files[0])
    assert img.mode == "L" and img.size == (8, 8)


def test_solve_normalize_chains_with_train(tmp_path, capsys):
    x = (np.random.default_rng(0).standard_normal((300, 3)) * 50 + 1000).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = str(tmp_path / "x.npy")
    std, raw = tmp_path / "std.safetensors", tmp_path / "raw.safetensors"
    assert main(["solve", "--data", data, "--out", str(std), "--quiet"]) == 0
    assert main(["solve", "--data", data, "--out", str(raw), "--quiet", "--normalize", "none"]) == 0
    train = ["train", "--data", data, "--coupling", "semidiscrete", *TINY]
    assert main([*train, "--potential", str(std), "--out", str(tmp_path / "a")]) == 0
    code, err = _run_cli(capsys, *train, "--potential", str(raw), "--out", str(tmp_path / "b"))
    assert code == 2 and "--normalize" in err[-1]
    assert main([*train, "--potential", str(raw), "--normalize", "none", "--out", str(tmp_path / "c")]) == 0
    # the same potential as the run solves for itself (same data, seed and units)
    assert main([*train, "--out", str(tmp_path / "d")]) == 0
    from sdfm.artifacts import load_potential

    own = load_potential(tmp_path / "d" / "potential.safetensors")
    assert np.array_equal(own.potential.numpy(), load_potential(std).potential.numpy())


def test_csv_tables(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3))
    lab = rng.integers(0, 3, 40)
    lines = ["a,b,label,c"] + [f"{r[0]},{r[1]},{c},{r[2]}" for r, c in zip(x, lab, strict=True)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    d = load_dataset(str(tmp_path / "t.csv"))
    assert np.allclose(d.x, x) and np.array_equal(d.labels, lab)
    (tmp_path / "n.csv").write_text("\n".join(",".join(map(str, r)) for r in x))
    d = load_dataset(str(tmp_path / "n.csv"))
    assert d.labels is None and np.allclose(d.x, x)
    names = ["setosa", "virginica"]
    (tmp_path / "s.csv").write_text("x,species\n" + "\n".join(f"{i},{names[i % 2]}" for i in range(6)))
    d = load_dataset(f"{tmp_path / 's.csv'}::label=species")
    assert d.labels.tolist() == [0, 1, 0, 1, 0, 1]
    (tmp_path / "bad.csv").write_text("1,2\n3,oops\n")
    code, err = _run_cli(
        capsys, "solve", "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "g.safetensors")
    )
    assert code == 2 and "line 2 column 2" in err[-1] and "bad.csv" in err[-1]
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "t.csv"),
                "--coupling",
                "semidiscrete",
                "--conditional",
                "--out",
                str(tmp_path / "run"),
                *TINY,
            ]
        )
        == 0
    )


def test_jpeg_and_16_bit_images(tmp_path):
    """JPEG files beside PNGs; a 16-bit grey PNG is scaled to 8 bits (Pillow's convert would clip)."""
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    wide = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(wide).save(root / "a" / "0_wide.png")
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(root / "a" / "1.jpg", quality=100)
    d = load_dataset(f"{root}::holdout=0")
    assert d.image_shape == (1, 8, 8)
    assert np.array_equal(d.x[0].reshape(8, 8), np.rint(wide / 257).astype(np.uint8))
    assert abs(int(d.x[1].astype(int).mean()) - 77) <= 1  # JPEG: lossy but close


def test_eval_reference_folder_is_read_whole_at_the_runs_size(tmp_path, capsys):
    root = make_folder(tmp_path / "train", per_class=6, size=(12, 12))
    ref = make_folder(tmp_path / "test", per_class=3, size=(10, 10), seed=1)
    run = tmp_path / "run"
    args = ["train", "--data", str(root), "--image-size", "8", "--coupling", "independent"]
    assert main([*args, "--out", str(run), *TINY]) == 0
    out = tmp_path / "ev"
    argv = ["eval", "--run", str(run), "--reference", str(ref), "--steps", "1", "--num", "16"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    report = (out / "report.md").read_text()
    assert f"{ref}::image_size=8,split=all" in report and "(6 points)" in report


def test_csv_edge_cases(tmp_path):
    (tmp_path / "one.csv").write_text("0.5\n\n1.5\n2.5\n")  # one column, a blank line
    d = load_dataset(str(tmp_path / "one.csv"))
    assert d.x.shape == (3, 1) and d.x[:, 0].tolist() == [0.5, 1.5, 2.5]
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n\n3,4,5\n")
    with pytest.raises(ValueError, match=r"line 4 has 3 columns, expected 2"):
        load_dataset(str(tmp_path / "ragged.csv"))
    (tmp_path / "head.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="no rows"):
        load_dataset(str(tmp_path / "head.csv"))
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        load_dataset(str(tmp_path / "empty.csv"))
    (tmp_path / "nan.csv").write_text("1,nan\n")
    with pytest.raises(ValueError, match="NaN"):
        load_dataset(str(tmp_path / "nan.csv"))
    (tmp_path / "lab.csv").write_text("x1,x2,Y\n1,2,7\n3,4,7\n5,6,2\n")
    d = load_dataset(str(tmp_path / "lab.csv"))
    assert d.x.tolist() == [[1, 2], [3, 4], [5, 6]] and d.labels.tolist() == [7, 7, 2]
    with pytest.raises(ValueError, match="label='nope'"):
        load_dataset(f"{tmp_path / 'lab.csv'}::label=nope")


def test_solve_normalised_copy_larger_than_the_memory_limit_is_streamed(tmp_path):
    """Above --memory-limit the normalised copy goes to a temporary memory-mapped file beside --out
    (removed afterwards), and the potential is the one of the in-memory copy, bit for bit."""
    x = (np.random.default_rng(3).standard_normal((700, 6)) * 4 + 9).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["solve", "--data", str(tmp_path / "x.npy"), "--quiet", "--tol", "0.1"]
    assert main([*args, "--out", str(tmp_path / "mem.safetensors")]) == 0
    assert main([*args, "--out", str(tmp_path / "disk.safetensors"), "--memory-limit", "1000"]) == 0
    from sdfm.artifacts import load_potential

    mem, disk = load_potential(tmp_path / "mem.safetensors"), load_potential(tmp_path / "disk.safetensors")
    assert disk.meta["solver"]["targets_streamed"] and not mem.meta["solver"]["targets_streamed"]
    assert disk.fingerprint == mem.fingerprint
    assert torch.equal(disk.potential, mem.potential)
    assert not list(tmp_path.glob(".sdfm-solve-*"))
