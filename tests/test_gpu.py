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


def test_solver_on_cuda():
    y = torch.randn(2000, 8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    res = SemidiscreteSolver().solve(y, generator=gen, progress=False)
    assert res.converged and res.potential.device.type == "cuda"
    est = estimate_marginal(
        y, res.potential, num_samples=200_000, generator=torch.Generator(device="cuda").manual_seed(1)
    )
    assert est.chi2 < 0.06
