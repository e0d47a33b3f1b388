"""sdfm train --config FILE.toml (flags override it; every run writes its resolved config.toml),
--log tensorboard, and the one-line message of a missing extra."""

import importlib
import importlib.util

import pytest
from safetensors.torch import load_file

from sdfm.cli.main import main


def _weights(run):
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    return load_file(str(ckpts[-1] / "model.safetensors"))


def test_config_file_flags_override_and_repeat(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'data = "moons:n=300"\ncoupling = "semidiscrete"\nsteps = 30\nbatch-size = 32\nwidth = 16\n'
        "depth = 1\nseed = 4\n"
    )
    first = tmp_path / "r1"
    assert main(["train", "--config", str(cfg), "--out", str(first), "--steps", "12", "--quiet"]) == 0
    resolved = (first / "config.toml").read_text()
    assert "steps = 12" in resolved and "seed = 4" in resolved and 'coupling = "semidiscrete"' in resolved
    assert "out =" not in resolved
    again = tmp_path / "r2"
    assert main(["train", "--config", str(first / "config.toml"), "--out", str(again), "--quiet"]) == 0
    a, b = _weights(first), _weights(again)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # the same run, bit for bit
    assert (again / "config.toml").read_text() == resolved


@pytest.mark.parametrize(
    "text, needle",
    [
        ("stepz = 3", "unknown option 'stepz'"),
        ("steps = 0", "steps = 0"),
        ('coupling = "greedy"', "is not one of"),
        ('conditional = "yes"', "must be true or false"),
        ("steps = [1, 2]", "must be a number or a string"),
        ("steps = ", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    code = main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--data", "moons"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0] and "--config" in err[0], err


def test_required_options_named(tmp_path, capsys):
    assert main(["train", "--data", "moons", "--out", str(tmp_path / "r")]) == 2
    assert "--coupling: required" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
@pytest.mark.parametrize("data, kind", [("moons:n=300", "figure"), ("digits", "image")])
def test_tensorboard_log(tmp_path, data, kind):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    argv = ["train", "--data", data, "--coupling", "independent", "--out", str(run), "--quiet"]
    argv += ["--steps", "20", "--batch-size", "32", "--width", "16", "--depth", "1", "--log", "tensorboard"]
    assert main(argv + ["--checkpoint-every", "10"]) == 0
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [20] and (run / "metrics.jsonl").is_file()
    assert {"train/transport_cost", "speed/pairs_per_s", "speed/pairing_fraction"} <= set(
        acc.Tags()["scalars"]
    )
    assert [e.step for e in acc.Images("samples")] == [10, 20]  # one grid per checkpoint (figures too)


def test_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    real = importlib.import_module

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ModuleNotFoundError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_tensorboard)
    argv = ["train", "--data", "moons:n=200", "--coupling", "independent", "--out", str(tmp_path / "r")]
    assert main(argv + ["--steps", "2", "--quiet", "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("needs the optional package 'tensorboard': pip install 'sdfm[tensorboard]'")


def test_cli_extra_missing_fails_before_work_and_sample_still_writes(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    argv = ["train", "--data", "moons:n=200", "--coupling", "independent", "--out", str(run)]
    assert main(argv + ["--steps", "2", "--quiet"]) == 0
    real = importlib.import_module

    def no_plots_no_pot(name, *a, **k):
        if name.split(".")[0] in ("matplotlib", "ot"):
            raise ModuleNotFoundError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_plots_no_pot)
    assert main(["demo", "--out", str(tmp_path / "d"), "--budget", "tiny", "--quiet"]) == 2
    assert "pip install 'sdfm[cli]'" in capsys.readouterr().err and not (tmp_path / "d" / "runs").exists()
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "s.npy"), "--num", "10"]) == 0
    assert (tmp_path / "s.npy").is_file() and "no picture" in capsys.readouterr().out


def test_the_core_imports_no_extra():
    """`import sdfm` and the pairs API load none of the cli extra's packages."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from sdfm import SemidiscretePairs; "
        "p = SemidiscretePairs.fit(torch.randn(200, 3)); p(4); "
        "from sdfm.train import fit, RunSpec; "
        "extra = ('matplotlib', 'sklearn', 'ot', 'PIL', 'mnist1d', 'tensorboard'); "
        "bad = [m for m in extra if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
