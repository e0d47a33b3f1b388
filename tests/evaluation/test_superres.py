"""Continuous conditions: augmented pairs equal the brute force, the beta limits, PSNR and the
low-resolution conditions, and the super-resolution CLI round trip."""

import json
import math

import numpy as np
import pytest
import torch

from sdfm.artifacts import load_potential
from sdfm.cli.main import main
from sdfm.couplings import IndependentCoupling, SemidiscreteCoupling
from sdfm.data.superres import lowres, noisy_lowres, upsample
from sdfm.metrics import psnr
from sdfm.transport import ConditionedNoise, SemidiscreteSolver, augmented_keys, condition_mismatch
from tests.conftest import gen


@pytest.fixture(scope="module")
def problem():
    y = torch.randn(200, 3, generator=gen(0), dtype=torch.float64)
    z = torch.randn(200, 2, generator=gen(1), dtype=torch.float64)
    return y, z


def test_augmented_pairs_equal_brute_force(problem):
    y, z = problem
    beta = 2.0
    keys = augmented_keys(y, z, beta)
    res = SemidiscreteSolver(tol=0.1).solve(keys, noise=ConditionedNoise(z, beta), generator=gen(2))
    coupling = SemidiscreteCoupling.from_result(y, res, conditions=z, beta=beta)
    pairs = coupling.sample(500, generator=gen(3))
    # replay the draws: x0 ~ N(0, I_3), then the condition index i; brute-force augmented argmax
    g = gen(3)
    x0 = torch.randn(500, 3, generator=g, dtype=torch.float64)
    i = torch.randint(200, (500,), generator=g)
    torch.testing.assert_close(pairs.x0, x0)
    torch.testing.assert_close(pairs.cond, z[i])
    cost = 0.5 * torch.cdist(x0, y) ** 2 + beta * 0.5 * torch.cdist(z[i], z) ** 2
    expected = torch.argmax(res.potential[None, :] - cost, dim=1)
    assert torch.equal(pairs.index, expected)
    torch.testing.assert_close(pairs.x1, y[expected])


def test_condition_mismatch_against_brute_force_and_limits(problem):
    y, z = problem
    beta = 2.0
    keys = augmented_keys(y, z, beta)
    noise = ConditionedNoise(z, beta)
    res = SemidiscreteSolver(tol=0.1).solve(keys, noise=noise, generator=gen(2))
    # the solver reports it for augmented solves
    reported = res.settings["condition_mismatch"]
    assert 0 < reported["left"] <= 1 and 0 < reported["relative_distance"] < 1
    got = condition_mismatch(keys, res.potential, noise, num_samples=3000, batch_size=1000, generator=gen(7))
    # replay the draws batch by batch: x0, the condition index i, then the random comparison point k
    g, left, dist, rand = gen(7), 0, 0.0, 0.0
    for _ in range(3):
        x0 = torch.randn(1000, 3, generator=g, dtype=torch.float64)
        i = torch.randint(200, (1000,), generator=g)
        cost = 0.5 * torch.cdist(x0, y) ** 2 + beta * 0.5 * torch.cdist(z[i], z) ** 2
        j = torch.argmax(res.potential[None, :] - cost, dim=1)
        k = torch.randint(200, (1000,), generator=g)
        left += int((j != i).sum())
        dist += float((z[i] - z[j]).norm(dim=1).sum())
        rand += float((z[i] - z[k]).norm(dim=1).sum())
    assert got.num_samples == 3000 and got.left == left / 3000
    assert got.relative_distance == pytest.approx(dist / rand, rel=1e-12)
    # limits: beta -> infinity keeps every condition; beta = 0 ignores it (distance ratio near 1)
    zero = torch.zeros(200, dtype=torch.float64)
    far = ConditionedNoise(z, 1e6)
    assert condition_mismatch(augmented_keys(y, z, 1e6), zero, far, num_samples=2000).left == 0
    free = condition_mismatch(augmented_keys(y, z, 0.0), zero, ConditionedNoise(z, 0.0), generator=gen(8))
    assert free.left > 0.9 and 0.8 < free.relative_distance < 1.2
    with pytest.raises(ValueError, match="keys"):
        condition_mismatch(keys[:100], zero[:100], noise)  # not one key per condition


def test_beta_limits(problem):
    y, z = problem
    # beta -> infinity: the optimal potential tends to 0 and each noise is paired with the data point of
    # its own condition (distinct z_j): the independent coupling
    zero = torch.zeros(200, dtype=torch.float64)
    pairs = SemidiscreteCoupling(y, zero, conditions=z, beta=1e6).sample(400, generator=gen(4))
    assert torch.equal(z[pairs.index], pairs.cond)
    # beta = 0: the condition is ignored, the pairs are the unconditional ones (same draws of x0)
    free = SemidiscreteCoupling(y, zero, conditions=z, beta=0.0).sample(400, generator=gen(4))
    plain = SemidiscreteCoupling(y, zero).sample(400, generator=gen(4))
    assert torch.equal(free.index, plain.index)
    # the independent coupling carries each data point's own condition
    ind = IndependentCoupling(y, conditions=z).sample(50, generator=gen(5))
    torch.testing.assert_close(ind.cond, z[ind.index])
    noise = ConditionedNoise(z, 0.0)(7, 5, generator=gen(6), device="cpu", dtype=torch.float64)
    assert noise.shape == (7, 5) and bool((noise[:, 3:] == 0).all())


def test_argument_errors(problem):
    y, z = problem
    with pytest.raises(ValueError, match="beta"):
        augmented_keys(y, z, -1.0)
    with pytest.raises(ValueError, match="one row per data point"):
        augmented_keys(y, z[:10], 1.0)
    with pytest.raises(ValueError, match="both"):
        SemidiscreteCoupling(y, torch.zeros(200), conditions=z)
    with pytest.raises(ValueError, match="not both"):
        IndependentCoupling(y, labels=torch.zeros(200), conditions=z)


def test_lowres_and_psnr():
    x = np.arange(2 * 16, dtype=np.float32).reshape(2, 16)  # two 4x4 images
    z = lowres(x, (1, 4, 4), 2)
    assert z.shape == (2, 4)
    np.testing.assert_allclose(
        z[0], [np.mean([0, 1, 4, 5]), np.mean([2, 3, 6, 7]), np.mean([8, 9, 12, 13]), 12.5]
    )
    np.testing.assert_array_equal(upsample(z, (1, 4, 4), 2)[0, :2], [z[0, 0], z[0, 0]])
    a = noisy_lowres(x, (1, 4, 4), 2, 0.5, seed=1)
    np.testing.assert_array_equal(a, noisy_lowres(x, (1, 4, 4), 2, 0.5, seed=1))
    assert not np.allclose(a, z)
    with pytest.raises(ValueError, match="factor"):
        lowres(x, (1, 4, 4), 3)
    # a constant error e gives 10 log10(R^2 / e^2)
    ref = np.zeros((3, 16))
    assert abs(psnr(ref + 0.5, ref, 16.0) - 10 * math.log10(256 / 0.25)) < 1e-9


def test_superres_cli_round_trip(tmp_path, capsys):
    run = tmp_path / "sr"
    base = ["train", "--data", "digits", "--steps", "20", "--batch-size", "64", "--out", str(run), "--quiet"]
    assert main(base + ["--coupling", "semidiscrete", "--superres", "2", "--beta", "5"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["coupling"]["superres"] == {"factor": 2, "noise": 0.1, "beta": 5.0}
    assert info["model"]["config"]["cond_dim"] == 16
    mismatch = load_potential(run / "potential.safetensors").meta["solver"]["condition_mismatch"]
    assert 0 <= mismatch["left"] <= 1 and mismatch["num_samples"] == 1 << 16  # sdfm info shows it too
    assert main(["eval", "--run", str(run), "--steps", "1,2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "euler-2" in out and "upsampled condition" in out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert [r["setting"] for r in metrics["rows"]] == ["euler-1", "euler-2"] and metrics["info"][
        "heldout"
    ] == 359
    assert (run / "eval" / "samples.png").stat().st_size > 0
    s = tmp_path / "s.npy"
    assert main(["sample", "--run", str(run), "--num", "6", "--out", str(s)]) == 0
    assert np.load(s).shape == (6, 64)
    assert main(base[:-3] + ["--out", str(run), "--quiet", "--coupling", "semidiscrete", "--resume"]) == 2
    assert "--superres" in capsys.readouterr().err
    for extra, needle in (
        (["--data", "checkerboard:n=100", "--coupling", "independent", "--superres", "2"], "image data"),
        (
            ["--data", "digits", "--coupling", "minibatch-ot", "--superres", "2"],
            "independent and semidiscrete",
        ),
        (["--data", "digits", "--coupling", "independent", "--superres", "3"], "does not divide"),
        (["--data", "digits", "--coupling", "independent", "--beta", "3"], "only used with --superres"),
    ):
        assert main(["train", "--steps", "2", "--out", str(tmp_path / "x"), "--quiet", *extra]) == 2
        assert needle in capsys.readouterr().err
