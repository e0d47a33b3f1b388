"""Several processes (gloo on CPU): sharded transport equals one process; DDP training and its resume."""

import json
import subprocess

import numpy as np
import pytest
import torch

from sdfm.couplings import SemidiscreteCoupling
from sdfm.models import build_model
from sdfm.train import TrainConfig, train
from sdfm.transport import Collective, LaguerreCells, SemidiscreteSolver, shard_range
from tests.conftest import TORCHRUN_SDFM


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _data():
    y = torch.randn(1001, 6, generator=gen(0))  # odd N: shards of 501 and 500
    y[700] = y[3]  # a duplicate across the two shards
    g = 0.3 * torch.randn(1001, generator=gen(1), dtype=torch.float64)
    g[700] = g[3]
    return y, g


HARD = {"anneal": False, "tol": None, "max_steps": 40, "batch_size": 512}


def _transport(col, rank):
    y, g = _data()
    x = torch.randn(300, 6, generator=gen(2))
    out = {}
    for eps in (0.0, 0.4):
        cells = LaguerreCells(y, g, eps=eps, collective=col)
        sums, sq = cells.column_sums(x, squares=True)
        out[f"sums{eps}"], out[f"sq{eps}"] = sums, sq
        out[f"ct{eps}"] = cells.c_transform(x)
    out["assign"] = LaguerreCells(y, g, collective=col).assign(x)
    # cluster bounds per shard, then the global argmax: the same cells
    out["assign_pruned"] = LaguerreCells(y, g, collective=col, pruning="on").assign(x)
    for limit in (1 << 30, 0):  # a copy of the shard, or streamed from the (duplicated) targets
        res = SemidiscreteSolver(**HARD, memory_limit=limit).solve(y, generator=gen(3), collective=col)
        out[f"solve{limit}"] = res.potential
        out[f"chi2{limit}"] = torch.tensor(res.chi2)
    coupling = SemidiscreteCoupling(y, g, collective=col)
    pairs = coupling.sample(40, generator=gen(10 + rank))
    out["x0"], out["index"] = pairs.x0, pairs.index
    return out


def _train(col, rank, tmp):
    y, g = _data()
    coupling = SemidiscreteCoupling(y, g, collective=col)
    config = TrainConfig(steps=6, batch_size=32, checkpoint_every=3, log_every=2, warmup=0, keep=5)
    torch.manual_seed(0)
    model = build_model("mlp", {"dim": 6, "hidden": 32, "depth": 2})
    full = train(model, coupling, config, tmp / "full", progress=False)
    torch.manual_seed(0)
    part = build_model("mlp", {"dim": 6, "hidden": 32, "depth": 2})
    train(part, coupling, TrainConfig(**{**config.to_dict(), "steps": 3}), tmp / "part", progress=False)
    torch.manual_seed(0)
    again = build_model("mlp", {"dim": 6, "hidden": 32, "depth": 2})
    resumed = train(again, coupling, config, tmp / "part", resume=True, progress=False)
    return {
        "full": torch.cat([p.detach().flatten() for p in full.model.parameters()]),
        "resumed": torch.cat([p.detach().flatten() for p in resumed.model.parameters()]),
    }


def _worker(rank, world, init_file, tmp, queue):
    import torch.distributed as dist

    from sdfm import parallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        col = parallel.collective()
        out = {**_transport(col, rank), **_train(col, rank, tmp)}
        queue.put((rank, {k: v.numpy() for k, v in out.items()}))  # numpy: no shared fds
    except Exception as exc:  # noqa: BLE001 - reported to the test
        queue.put((rank, repr(exc)))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("parallel")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(k, 2, tmp / "init", tmp, queue)) for k in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, res in results.items():
        assert not isinstance(res, str), f"rank {rank}: {res}"
    return {r: {k: torch.from_numpy(v) for k, v in res.items()} for r, res in results.items()}, tmp


def test_sharded_transport_equals_one_process(two_processes):
    results, _ = two_processes
    single = _transport(None, 0)
    for rank in (0, 1):
        got = results[rank]
        # exact pairing: the global argmax over shards is the single-process argmax, ties included
        assert torch.equal(got["assign"], single["assign"])
        assert torch.equal(got["assign_pruned"], single["assign"])
        assert torch.equal(got["sums0.0"], single["sums0.0"])
        torch.testing.assert_close(got["ct0.0"], single["ct0.0"], rtol=0, atol=1e-12)
        # soft: the same up to float32 rounding of the per-shard log-sum-exp
        torch.testing.assert_close(got["sums0.4"], single["sums0.4"], rtol=0, atol=2e-5)
        torch.testing.assert_close(got["ct0.4"], single["ct0.4"], rtol=1e-6, atol=1e-6)
        # the hard-phase solver (duplicates across shards, copied or streamed keys) is bit for bit
        for limit in (1 << 30, 0):
            assert torch.equal(got[f"solve{limit}"], single[f"solve{limit}"])
            assert float(got[f"chi2{limit}"]) == float(single[f"chi2{limit}"])
        assert got["solve0"][700] == got["solve0"][3]


def test_sharded_coupling_pairs_each_process_noise_exactly(two_processes):
    results, _ = two_processes
    y, g = _data()
    for rank in (0, 1):
        x0, index = results[rank]["x0"], results[rank]["index"]
        assert torch.equal(x0, torch.randn(40, 6, generator=gen(10 + rank)))
        assert torch.equal(index, LaguerreCells(y, g).assign(x0))


def test_ddp_training_resumes_exactly_and_ranks_agree(two_processes):
    results, tmp = two_processes
    assert torch.equal(results[0]["full"], results[1]["full"])  # DDP keeps the replicas equal
    assert torch.equal(results[0]["resumed"], results[0]["full"])  # resume continues both streams
    assert torch.equal(results[1]["resumed"], results[0]["full"])
    # rank 0 alone wrote the logs and checkpoints; the checkpoint holds both generator states
    lines = (tmp / "full" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6]
    state = torch.load(tmp / "full" / "checkpoints" / "step_00000006" / "state.pt", weights_only=False)
    assert len(state["generators"]) == 2
    assert not torch.equal(state["generators"][0], state["generators"][1])


def test_collective_and_shards_validate():
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert shard_range(5, 0, 1) == (0, 5)
    with pytest.raises(ValueError, match="rank"):
        Collective(rank=2, world_size=2, reduce=lambda t, op: t)
    with pytest.raises(ValueError, match="reduce"):
        Collective(rank=0, world_size=2, reduce=None)
    col = Collective(rank=0, world_size=3, reduce=lambda t, op: t)
    with pytest.raises(ValueError, match="3 processes for 2"):
        LaguerreCells(torch.randn(2, 3), torch.zeros(2), collective=col)
    with pytest.raises(ValueError, match="classes"):
        LaguerreCells(torch.randn(4, 3), torch.zeros(4), classes=torch.tensor([0, 0, 1, 1]), collective=col)


def test_torchrun_cli_solve_and_train(tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(600, 5)).astype(np.float32))
    torchrun = TORCHRUN_SDFM
    args = ["solve", "--data", str(data), "--quiet", "--tol", "0.1", "--out", str(tmp_path / "b.safetensors")]
    args += ["--normalize", "none"]
    two = subprocess.run([*torchrun, *args], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    from sdfm.artifacts import load_potential

    b = load_potential(tmp_path / "b.safetensors")
    assert b.meta["solver"]["processes"] == 2 and b.chi2 <= 0.1
    run = tmp_path / "run"
    train_args = ["train", "--data", str(data), "--coupling", "semidiscrete", "--out", str(run), "--quiet"]
    train_args += ["--steps", "4", "--batch-size", "32", "--potential", str(tmp_path / "b.safetensors")]
    train_args += ["--normalize", "none"]
    two = subprocess.run([*torchrun, *train_args], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("trained 4 steps") == 1  # rank 0 alone reports
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4]
    assert json.loads((run / "run.json").read_text())["train"]["batch_size"] == 32


def test_sharded_coupling_needs_gather():
    col = Collective(rank=0, world_size=2, reduce=lambda t, op: t)
    with pytest.raises(ValueError, match="gather"):
        SemidiscreteCoupling(torch.randn(4, 2), torch.zeros(4), collective=col)
