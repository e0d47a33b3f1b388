"""Metrics against closed forms: W2 of translations and in 1-D, zero distances, straight-path curvature."""

import math

import pytest
import torch

from sdfm.metrics import energy_distance, mmd_rbf, path_stats, wasserstein2
from tests.conftest import gen


def test_w2_of_a_translation_is_the_shift():
    x = torch.randn(300, 3, generator=gen(0), dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert wasserstein2(x, x + shift) == pytest.approx(float(shift.norm()), rel=1e-9)
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-12)


def test_w2_in_one_dimension_is_the_quantile_coupling():
    x = torch.randn(500, 1, generator=gen(1), dtype=torch.float64)
    y = 2 * torch.rand(500, 1, generator=gen(2), dtype=torch.float64) + 1
    expected = math.sqrt(float((x.sort(0).values - y.sort(0).values).square().mean()))
    assert wasserstein2(x, y) == pytest.approx(expected, rel=1e-9)


def test_w2_between_gaussians_close_to_closed_form():
    # N(0, I) vs N(m, 4 I) in 2-D: W2^2 = |m|^2 + d (2 - 1)^2 = |m|^2 + 2; finite samples add a bias.
    x = torch.randn(2000, 2, generator=gen(3), dtype=torch.float64)
    y = 2 * torch.randn(2000, 2, generator=gen(4), dtype=torch.float64) + torch.tensor([1.0, 1.0])
    assert wasserstein2(x, y) == pytest.approx(2.0, abs=0.15)


def test_energy_and_mmd_zero_for_identical_sets_positive_otherwise():
    x = torch.randn(400, 2, generator=gen(5))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-9)
    y = x + 1.0
    assert energy_distance(x, y) > 0.1 and mmd_rbf(x, y) > 0.01
    # energy distance of two point masses at distance r is 2r
    assert energy_distance(torch.zeros(5, 2), torch.full((7, 2), 3.0)) == pytest.approx(2 * 3 * math.sqrt(2))


def test_bad_inputs():
    with pytest.raises(ValueError, match="y"):
        wasserstein2(torch.randn(4, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="x"):
        energy_distance(torch.full((3, 2), float("nan")), torch.randn(3, 2))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(torch.randn(3, 2), torch.randn(3, 2), bandwidth=-1.0)


def test_curvature_of_straight_and_curved_fields():
    x0 = torch.randn(64, 2, generator=gen(6), dtype=torch.float64)
    shift = torch.tensor([2.0, -1.0], dtype=torch.float64)
    straight = path_stats(lambda x, t, c=None: shift.expand_as(x), x0, steps=8)
    assert straight.curvature == pytest.approx(0.0, abs=1e-20)
    assert straight.transport_cost == pytest.approx(5.0)

    def rotation(x, t, c=None):  # dx/dt = J x: circular arcs, never straight
        return torch.stack([-x[:, 1], x[:, 0]], dim=1)

    curved = path_stats(rotation, x0, steps=32)
    # closed form: x(t) = R(t) x0, chord = (R(1) - I) x0, v(t) = J R(t) x0, and with u = x0 / |x0|
    # |v - chord|^2 = |x0|^2 (1 + |(R(1) - I) u|^2 - 2 <J R(t) u, (R(1) - I) u>)
    ts = torch.arange(32, dtype=torch.float64) / 32
    r2 = x0.square().sum(1).mean()
    # for a unit u: <J R(t) u, R(1) u> = sin(1 - t), <J R(t) u, u> = -sin(t), |(R(1) - I) u|^2 = 2 - 2 cos 1
    inner = torch.sin(1 - ts) + torch.sin(ts)
    chord2 = 2 - 2 * math.cos(1.0)
    expected = float((r2 * (1 + chord2 - 2 * inner)).mean())
    assert curved.curvature == pytest.approx(expected, rel=1e-6)


# --- classifier feature space and Frechet distance -------------------------------------------------


def test_frechet_from_moments_matches_gaussian_w2_closed_form():
    import numpy as np

    from sdfm.metrics import frechet_from_moments

    # commuting covariances: W2^2 = |m1 - m2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_from_moments(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # a rotated pair (non-diagonal, still commuting): invariant under the common rotation
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    got = frechet_from_moments(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_feature_sets():
    from sdfm.metrics import frechet_distance

    x = torch.randn(500, 4, generator=gen(6), dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # a pure shift by s adds |s|^2 exactly (same covariance)
    s = torch.tensor([1.0, 2.0, 0.0, -1.0], dtype=torch.float64)
    assert frechet_distance(x, x + s) == pytest.approx(float(s.square().sum()), rel=1e-6)
    with pytest.raises(ValueError, match="features"):
        frechet_distance(x, torch.randn(10, 3))


def test_classifier_learns_separable_classes_and_scores_samples():
    from sdfm.metrics import accuracy, classifier_features, fit_classifier, label_tv

    g = gen(7)
    labels = torch.randint(0, 3, (600,), generator=g)
    centers = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    x = centers[labels] + 0.5 * torch.randn(600, 2, generator=g)
    clf = fit_classifier(x, labels, steps=300, seed=0)
    assert accuracy(clf, x, labels) > 0.98
    assert accuracy(clf, x, (labels + 1) % 3) < 0.05
    assert classifier_features(clf, x).shape == (600, clf.config.features)
    freq = torch.bincount(labels).double() / 600
    assert label_tv(clf, x, freq) < 0.02
    only_first = centers[0] + 0.5 * torch.randn(200, 2, generator=g)  # mode collapse onto class 0
    assert label_tv(clf, only_first, freq) == pytest.approx(1 - float(freq[0]), abs=0.02)
    # deterministic for a seed
    again = fit_classifier(x, labels, steps=300, seed=0)
    torch.testing.assert_close(classifier_features(again, x), classifier_features(clf, x))


def test_image_classifier_reshapes_and_checks_shapes():
    from sdfm.metrics import ClassifierConfig, FeatureClassifier

    clf = FeatureClassifier(ClassifierConfig(dim=64, num_classes=10, image_shape=(1, 8, 8)))
    assert clf(torch.randn(5, 64)).shape == (5, 10)
    with pytest.raises(ValueError, match="x: expected"):
        clf(torch.randn(5, 63))
    with pytest.raises(ValueError, match="image_shape"):
        ClassifierConfig(dim=63, num_classes=10, image_shape=(1, 8, 8))


def test_fid_hook_clear_errors(tmp_path):
    from sdfm.metrics import inception_fid

    x = torch.rand(4, 64)
    with pytest.raises(ValueError, match="not a file"):
        inception_fid(x, x, image_shape=(1, 8, 8), weights=tmp_path / "missing.pth")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    try:
        import torchmetrics.image.fid  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"sdfm\[fid\]"):
            inception_fid(x, x, image_shape=(1, 8, 8), weights=weights)
