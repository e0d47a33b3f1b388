"""sdfm eval / sdfm demo and the evaluation layer: every promised file, held-out data, errors."""

import json

import numpy as np
import pytest
import torch

from sdfm.cli.main import main
from sdfm.evaluation import EvalConfig, evaluate_model
from sdfm.evaluation.compare import BUDGETS, DEMO_METHODS
from sdfm.evaluation.report import FILES

DEMO_FILES = (*FILES, "chi2.png")


class _Shift(torch.nn.Module):
    """v(x, t) = c: the straight flow x1 = x0 + c (exact for every solver)."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.as_tensor(c, dtype=torch.float32))

    def forward(self, x, t, cond=None):
        return self.c.expand_as(x)


def test_evaluate_model_on_an_exact_flow():
    # noise shifted by c against a reference that is N(c, I): every solver is exact, curvature 0,
    # transport cost |c|^2, and the distances equal those of fresh N(c, I) samples
    c = torch.tensor([3.0, -1.0])
    ref = torch.randn(3000, 2, generator=torch.Generator().manual_seed(1)) + c
    res = evaluate_model(
        _Shift(c), ref, config=EvalConfig(steps=(1, 4), adaptive=True, num=1000, path_num=200)
    )
    settings = [r["setting"] for r in res.rows]
    assert settings == ["euler-1", "euler-4", "dopri5"]
    w2 = [r["w2"] for r in res.rows]
    assert max(w2) - min(w2) < 1e-4 and max(w2) < 0.3  # finite-sample W2 of equal laws
    assert res.rows[0]["nfe"] == 1 and res.rows[1]["nfe"] == 4 and res.rows[2]["nfe"] > 4
    assert res.path["curvature"] == pytest.approx(0.0, abs=1e-10)
    assert res.path["transport_cost"] == pytest.approx(10.0, rel=1e-6)
    # a wrong flow is scored worse
    bad = evaluate_model(_Shift(c * 0.5), ref, config=EvalConfig(steps=(1,), num=1000, path_num=10))
    assert bad.rows[0]["w2"] > 1.0 and bad.rows[0]["energy"] > 10 * res.rows[0]["energy"]


class _ClassShift(torch.nn.Module):
    """Conditional flow v(x, t, c) = centers[c]: x1 = x0 + centers[c]."""

    def __init__(self, centers):
        super().__init__()
        self.centers = torch.nn.Parameter(centers)

    def forward(self, x, t, cond=None):
        return self.centers[cond]


def test_conditional_accuracy_and_label_histogram():
    from sdfm.evaluation.evaluate import fit_scorer

    g = torch.Generator().manual_seed(2)
    centers = torch.tensor([[6.0, 0.0], [-6.0, 0.0], [0.0, 6.0]])
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 300)
    x = centers[labels] + torch.randn(1200, 2, generator=g)
    scorer = fit_scorer(x, labels, layout=None, reference=x, ref_labels=labels)
    assert scorer.test_accuracy > 0.98
    torch.testing.assert_close(scorer.class_freq, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    cfg = EvalConfig(steps=(1,), num=600, path_num=20)
    good = evaluate_model(_ClassShift(centers), x, config=cfg, scorer=scorer, num_classes=3)
    row = good.rows[0]
    assert row["accuracy"] > 0.97 and row["label_tv"] < 0.06
    # labels mapped to the wrong clusters: wrong classes, wrong class weights, larger feature distance
    swapped = evaluate_model(_ClassShift(centers[[1, 2, 0]]), x, config=cfg, scorer=scorer, num_classes=3)
    bad = swapped.rows[0]
    assert bad["accuracy"] < 0.05 and bad["label_tv"] > 0.2 and bad["fd_classifier"] > row["fd_classifier"]


def test_eval_config_errors():
    with pytest.raises(ValueError, match="steps"):
        EvalConfig(steps=(0,))
    with pytest.raises(ValueError, match="solver"):
        EvalConfig(solver="dopri8")


def test_demo_tiny_writes_every_promised_file_and_eval_reads_its_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "--data", "gmm:d=3,k=3,n=600", "--budget", "tiny", "--out", str(out), "--quiet"]) == 0
    )
    for name in DEMO_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "classifier.safetensors").is_file()  # gmm has labels: classifier scores
    report = (out / "report.md").read_text()
    for method in DEMO_METHODS:
        assert f"| {method.name} |" in report
        assert (out / "runs" / method.slug / "run.json").is_file()
    for name in DEMO_FILES:
        if name.endswith(".png"):
            assert f"({name})" in report, name
    data = json.loads((out / "metrics.json").read_text())
    rows = data["results"]["SD-FM"]["rows"]
    assert [r["setting"] for r in rows] == ["data", "euler-1", "euler-2", "dopri5"]
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("w2", "energy", "mmd", "fd_classifier", "label_tv"))
    assert data["potential"]["chi2"] > 0 and data["budget"] == "tiny"
    # a second demo into the same folder is refused unless --overwrite
    assert (
        main(["demo", "--data", "gmm:d=3,k=3,n=600", "--budget", "tiny", "--out", str(out), "--quiet"]) == 2
    )
    assert "--overwrite" in capsys.readouterr().err

    # sdfm eval on one of the demo's runs: held-out reference, classifier cached in the run
    run = out / "runs" / "sd-fm"
    assert main(["eval", "--run", str(run), "--steps", "1,3", "--num", "200", "--quiet"]) == 0
    for name in FILES:
        assert (run / "eval" / name).is_file(), name
    assert (run / "eval" / "classifier.safetensors").is_file()
    ev = json.loads((run / "eval" / "metrics.json").read_text())
    res = next(iter(ev["results"].values()))
    assert res["info"]["reference"] == "gmm:d=3,k=3,n=600,split=test" and res["info"]["heldout"]
    assert [r["setting"] for r in res["rows"]] == ["data", "euler-1", "euler-3"]
    assert "euler-3" in capsys.readouterr().out
    # cached classifier is reused (same features -> same classifier Frechet distance)
    assert main(["eval", "--run", str(run), "--steps", "1,3", "--num", "200", "--quiet"]) == 0
    again = json.loads((run / "eval" / "metrics.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(next(iter(again["results"].values()))["rows"]) == strip(res["rows"])


def test_demo_conditional_meanflow(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--data", "gmm:d=3,k=3,n=600", "--budget", "tiny", "--out", str(out), "--quiet"]
    assert main(argv + ["--objective", "meanflow", "--conditional"]) == 0
    report = (out / "report.md").read_text()
    assert "I-MF vs OT-MF vs SD-MF" in report and "chi2.png" not in report  # per-class solves: no one curve
    data = json.loads((out / "metrics.json").read_text())
    assert data["objective"] == "meanflow" and data["conditional"] is True
    for method in ("I-MF", "OT-MF", "SD-MF"):
        rows = data["results"][method]["rows"]
        assert [r["setting"] for r in rows] == ["data", "meanflow-1", "meanflow-2", "dopri5"]
        assert all(0 <= r["accuracy"] <= 1 for r in rows[1:])  # conditional: accuracy given the label
    info = json.loads((out / "runs" / "ot-mf" / "run.json").read_text())
    assert info["coupling"]["conditional"] and info["model"]["config"]["mean_flow"]
    assert (
        main(
            [
                "demo",
                "--data",
                "checkerboard:n=300",
                "--budget",
                "tiny",
                "--conditional",
                "--out",
                str(tmp_path / "c"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "no labels" in capsys.readouterr().err


def test_eval_and_demo_errors(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path / "nope")]) == 2
    assert "not an sdfm run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--run", str(tmp_path), "--steps", "1,x"])
    assert exc.value.code == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path), "--fid-weights", str(tmp_path / "w.pth")]) == 2
    assert "not a file" in capsys.readouterr().err
    assert main(["demo", "--reference", "moons", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert "--reference" in capsys.readouterr().err
    assert not (tmp_path / "d" / "runs").exists()


def test_eval_on_a_file_run_says_nothing_is_held_out(tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "x.npy"),
                "--coupling",
                "independent",
                "--steps",
                "10",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["eval", "--run", str(run), "--steps", "1", "--num", "100", "--quiet"]) == 0
    assert "No held-out data" in (run / "eval" / "report.md").read_text()
    rows = next(iter(json.loads((run / "eval" / "metrics.json").read_text())["results"].values()))["rows"]
    assert rows[0]["setting"] == "data" and rows[0]["w2"] > 0.05  # not the reference compared with itself


def test_budgets_are_sane():
    assert BUDGETS["quick"].steps >= 1000 and BUDGETS["full"].steps > BUDGETS["quick"].steps
    assert BUDGETS["quick"].eval_steps == (1, 2, 4, 8, 16) and BUDGETS["quick"].adaptive
