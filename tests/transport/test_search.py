"""FAISS search over a fixed potential: exactness of flat / full-probe IVF, recall, index files."""

import pytest
import torch

from sdfm.artifacts import load_index, load_potential, save_index
from sdfm.couplings import SemidiscreteCoupling
from sdfm.transport import LaguerreCells, SemidiscreteSolver

faiss = pytest.importorskip("faiss")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def brute(x, y, g):
    x, y, g = x.double(), y.double(), g.double()
    return (x @ y.T + g - 0.5 * y.square().sum(1)).argmax(1)


@pytest.fixture(scope="module")
def solved():
    y = torch.randn(4000, 8, generator=gen(9))
    res = SemidiscreteSolver(tol=0.1).solve(y, generator=gen(0))
    return y, res.potential


def test_faiss_flat_and_full_probe_ivf_are_exact(solved):
    from sdfm.transport.search import FaissCells, search_quality

    y, g = solved
    cells = LaguerreCells(y, g)
    x = torch.randn(3000, 8, generator=gen(10))
    exact = brute(x, y, g)
    flat = FaissCells(y, g, kind="flat")
    assert (flat.assign(x) == exact).float().mean() >= 0.999  # float32 ties aside
    ivf_all = FaissCells(y, g, kind="ivf", nlist=16, nprobe=16)  # every list searched: exhaustive
    assert (ivf_all.assign(x) == exact).float().mean() >= 0.999
    hnsw = FaissCells(y, g, kind="hnsw")
    q = search_quality(hnsw, cells, samples=8192, generator=gen(11))
    assert q["recall"] > 0.97
    assert abs(q["chi2_search"] - q["chi2_exact"]) < 0.05
    ivf = FaissCells(y, g, kind="ivf", nlist=64, nprobe=1)
    assert 0.3 < search_quality(ivf, cells, samples=4096, generator=gen(12))["recall"] < 1.0


def test_faiss_index_file_refuses_another_potential(solved, tmp_path):
    from sdfm.transport.search import FaissCells

    y, g = solved
    built = FaissCells(y, g, kind="ivf", data_fingerprint="abc")
    save_index(tmp_path / "i.safetensors", built)
    loaded = load_index(tmp_path / "i.safetensors", g, shape=(4000, 8), data_fingerprint="abc")
    x = torch.randn(2000, 8, generator=gen(13))
    assert torch.equal(loaded.assign(x), built.assign(x)) and loaded.params == built.params
    with pytest.raises(ValueError, match="another potential"):
        load_index(tmp_path / "i.safetensors", g + 1e-9, shape=(4000, 8), data_fingerprint="abc")
    with pytest.raises(ValueError, match="another potential"):
        load_index(tmp_path / "i.safetensors", g, shape=(4000, 8), data_fingerprint="other")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tmp_path / "i.safetensors"), framework="pt") as fh:  # "checksum" renamed away
        meta = fh.metadata()["sdfm"].replace('"checksum"', '"chebksum"')
        save_file({"index": fh.get_tensor("index")}, str(tmp_path / "r.safetensors"), metadata={"sdfm": meta})
    with pytest.raises(ValueError, match="no checksum"):
        load_index(tmp_path / "r.safetensors", g, shape=(4000, 8), data_fingerprint="abc")
    coupling = SemidiscreteCoupling(y, g, search=loaded)
    pairs = coupling.sample(2048, generator=gen(14))
    # IVF at its default nprobe is approximate: recall 0.92 on this potential (8,192 pairs)
    assert (pairs.index == brute(pairs.x0, y, g)).float().mean() > 0.85
    with pytest.raises(ValueError, match="search"):
        SemidiscreteCoupling(y, g, eps=0.1, search=loaded)
    with pytest.raises(ValueError, match="kind"):
        FaissCells(y, g, kind="lsh")


def test_cli_train_with_a_faiss_index_and_its_check_on_resume(tmp_path, capsys):
    from sdfm.cli.main import main

    run = tmp_path / "run"
    base = ["train", "--data", "gmm:d=4,n=800", "--coupling", "semidiscrete", "--out", str(run), "--quiet"]
    assert main([*base, "--search", "hnsw", "--steps", "4", "--batch-size", "32"]) == 0
    assert (run / "index.safetensors").exists()
    assert main([*base, "--steps", "6", "--batch-size", "32", "--resume"]) == 0  # the saved index, checked
    pf = load_potential(run / "potential.safetensors")
    load_index(run / "index.safetensors", pf.potential, shape=(800, 4), data_fingerprint=pf.fingerprint)
    other = [*base[:-3], "--out", str(tmp_path / "r2"), "--quiet"]
    assert main([*other, "--search", "ivf", "--eps", "0.1", "--steps", "2"]) == 2
    assert "--search" in capsys.readouterr().err


def test_cli_index_builds_checks_and_saves(tmp_path, capsys):
    from sdfm.cli.main import main

    pot, out = tmp_path / "p.safetensors", tmp_path / "i.safetensors"
    assert main(["solve", "--data", "gmm:d=4,n=1500", "--out", str(pot), "--quiet"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "index",
                "--data",
                "gmm:d=4,n=1500",
                "--potential",
                str(pot),
                "--out",
                str(out),
                "--kind",
                "flat",
                "--check",
                "8192",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out
    assert "recall 1.0000" in line  # flat is exhaustive
    pf = load_potential(pot)
    loaded = load_index(out, pf.potential, shape=(1500, 4), data_fingerprint=pf.fingerprint)
    assert loaded.kind == "flat"
    # another dataset's data: refused before anything is built
    assert main(["index", "--data", "gmm:d=4,n=1400", "--potential", str(pot), "--out", str(out)]) == 2
    assert "shape" in capsys.readouterr().err
