"""MeanFlow: the JVP target against finite differences, the time convention, the sampler on an analytic
mean flow, a one-step model of an affine map, and gradient synchronisation under DDP."""

import pytest
import torch

from sdfm.flow import MeanFlowConfig, flow_matching_loss, meanflow_loss, meanflow_target, meanflow_times
from sdfm.models import build_model
from sdfm.protocols import Pairs
from sdfm.samplers import integrate
from sdfm.train import TrainConfig, train
from tests.conftest import gen


def _mf_model(dim=3, seed=0, **extra):
    torch.manual_seed(seed)
    return build_model("mlp", {"dim": dim, "hidden": 32, "depth": 2, "mean_flow": True, **extra})


def test_jvp_target_equals_central_differences():
    model = _mf_model().double()
    x, v = torch.randn(6, 3, generator=gen(1), dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    t = torch.rand(6, generator=gen(2), dtype=torch.float64) * 0.5
    r = t + torch.rand(6, generator=gen(3), dtype=torch.float64) * 0.5
    target = meanflow_target(model, x, t, r, v)
    h = 1e-6  # d/dt u(x + s v, t + s, r) at s = 0, by central differences
    with torch.no_grad():
        dudt = (model(x + h * v, t + h, None, r=r) - model(x - h * v, t - h, None, r=r)) / (2 * h)
    torch.testing.assert_close(target, v + (r - t)[:, None] * dudt, rtol=1e-6, atol=1e-6)
    # r = t: the target is the conditional velocity itself
    torch.testing.assert_close(meanflow_target(model, x, t, t, v), v)


def test_times_convention_and_fraction():
    t, r = meanflow_times(200_000, generator=gen(0))
    assert bool((r >= t).all()) and bool(((t >= 0) & (r <= 1)).all())
    assert abs(float((r == t).float().mean()) - 0.75) < 0.005
    # MeanFlow's law is logit-normal(-0.4, 1) with noise at 1; in sdfm's convention 1 - t is the larger
    # of two draws from it
    z = torch.randn(2, 200_000, generator=gen(9))
    expected = torch.sigmoid(-0.4 + z).max(dim=0).values
    assert abs(float((1 - t).mean()) - float(expected.mean())) < 0.003
    # a law concentrated near MeanFlow's data end (t' ~ 0.05) lands near sdfm's data end
    t, r = meanflow_times(1000, MeanFlowConfig(mean=-3.0, std=0.1, equal_fraction=0.0), generator=gen(1))
    assert float(t.min()) > 0.93 and bool((r > t).all())


def test_loss_with_r_equal_t_is_flow_matching():
    model = _mf_model()
    x0, x1 = torch.randn(64, 3, generator=gen(0)), torch.randn(64, 3, generator=gen(1))
    t = torch.rand(64, generator=gen(2))
    loss, stats = meanflow_loss(model, x0, x1, t, t.clone(), config=MeanFlowConfig(adaptive_p=0.0))
    fm, fm_stats = flow_matching_loss(model, x0, x1, t)
    torch.testing.assert_close(loss, 3 * fm)  # sum over d = 3 dimensions against the mean
    torch.testing.assert_close(stats.loss, fm_stats.loss)
    with pytest.raises(ValueError, match="r >= t"):
        meanflow_loss(model, x0, x1, t, t - 0.1)


def test_adaptive_weight_gradient():
    # loss = mean sg(w) |delta|^2 with w = 1 / (|delta|^2 + c)^p: its gradient is the plain one times w
    model = _mf_model()
    x0, x1 = torch.randn(8, 3, generator=gen(0)), torch.randn(8, 3, generator=gen(1))
    t, r = meanflow_times(8, generator=gen(2))
    cfg = MeanFlowConfig(adaptive_p=1.0, adaptive_c=0.5)
    loss, _ = meanflow_loss(model, x0, x1, t, r, config=cfg)
    (g_w,) = torch.autograd.grad(loss, model.embed.time[1].weight)
    target = meanflow_target(model, torch.lerp(x0, x1, t[:, None]), t, r, x1 - x0)
    sq = (model(torch.lerp(x0, x1, t[:, None]), t, None, r=r) - target).pow(2).sum(1)
    w = 1.0 / (sq.detach() + 0.5)
    (g_ref,) = torch.autograd.grad((w * sq).mean(), model.embed.time[1].weight)
    torch.testing.assert_close(g_w, g_ref)


def test_meanflow_sampler_is_exact_for_an_exact_mean_flow():
    # x(t) = x0 + t^2: v = 2t, u(x, t, r) = (r^2 - t^2) / (r - t) = r + t, for any number of jumps
    def u(x, t, cond=None, r=None):
        return (r + t)[:, None].expand_as(x)

    x0 = torch.randn(5, 2, generator=gen(0))
    for steps in (1, 3):
        res = integrate(u, x0, steps=steps, method="meanflow")
        torch.testing.assert_close(res.x, x0 + 1.0)
        assert res.nfe == steps
    with pytest.raises(ValueError, match="not a mean-flow model"):
        integrate(build_model("mlp", {"dim": 2, "hidden": 8, "depth": 1}), x0, method="meanflow")


def test_model_r_none_is_r_equal_t_and_time_scale():
    model = _mf_model()
    x, t = torch.randn(4, 3), torch.rand(4)
    torch.testing.assert_close(model(x, t), model(x, t, None, r=t))
    assert not torch.allclose(model(x, t), model(x, t, None, r=t + 0.5))
    assert model.embed.time[0].scale == 1.0  # mean-flow models embed t without the factor 1000
    assert build_model("mlp", {"dim": 3}).embed.time[0].scale == 1000.0
    unet = build_model("unet", {"image_shape": (1, 8, 8), "base": 8, "mean_flow": True})
    torch.testing.assert_close(unet(torch.randn(2, 64), torch.rand(2)).shape, torch.Size([2, 64]))


class _Affine:
    """Deterministic pairs x1 = A x0 + b: the flow is the straight lines, u(x0, 0, 1) = x1 - x0."""

    A = torch.tensor([[1.5, 0.3], [0.3, 0.6]])
    b = torch.tensor([1.0, -2.0])

    def sample(self, n, generator=None):
        x0 = torch.randn(n, 2, generator=generator)
        return Pairs(x0=x0, x1=x0 @ self.A.T + self.b, index=torch.zeros(n, dtype=torch.long))


def test_one_step_model_of_an_affine_map():
    model = _mf_model(dim=2, hidden=64)
    cfg = TrainConfig(
        steps=1200, lr=3e-3, warmup=50, ema_decay=0.99, schedule="cosine", objective="meanflow", seed=0
    )
    out = train(model, _Affine(), cfg, progress=False)
    x0 = torch.randn(4000, 2, generator=gen(1))
    x1 = x0 @ _Affine.A.T + _Affine.b
    err = (integrate(out.ema, x0, steps=1, method="meanflow").x - x1).norm(dim=1).mean()
    assert float(err) < 0.02 * float(x1.norm(dim=1).mean()), float(err)


def test_train_refuses_a_velocity_field():
    model = build_model("mlp", {"dim": 2, "hidden": 8, "depth": 1})
    with pytest.raises(ValueError, match="mean_flow=True"):
        train(model, _Affine(), TrainConfig(steps=1, objective="meanflow"), progress=False)
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="consistency")
    assert TrainConfig(meanflow={"adaptive_p": 0.5}).meanflow.adaptive_p == 0.5


def _ddp_worker(rank, world, init_file, queue):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = _mf_model()
    ddp = DDP(model)
    g = gen(100 + rank)  # each rank its own batch
    x0, x1 = torch.randn(16, 3, generator=g), torch.randn(16, 3, generator=g)
    t, r = meanflow_times(16, generator=g)
    loss, _ = meanflow_loss(ddp, x0, x1, t, r, jvp_model=ddp.module)
    loss.backward()
    queue.put((rank, [p.grad.numpy().copy() for p in model.parameters()]))  # numpy: no shared fds
    dist.destroy_process_group()


def test_ddp_synchronises_meanflow_gradients(tmp_path):
    # Under DDP the gradient is the average of the ranks' gradients: equal on both ranks and equal to
    # the mean of the two single-process gradients (the JVP goes through .module, the gradient through DDP)
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(k, 2, tmp_path / "init", queue)) for k in range(2)]
    for p in procs:
        p.start()
    grads = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    single = []
    for rank in range(2):
        model = _mf_model()
        g = gen(100 + rank)
        x0, x1 = torch.randn(16, 3, generator=g), torch.randn(16, 3, generator=g)
        t, r = meanflow_times(16, generator=g)
        loss, _ = meanflow_loss(model, x0, x1, t, r)
        single.append(torch.autograd.grad(loss, list(model.parameters())))
    for k, (a, b) in enumerate(zip(grads[0], grads[1], strict=True)):
        a, b = torch.from_numpy(a), torch.from_numpy(b)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, (single[0][k] + single[1][k]) / 2, rtol=1e-5, atol=1e-6)
