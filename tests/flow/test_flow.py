"""Linear path, time samplers and the flow-matching loss against closed forms."""

import math

import pytest
import torch

from sdfm.flow import (
    flow_matching_loss,
    get_time_sampler,
    interpolate,
    logit_normal,
    target_velocity,
    uniform,
)
from tests.conftest import gen


def test_path_endpoints_and_velocity():
    x0, x1 = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(5)), x0)
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(5)), x1)
    t = torch.rand(5)
    torch.testing.assert_close(interpolate(x0, x1, t), (1 - t)[:, None] * x0 + t[:, None] * x1)
    torch.testing.assert_close(target_velocity(x0, x1), x1 - x0)
    with pytest.raises(ValueError, match="t"):
        interpolate(x0, x1, torch.rand(4))


def test_time_samplers():
    t = uniform(100000, generator=gen(0))
    assert 0 <= float(t.min()) and float(t.max()) <= 1 and abs(float(t.mean()) - 0.5) < 0.005
    s = logit_normal(100000, generator=gen(0))
    assert abs(float(torch.logit(s).std()) - 1.0) < 0.01 and abs(float(s.median()) - 0.5) < 0.01
    with pytest.raises(ValueError, match="time_sampler"):
        get_time_sampler("beta")


def test_loss_closed_form_for_a_linear_field():
    # v(x, t) = a x + b t: the loss is the mean of |a x_t + b t - (x1 - x0)|^2, written out by hand.
    a, b = 0.3, torch.tensor([1.0, -2.0])

    def model(x, t, cond=None):
        return a * x + b * t[:, None]

    x0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x1 = torch.tensor([[3.0, 1.0], [-1.0, 0.0]])
    t = torch.tensor([0.25, 0.5])
    loss, stats = flow_matching_loss(model, x0, x1, t)
    total = 0.0
    for i in range(2):
        ti = float(t[i])
        xt = [(1 - ti) * float(x0[i, k]) + ti * float(x1[i, k]) for k in range(2)]
        for k in range(2):
            r = a * xt[k] + float(b[k]) * ti - (float(x1[i, k]) - float(x0[i, k]))
            total += r * r
    assert float(loss) == pytest.approx(total / 4, rel=1e-6)
    assert float(stats.transport_cost) == pytest.approx(float(((x1 - x0) ** 2).sum(1).mean()), rel=1e-6)
    assert math.isfinite(float(stats.loss))


def test_loss_is_zero_for_the_true_field_of_a_deterministic_pair():
    # Single pair (x0, x1): the exact velocity along the line is x1 - x0 everywhere.
    x0, x1 = torch.zeros(3, 2), torch.ones(3, 2)
    loss, _ = flow_matching_loss(lambda x, t, c=None: torch.ones_like(x), x0, x1, torch.rand(3))
    assert float(loss) == 0.0
    with pytest.raises(ValueError, match="model"):
        flow_matching_loss(lambda x, t, c=None: x[:, :1], x0, x1, torch.rand(3))
