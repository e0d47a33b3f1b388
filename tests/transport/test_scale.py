"""Large targets: memory-mapped files, streamed solves, duplicate hashing, PCA pairing, FAISS search."""

import warnings

import numpy as np
import pytest
import torch

from sdfm.artifacts import load_potential, save_potential
from sdfm.couplings import SemidiscreteCoupling
from sdfm.data.files import load_array
from sdfm.transport import (
    LaguerreCells,
    PCAProjection,
    SemidiscreteSolver,
    estimate_marginal,
    find_duplicates,
)
from sdfm.transport.duplicates import _row_hashes


def gen(seed):
    return torch.Generator().manual_seed(seed)


def brute(x, y, g):
    x, y, g = x.double(), y.double(), g.double()
    return (x @ y.T + g - 0.5 * y.square().sum(1)).argmax(1)


@pytest.fixture
def npy(tmp_path):
    y = np.random.default_rng(0).normal(size=(2500, 12)).astype(np.float32)
    y[::7] += 3.0  # two clusters
    path = tmp_path / "y.npy"
    np.save(path, y)
    return path, y


def test_memory_mapped_targets_are_streamed_not_copied(npy, tmp_path):
    path, y = npy
    mm, _ = load_array(path)
    assert isinstance(mm, np.memmap)
    with warnings.catch_warnings():  # read-only mapping: sdfm never writes to targets
        warnings.simplefilter("ignore", UserWarning)
        targets = torch.from_numpy(mm.view(np.ndarray))
    streamed = SemidiscreteSolver(tol=0.1, memory_limit=0).solve(targets, generator=gen(0))
    copied = SemidiscreteSolver(tol=0.1).solve(torch.from_numpy(y), generator=gen(0))
    assert streamed.settings["targets_streamed"] and not copied.settings["targets_streamed"]
    assert streamed.converged and copied.converged
    # the same problem: both potentials pair fresh noise alike (float32 rounding of the keys differs)
    x = torch.randn(4000, 12, generator=gen(1))
    same = brute(x, torch.from_numpy(y), streamed.potential) == brute(
        x, torch.from_numpy(y), copied.potential
    )
    assert same.float().mean() > 0.9
    # the streamed solve equals brute force on its own potential (scores were not corrupted by streaming)
    idx = LaguerreCells(targets, streamed.potential, chunk_size=97).assign(x)
    assert torch.equal(idx, brute(x, torch.from_numpy(y), streamed.potential))
    # safetensors files are memory-mapped too
    from safetensors.numpy import save_file

    save_file({"x": y}, str(tmp_path / "y.safetensors"))
    st, _ = load_array(tmp_path / "y.safetensors")
    assert isinstance(st, np.memmap) and np.array_equal(st, y)


def test_memory_limit_validated():
    with pytest.raises(ValueError, match="memory_limit"):
        SemidiscreteSolver(memory_limit=-1)
    with pytest.raises(ValueError, match="memory_limit"):
        SemidiscreteSolver(memory_limit=1.5)


def test_streamed_solve_with_duplicates_keeps_them_tied():
    y = torch.randn(600, 5, generator=gen(0))
    y[500:] = y[:100]  # 100 duplicates
    res = SemidiscreteSolver(tol=0.1, memory_limit=0).solve(y, generator=gen(0))
    assert res.converged and res.duplicates.num_duplicates == 100
    assert torch.equal(res.potential[500:], res.potential[:100])


def test_row_hashes_find_exact_duplicates_only():
    y = torch.randn(5000, 7, generator=gen(2))
    y[4000] = y[17]
    y[4001, 0] = -0.0
    y[4002] = y[4001]
    y[4002, 0] = 0.0  # -0.0 == 0.0
    y[4003] = y[18] + 1e-7  # near, not equal
    h = _row_hashes(y)
    assert h[4000] == h[17] and h[4001] == h[4002] and h[4003] != h[18]
    groups = find_duplicates(y)
    ref_uniq = torch.unique(y, dim=0).shape[0]
    assert groups.num_groups == ref_uniq == 4998
    assert groups.inverse[4000] == groups.inverse[17] and groups.inverse[4001] == groups.inverse[4002]
    assert find_duplicates(torch.randn(300, 3, generator=gen(3))) is None


def test_pca_matches_numpy_and_round_trips(tmp_path):
    y = torch.randn(3000, 10, generator=gen(4)) * torch.linspace(3, 0.1, 10) + 5.0
    proj = PCAProjection.fit(y, 4)
    yc = (y - y.mean(0)).double().numpy()
    _, sv, vt = np.linalg.svd(yc, full_matrices=False)
    np.testing.assert_allclose(proj.variances.numpy(), sv[:4] ** 2 / 3000, rtol=1e-8)
    overlap = np.abs(proj.components.numpy() @ vt[:4].T)
    np.testing.assert_allclose(overlap, np.eye(4), atol=1e-8)
    assert abs(proj.explained - (sv[:4] ** 2).sum() / (sv**2).sum()) < 1e-10
    keys = proj.project_targets(y, chunk_size=77)
    torch.testing.assert_close(keys.double(), y.double() @ proj.components.T, rtol=1e-6, atol=1e-5)
    res = SemidiscreteSolver(tol=0.1).solve(keys, generator=gen(0))
    save_potential(tmp_path / "p.safetensors", res, targets=y, projection=proj)
    pf = load_potential(tmp_path / "p.safetensors", targets=y)
    assert torch.equal(pf.projection.components, proj.components) and pf.meta["pca"]["k"] == 4
    coupling = SemidiscreteCoupling.from_file(tmp_path / "p.safetensors", y)
    pairs = coupling.sample(500, generator=gen(5))
    # the cell is the argmax in the projected space; the pair keeps the full x0 and y
    expect = brute(proj.project(pairs.x0), keys, res.potential)
    assert torch.equal(pairs.index, expect) and torch.equal(pairs.x1, y[expect])
    assert pairs.x0.shape == (500, 10)
    with pytest.raises(ValueError, match="k: expected"):
        PCAProjection.fit(y, 11)


def test_full_rank_pca_is_a_rotation_of_the_problem():
    # K = d: |P x - P y| = |x - y|, so the same potential gives the same cells
    y = torch.randn(400, 6, generator=gen(6), dtype=torch.float64)
    g = 0.2 * torch.randn(400, generator=gen(7), dtype=torch.float64)
    proj = PCAProjection.fit(y, 6)
    x = torch.randn(1000, 6, generator=gen(8), dtype=torch.float64)
    assert torch.equal(brute(proj.project(x), proj.project_targets(y), g), brute(x, y, g))


def test_cli_solve_pca_and_memory_limit(npy, tmp_path, capsys):
    from sdfm.cli.main import main

    path, y = npy
    out = tmp_path / "p.safetensors"
    assert (
        main(
            [
                "solve",
                "--data",
                str(path),
                "--out",
                str(out),
                "--pca",
                "5",
                "--memory-limit",
                "0",
                "--tol",
                "0.1",
                "--quiet",
                "--normalize",
                "none",
            ]
        )
        == 0
    )
    pf = load_potential(out, targets=torch.from_numpy(y))
    assert pf.meta["pca"]["k"] == 5 and pf.meta["solver"]["targets_streamed"]
    assert pf.meta["solver"]["memory_limit"] == 0
    with pytest.raises(SystemExit) as err:
        main(["solve", "--data", str(path), "--out", str(out), "--memory-limit", "12XB"])
    assert err.value.code == 2 and "512MiB" in capsys.readouterr().err
    assert main(["solve", "--data", str(path), "--out", str(out), "--pca", "13"]) == 2
    assert "--pca" in capsys.readouterr().err


def test_lowp_argmax_top2_is_exact_with_approximate_scores():
    from sdfm.transport._stream import LowpKeys, stream_argmax_lowp

    y = torch.randn(3000, 48, generator=gen(40), dtype=torch.float64)
    y[1::2] = y[::2] + 1e-4  # near-ties: neighbours almost on top of each other
    bias = torch.randn(3000, generator=gen(41), dtype=torch.float64) * 0.1
    bias -= bias.max()
    x = torch.randn(700, 48, generator=gen(42), dtype=torch.float64)
    norms = y.norm(dim=1)
    lowp = LowpKeys(
        keys=y.to(torch.bfloat16),
        norms=(norms * (1 + 2.0**-20)).float(),
        norm_max=float(norms.max()),
        bias32=bias.float(),
        bias64=bias,
        bias_abs_max=float(bias.abs().max()),
        center64=torch.zeros(48, dtype=torch.float64),
    )
    idx, best, second = stream_argmax_lowp(x, lowp, targets=y, chunk=512, top2=True)
    scores = x @ y.T + bias
    assert torch.equal(idx, scores.argmax(1))
    top = scores.topk(2, dim=1).values
    tol = 0.02 * scores.abs().max()  # bf16: 8 bits of mantissa
    assert (best.double() - top[:, 0]).abs().max() < tol
    assert (second.double() - top[:, 1]).abs().max() < tol
    assert stream_argmax_lowp(x, lowp, targets=y, chunk=512)[1:] == (None, None)


def test_solver_low_precision_scores_assign_exactly():
    y = torch.from_numpy(np.random.default_rng(3).normal(size=(1500, 40)).astype(np.float32))
    exact = SemidiscreteSolver(dtype="float64", tol=0.5).solve(y, generator=gen(43))
    # From the same potential and noise, the chi2 measurement counts the same cells bit for bit:
    # every low-precision argmax was re-scored to the float64 one.
    measured = [
        SemidiscreteSolver(dtype="float64", tol=1e9, score_dtype=sd).solve(
            y, init=exact.potential, generator=gen(44)
        )
        for sd in (None, "bfloat16", "float16")
    ]
    assert measured[0].steps == 0 and measured[0].chi2 > 0
    assert measured[1].chi2 == measured[0].chi2 and measured[2].chi2 == measured[0].chi2
    # and a whole solve with bf16 scores converges like the default one
    res = SemidiscreteSolver(score_dtype="bfloat16").solve(y, generator=gen(45))
    assert res.converged and res.settings["score_dtype"] == "bfloat16"
    est = estimate_marginal(y, res.potential, num_samples=1 << 17, generator=gen(46), with_cost=False)
    assert est.chi2 < 0.08


def test_solver_low_precision_scores_refusals():
    from sdfm.transport.sharding import Collective

    y = torch.randn(400, 8, generator=gen(47))
    with pytest.raises(ValueError, match="score_dtype"):
        SemidiscreteSolver(score_dtype="bfloat16", eps=0.1)
    with pytest.raises(ValueError, match="score_dtype"):
        SemidiscreteSolver(score_dtype="int8")
    with pytest.raises(ValueError, match="memory_limit"):
        SemidiscreteSolver(score_dtype="bfloat16", memory_limit=1000).solve(y)
    one = Collective(rank=0, world_size=1, reduce=lambda t, op: t, gather=lambda t: t)
    with pytest.raises(ValueError, match="one process"):
        SemidiscreteSolver(score_dtype="bfloat16").solve(y, collective=one)


def test_cli_solve_low_precision(npy, tmp_path, capsys):
    from sdfm.cli.main import main

    path, y = npy
    out = tmp_path / "p.safetensors"
    args = ["solve", "--data", str(path), "--out", str(out), "--tol", "0.1", "--quiet", "--normalize", "none"]
    assert main([*args, "--pairing-precision", "bf16"]) == 0
    pf = load_potential(out, targets=torch.from_numpy(y))
    assert pf.meta["solver"]["score_dtype"] == "bfloat16" and pf.meta["chi2"] <= 0.1
    assert main([*args, "--pairing-precision", "fp16", "--eps", "0.1"]) == 2
    assert "--pairing-precision" in capsys.readouterr().err
