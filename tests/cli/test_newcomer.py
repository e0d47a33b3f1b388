"""Small things a newcomer meets first: --version, help texts, --overwrite, eval --out, the licence,
one name for the transport cost, one picture per kind of data."""

import json
from pathlib import Path

import numpy as np
import pytest

from sdfm.cli.main import build_parser, main
from sdfm.data import DATASETS

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--steps", "4", "--batch-size", "32", "--width", "16", "--depth", "1", "--quiet"]


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_version(capsys):
    import sdfm

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"sdfm {sdfm.__version__}"


def test_help_texts(capsys):
    solve = _help(capsys, "solve")
    assert all(name in solve for name in DATASETS)  # every built-in set, mnist1d included
    sample = _help(capsys, "sample")
    assert "undo the training normalisation" in sample
    train = _help(capsys, "train")
    assert "logit-normal(0, 1)" in train and "Laguerre cell" in train and "--overwrite" in train
    for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions:
        assert action.help, f"sdfm train {action.option_strings} has no help"


def test_licence_file_matches_pyproject():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_no_pointer_to_files_outside_the_repository():
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("src/sdfm/**/*.py")]:
        assert "PAPER.md" not in path.read_text(), path


def test_train_overwrite_replaces_the_run_and_keeps_other_files(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", "moons:n=200", "--coupling", "independent", "--out", str(run), *TINY]
    assert main(args) == 0
    (run / "notes.txt").write_text("mine")
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--seed", "3"]) == 0
    assert json.loads((run / "run.json").read_text())["seed"] == 3
    assert (run / "notes.txt").read_text() == "mine"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # not appended to the old log
    assert main([*args, "--overwrite", "--resume"]) == 2


def test_metrics_transport_cost_is_the_eval_quantity(tmp_path):
    """metrics.jsonl's transport_cost is E|x1 - x0|^2 (not divided by d), as in eval's report."""
    run = tmp_path / "run"
    data = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32) * 3
    np.save(tmp_path / "x.npy", data)
    args = ["train", "--data", str(tmp_path / "x.npy"), "--coupling", "independent", "--out", str(run)]
    assert main([*args, *TINY, "--steps", "50", "--batch-size", "256"]) == 0
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "cost" not in rec
    # independent pairs of N(0, I) and the normalised data (unit average variance): E|x1 - x0|^2 ~ 2 d
    assert rec["transport_cost"] == pytest.approx(2 * 8, rel=0.1)


def test_eval_out_folder(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "elsewhere"
    args = ["train", "--data", "moons:n=200", "--coupling", "independent", "--out", str(run), *TINY]
    assert main(args) == 0
    assert main(["eval", "--run", str(run), "--steps", "1", "--num", "64", "--out", str(out), "--quiet"]) == 0
    assert (out / "report.md").is_file() and (out / "metrics.json").is_file()
    assert not (run / "eval" / "report.md").exists()


@pytest.mark.parametrize("dim", [1, 2, 10])
def test_sample_picture_per_kind_of_data(tmp_path, dim):
    """1-D: histogram; 2-D: scatter; more: scatter on the top two principal directions (as eval)."""
    from sdfm.evaluation.plots import plot_samples

    x = np.random.default_rng(0).standard_normal((300, dim))
    png = plot_samples(x, tmp_path / "s.png", reference=x[::-1] + 1, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
