import sys

import pytest
import torch

#: ``sdfm`` under torchrun with two local processes
TORCHRUN_SDFM = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "sdfm",
]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def twins(n: int, d: int, delta: float, seed: int = 0) -> torch.Tensor:
    """n standard normal points and a copy of each moved by delta * N(0, I) (near duplicates)."""
    g = gen(seed)
    base = torch.randn(n, d, generator=g)
    return torch.cat([base, base + delta * torch.randn(n, d, generator=g)])
