"""SemidiscretePairs / PairDataset: SD-FM pairs for other training loops, checked against brute force."""

import importlib.util
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from sdfm import PairDataset, SemidiscretePairs

ROOT = Path(__file__).resolve().parents[2]


def brute_cells(x0, y, g):
    """argmax_j <x, y_j> + g_j - |y_j|^2 / 2 in float64."""
    x0, y, g = x0.double(), y.double(), g.double()
    return (x0 @ y.T + g - 0.5 * (y * y).sum(1)).argmax(1)


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(600, 5, generator=gen) * 2 + 3


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "g.safetensors"
    return SemidiscretePairs.fit(data, path=path, seed=1), path


def test_pairs_are_the_cells_of_the_potential(data, fitted):
    pairs, _ = fitted
    assert pairs.chi2 <= 0.05
    x0, x1 = pairs(512)
    g = pairs.result.potential
    assert torch.equal(x1, data[brute_cells(x0, data, g)])
    # your own noise: x1 is its cell's data point
    mine = torch.randn(300, 5, generator=torch.Generator().manual_seed(5))
    a, b = pairs(x0=mine)
    assert torch.equal(a, mine) and torch.equal(b, data[brute_cells(mine, data, g)])
    with pytest.raises(ValueError, match=r"x0: expected noise of shape \[n, 5\]"):
        pairs(x0=torch.randn(3, 4))
    with pytest.raises(ValueError, match="batch_size"):
        pairs(4, x0=mine)


def test_marginal_of_the_pairs_is_uniform(data, fitted):
    """Each data point is drawn with mass 1/N (chi2 of the pairs' counts against an independent count)."""
    pairs, _ = fitted
    counts = torch.zeros(600)
    for _ in range(40):
        p = pairs.sample(4096)
        counts += torch.bincount(p.index, minlength=600)
    n = counts.sum()
    chi2 = float(((counts / n) ** 2 * 600).sum() - 1 - 600 / n)  # minus the counting floor (N - 1) / n
    assert chi2 < 0.1


def test_fit_reuses_the_saved_potential_and_refuses_other_data(data, fitted, monkeypatch):
    pairs, path = fitted
    from sdfm.transport import SemidiscreteSolver

    def no_solve(*a, **k):
        raise AssertionError("solved again")

    monkeypatch.setattr(SemidiscreteSolver, "solve", no_solve)
    again = SemidiscretePairs.fit(data, path=path, seed=1)
    assert again.chi2 == pairs.chi2 and again.result is None
    mine = torch.randn(50, 5)
    assert torch.equal(again(x0=mine)[1], pairs(x0=mine)[1])
    with pytest.raises(ValueError, match="fingerprint|shape"):
        SemidiscretePairs.load(path, data + 1)
    with pytest.raises(ValueError, match="labels"):
        SemidiscretePairs.load(path, data, labels=torch.zeros(600, dtype=torch.long))
    with pytest.raises(AssertionError, match="solved again"):  # other data: solved again, not loaded
        SemidiscretePairs.fit(data[:500], path=path)
    with pytest.raises(AssertionError, match="solved again"):  # other weights or eps: solved again
        SemidiscretePairs.fit(data, path=path, weights=torch.rand(600) + 0.5)
    with pytest.raises(AssertionError, match="solved again"):
        SemidiscretePairs.fit(data, path=path, eps=0.1)


def test_labelled_pairs_stay_in_their_class():
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(400, 3, generator=gen)
    labels = (torch.arange(400) % 3 == 0).long()
    pairs = SemidiscretePairs.fit(y, labels=labels)
    x0, x1, c = pairs(1000)
    rows = (x1[:, None, :] == y[None]).all(2).float().argmax(1)
    assert torch.equal(labels[rows], c)
    assert abs(float(c.float().mean()) - float(labels.float().mean())) < 0.06  # the class masses


def test_dataloader_workers_draw_distinct_streams(fitted):
    pairs, _ = fitted
    ds = pairs.dataset(64, steps=3)
    assert isinstance(ds, PairDataset)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    batches = list(loader)
    assert len(batches) == 6 and all(b[0].shape == (64, 5) for b in batches)
    firsts = {tuple(b[0][0].tolist()) for b in batches}
    assert len(firsts) == 6  # no two batches share noise

    # a new epoch draws new noise (the loader gives its workers new seeds every epoch), and the epochs
    # repeat when the loader's generator is seeded
    def epoch(loader):
        return torch.cat([b[0] for b in loader])

    seeded = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, generator=torch.Generator().manual_seed(3)
    )
    first, second = epoch(seeded), epoch(seeded)
    assert not torch.equal(first, second)
    again = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(epoch(again), first)
    single = torch.utils.data.DataLoader(pairs.dataset(64, steps=3), batch_size=None)
    a, b = epoch(single), epoch(single)
    assert a.shape == (192, 5) and not torch.equal(a, b)  # in-process: the stream continues
    with pytest.raises(ValueError, match="batch_size"):
        pairs.dataset(0)


def test_plain_loop_example_learns_the_board():
    mod = runpy.run_path(str(ROOT / "examples" / "pairs_plain_loop.py"))
    assert mod["main"](steps=1500) > 0.65  # noise itself lies on the dark squares half of the time


@pytest.mark.skipif(importlib.util.find_spec("torchcfm") is None, reason="torchcfm not installed")
def test_torchcfm_example():
    mod = runpy.run_path(str(ROOT / "examples" / "pairs_torchcfm.py"))
    assert mod["main"](steps=1500) < 1.0  # N(0, I) itself: about 3 from the nearest centre


def test_units_are_the_data_as_given():
    y = np.random.default_rng(0).normal(1000.0, 5.0, size=(200, 2)).astype(np.float64)
    pairs = SemidiscretePairs.fit(y)
    x0, x1 = pairs(100)
    assert x1.dtype == torch.float64 and float(x1.mean()) == pytest.approx(1000.0, abs=3)
