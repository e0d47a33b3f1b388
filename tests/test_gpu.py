"""CUDA checks (skipped without a GPU): same results as on the CPU, TF32 kept off for exactness."""

import pytest
import torch

from sdfm.transport import SemidiscreteSolver, assign, estimate_marginal

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_assign_cuda_equals_cpu_float64_and_ignores_tf32():
    torch.manual_seed(0)
    y = torch.randn(5000, 64, dtype=torch.float64)
    g = torch.randn(5000, dtype=torch.float64)
    x = torch.randn(700, 64, dtype=torch.float64)
    ref = assign(x, y, g)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        out = assign(x.cuda(), y.cuda(), g.cuda(), chunk_size=999)
        out32 = assign(x.float().cuda(), y.float(), g)  # CPU targets streamed to the GPU
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert torch.equal(out.cpu(), ref)
    assert (out32.cpu() == ref).float().mean() > 0.999


def test_assign_cuda_default_blocks_equal_small_blocks_and_float64():
    """CUDA's default score blocks (2,048 x 65,536 here) give the float64 argmax of small blocks."""
    torch.manual_seed(0)
    y = torch.randn(200_000, 8, dtype=torch.float64)
    g = 0.1 * torch.randn(200_000, dtype=torch.float64)
    x = torch.randn(5000, 8, dtype=torch.float64)
    ref = assign(x, y, g, chunk_size=1000)
    assert torch.equal(assign(x.cuda(), y.cuda(), g.cuda()).cpu(), ref)
    out32 = assign(x.float().cuda(), y.float().cuda(), g.cuda()).cpu()
    small = assign(x.float().cuda(), y.float().cuda(), g.cuda(), chunk_size=1000).cpu()
    assert (out32 == ref).float().mean() > 0.999 and (small == ref).float().mean() > 0.999


def test_solver_on_cuda():
    y = torch.randn(2000, 8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    res = SemidiscreteSolver().solve(y, generator=gen)
    assert res.converged and res.potential.device.type == "cuda"
    est = estimate_marginal(
        y, res.potential, num_samples=200_000, generator=torch.Generator(device="cuda").manual_seed(1)
    )
    assert est.chi2 < 0.06


def test_couplings_and_training_step_on_cuda(tmp_path):
    from sdfm.couplings import IndependentCoupling, MinibatchOTCoupling, SemidiscreteCoupling
    from sdfm.models import build_model
    from sdfm.samplers import integrate
    from sdfm.train import TrainConfig, train

    y = torch.randn(500, 2, device="cuda")
    res = SemidiscreteSolver(tol=0.1, device="cuda").solve(
        y, generator=torch.Generator("cuda").manual_seed(0)
    )
    for coupling in (
        IndependentCoupling(y),
        MinibatchOTCoupling(y),
        MinibatchOTCoupling(y, method="sinkhorn"),
        SemidiscreteCoupling.from_result(y, res),
        SemidiscreteCoupling(y, res.potential, eps=0.1),
    ):
        pairs = coupling.sample(64, generator=torch.Generator("cuda").manual_seed(1))
        assert pairs.x1.is_cuda and pairs.index.is_cuda
        torch.testing.assert_close(pairs.x1, y[pairs.index])
    model = build_model("mlp", {"dim": 2, "hidden": 32, "depth": 2}).cuda()
    out = train(model, coupling, TrainConfig(steps=20, batch_size=32, bf16=True), tmp_path, progress=False)
    x = integrate(out.ema, torch.randn(16, 2, device="cuda"), steps=2, method="dopri5")
    assert x.x.is_cuda and torch.isfinite(x.x).all()


def test_low_precision_scores_exact_on_cuda():
    torch.manual_seed(0)
    y = torch.randn(20000, 256, dtype=torch.float64)
    g = 0.1 * torch.randn(20000, dtype=torch.float64)
    x = torch.randn(1000, 256, dtype=torch.float64)
    ref = (x @ y.T + g - 0.5 * (y * y).sum(1)).argmax(1)
    out = assign(x.cuda(), y.cuda(), g.cuda(), score_dtype=torch.bfloat16)
    assert torch.equal(out.cpu(), ref)


def test_semidiscrete_pairs_on_cuda(tmp_path):
    """SemidiscretePairs on the GPU: pairs on the data's device, the same cells as the CPU sampler
    built from the same potential file (float64 data: exact)."""
    from sdfm import SemidiscretePairs

    y = torch.randn(3000, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gpu = SemidiscretePairs.fit(y, device="cuda", path=tmp_path / "g.safetensors")
    x0, x1 = gpu(256)
    assert x0.device.type == "cuda" and x1.device.type == "cuda" and gpu.chi2 <= 0.05
    cpu = SemidiscretePairs.load(tmp_path / "g.safetensors", y)
    mine = torch.randn(500, 16, dtype=torch.float64)
    assert torch.equal(gpu(x0=mine.cuda())[1].cpu(), cpu(x0=mine)[1])


def test_pruned_search_on_cuda_equals_cpu_float64():
    from sdfm.transport import LaguerreCells

    g = torch.Generator().manual_seed(0)
    y = torch.rand(30000, 2, generator=g, dtype=torch.float64) * 4 - 2
    pot = 0.05 * torch.randn(30000, generator=g, dtype=torch.float64)
    x = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    ref = LaguerreCells(y, pot, pruning="off").assign(x)
    cells = LaguerreCells(y.cuda(), pot.cuda(), pruning="on")
    assert torch.equal(cells.assign(x.cuda()).cpu(), ref)
    assert cells.pruning_used["pruned_calls"] == 1
    # "auto" keeps the dense scan on GPUs (kernel launches per cluster cost more than they save)
    auto = LaguerreCells(y.cuda(), pot.cuda())
    assert torch.equal(auto.assign(x.cuda()).cpu(), ref) and auto.pruning_used["pruned_calls"] == 0
