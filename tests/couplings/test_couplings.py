"""Couplings: pairs equal brute force (SD), permutations (OT), determinism, labels, file checks."""

import numpy as np
import pytest
import torch

from sdfm.artifacts import save_potential
from sdfm.couplings import COUPLINGS, IndependentCoupling, MinibatchOTCoupling, SemidiscreteCoupling
from sdfm.protocols import Coupling, Pairs
from sdfm.transport import SemidiscreteSolver, cost_matrix
from tests.conftest import gen


@pytest.fixture(scope="module")
def data():
    y = torch.randn(300, 3, generator=gen(5)) * 1.5 + 1
    labels = torch.arange(300) % 4
    res = SemidiscreteSolver(tol=0.1).solve(y, generator=gen(0))
    return y, labels, res


def test_registry_and_protocol(data):
    y, labels, res = data
    assert set(COUPLINGS) == {"independent", "minibatch-ot", "semidiscrete"}
    for c in (IndependentCoupling(y), MinibatchOTCoupling(y), SemidiscreteCoupling.from_result(y, res)):
        assert isinstance(c, Coupling)
        p = c.sample(16, generator=gen(1))
        assert isinstance(p, Pairs) and p.x0.shape == p.x1.shape == (16, 3) and p.index.shape == (16,)
        torch.testing.assert_close(p.x1, y[p.index])


def test_semidiscrete_pairs_equal_brute_force_argmax(data):
    y, labels, res = data
    c = SemidiscreteCoupling.from_result(y, res, labels=labels)
    p = c.sample(500, generator=gen(2))
    x0 = p.x0.double()
    scores = x0 @ y.double().T + res.potential[None, :] - 0.5 * (y.double() ** 2).sum(1)[None, :]
    top2 = scores.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-9
    assert clear.float().mean() > 0.99
    assert torch.equal(p.index[clear], scores.argmax(1)[clear])
    assert torch.equal(p.cond, labels[p.index])


def test_semidiscrete_soft_pairs_follow_softmax():
    y = torch.tensor([[0.0], [1.0], [3.0]])
    g = torch.tensor([0.2, 0.0, -1.0], dtype=torch.float64)
    eps = 0.7
    c = SemidiscreteCoupling(
        y,
        g,
        eps=eps,
        noise=lambda n, d, generator, device, dtype: torch.full((n, d), 0.5, device=device, dtype=dtype),
    )
    p = c.sample(40000, generator=gen(3))
    logits = (g - 0.5 * (0.5 - y[:, 0].double()) ** 2) / eps
    expected = torch.softmax(logits, 0)
    freq = torch.bincount(p.index, minlength=3).double() / 40000
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_couplings_are_deterministic_given_generator(data):
    y, labels, res = data
    for c in (
        IndependentCoupling(y),
        MinibatchOTCoupling(y, method="sinkhorn"),
        SemidiscreteCoupling.from_result(y, res),
    ):
        a, b = c.sample(32, generator=gen(7)), c.sample(32, generator=gen(7))
        assert torch.equal(a.index, b.index) and torch.equal(a.x0, b.x0)


def test_minibatch_ot_exact_is_optimal_per_batch(data):
    y, _, _ = data
    c = MinibatchOTCoupling(y, method="exact", batch_size=16)
    p = c.sample(40, generator=gen(4))  # batches of 16, 16, 8
    # Re-drawing the same generator stream gives the independent batch; its OT re-pairing
    # must not cost more than the independent pairing, batch by batch.
    ind = IndependentCoupling(y).sample(40, generator=gen(4))
    assert torch.equal(ind.x0, p.x0)
    for sl in (slice(0, 16), slice(16, 32), slice(32, 40)):
        assert sorted(p.index[sl].tolist()) == sorted(ind.index[sl].tolist())  # a permutation of the batch
        ot_cost = float(0.5 * ((p.x0[sl] - p.x1[sl]) ** 2).sum(1).sum())
        ind_cost = float(0.5 * ((ind.x0[sl] - ind.x1[sl]) ** 2).sum(1).sum())
        assert ot_cost <= ind_cost + 1e-5
        # optimal: no pair swap improves it
        cm = cost_matrix(p.x0[sl], p.x1[sl])
        diag = cm.diagonal()
        swaps = cm + cm.T - diag[:, None] - diag[None, :]  # cost change of swapping i, j
        assert float(swaps.min()) >= -1e-4


def test_minibatch_ot_within_classes_is_optimal_per_class(data):
    import ot

    y, labels, _ = data
    c = MinibatchOTCoupling(y, method="exact", batch_size=40, labels=labels, conditional=True)
    p = c.sample(40, generator=gen(4))
    ind = IndependentCoupling(y, labels=labels).sample(40, generator=gen(4))  # the batch before OT
    assert torch.equal(ind.x0, p.x0) and torch.equal(p.cond, labels[p.index])
    assert sorted(p.index.tolist()) == sorted(ind.index.tolist())
    for k in labels.unique():
        rows = torch.nonzero(ind.cond == k).squeeze(1)
        assert bool((p.cond[rows] == k).all())  # each noise keeps its data point's class
        # the class block's cost equals the exact OT cost (POT's emd2) between its noises and points
        cost = float(0.5 * ((p.x0[rows] - p.x1[rows]) ** 2).sum())
        m = len(rows)
        cm = 0.5 * torch.cdist(ind.x0[rows].double(), ind.x1[rows].double()) ** 2
        exact = m * ot.emd2(np.full(m, 1 / m), np.full(m, 1 / m), cm.numpy())
        assert abs(cost - exact) < 1e-4 * max(1.0, exact)
    with pytest.raises(ValueError, match="needs labels"):
        MinibatchOTCoupling(y, conditional=True)


def test_independent_respects_weights():
    y = torch.arange(3.0)[:, None]
    c = IndependentCoupling(y, weights=torch.tensor([1.0, 2.0, 7.0]))
    idx = c.sample(20000, generator=gen(0)).index
    freq = torch.bincount(idx, minlength=3).double() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64), atol=0.015, rtol=0)


def test_semidiscrete_from_file_refuses_other_data(data, tmp_path):
    y, _, res = data
    path = tmp_path / "p.safetensors"
    save_potential(path, res, targets=y)
    c = SemidiscreteCoupling.from_file(path, y)
    torch.testing.assert_close(c.cells.potential, res.potential)
    other = y.clone()
    other[0, 0] += 1
    with pytest.raises(ValueError, match="fingerprint"):
        SemidiscreteCoupling.from_file(path, other)
    with pytest.raises(ValueError, match="shape"):
        SemidiscreteCoupling.from_file(path, y[:10])


def test_semidiscrete_duplicates_split_mass():
    y = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
    res = SemidiscreteSolver(tol=0.05).solve(y, weights=torch.tensor([1.0, 3.0, 4.0]), generator=gen(0))
    c = SemidiscreteCoupling.from_result(y, res)
    idx = c.sample(40000, generator=gen(1)).index
    freq = torch.bincount(idx, minlength=3).double() / 40000
    torch.testing.assert_close(
        freq, torch.tensor([0.125, 0.375, 0.5], dtype=torch.float64), atol=0.02, rtol=0
    )


def test_bad_arguments():
    y = torch.randn(10, 2)
    with pytest.raises(ValueError, match="labels"):
        IndependentCoupling(y, labels=torch.arange(9))
    with pytest.raises(ValueError, match="method"):
        MinibatchOTCoupling(y, method="greedy")
    with pytest.raises(ValueError, match="n"):
        IndependentCoupling(y).sample(0)
    with pytest.raises(ValueError, match="potential"):
        SemidiscreteCoupling(y, torch.zeros(9))
    with pytest.raises(ValueError, match="noise"):
        IndependentCoupling(y, noise=lambda n, d, **kw: torch.zeros(n, d + 1)).sample(4)


def test_semidiscrete_bf16_scores_give_the_same_pairs(data):
    y, _, res = data
    a = SemidiscreteCoupling.from_result(y, res).sample(400, generator=gen(9))
    b = SemidiscreteCoupling.from_result(y, res, score_dtype=torch.bfloat16).sample(400, generator=gen(9))
    assert torch.equal(a.index, b.index)


def test_class_conditional_semidiscrete_coupling():
    from sdfm.transport import solve_per_class

    g = gen(30)
    labels = torch.tensor([0] * 150 + [1] * 50 + [2] * 100)
    y = torch.randn(300, 3, generator=g) + 3 * labels[:, None].float()
    w = torch.rand(300, generator=g, dtype=torch.float64) + 0.5
    res = solve_per_class(SemidiscreteSolver(), y, labels, w, generator=gen(31))
    coupling = SemidiscreteCoupling.from_result(y, res)
    assert coupling.conditional
    b = w / w.sum()
    expected_p = torch.stack([b[labels == c].sum() for c in range(3)])
    torch.testing.assert_close(coupling.class_probs, expected_p)
    pairs = coupling.sample(20000, generator=gen(32))
    # every pair stays in its class, cond is that class, and the classes follow p(c)
    assert bool((labels[pairs.index] == pairs.cond).all())
    freq = torch.bincount(pairs.cond, minlength=3).double() / 20000
    torch.testing.assert_close(freq, expected_p, atol=0.015, rtol=0)
    # within a class the pairs are the masked argmax of the noise (brute force)
    x0, idx, c = pairs.x0.double(), pairs.index, pairs.cond
    scores = x0 @ y.double().T + res.potential - 0.5 * y.double().square().sum(1)
    scores[c[:, None] != labels[None, :]] = float("-inf")
    torch.testing.assert_close(idx, scores.argmax(1))
    with pytest.raises(ValueError, match="needs labels"):
        SemidiscreteCoupling(y, res.potential, conditional=True)
