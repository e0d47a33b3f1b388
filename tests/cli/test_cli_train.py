"""sdfm train / sdfm sample: round trip, resume, one-line errors with exit code 2, nothing corrupted."""

import json

import numpy as np
import pytest

from sdfm.artifacts import load_potential
from sdfm.cli.main import main


def _train(out, *extra):
    return main(
        [
            "train",
            "--data",
            "checkerboard:n=500",
            "--steps",
            "30",
            "--batch-size",
            "64",
            "--out",
            str(out),
            "--quiet",
        ]
        + list(extra)
    )


@pytest.mark.parametrize("coupling", ["independent", "minibatch-ot", "semidiscrete"])
def test_train_sample_round_trip(tmp_path, coupling, capsys):
    run = tmp_path / "run"
    assert _train(run, "--coupling", coupling) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["coupling"]["name"] == coupling and info["data"]["shape"] == [500, 2]
    assert (run / "metrics.jsonl").read_text().count("\n") >= 1
    if coupling == "semidiscrete":
        pf = load_potential(run / "potential.safetensors")
        assert pf.chi2 <= 0.05 and pf.fingerprint == info["data"]["train_fingerprint"]
    out = tmp_path / "s.npy"
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--num",
                "200",
                "--steps",
                "2",
                "--solver",
                "midpoint",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    x = np.load(out)
    assert x.shape == (200, 2) and np.isfinite(x).all()
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "NFE 4" in capsys.readouterr().out
    # samples are in data units (normalisation undone): the checkerboard spans about [-4, 4]
    assert 0.5 < float(np.median(np.abs(x))) < 4.0


def test_resume_continues_and_refuses_mismatch(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--coupling", "independent", "--checkpoint-every", "10") == 0
    assert _train(run, "--coupling", "independent") == 2
    assert "--resume" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--data",
            "checkerboard:n=500",
            "--steps",
            "40",
            "--batch-size",
            "64",
            "--out",
            str(run),
            "--quiet",
            "--coupling",
            "independent",
            "--resume",
        ]
    )
    assert code == 0
    steps = [json.loads(s)["step"] for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 40
    code = main(
        [
            "train",
            "--data",
            "moons:n=500",
            "--out",
            str(run),
            "--coupling",
            "independent",
            "--resume",
            "--quiet",
        ]
    )
    assert code == 2 and "fingerprint" in capsys.readouterr().err


def test_potential_option_checks_data(tmp_path, capsys):
    pot = tmp_path / "p.safetensors"
    assert main(["solve", "--data", "moons:n=300", "--out", str(pot), "--quiet", "--normalize", "none"]) == 0

    def train_with_potential(data: str, out: str, *extra: str) -> int:
        argv = f"train --data {data} --coupling semidiscrete --potential {pot} --quiet --steps 5".split()
        return main([*argv, "--out", str(tmp_path / out), *extra])

    # solved for raw data, but training normalises: refused with a hint
    assert train_with_potential("moons:n=300", "r1") == 2
    assert "--normalize none" in capsys.readouterr().err
    assert train_with_potential("moons:n=300", "r2", "--normalize", "none") == 0
    assert train_with_potential("moons:n=301", "r3", "--normalize", "none") == 2
    assert "shape" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--data", "nope", "--coupling", "independent", "--out", "R"], "unknown dataset"),
        (["train", "--data", "moons", "--coupling", "greedy", "--out", "R"], "coupling"),
        (["train", "--data", "moons", "--coupling", "independent", "--steps", "-3", "--out", "R"], "steps"),
        (["train", "--data", "moons", "--coupling", "independent", "--lr", "nan", "--out", "R"], "lr"),
        (["train", "--data", "moons", "--coupling", "independent", "--model", "unet", "--out", "R"], "unet"),
        (
            ["train", "--data", "moons", "--coupling", "independent", "--potential", "x", "--out", "R"],
            "potential",
        ),
        (["sample", "--run", "missing", "--out", "s.npy"], "not an sdfm run"),
        (["sample", "--run", "R", "--out", "s.txt"], "--out"),
    ],
)
def test_bad_input_exit_2(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "R" / "run.json").exists()


def test_corrupt_run_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--coupling", "independent") == 0
    (run / "run.json").write_text("{not json")
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "s.npy")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "s.npy").exists()


def test_bf16_pairing_flag(tmp_path, capsys):
    assert _train(tmp_path / "a", "--coupling", "semidiscrete", "--pairing-precision", "bf16") == 0
    code = _train(tmp_path / "b", "--coupling", "semidiscrete", "--pairing-precision", "bf16", "--eps", "0.1")
    assert code == 2 and "eps = 0 only" in capsys.readouterr().err


def test_conditional_train_sample_eval(tmp_path, capsys):
    from sdfm.artifacts import load_potential

    run = tmp_path / "cond"
    args = [
        "train",
        "--data",
        "gmm:d=3,k=3,n=600",
        "--coupling",
        "semidiscrete",
        "--conditional",
        "--steps",
        "30",
        "--batch-size",
        "64",
        "--out",
        str(run),
        "--quiet",
    ]
    assert main(args) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["coupling"]["conditional"] and info["model"]["config"]["num_classes"] == 3
    assert info["train"]["label_dropout"] == 0.1
    pf = load_potential(run / "potential.safetensors")
    assert pf.meta["conditional"] and pf.classes is not None and pf.classes.shape == (600,)
    assert set(pf.meta["chi2_per_class"]) == {"0", "1", "2"}
    out = tmp_path / "s.npy"
    assert main(f"sample --run {run} --label 2 --guidance 3 --steps 2 --num 20 --out {out}".split()) == 0
    assert np.load(out).shape == (20, 3) and "NFE 4" in capsys.readouterr().out  # 2 steps x 2 branches
    corrected = ["sample", "--run", str(run), "--label", "1", "--guidance", "2", "--num", "6", "--steps", "4"]
    assert main(corrected + ["--guidance-correction", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert np.load(out).shape == (6, 3) and "NFE 24" in captured.out  # 4 steps x 2 branches x 3 particles
    assert "effective sample size" in captured.err
    assert main(corrected + ["--guidance-correction", "3", "--solver", "dopri5", "--out", str(out)]) == 2
    assert "fixed-step" in capsys.readouterr().err
    assert main(["sample", "--run", str(run), "--label", "3", "--num", "5", "--out", str(out)]) == 2
    assert "--label" in capsys.readouterr().err
    # resuming needs the same flags
    assert main(args[:5] + args[6:] + ["--resume"]) == 2
    assert "--conditional" in capsys.readouterr().err
    # the potential of a conditional run is refused for an unconditional one, and vice versa
    other = [
        "train",
        "--data",
        "gmm:d=3,k=3,n=600",
        "--coupling",
        "semidiscrete",
        "--steps",
        "5",
        "--potential",
        str(run / "potential.safetensors"),
        "--quiet",
    ]
    assert main(other + ["--out", str(tmp_path / "u")]) == 2
    assert "class-conditional" in capsys.readouterr().err


def test_conditional_errors(tmp_path, capsys):
    def train(data, *extra):
        return main(["train", "--data", data, "--steps", "5", "--quiet", *extra])

    def refused(message, data, *extra):
        assert train(data, "--out", str(tmp_path / "x"), *extra) == 2
        assert message in capsys.readouterr().err

    refused("no class labels", "checkerboard:n=200", "--coupling", "independent", "--conditional")
    refused("--label-dropout", "gmm:d=2,n=200", "--coupling", "independent", "--label-dropout", "0.2")
    run = tmp_path / "d"
    assert train("gmm:d=2,n=200", "--coupling", "independent", "--out", str(run)) == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--guidance", "2", "--out", str(tmp_path / "x.npy")]) == 2
    assert "unconditional" in capsys.readouterr().err


def test_conditional_minibatch_ot_pairs_within_classes(tmp_path):
    run = tmp_path / "ot"
    code = main(
        "train --data gmm:d=2,k=3,n=300 --coupling minibatch-ot --conditional --steps 5 --batch-size 32 "
        f"--out {run} --quiet".split()
    )
    assert code == 0
    info = json.loads((run / "run.json").read_text())
    assert info["coupling"]["conditional"] and info["model"]["config"]["num_classes"] == 3


def test_meanflow_train_sample_eval(tmp_path, capsys):
    run = tmp_path / "mf"
    assert _train(run, "--coupling", "semidiscrete", "--objective", "meanflow") == 0
    info = json.loads((run / "run.json").read_text())
    assert info["train"]["objective"] == "meanflow" and info["model"]["config"]["mean_flow"] is True
    out = tmp_path / "s.npy"
    assert main(["sample", "--run", str(run), "--num", "16", "--out", str(out)]) == 0
    assert "meanflow, NFE 1" in capsys.readouterr().out  # the default sampler: one mean-flow jump
    assert np.load(out).shape == (16, 2)
    assert main(["sample", "--run", str(run), "--solver", "euler", "--num", "4", "--out", str(out)]) == 0
    assert "euler, NFE 8" in capsys.readouterr().out  # u(x, t, t) integrated as a velocity field
    assert main(["eval", "--run", str(run), "--steps", "1,2", "--num", "64", "--quiet"]) == 0
    assert "meanflow-1" in capsys.readouterr().out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    rows = next(iter(metrics["results"].values()))["rows"]
    assert [r["setting"] for r in rows][1:] == ["meanflow-1", "meanflow-2"]
    # resuming as a flow run is refused; the meanflow sampler on a flow run is refused
    assert _train(run, "--coupling", "semidiscrete", "--resume") == 2
    assert "--objective meanflow" in capsys.readouterr().err
    flow = tmp_path / "flow"
    assert _train(flow, "--coupling", "independent") == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(flow), "--solver", "meanflow", "--out", str(out)]) == 2
    assert "mean-flow run" in capsys.readouterr().err


def test_step_scales_flag_reaches_the_solver(tmp_path, capsys):
    """--step-scales cell: the run's potential is solved with the cell step scales (its file's
    solver settings say so; without the flag, the solver's default, adaptive); refused for other
    couplings and with a given --potential."""
    run = tmp_path / "a"
    assert _train(run, "--coupling", "semidiscrete", "--step-scales", "cell") == 0
    pf = load_potential(run / "potential.safetensors")
    assert pf.meta["solver"]["preconditioner"] == "cell" and pf.chi2 <= 0.05
    assert _train(tmp_path / "b", "--coupling", "semidiscrete") == 0
    default = load_potential(tmp_path / "b" / "potential.safetensors")
    assert default.meta["solver"]["preconditioner"] == "adaptive"
    assert _train(tmp_path / "c", "--coupling", "independent", "--step-scales", "cell") == 2
    assert "--step-scales: only used with --coupling semidiscrete" in capsys.readouterr().err
    given = ["--potential", str(tmp_path / "b" / "potential.safetensors")]
    assert _train(tmp_path / "d", "--coupling", "semidiscrete", *given, "--step-scales", "cell") == 2
    assert "--step-scales: only used when the run solves its potential" in capsys.readouterr().err
