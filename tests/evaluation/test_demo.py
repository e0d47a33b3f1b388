"""sdfm demo: the default two-part demo with its verdict, user files, resuming an interrupted demo."""

import json

import numpy as np
import pytest
import torch

from sdfm.cli.main import main
from sdfm.evaluation import demo as demo_mod
from sdfm.evaluation.results import EvalResult

TINY = ["--budget", "tiny", "--quiet"]


def _rows(path):
    data = json.loads(path.read_text())
    return {
        m: [{k: v for k, v in r.items() if k != "seconds"} for r in res["rows"]]
        for m, res in data["results"].items()
    }


def test_default_demo_has_numbers_verdict_and_2d_pictures(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# sdfm demo: I-FM vs OT-FM vs SD-FM on gmm:d=16,k=8")
    verdict = report.split("**Verdict**")[1].strip().splitlines()[:3]
    assert verdict[0].startswith("- **1 step** (euler-1)") and verdict[1].startswith(
        "- **2 steps** (euler-2)"
    )
    assert verdict[2].startswith("- **Floor**")
    assert "(checkerboard/samples.png)" in report and (out / "checkerboard" / "samples.png").is_file()
    assert (
        (out / "checkerboard" / "report.md")
        .read_text()
        .startswith("# sdfm demo: I-FM vs OT-FM vs SD-FM on checkerboard")
    )
    assert "1 CPU threads" not in report


def test_verdict_names_the_best_and_ties():
    def res(*energies):
        rows = [{"setting": "data", "energy": 0.01, "w2": 0.1, "nfe": 0}]
        rows += [
            {"setting": f"euler-{k}", "energy": e, "w2": 1.0, "nfe": k}
            for k, e in zip((1, 2), energies, strict=True)
        ]
        return EvalResult(rows=rows, path={}, info={})

    lines = demo_mod.verdict({"I-FM": res(2.0, 0.4), "OT-FM": res(0.05, 0.02), "SD-FM": res(0.01, 0.0199)})
    assert (
        "**SD-FM** is best, energy distance 0.01: 5.0x below OT-FM (0.05), 200.0x below I-FM (2)" in lines[0]
    )
    assert "**SD-FM** and OT-FM are on par (within 5%)" in lines[1]
    assert lines[2] == "- **Floor**: real training data against the same held-out points: energy 0.01."


@pytest.mark.parametrize("with_reference", [False, True])
def test_demo_on_a_user_file(tmp_path, with_reference):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", rng.normal(size=(100, 3)).astype(np.float32))
    argv = ["demo", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "d"), *TINY]
    if with_reference:
        argv += ["--reference", str(tmp_path / "ref.npy")]
    assert main(argv) == 0
    report = (tmp_path / "d" / "report.md").read_text()
    if with_reference:
        assert f"held-out reference `{tmp_path / 'ref.npy'}` (100 points" in report
        assert "(400 training points" in report
    else:  # a fixed 10% of the file held out
        assert "holdout=0.1,split=test` (40 points" in report and "(360 training points" in report


def test_interrupted_demo_resumes_its_finished_methods(tmp_path, monkeypatch, capsys):
    argv = ["--data", "gmm:d=3,k=3,n=600", *TINY]
    ref = tmp_path / "ref"
    assert main(["demo", "--out", str(ref), *argv]) == 0
    out = tmp_path / "demo"
    from sdfm.evaluation import compare as compare_mod

    real_train = compare_mod.train_method
    calls = []

    def stop_at_sd(method, *a, **k):
        calls.append(method.name)
        if method.name == "SD-FM":
            raise KeyboardInterrupt
        return real_train(method, *a, **k)

    monkeypatch.setattr(compare_mod, "train_method", stop_at_sd)
    assert main(["demo", "--out", str(out), *argv]) == 130
    assert calls == ["I-FM", "OT-FM", "SD-FM"] and not (out / "report.md").exists()
    calls.clear()
    monkeypatch.setattr(
        compare_mod,
        "train_method",
        lambda method, *a, **k: (calls.append(method.name), real_train(method, *a, **k))[1],
    )
    assert main(["demo", "--out", str(out), *argv]) == 0  # no --overwrite needed
    assert calls == ["SD-FM"]  # the finished methods were not trained again
    err = capsys.readouterr().err
    assert "resuming the unfinished demo" in err
    assert _rows(out / "metrics.json") == _rows(ref / "metrics.json")  # as if never interrupted
    assert main(["demo", "--out", str(out), *argv]) == 2  # finished: replaced only with --overwrite
    assert main(["demo", "--out", str(out), *argv, "--overwrite"]) == 0


def test_threads_option(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    out = tmp_path / "g.safetensors"
    assert (
        main(["solve", "--data", str(tmp_path / "x.npy"), "--out", str(out), "--quiet", "--threads", "1"])
        == 0
    )
    assert torch.get_num_threads() == 1
    with pytest.raises(SystemExit):
        main(["info", str(out), "--threads", "0"])


def test_demo_bars_are_named_by_method(tmp_path, capsys):
    assert main(["demo", "--data", "moons:n=400", "--budget", "tiny", "--out", str(tmp_path / "d")]) == 0
    cap = capsys.readouterr()
    err = cap.err
    for label in ("I-FM train", "OT-FM train", "SD-FM solve", "SD-FM train", "I-FM eval", "SD-FM eval"):
        assert label in err, label
    assert "part=path curvature" in err  # the evaluation's last part is on the bar too
    assert (cap.err + cap.out).count("report ->") == 1  # printed once
