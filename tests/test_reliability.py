"""Reliability: what happens when things go wrong (docs/RELIABILITY.md lists each case and its test).

In-process cases here; the fault injection with real processes (SIGKILL, SIGINT / SIGTERM, two
processes on one folder) is in tests/test_faults.py.
"""

import json
import math
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sdfm.artifacts import load_potential, save_potential
from sdfm.artifacts.checksum import checksum
from sdfm.cli.main import main
from sdfm.data.normalize import Normalization
from sdfm.train import RunLock, load_checkpoint, load_run, read_run, save_checkpoint
from sdfm.transport import SemidiscreteSolver, relative_eps_scale
from tests.conftest import gen

TRAIN = ["--steps", "40", "--batch-size", "32", "--width", "16", "--depth", "1", "--quiet"]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32))
    return path


def _train(data, out, *extra):
    return main(
        ["train", "--data", str(data), "--coupling", "independent", "--out", str(out), *TRAIN, *extra]
    )


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def _weights(run) -> dict:
    return load_file(str(run / "checkpoints" / "step_00000040" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- runs: interrupted before the first checkpoint, locks, divergence --------------------------------


def test_run_killed_before_its_first_checkpoint_resumes(tmp_path, data, capsys):
    """Defect 1: run.json written, no checkpoint yet (a kill or a full disk): --resume starts it again
    and ends bit-identical to an uninterrupted run; a plain rerun says so."""
    assert _train(data, tmp_path / "ref", "--checkpoint-every", "10") == 0
    run = tmp_path / "run"
    assert _train(data, run, "--checkpoint-every", "10") == 0
    shutil.rmtree(run / "checkpoints")  # what a kill between run.json and the first checkpoint leaves
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    assert _train(data, run) == 2
    assert "stopped before its first checkpoint; pass --resume" in _err(capsys)
    assert _train(data, run, "--resume", "--checkpoint-every", "10") == 0
    assert _same(_weights(run), _weights(tmp_path / "ref"))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [40]


def test_lock_refuses_a_second_writer_and_is_released(tmp_path, data, capsys):
    """Defect 2: a run folder in use is refused with the holder's pid; the lock dies with its holder."""
    run = tmp_path / "run"
    with RunLock(run):
        assert _train(data, run) == 2
        assert f"in use by another sdfm process (pid {os.getpid()})" in _err(capsys)
        assert main(["demo", "--out", str(run), "--budget", "tiny", "--quiet"]) == 2
        assert "in use by another sdfm process" in _err(capsys)
        with pytest.raises(ValueError, match="in use"):
            RunLock(run).acquire()
    assert _train(data, run) == 0  # released on exit


def test_divergence_stops_training_and_sampling(tmp_path, data, capsys):
    """Defect 3: lr 1e30 stops with the step named and writes no NaN checkpoint; NaN weights give an
    error from sample and eval, not NaN files."""
    run = tmp_path / "run"
    assert _train(data, run, "--lr", "1e30", "--warmup", "0", "--checkpoint-every", "10") == 2
    message = _err(capsys)
    assert "loss became NaN or Inf at step" in message and "lower the learning rate" in message
    step = int(message.split("at step ")[1].split()[0])
    for folder in (run / "checkpoints").glob("step_*"):
        weights = load_file(str(folder / "model.safetensors"))
        assert int(folder.name[5:]) < step and all(torch.isfinite(v).all() for v in weights.values())
    # a run whose weights are NaN (written by something else): sample and eval refuse, no file written
    good = tmp_path / "good"
    assert _train(data, good) == 0
    ckpt = load_checkpoint(good / "checkpoints" / "step_00000040")
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ckpt.model.items()}
    ema = {k: v.clone() for k, v in nan.items()}
    save_checkpoint(good / "checkpoints", 40, model=nan, ema=ema, state=ckpt.state, meta=ckpt.meta)
    out = tmp_path / "s.npy"
    assert main(["sample", "--run", str(good), "--out", str(out), "--num", "8"]) == 2
    assert "NaN or Inf at step 1" in _err(capsys) and not out.exists()
    assert main(["eval", "--run", str(good), "--num", "64", "--steps", "1", "--quiet"]) == 2
    assert "NaN or Inf" in _err(capsys)


# ---- numbers: normalisation, relative eps ----------------------------------------------------------


@pytest.mark.parametrize(("offset", "std"), [(1e6, 1e-3), (1e8, 1.0), (0.0, 1e-6)])
def test_normalisation_is_centred(offset, std):
    """Defect 4: E[x^2] - mean^2 cancelled (offset 1e6, std 1e-3 gave scale 0.0366)."""
    x = offset + std * np.random.default_rng(0).normal(size=(5000, 3))
    norm = Normalization.fit(x)
    assert norm.scale == pytest.approx(np.sqrt(x.var(0).mean()), rel=1e-6)
    assert abs(norm.apply(x).std() - 1) < 1e-3


def test_relative_eps_and_coupling_do_not_depend_on_the_offset():
    """Defect 5: the relative eps of offset-1e6 data was 1e5x too large (an independent coupling)."""
    y = torch.randn(200, 3, generator=gen(0), dtype=torch.float64)
    assert relative_eps_scale(y + 1e6) == pytest.approx(relative_eps_scale(y), rel=1e-6)
    res = SemidiscreteSolver(eps=0.1, tol=0.05).solve(y + 1e6, generator=gen(1))
    near = SemidiscreteSolver(eps=0.1, tol=0.05).solve(y, generator=gen(1))
    assert res.eps == pytest.approx(near.eps, rel=1e-6) and res.eps < 1.0
    assert res.converged


def test_normalization_from_dict_refuses_bad_values():
    good = {"mode": "standard", "shift": [0.0, 1.0], "scale": 2.0}
    assert Normalization.from_dict(good, dim=2).scale == 2.0
    for bad in (
        {**good, "scale": float("nan")},
        {**good, "scale": 0},
        {**good, "mode": "x"},
        {"mode": "none"},
    ):
        with pytest.raises(ValueError, match="normalization"):
            Normalization.from_dict(bad, dim=2)
    with pytest.raises(ValueError, match="shape"):
        Normalization.from_dict(good, dim=3)


# ---- the file system ---------------------------------------------------------------------------------


def test_unwritable_outputs_are_refused_before_work(tmp_path, data, capsys):
    """Defect 6: an --out that cannot be written is found before the solve, with its path (exit 2)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "g.safetensors"
    assert main(["solve", "--data", str(data), "--out", str(out), "--quiet"]) == 2
    assert f"--out: cannot write to {blocker / 'sub'}" in _err(capsys)
    assert _train(data, blocker) == 2 and "exists and is not a folder" in _err(capsys)
    run = tmp_path / "run"
    assert _train(data, run) == 0
    folder = tmp_path / "s.npy"
    folder.mkdir()
    assert main(["sample", "--run", str(run), "--out", str(folder)]) == 2
    assert "is a folder" in _err(capsys)


def test_disk_full_gives_one_line_and_keeps_the_previous_checkpoint(tmp_path, data, capsys, monkeypatch):
    """A full disk at a checkpoint: one line naming the path, exit 1, the previous checkpoint intact
    and the run resumable to the same weights."""
    assert _train(data, tmp_path / "ref", "--checkpoint-every", "10") == 0
    run = tmp_path / "run"
    monkeypatch.setenv("SDFM_FAULT", "checkpoint.written@30:enospc")
    assert _train(data, run, "--checkpoint-every", "10") == 1
    line = _err(capsys)
    assert "No space left on device" in line and ".tmp-step_00000030" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step_00000010",
        "step_00000020",
    ]
    monkeypatch.delenv("SDFM_FAULT")
    assert load_run(run).step == 20
    assert _train(data, run, "--resume", "--checkpoint-every", "10") == 0
    assert _same(_weights(run), _weights(tmp_path / "ref"))


def test_outputs_respect_the_umask(tmp_path, data):
    """Defect 11: files were created 0600 (temporary-file mode) whatever the umask."""
    old = os.umask(0o022)
    try:
        g = tmp_path / "g.safetensors"
        assert main(["solve", "--data", str(data), "--out", str(g), "--quiet"]) == 0
        run = tmp_path / "run"
        assert _train(data, run) == 0
        for path in (g, run / "run.json", run / "checkpoints" / "latest"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    finally:
        os.umask(old)


def test_run_finds_its_data_from_anywhere(tmp_path, monkeypatch, capsys):
    """Defect 9: run.json stored the data path as given; eval from another folder failed."""
    work = tmp_path / "work"
    work.mkdir()
    np.save(work / "small.npy", np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32))
    monkeypatch.chdir(work)
    assert _train("small.npy", "run") == 0
    info = json.loads((work / "run" / "run.json").read_text())
    assert info["data"]["path"] == str(work / "small.npy") and info["data"]["path_from_run"] == "../small.npy"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert read_run(work / "run")["data"]["spec"] == str(work / "small.npy")
    args = ["eval", "--run", str(work / "run"), "--num", "64", "--steps", "1", "--quiet"]
    args += ["--reference", str(work / "small.npy")]
    assert main(args) == 0
    moved = tmp_path / "moved"
    shutil.move(work, moved)  # run and data move together
    assert read_run(moved / "run")["data"]["spec"] == str(moved / "run" / ".." / "small.npy")


# ---- hostile and corrupt files ---------------------------------------------------------------------


def _potential(tmp_path, n=50, d=2, **kw):
    y = torch.randn(n, d, generator=gen(0))
    res = SemidiscreteSolver(tol=0.2).solve(y, generator=gen(1))
    path = tmp_path / "g.safetensors"
    save_potential(path, res, targets=y, **kw)
    return path


def _rewrite(path, tensors=None, meta=None, checksum=False):
    """Rewrites a potential file with changed tensors / metadata (and a fresh checksum if asked)."""
    from safetensors import safe_open

    from sdfm.artifacts.checksum import checksum as digest

    with safe_open(str(path), framework="pt") as fh:
        old_meta = json.loads(fh.metadata()["sdfm"])
        old = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors = {**old, **(tensors or {})}
    if callable(meta):
        text = meta(old_meta)
    else:
        new = {**old_meta, **(meta or {})}
        if checksum:
            new["checksum"] = digest(tensors, new)
        text = json.dumps(new)
    save_file(tensors, str(path), metadata={"sdfm": text})


@pytest.mark.parametrize(
    "case",
    ["list", "deep", "negative_groups", "huge_groups", "flip_g", "flip_meta", "n_float", "nan_weights"],
)
def test_hostile_potential_files_are_refused(tmp_path, case):
    """Defect 7 and 12: metadata of the wrong type, absurd nesting, group ids out of range (2^45 once
    tried to allocate 281 TB), a flipped bit in g or in the metadata."""
    path = _potential(tmp_path)
    n = 50
    if case == "list":
        _rewrite(path, meta=lambda m: json.dumps([m]))
    elif case == "deep":
        _rewrite(path, meta=lambda m: "[" * 100_000 + "]" * 100_000)
    elif case == "negative_groups":
        _rewrite(path, tensors={"groups": -torch.ones(n, dtype=torch.int64)}, checksum=True)
    elif case == "huge_groups":
        _rewrite(path, tensors={"groups": torch.full((n,), 2**45, dtype=torch.int64)}, checksum=True)
    elif case == "flip_g":
        g = load_potential(path).potential.clone()
        g[3] = float.fromhex(g[3].item().hex()[:-1] + "1") if g[3] != 0 else 1e-300
        _rewrite(path, tensors={"g": g})
    elif case == "flip_meta":
        _rewrite(path, meta={"data": "other"})
    elif case == "n_float":
        _rewrite(path, meta={"num_targets": 50.5}, checksum=True)
    elif case == "nan_weights":
        _rewrite(
            path, tensors={"weights": torch.full((n,), float("nan"), dtype=torch.float64)}, checksum=True
        )
    with pytest.raises(ValueError, match=str(path.name)):
        load_potential(path)


def test_old_potential_files_without_checksum_still_load(tmp_path):
    path = _potential(tmp_path)
    old = {"format_version": 1}  # (version 2 files must have one: a renamed key is refused)
    _rewrite(path, meta=lambda m: json.dumps({**{k: v for k, v in m.items() if k != "checksum"}, **old}))
    assert load_potential(path).shape == (50, 2)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda info: [info], "expected dict"),
        (lambda info: {**info, "model": {"name": "mlp", "config": {"dim": 2, "hidden": 10**7}}}, "hidden"),
        (lambda info: {**info, "model": {"name": "mlp", "config": {"dim": 2, "depth": 10**9}}}, "depth"),
        (lambda info: {**info, "data": {**info["data"], "shape": [300, 10**12]}}, r"shape\[1\]"),
        (lambda info: {**info, "normalization": {**info["normalization"], "scale": float("nan")}}, "scale"),
        (lambda info: {**info, "seed": "0"}, "seed"),
    ],
)
def test_hostile_run_json_is_refused(tmp_path, data, capsys, edit, match):
    """Defect 7: run.json of the wrong shape, model sizes that would hang or allocate terabytes, a NaN
    normalisation scale: refused with a reason naming the file, before anything is built."""
    run = tmp_path / "run"
    assert _train(data, run) == 0
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(edit(info)))
    with pytest.raises(ValueError, match=match):
        load_run(run)
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "s.npy")]) == 2
    assert "run.json" in _err(capsys)


def test_checkpoints_are_confined_cross_checked_and_fall_back(tmp_path, data, capsys):
    """Defect 8: ``latest`` leading out of the folder, an edited step, a corrupt newest checkpoint,
    leftovers of killed writers."""
    other = tmp_path / "other"
    run = tmp_path / "run"
    assert _train(data, other, "--checkpoint-every", "20") == 0
    assert _train(data, run, "--checkpoint-every", "10") == 0
    ckpts = run / "checkpoints"
    (ckpts / "latest").write_text("../../other/checkpoints/step_00000040\n")
    assert load_run(run).checkpoint == ckpts / "step_00000040"  # the path is ignored
    (ckpts / "latest").write_text("step_00000040\n")
    state_json = ckpts / "step_00000040" / "state.json"
    state = json.loads(state_json.read_text())
    state_json.write_text(json.dumps({**state, "step": 20}))
    loaded = load_run(run)  # the edited newest is refused: the older one is used, and said so
    assert loaded.step == 30 and "does not match its checksum" in capsys.readouterr().err
    edited = {k: v for k, v in state.items() if k != "checksum"} | {"step": 20}
    state_json.write_text(json.dumps({**edited, "checksum": checksum({}, edited)}))  # a careful edit
    assert load_run(run).step == 30 and "inconsistent: state.json says step 20" in capsys.readouterr().err
    (ckpts / "step_00000030" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        load_run(run)
    shutil.rmtree(ckpts)
    (ckpts).symlink_to(other / "checkpoints")
    with pytest.raises(ValueError, match="symlink"):
        load_run(run)
    # leftovers of a killed writer are removed by the next writer (which holds the lock)
    ckpts.unlink()
    shutil.copytree(other / "checkpoints", ckpts)
    (ckpts / ".tmp-step_00000050-99999").mkdir()
    (ckpts / ".latest.abc.tmp").write_text("x")
    assert _train(data, run, "--resume", "--steps", "50") == 0
    assert not list(ckpts.glob(".tmp-*")) and not list(ckpts.glob(".latest.*"))


def test_interrupt_message_and_index_check(tmp_path, data, capsys, monkeypatch):
    """Defect 12: Ctrl-C said "nothing written" although checkpoints existed; --check 1 gave ± nan."""
    import sdfm.train.recipe as recipe

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "_fit_locked", interrupted)
    assert _train(data, tmp_path / "run") == 130
    assert "no partial file was left" in _err(capsys)
    monkeypatch.undo()
    g = tmp_path / "g.safetensors"
    assert main(["solve", "--data", str(data), "--out", str(g), "--quiet"]) == 0
    args = ["index", "--data", str(data), "--potential", str(g), "--out", str(tmp_path / "i.safetensors")]
    assert main([*args, "--check", "1"]) == 2
    assert "--check" in _err(capsys)


def test_tiny_demo_solve_is_repeatable():
    """Defect 10: the tiny budget's solve was capped by seconds (chi2 4.14 and 11.52 for one seed)."""
    from sdfm.evaluation.compare import BUDGETS, prepare, solve_potential

    prep = prepare("checkerboard")
    a = solve_potential(prep, eps=0.0, seed=0, budget=BUDGETS["tiny"], device="cpu")
    b = solve_potential(prep, eps=0.0, seed=0, budget=BUDGETS["tiny"], device="cpu")
    assert a.steps == b.steps == BUDGETS["tiny"].solver_steps
    assert torch.equal(a.potential, b.potential) and a.chi2 == b.chi2


def test_metric_plot_with_non_positive_values(tmp_path):
    """Defect 10: a log-scaled plot of an energy distance <= 0 crashed the demo after training."""
    from sdfm.evaluation.plots import plot_metric_curves

    rows = {"I-FM": [{"setting": "euler", "steps": 1, "nfe": 1, "energy": -0.01}]}
    assert plot_metric_curves(rows, tmp_path / "m.png", metrics={"energy": ("energy", True)}).exists()


def test_range_checks():
    from sdfm.checks import check_float, check_int

    assert check_int("k", 3, low=1, high=4) == 3 and check_int("k", None, none=True) is None
    for bad in (True, 2.0, "2", 0, 5):
        with pytest.raises(ValueError, match="k: expected an integer"):
            check_int("k", bad, low=1, high=4)
    assert check_float("x", 1, low=0, low_open=True) == 1.0
    for bad in (math.nan, math.inf, 0.0, "1", None):
        with pytest.raises(ValueError, match="x: expected a"):
            check_float("x", bad, low=0, low_open=True)


def test_run_data_replaced_by_other_data_is_refused(tmp_path, data, capsys):
    """run.json names its data file; when that file now holds other data, eval refuses (fingerprint)."""
    run = tmp_path / "run"
    assert _train(data, run) == 0
    np.save(data, np.random.default_rng(1).normal(size=(300, 2)).astype(np.float32))
    assert main(["eval", "--run", str(run), "--num", "64", "--steps", "1", "--quiet"]) == 2
    assert "no longer match the run's fingerprint" in _err(capsys)
