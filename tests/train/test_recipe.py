"""The run recipe tested directly (not through argv): fit(RunSpec) is what ``sdfm train`` runs, specs are
validated, and a coupling or an objective added in one place (a registered builder) trains end to end
and shows up in the CLI."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdfm.cli.main import build_parser, main
from sdfm.couplings import COUPLINGS, IndependentCoupling, register_coupling
from sdfm.flow import OBJECTIVES, flow_matching_loss, register_objective
from sdfm.flow.objectives import Objective
from sdfm.train import RunSpec, TrainConfig, fit, load_run, read_run

CONFIG = TrainConfig(steps=20, batch_size=32, checkpoint_every=10)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32))
    return str(path)


def _weights(run):
    return load_file(str(load_run(run).checkpoint / "model.safetensors"))


@pytest.mark.parametrize("coupling", ["independent", "minibatch-ot", "semidiscrete"])
def test_fit_is_what_sdfm_train_runs(tmp_path, data, coupling):
    spec = RunSpec(data=data, coupling=coupling, width=16, depth=1, train=CONFIG)
    result = fit(spec, tmp_path / "py", progress=False)
    assert result.step == 20
    args = ["train", "--data", data, "--coupling", coupling, "--out", str(tmp_path / "cli"), "--quiet"]
    args += [
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "10",
        "--width",
        "16",
        "--depth",
        "1",
    ]
    assert main(args) == 0
    a, b = _weights(tmp_path / "py"), _weights(tmp_path / "cli")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = read_run(tmp_path / "py")
    assert info["coupling"]["name"] == coupling and info["model"]["config"]["hidden"] == 16
    if coupling == "semidiscrete":
        assert (tmp_path / "py" / "potential.safetensors").is_file()


def test_spec_validation_names_the_option(data):
    with pytest.raises(ValueError, match="--coupling: expected one of"):
        RunSpec(data=data, coupling="nearest")
    with pytest.raises(ValueError, match="--pca: only used with --coupling semidiscrete, not independent"):
        RunSpec(data=data, coupling="independent", pca=4)
    with pytest.raises(ValueError, match="--ot-batch-size: only used with --coupling minibatch-ot"):
        RunSpec(data=data, coupling="semidiscrete", ot_batch_size=64)
    with pytest.raises(ValueError, match="--label-dropout: only used with --conditional"):
        RunSpec(data=data, coupling="independent", label_dropout=0.2)
    with pytest.raises(ValueError, match="--objective"):
        RunSpec(data=data, coupling="independent", objective="score")
    spec = RunSpec(data=data, coupling="independent", conditional=True, model="unet")
    assert spec.train_config().label_dropout == 0.1 and spec.train_config().lr == 2e-4


def test_resume_through_the_recipe(tmp_path, data):
    spec = RunSpec(data=data, coupling="semidiscrete", width=16, depth=1, train=CONFIG)
    fit(spec, tmp_path / "ref", progress=False)
    short = RunSpec(
        data=data,
        coupling="semidiscrete",
        width=16,
        depth=1,
        train=TrainConfig(**{**CONFIG.to_dict(), "steps": 10}),
    )
    fit(short, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        fit(spec, tmp_path / "run", progress=False)
    fit(spec, tmp_path / "run", resume=True, progress=False)
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_coupling_is_one_registered_builder(tmp_path, data):
    """A coupling added in one place: its builder, registered; fit trains with it, the CLI offers it,
    and options it does not read are refused."""

    @register_coupling("shuffled-test")
    def build(spec, ctx):
        return IndependentCoupling(ctx.targets.flip(0), labels=ctx.labels), {"flipped": True}

    try:
        result = fit(
            RunSpec(data=data, coupling="shuffled-test", width=16, depth=1, train=CONFIG),
            tmp_path / "r",
            progress=False,
        )
        assert result.step == 20 and read_run(tmp_path / "r")["coupling"]["flipped"] is True
        assert "shuffled-test" in build_parser().format_help() or _cli_choices("--coupling") >= {
            "shuffled-test"
        }
        with pytest.raises(ValueError, match="--eps: only used with"):
            RunSpec(data=data, coupling="shuffled-test", eps=0.1)
    finally:
        COUPLINGS.pop("shuffled-test")


def test_a_new_objective_is_one_registered_class(tmp_path, data):
    """An objective added in one place: flow matching with triangular times (the mean of two uniforms)."""

    @register_objective("triangular-times-test")
    class TriangularTimes(Objective):
        def __init__(self, config):
            pass

        def times(self, n, *, generator, device, dtype):
            u = torch.rand(n, 2, generator=generator, device=device, dtype=dtype)
            return u.mean(1), None

        def loss(self, forward, x0, x1, t, r, cond, *, model):
            return flow_matching_loss(forward, x0, x1, t, cond)

    try:
        spec = RunSpec(
            data=data,
            coupling="independent",
            objective="triangular-times-test",
            width=16,
            depth=1,
            train=CONFIG,
        )
        result = fit(spec, tmp_path / "r", progress=False)
        assert result.step == 20 and read_run(tmp_path / "r")["train"]["objective"] == "triangular-times-test"
        assert "triangular-times-test" in _cli_choices("--objective")
    finally:
        OBJECTIVES.pop("triangular-times-test")


def _cli_choices(option: str) -> set:
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001 - argparse has no API
    return set(next(a for a in train._actions if option in a.option_strings).choices)  # noqa: SLF001
