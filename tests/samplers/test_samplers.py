"""ODE samplers on analytic fields: accuracy orders, exact NFE counts, trajectories, dopri5."""

import math

import pytest
import torch

from sdfm.samplers import SAMPLERS, integrate


def linear_field(x, t, cond=None):
    return -x  # x(t) = x0 e^{-t}


def time_field(x, t, cond=None):
    return (2 * t)[:, None].expand_as(x).to(x.dtype)  # x(t) = x0 + t^2


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_order_and_nfe(method, order):
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    exact = x0 * math.exp(-1)
    errors = []
    for steps in (8, 16):
        res = integrate(linear_field, x0, steps=steps, method=method)
        assert res.nfe == steps * SAMPLERS[method][1]
        errors.append(float((res.x - exact).abs().max()))
    rate = math.log2(errors[0] / errors[1])
    assert abs(rate - order) < 0.3, (method, rate)
    assert errors[1] < {1: 3e-2, 2: 1e-3, 4: 1e-7}[order]


def test_straight_field_is_exact_in_one_euler_step():
    x0 = torch.randn(10, 3)
    shift = torch.randn(3)
    res = integrate(lambda x, t, c=None: shift.expand_as(x), x0, steps=1)
    torch.testing.assert_close(res.x, x0 + shift)
    assert res.nfe == 1


def test_time_dependent_field_and_trajectory():
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    res = integrate(time_field, x0, steps=4, method="heun", trajectory=True)
    torch.testing.assert_close(res.x, torch.ones(4, 2, dtype=torch.float64))  # heun is exact for t^2
    assert res.trajectory.shape == (5, 4, 2) and res.times.shape == (5,)
    torch.testing.assert_close(res.trajectory[2], torch.full((4, 2), 0.25, dtype=torch.float64))


def test_dopri5_accuracy_and_counted_nfe():
    x0 = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    res = integrate(linear_field, x0, method="dopri5", rtol=1e-8, atol=1e-8, trajectory=True)
    torch.testing.assert_close(res.x, x0 * math.exp(-1), atol=1e-7, rtol=0)
    assert res.nfe >= 6 and res.trajectory.shape[1:] == (1, 2)
    calls = []

    def counted(x, t, c=None):
        calls.append(1)
        return -x

    assert integrate(counted, x0, method="dopri5").nfe == len(calls)


def test_cond_is_passed_and_bad_arguments():
    seen = []

    def field(x, t, cond=None):
        seen.append(cond)
        return torch.zeros_like(x)

    integrate(field, torch.zeros(3, 2), steps=2, cond=torch.tensor([1, 2, 3]))
    assert all(torch.equal(c, torch.tensor([1, 2, 3])) for c in seen)
    with pytest.raises(ValueError, match="method"):
        integrate(field, torch.zeros(3, 2), method="rk45")
    with pytest.raises(ValueError, match="steps"):
        integrate(field, torch.zeros(3, 2), steps=0)


class _LabelField(torch.nn.Module):
    """v(x, t, c) = c + 1 for labels c >= 0 and 0 for the null label -1."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond=None):
        v = (cond.to(x.dtype) + 1.0) * (cond >= 0).to(x.dtype)
        return v[:, None].expand_as(x) + self.w


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_classifier_free_guidance(method):
    from sdfm.samplers import integrate

    x0 = torch.zeros(6, 2)
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = integrate(_LabelField(), x0, steps=2, method=method, cond=cond)
    torch.testing.assert_close(plain.x, (cond + 1.0)[:, None].expand(6, 2))
    guided = integrate(_LabelField(), x0, steps=2, method=method, cond=cond, guidance=2.5)
    # v_null + w (v_cond - v_null) = 2.5 (c + 1): constant field, exact for every solver
    torch.testing.assert_close(guided.x, 2.5 * (cond + 1.0)[:, None].expand(6, 2))
    assert guided.nfe == 2 * plain.nfe
    same = integrate(_LabelField(), x0, steps=2, method=method, cond=cond, guidance=1.0)
    assert same.nfe == plain.nfe
    with pytest.raises(ValueError, match="guidance"):
        integrate(_LabelField(), x0, steps=2, method=method, guidance=2.0)
