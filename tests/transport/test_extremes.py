"""Numerical extremes: every case either works, with the potential's chi2 checked by an independent
brute-force count (float64 argmax or softmax written here, duplicates merged by numpy), or is refused
with its reason. Nothing turns NaN silently."""

import numpy as np
import pytest
import torch

from sdfm.cli.main import main
from sdfm.transport import SemidiscreteSolver, solve_per_class
from tests.conftest import gen


def _base(n=300, d=3):
    return torch.randn(n, d, generator=gen(0), dtype=torch.float64)


CASES = {
    "offset 1e6": lambda: _base() + 1e6,
    "scale 1e-6": lambda: _base() * 1e-6,
    "all identical": lambda: torch.ones(50, 3, dtype=torch.float64),
    "half identical": lambda: torch.cat([torch.ones(150, 3, dtype=torch.float64), _base(150)]),
    "N = 1": lambda: _base(1),
    "N = 2": lambda: _base(2),
    "d = 1": lambda: _base(300, 1),
    "d = 4000, N = 50": lambda: torch.randn(50, 4000, generator=gen(3), dtype=torch.float64),
    "float16": lambda: _base().half(),
}


def independent_chi2(y: torch.Tensor, g: torch.Tensor, eps: float, samples: int = 1 << 16) -> float:
    """chi2(m || uniform) over groups of identical rows, m counted from fresh float64 noise by a plain
    argmax (eps = 0) or softmax (eps > 0) of <x, y_j> + g_j - |y_j|^2 / 2, bias-corrected."""
    y = y.double()
    _, groups = np.unique(y.numpy(), axis=0, return_inverse=True)
    groups = torch.from_numpy(groups.reshape(-1))
    size = int(groups.max()) + 1
    b = torch.zeros(size, dtype=torch.float64).index_add_(
        0, groups, torch.full((y.shape[0],), 1 / y.shape[0], dtype=torch.float64)
    )
    shift = g.double() - 0.5 * (y * y).sum(1)
    mass = torch.zeros(size, dtype=torch.float64)
    noise = torch.Generator().manual_seed(12345)
    for _ in range(samples // 8192):
        x = torch.randn(8192, y.shape[1], generator=noise, dtype=torch.float64)
        scores = x @ y.T + shift
        if eps == 0:
            p = torch.zeros_like(scores).scatter_(1, scores.argmax(1, keepdim=True), 1.0)
        else:
            p = torch.softmax(scores / eps, dim=1)
        mass.index_add_(0, groups, p.sum(0))
    mass /= samples
    bias = (size - 1) / samples if eps == 0 else 0.0
    return float(((mass - b) ** 2 / b).sum()) - bias


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("case", list(CASES))
def test_extreme_targets_are_solved(case, eps):
    y = CASES[case]()
    res = SemidiscreteSolver(eps=eps).solve(y, generator=gen(1))
    assert torch.isfinite(res.potential).all() and res.converged, (case, res.chi2)
    assert independent_chi2(y, res.potential, res.eps) <= 0.1, case
    if case.startswith("offset"):  # the relative eps does not depend on where the data sit
        assert res.eps == pytest.approx(
            SemidiscreteSolver(eps=eps).solve(y - 1e6, generator=gen(1)).eps, rel=1e-6
        )


def test_labels_one_class_and_a_class_of_one_point(tmp_path, capsys):
    y = _base(200, 2).float()
    labels = torch.zeros(200, dtype=torch.long)
    labels[7] = 1  # a class of one point
    res = solve_per_class(SemidiscreteSolver(), y, labels, generator=gen(1))
    assert res.converged and torch.isfinite(res.potential).all()
    one = tmp_path / "one.npz"
    np.savez(one, x=y.numpy(), y=np.zeros(200, dtype=np.int64))
    args = [
        "train",
        "--data",
        str(one),
        "--coupling",
        "semidiscrete",
        "--conditional",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*args, "--steps", "2", "--quiet"]) == 2
    assert "single class" in capsys.readouterr().err
    two = tmp_path / "two.npz"
    np.savez(two, x=y.numpy(), y=labels.numpy())
    args = [
        "train",
        "--data",
        str(two),
        "--coupling",
        "semidiscrete",
        "--conditional",
        "--out",
        str(tmp_path / "s"),
    ]
    assert (
        main([*args, "--steps", "4", "--batch-size", "16", "--width", "16", "--depth", "1", "--quiet"]) == 0
    )


@pytest.mark.parametrize("case", ["offset 1e6", "all identical", "N = 1", "N = 2", "float16", "d = 1"])
def test_training_and_sampling_on_extreme_data(tmp_path, case):
    """``sdfm train`` (semidiscrete, default normalisation) and ``sdfm sample`` on the extremes: finite
    samples back in data units."""
    y = CASES[case]().numpy()
    path = tmp_path / "x.npy"
    np.save(path, y)
    run = tmp_path / "run"
    args = ["train", "--data", str(path), "--coupling", "semidiscrete", "--out", str(run), "--quiet"]
    assert main([*args, "--steps", "20", "--batch-size", "16", "--width", "16", "--depth", "1"]) == 0
    out = tmp_path / "s.npy"
    assert main(["sample", "--run", str(run), "--out", str(out), "--num", "64"]) == 0
    samples = np.load(out)
    assert samples.shape == (64, y.shape[1]) and np.isfinite(samples).all()
    centre = y.astype(np.float64).mean(0)
    spread = float(y.astype(np.float64).std()) or 1.0  # (identical points: the normalisation's scale is 1)
    assert np.abs(samples.mean(0) - centre).max() < 20 * spread  # in data units, not normalised ones


def test_solver_stops_on_non_finite_potential():
    """Targets at 1e200 overflow |y|^2: the solve stops with the step named instead of returning NaN."""
    y = torch.tensor([[1e200, 0.0], [-1e200, 0.0], [0.0, 1e200]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"NaN or Inf|contains"):
        SemidiscreteSolver().solve(y, generator=gen(0))
