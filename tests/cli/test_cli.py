"""sdfm solve / sdfm info from the command line: outputs, exit codes, nothing written on failure."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sdfm.artifacts import load_potential
from sdfm.cli.main import main


def test_solve_builtin_writes_potential(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    code = main(["solve", "--data", "moons:n=300", "--out", str(out), "--quiet", "--seed", "1"])
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert "chi2" in printed and "samples" in printed
    pf = load_potential(out)
    assert pf.shape == (300, 2) and pf.meta["data"] == "moons:n=300" and pf.meta["seed"] == 1
    assert pf.chi2 <= 0.05
    assert "worst smooth mass error" in printed
    assert {e["family"] for e in pf.meta["smooth_errors"]} >= {"radius", "pc1", "pc2"}
    assert main(["info", str(out)]) == 0
    assert '"fingerprint"' in capsys.readouterr().out


def test_solve_pruning_option(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    args = ["solve", "--data", "checkerboard:n=2000", "--out", str(out), "--quiet", "--tol", "0.2"]
    assert main(args + ["--pruning", "on"]) == 0
    printed = capsys.readouterr().out
    assert "pruned search:" in printed and "% of the targets" in printed
    used = load_potential(out).meta["solver"]["pruning_used"]
    assert used["mode"] == "on" and used["pruned_calls"] > 0 and used["dense_calls"] == 0
    assert main(args + ["--pruning", "off"]) == 0  # the dense scan: nothing printed about pruning
    assert "pruned search:" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(args + ["--pruning", "sometimes"])
    assert exc.value.code == 2 and "--pruning" in capsys.readouterr().err


def test_solve_step_scales_option(tmp_path, capsys):
    # 6 points at (20, 20) beside 294 normal ones: the default (adaptive) scales solve the far cluster
    # in 300 steps, --step-scales cell leaves it unsolved (BENCHMARKS.md sections 21, 24); the file
    # records the choice
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.standard_normal((294, 2)), 20 + 0.01 * rng.standard_normal((6, 2))])
    data = tmp_path / "far.npy"
    np.save(data, y.astype(np.float32))
    args = ["solve", "--data", str(data), "--quiet", "--steps", "300", "--normalize", "none"]
    assert main(args + ["--out", str(tmp_path / "a.safetensors")]) == 0
    adaptive = load_potential(tmp_path / "a.safetensors")
    assert adaptive.meta["solver"]["preconditioner"] == "adaptive" and adaptive.meta["converged"]
    assert main(args + ["--out", str(tmp_path / "c.safetensors"), "--step-scales", "cell"]) == 0
    cell = load_potential(tmp_path / "c.safetensors")
    assert cell.meta["solver"]["preconditioner"] == "cell" and not cell.meta["converged"]
    with pytest.raises(SystemExit) as exc:
        main(args + ["--out", str(tmp_path / "x.safetensors"), "--step-scales", "global"])
    assert exc.value.code == 2 and "--step-scales" in capsys.readouterr().err


def test_solve_warm_start_option(tmp_path, capsys):
    # Cauchy atoms (extent 1,058): from the default start (radial, chosen by the probe) the solve
    # converges within 300 steps (its farthest atoms reached by the empty rise: BENCHMARKS.md section
    # 26); from --warm-start zero chi2 is still above 0.1. The file records the start used
    u = np.random.default_rng(0).uniform(size=(300, 2))
    np.save(tmp_path / "cauchy.npy", np.tan(np.pi * (u - 0.5)).astype(np.float32))
    args = [
        "solve",
        "--data",
        str(tmp_path / "cauchy.npy"),
        "--quiet",
        "--steps",
        "300",
        "--normalize",
        "none",
    ]
    assert main(args + ["--out", str(tmp_path / "b.safetensors")]) == 0
    best = load_potential(tmp_path / "b.safetensors")
    assert best.meta["solver"]["warm_start_used"] == "radial" and best.meta["chi2"] < 0.05
    assert best.meta["converged"]
    assert main(args + ["--out", str(tmp_path / "z.safetensors"), "--warm-start", "zero"]) == 0
    zero = load_potential(tmp_path / "z.safetensors")
    assert zero.meta["solver"]["warm_start"] == "zero" and zero.meta["chi2"] > 0.1
    with pytest.raises(SystemExit) as exc:
        main(args + ["--out", str(tmp_path / "x.safetensors"), "--warm-start", "gaussian"])
    assert exc.value.code == 2 and "--warm-start" in capsys.readouterr().err


def test_solve_reports_the_regime(tmp_path, capsys):
    """Large high-dimensional targets skip the annealing; sdfm solve says so and the file records it."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    np.save(tmp_path / "y.npy", (rng.standard_normal((12_000, 16)) @ q[:16]).astype(np.float32))
    out = tmp_path / "g.safetensors"
    args = [
        "solve",
        "--data",
        str(tmp_path / "y.npy"),
        "--out",
        str(out),
        "--quiet",
        "--tol",
        "0",
        "--steps",
        "2",
    ]
    assert main(args) == 0
    assert "(TwoNN): annealing skipped (large, high-dimensional atoms)" in capsys.readouterr().out
    meta = load_potential(out).meta["solver"]
    assert meta["annealed"] is False and 12 < meta["intrinsic_dimension"] < 17
    assert meta["noise_level_used"] == 0.7


def test_solve_1d_file_is_exact(tmp_path, capsys):
    """The issue's new-user case: 64 sorted 1-D points; solved by quantiles, no noise drawn."""
    z = np.random.default_rng(0).standard_normal(64)
    np.save(tmp_path / "y.npy", np.sort(1.7 * z + 0.4)[:, None].astype(np.float32))
    out = tmp_path / "g.safetensors"
    assert (
        main(["solve", "--data", str(tmp_path / "y.npy"), "--out", str(out), "--quiet", "--tol", "0.01"]) == 0
    )
    assert "0 samples" in capsys.readouterr().out
    pf = load_potential(out)
    assert pf.meta["solver"]["method"] == "exact_1d" and pf.chi2 < 1e-6


def test_solve_file_and_eps(tmp_path):
    data = np.random.default_rng(0).uniform(0, 255, size=(200, 2, 2)).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "p.safetensors"
    code = main(
        [
            "solve",
            "--data",
            str(tmp_path / "d.npy"),
            "--out",
            str(out),
            "--quiet",
            "--eps",
            "0.05",
            "--batch-size",
            "512",
            "--steps",
            "3000",
            "--tol",
            "0.05",
            "--normalize",
            "none",
        ]
    )
    assert code == 0
    pf = load_potential(out, targets=data.reshape(200, 4))
    assert pf.eps > 0 and pf.meta["eps_relative"] == 0.05


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nope"], "unknown dataset"),
        (["--data", "{missing}"], "no such file"),
        (["--data", "{nan}"], "NaN"),
        (["--data", "{empty}"], "empty"),
        (["--data", "moons:n=50", "--eps", "-1"], "--eps"),
        (["--data", "moons:n=50", "--eps", "abc"], "--eps"),
        (["--data", "moons:n=50", "--steps", "0"], "--steps"),
        (["--data", "moons:n=50", "--device", "cuda:7"], "device"),
        (["--data", "{junk}"], "cannot read"),
    ],
)
def test_bad_input_exit_code_2_nothing_written(tmp_path, args, message):
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]] * 4))
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    paths = {
        "missing": str(tmp_path / "missing.npy"),
        "nan": str(tmp_path / "nan.npy"),
        "empty": str(tmp_path / "empty.npy"),
        "junk": str(tmp_path / "junk.pt"),
    }
    args = [a.format(**paths) for a in args]
    out = tmp_path / "p.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "sdfm.cli.main", "solve", *args, "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_console_script_installed():
    proc = subprocess.run(["sdfm", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "solve" in proc.stdout


def test_solve_weights_option(tmp_path, capsys):
    # weights over four decades (k-means centres weighted by cluster sizes are the common case): the
    # file keeps them, and the cells' masses follow them by a brute-force float64 count
    rng = np.random.default_rng(0)
    y = rng.normal(size=(400, 2)).astype(np.float32)
    w = np.exp(rng.uniform(np.log(1e-4), 0.0, size=400))
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "w.npy", w)
    out = tmp_path / "p.safetensors"
    args = ["solve", "--data", str(tmp_path / "y.npy"), "--quiet", "--normalize", "none", "--out", str(out)]
    assert main(args + ["--weights", str(tmp_path / "w.npy")]) == 0
    assert "weights from" in capsys.readouterr().err
    pf = load_potential(out)
    b = w / w.sum()
    np.testing.assert_allclose(pf.weights.numpy(), b, rtol=1e-12)
    assert pf.meta["converged"]
    x = np.random.default_rng(1).normal(size=(200_000, 2))
    y64 = y.astype(np.float64)
    cells = np.zeros(400)
    for part in np.array_split(x, 10):
        cells += np.bincount(
            np.argmax(part @ y64.T + pf.potential.numpy() - 0.5 * (y64**2).sum(1), 1), minlength=400
        )
    p = cells / x.shape[0]
    assert ((x.shape[0] * p * p - p) / ((x.shape[0] - 1) * b)).sum() - 1.0 < 0.08  # unbiased chi2
    assert main(["info", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)["weights"]
    assert shown["min_times_n"] == pytest.approx(b.min() * 400) and shown["max_times_n"] == pytest.approx(
        b.max() * 400
    )
    for bad, message in (
        (-w, "must be > 0"),
        (w[:-1], "[400]"),
        (np.ones((400, 2)), "one weight per data point"),
    ):
        np.save(tmp_path / "bad.npy", bad)
        assert main(args + ["--weights", str(tmp_path / "bad.npy")]) == 2
        err = capsys.readouterr().err
        assert "--weights" in err and message in err
    assert main(args + ["--weights", str(tmp_path / "missing.npy")]) == 2
    assert "--weights: no such file" in capsys.readouterr().err
