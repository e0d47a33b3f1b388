"""assign: exact streamed argmax against brute force, Gumbel-max against the softmax."""

import math

import pytest
import torch

from sdfm.transport import assign, c_transform, marginal
from tests.conftest import gen


def brute_scores(x, y, g):
    x, y, g = x.double(), y.double(), g.double()
    return x @ y.T + g - 0.5 * (y * y).sum(1)


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 1000, 5000])
def test_assign_equals_brute_force_float64(chunk_size):
    torch.manual_seed(0)
    y = torch.randn(1000, 6, dtype=torch.float64) * 2 + 3
    g = torch.randn(1000, dtype=torch.float64) * 4
    x = torch.randn(257, 6, dtype=torch.float64)
    ref = brute_scores(x, y, g).argmax(1)
    out = assign(x, y, g, chunk_size=chunk_size)
    assert out.dtype == torch.int64 and out.shape == (257,)
    assert torch.equal(out, ref)


def test_score_blocks_are_larger_on_cuda():
    """The default block holds 2^21 scores on the CPU (cache-sized) and 2^27 on CUDA (launch-bound
    otherwise); a given chunk_size wins on both, and the scorer passes the queries' device."""
    from sdfm.transport import _stream
    from sdfm.transport.scoring import Scorer

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only the type is read: no GPU needed
    assert _stream.chunk_size_for(4096, 10**6, 64) == (1 << 21) // 2048
    assert _stream.chunk_size_for(4096, 10**6, 64, device=cpu) == (1 << 21) // 2048
    assert _stream.chunk_size_for(4096, 10**6, 64, device=cuda) == (1 << 27) // 2048
    assert _stream.chunk_size_for(4096, 10**6, 64, chunk_size=999, device=cuda) == 999
    assert _stream.chunk_size_for(1, 5000, 64, device=cuda) == 5000  # never past the targets
    scorer = Scorer(torch.zeros(10**6, 64), 10**6)
    assert scorer.chunk(4096, cuda) == (1 << 27) // 2048 and scorer.chunk(4096) == 1024


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_assign_float32_matches_except_near_ties(offset):
    torch.manual_seed(1)
    y = torch.randn(3000, 16) + offset  # far from the origin: scores are centred internally
    g = torch.randn(3000, dtype=torch.float64)
    x = torch.randn(512, 16)
    s = brute_scores(x, y, g)
    ref = s.argmax(1)
    out = assign(x, y, g, chunk_size=333)
    top2 = s.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    mismatch = out != ref
    # Any mismatch must be a float32 near-tie; chosen score within round-off of the best.
    assert int(mismatch.sum()) <= 2
    chosen = s.gather(1, out[:, None])[:, 0]
    assert torch.all(top2[:, 0] - chosen <= 1e-3 * (1 + offset))
    assert torch.all(gap[mismatch] < 1e-2)


def test_assign_single_target_and_single_query():
    y = torch.randn(1, 3)
    assert assign(torch.randn(5, 3), y, torch.zeros(1)).tolist() == [0] * 5
    y = torch.randn(10, 3, dtype=torch.float64)
    x = torch.randn(1, 3, dtype=torch.float64)
    g = torch.randn(10, dtype=torch.float64)
    assert assign(x, y, g).item() == brute_scores(x, y, g).argmax(1).item()


def test_assign_accepts_numpy_and_integer_data():
    import numpy as np

    y = np.arange(12, dtype=np.uint8).reshape(6, 2)
    x = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    out = assign(x, y, np.zeros(6))
    ref = brute_scores(torch.from_numpy(x), torch.from_numpy(y).float(), torch.zeros(6)).argmax(1)
    assert torch.equal(out, ref)


def softmax_probs(x, y, g, eps, w=None):
    cost = 0.5 * torch.cdist(x.double(), y.double()).square()
    logits = (g.double() - cost) / eps
    if w is not None:
        logits = logits + torch.log(w.double() / w.sum())
    return torch.softmax(logits, dim=1)


@pytest.mark.parametrize("weighted", [False, True])
def test_gumbel_frequencies_match_softmax(weighted):
    torch.manual_seed(2)
    y = torch.randn(6, 2, dtype=torch.float64)
    g = torch.randn(6, dtype=torch.float64) * 0.3
    w = torch.tensor([1.0, 2.0, 3.0, 1.0, 0.5, 2.5], dtype=torch.float64) if weighted else None
    x0 = torch.randn(1, 2, dtype=torch.float64)
    n = 200_000
    x = x0.expand(n, 2).contiguous()
    eps = 0.7
    idx = assign(x, y, g, eps=eps, weights=w, generator=gen(3), chunk_size=4)
    freq = torch.bincount(idx, minlength=6).double() / n
    p = softmax_probs(x0, y, g, eps, w)[0]
    # Pearson chi-square goodness of fit, 5 degrees of freedom: the 0.999 quantile is 20.5.
    stat = float((n * (freq - p).square() / p).sum())
    assert stat < 20.5, (freq, p, stat)


def test_gumbel_is_deterministic_given_generator():
    y = torch.randn(50, 3)
    g = torch.zeros(50, dtype=torch.float64)
    x = torch.randn(100, 3)
    a = assign(x, y, g, eps=0.5, generator=gen(7))
    b = assign(x, y, g, eps=0.5, generator=gen(7))
    c = assign(x, y, g, eps=0.5, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_semidual_gradient_equals_autograd():
    """weights - marginal(x) is the gradient of F(g) = mean_i g^{c,eps}(x_i) + <b, g>."""
    torch.manual_seed(4)
    y = torch.randn(40, 3, dtype=torch.float64)
    w = torch.rand(40, dtype=torch.float64) + 0.2
    b = w / w.sum()
    x = torch.randn(300, 3, dtype=torch.float64)
    eps = 0.3
    g = (torch.randn(40, dtype=torch.float64) * 0.2).requires_grad_(True)
    cost = 0.5 * torch.cdist(x, y).square()
    ctrans = -eps * torch.logsumexp(torch.log(b) + (g - cost) / eps, dim=1)
    objective = ctrans.mean() + (b * g).sum()
    (grad,) = torch.autograd.grad(objective, g)
    ours = b - marginal(x, y, g.detach(), eps=eps, weights=w, chunk_size=7)
    torch.testing.assert_close(ours, grad, rtol=1e-10, atol=1e-12)
    # and the streamed value of the c-transform equals the dense one
    ours_c = c_transform(x, y, g.detach(), eps=eps, weights=w, chunk_size=7)
    torch.testing.assert_close(ours_c, ctrans.detach(), rtol=1e-10, atol=1e-10)


def test_hard_c_transform_and_marginal():
    torch.manual_seed(5)
    y = torch.randn(30, 2, dtype=torch.float64)
    g = torch.randn(30, dtype=torch.float64)
    x = torch.randn(100, 2, dtype=torch.float64)
    cost = 0.5 * torch.cdist(x, y).square()
    torch.testing.assert_close(c_transform(x, y, g, chunk_size=4), (cost - g).min(1).values)
    m = marginal(x, y, g)
    ref = torch.bincount((g - cost).argmax(1), minlength=30).double() / 100
    torch.testing.assert_close(m, ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": torch.full((2, 3), math.nan)}, "x"),
        ({"x": torch.randn(2, 4)}, "x"),
        ({"targets": torch.randn(0, 3)}, "targets"),
        ({"targets": torch.randn(5)}, "targets"),
        ({"targets": torch.tensor([[1.0, math.inf, 0.0]] * 5)}, "targets"),
        ({"potential": torch.zeros(4)}, "potential"),
        ({"potential": torch.full((5,), math.nan)}, "potential"),
        ({"eps": -1.0}, "eps"),
        ({"eps": "abc"}, "eps"),
        ({"weights": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])}, "weights"),
        ({"weights": torch.ones(3)}, "weights"),
        ({"targets": [["a", "b", "c"]] * 5}, "targets"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_inputs_raise_value_error_naming_argument(kwargs, match):
    args = {"x": torch.randn(2, 3), "targets": torch.randn(5, 3), "potential": torch.zeros(5)}
    extra = {k: v for k, v in kwargs.items() if k not in args}
    args.update({k: v for k, v in kwargs.items() if k in args})
    with pytest.raises(ValueError, match=match):
        assign(args["x"], args["targets"], args["potential"], **extra)


def test_laguerre_cells_prepared_once_matches_one_shot_functions():
    from sdfm.transport import LaguerreCells

    torch.manual_seed(6)
    y = torch.randn(500, 4) * 5 + 20
    g = torch.randn(500, dtype=torch.float64) * 3
    cells = LaguerreCells(y, g, chunk_size=97)
    for _ in range(3):
        x = torch.randn(128, 4)
        assert torch.equal(cells.assign(x), assign(x, y, g, chunk_size=97))
        torch.testing.assert_close(cells.c_transform(x), c_transform(x, y, g))
    x64 = torch.randn(64, 4, dtype=torch.float64)
    assert torch.equal(cells.assign(x64), brute_scores(x64, y, g).argmax(1))
    assert len(cells._cache) == 2  # one prepared bias per (device, dtype)
    counts, sq = cells.column_sums(x64, squares=True)
    assert torch.equal(counts, sq) and counts.sum() == 64
    soft = LaguerreCells(y, g, eps=2.0)
    s, q = soft.column_sums(x64, squares=True)
    p = softmax_probs(x64, y, g, 2.0)
    torch.testing.assert_close(s, p.sum(0))
    torch.testing.assert_close(q, (p * p).sum(0))


@pytest.mark.parametrize("score_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d,offset", [(3, 0.0), (64, 0.0), (200, 50.0)])
def test_low_precision_scores_are_exact(score_dtype, d, offset):
    # Near-ties on purpose: clusters of points 1e-3 apart, so bf16 scores alone would often pick
    # the wrong member; the re-scoring must recover the float64 argmax exactly.
    gen = torch.Generator().manual_seed(d)
    base = torch.randn(40, d, generator=gen, dtype=torch.float64)
    y = (
        base.repeat_interleave(25, 0) + 1e-3 * torch.randn(1000, d, generator=gen, dtype=torch.float64)
    ) + offset
    g = 0.01 * torch.randn(1000, generator=gen, dtype=torch.float64)
    x = torch.randn(700, d, generator=gen, dtype=torch.float64)
    scores = x @ y.T + g - 0.5 * (y * y).sum(1)
    ref = scores.argmax(1)
    top2 = scores.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-9
    for xx, yy in ((x, y), (x.float(), y.float())):
        out = assign(xx, yy, g, score_dtype=score_dtype, chunk_size=97)
        # reference: the float64 argmax of the data as given (float32 data promoted exactly)
        s64 = xx.double() @ yy.double().T + g - 0.5 * (yy.double() ** 2).sum(1)
        top2 = s64.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-9
        assert clear.float().mean() > 0.9
        assert torch.equal(out[clear], s64.argmax(1)[clear])
    # plain low-precision scores are wrong on some rows here: the test exercises the re-scoring
    centred = (y - y.mean(0)).to(score_dtype)
    naive = (x.to(score_dtype) @ centred.T).double() + g - 0.5 * (y * y).sum(1) + (x @ y.mean(0))[:, None]
    assert (naive.argmax(1) != ref).any()


def test_low_precision_argument_errors():
    y, g = torch.randn(10, 2), torch.zeros(10, dtype=torch.float64)
    with pytest.raises(ValueError, match="score_dtype"):
        assign(torch.randn(3, 2), y, g, score_dtype=torch.int8)
    with pytest.raises(ValueError, match="score_dtype"):
        assign(torch.randn(3, 2), y, g, eps=0.1, score_dtype=torch.bfloat16)


# --- class-conditional pairing (masked argmax) ------------------------------------------------------


def _masked_brute(x, y, g, xc, yc):
    scores = x.double() @ y.double().T + g.double() - 0.5 * y.double().square().sum(1)
    scores[xc[:, None] != yc[None, :]] = float("-inf")
    return scores.argmax(1)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_class_conditional_assign_equals_masked_brute_force(chunk_size):
    from sdfm.transport import LaguerreCells, assign

    g = torch.Generator().manual_seed(11)
    y = torch.randn(300, 5, generator=g, dtype=torch.float64)
    pot = torch.randn(300, generator=g, dtype=torch.float64)
    yc = torch.randint(0, 4, (300,), generator=g)
    x = torch.randn(5000, 5, generator=g, dtype=torch.float64)  # > one row block of 2048
    xc = torch.randint(0, 4, (5000,), generator=g)
    idx = assign(x, y, pot, classes=xc, target_classes=yc, chunk_size=chunk_size)
    torch.testing.assert_close(idx, _masked_brute(x, y, pot, xc, yc))
    assert bool((yc[idx] == xc).all())
    # unconditional pairing is unchanged, and differs (classes matter)
    cells = LaguerreCells(y, pot, chunk_size=chunk_size)
    plain = cells.assign(x)
    torch.testing.assert_close(plain, _masked_brute(x, y, pot, torch.zeros_like(xc), torch.zeros_like(yc)))
    assert bool((plain != idx).any())


def test_class_conditional_gumbel_matches_masked_softmax():
    from sdfm.transport import LaguerreCells

    g = torch.Generator().manual_seed(12)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64)
    pot = torch.randn(6, generator=g, dtype=torch.float64)
    yc = torch.tensor([0, 1, 0, 1, 0, 1])
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64).expand(40000, 2).contiguous()
    xc = torch.ones(40000, dtype=torch.long)
    eps = 0.7
    cells = LaguerreCells(y, pot, eps=eps, classes=yc)
    idx = cells.assign(x, generator=torch.Generator().manual_seed(3), classes=xc)
    freq = torch.bincount(idx, minlength=6).double() / idx.numel()
    logits = (pot - 0.5 * (x[0] - y).square().sum(1)) / eps
    logits[yc != 1] = float("-inf")
    prob = torch.softmax(logits, 0)
    assert float(freq[yc != 1].sum()) == 0.0
    torch.testing.assert_close(freq, prob, atol=0.01, rtol=0)


def test_class_conditional_errors():
    from sdfm.transport import LaguerreCells, assign

    y, pot = torch.randn(10, 2), torch.zeros(10)
    yc = torch.tensor([0] * 5 + [2] * 5)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"no target has class \[1\]"):
        assign(x, y, pot, classes=torch.tensor([0, 1, 2, 1]), target_classes=yc)
    with pytest.raises(ValueError, match="need the class of every noise"):
        LaguerreCells(y, pot, classes=yc).assign(x)
    with pytest.raises(ValueError, match="no target classes"):
        LaguerreCells(y, pot).assign(x, classes=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"classes: expected shape \[4\]"):
        assign(x, y, pot, classes=torch.zeros(3, dtype=torch.long), target_classes=yc)
    with pytest.raises(ValueError, match="integer class labels"):
        assign(x, y, pot, classes=torch.zeros(4), target_classes=yc)
    with pytest.raises(ValueError, match="low-precision"):
        LaguerreCells(y, pot, classes=yc, score_dtype=torch.bfloat16)
