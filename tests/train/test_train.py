"""Training loop: a tiny model overfits a tiny dataset, resume equals an uninterrupted run,
checkpoints are atomic and loadable."""

import json
import shutil

import pytest
import torch

from sdfm.couplings import IndependentCoupling, MinibatchOTCoupling, SemidiscreteCoupling
from sdfm.models import build_model
from sdfm.samplers import integrate
from sdfm.train import TrainConfig, latest_checkpoint, load_checkpoint, train
from sdfm.transport import SemidiscreteSolver
from tests.conftest import gen


def _model(seed=0, dim=2):
    torch.manual_seed(seed)
    return build_model("mlp", {"dim": dim, "hidden": 32, "depth": 2})


def test_sd_model_overfits_two_points_in_one_step():
    # Two atoms at (+-2, 0): the semidiscrete map is the half-plane split, so the velocity is
    # piecewise constant and one Euler step must land on the atoms.
    y = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    res = SemidiscreteSolver().solve(y, generator=gen(0))
    coupling = SemidiscreteCoupling.from_result(y, res)
    out = train(
        _model(), coupling, TrainConfig(steps=600, batch_size=128, lr=3e-3, warmup=20), progress=False
    )
    x0 = torch.randn(2000, 2, generator=gen(1))
    x1 = integrate(out.ema, x0, steps=1).x
    dist = torch.cdist(x1, y).min(1).values
    assert float(dist.median()) < 0.25
    # and it learned the split: the sign of x0's first coordinate picks the atom
    assert float(((x1[:, 0] > 0) == (x0[:, 0] > 0)).float().mean()) > 0.95


def test_resume_equals_uninterrupted_run(tmp_path):
    y = torch.randn(64, 2, generator=gen(3))
    cfg = TrainConfig(steps=20, batch_size=16, checkpoint_every=10, log_every=5, warmup=5)
    for coupling in (IndependentCoupling(y), MinibatchOTCoupling(y, method="sinkhorn")):
        full = train(_model(), coupling, cfg, tmp_path / "a", progress=False)
        train(_model(), coupling, cfg, tmp_path / "b", progress=False)
        # Simulate a crash right after the step-10 checkpoint: drop the final checkpoint.
        ckpts = tmp_path / "b" / "checkpoints"
        shutil.rmtree(ckpts / "step_00000020")
        (ckpts / "latest").write_text("step_00000010\n")
        resumed = train(_model(seed=99), coupling, cfg, tmp_path / "b", resume=True, progress=False)
        assert resumed.step == 20
        for (k, a), b in zip(
            full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), k
        for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        lines = [json.loads(s) for s in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines] == [5, 10, 15, 20]
        shutil.rmtree(tmp_path / "a")
        shutil.rmtree(tmp_path / "b")


def test_checkpoints_atomic_and_pruned(tmp_path):
    y = torch.randn(32, 2, generator=gen(0))
    cfg = TrainConfig(steps=30, batch_size=8, checkpoint_every=10, keep=2, log_every=10)
    train(_model(), IndependentCoupling(y), cfg, tmp_path, meta={"note": "x"}, progress=False)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000020", "step_00000030"]
    # A torn write (temporary folder) and a garbage 'latest' do not hide the last good checkpoint.
    (tmp_path / "checkpoints" / ".tmp-step_00000040-1").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000040\n")
    path = latest_checkpoint(tmp_path / "checkpoints")
    assert path.name == "step_00000030"
    ck = load_checkpoint(path)
    assert ck.step == 30 and ck.meta["note"] == "x" and ck.meta["train"]["steps"] == 30
    # a state.json whose checksum key was damaged (renamed) is refused, not read unchecked
    original = (path / "state.json").read_text()
    (path / "state.json").write_text(original.replace('"checksum"', '"ciecksum"'))
    with pytest.raises(ValueError, match="no checksum"):
        load_checkpoint(path)
    (path / "state.json").write_text(original)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(path)


def test_train_config_errors():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="time_sampler"):
        TrainConfig(time_sampler="beta")
    with pytest.raises(ValueError, match="resume"):
        train(_model(), IndependentCoupling(torch.randn(4, 2)), TrainConfig(steps=1), None, resume=True)


def test_label_dropout_replaces_labels_by_the_null_label():
    from sdfm.couplings import IndependentCoupling
    from sdfm.train import TrainConfig, train

    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, t, cond=None):
            seen.append(cond.clone())
            return self.lin(x)

    y = torch.randn(100, 2)
    labels = torch.randint(0, 3, (100,))
    coupling = IndependentCoupling(y, labels=labels)
    train(Spy(), coupling, TrainConfig(steps=20, batch_size=200, label_dropout=0.3, warmup=0), progress=False)
    cond = torch.cat(seen)
    frac = float((cond == -1).double().mean())
    assert 0.25 < frac < 0.35 and bool((cond >= -1).all())
    seen.clear()
    train(Spy(), coupling, TrainConfig(steps=2, batch_size=50, warmup=0), progress=False)
    assert not bool((torch.cat(seen) == -1).any())
    with pytest.raises(ValueError, match="label_dropout"):
        TrainConfig(label_dropout=1.0)
