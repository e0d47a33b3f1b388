"""MeanFlow (Geng et al. 2025): a network u(x, t, r) of the *average* velocity, for one- and few-step
sampling (arXiv 2509.25519).

Convention. sdfm puts noise at t = 0 and data at t = 1 (:mod:`sdfm.flow.paths`); MeanFlow puts noise at
1. This module is the one place where the two meet: :func:`meanflow_times` draws (t, r) as MeanFlow does
and converts them, and everything else is written in sdfm's convention:

    u(x_t, t, r) = (x_r - x_t) / (r - t) = 1/(r - t) int_t^r v(x_s, s) ds,      0 <= t <= r <= 1,

the average velocity from the point x_t at time t to the later time r (closer to the data).
Differentiating (r - t) u = int_t^r v in t along the path gives the MeanFlow identity

    u(x_t, t, r) = v(x_t, t) + (r - t) d/dt u(x_t, t, r),

where d/dt = v . grad_x + partial_t is the total derivative (one forward-mode JVP along the tangent
(v, 1, 0) of (x, t, r)). With r = t it is plain flow matching. Sampling: x_r = x_t + (r - t) u(x_t, t, r),
so one step is x1 = x0 + u(x0, 0, 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from sdfm.flow.losses import LossStats, transport_cost
from sdfm.flow.paths import _expand, interpolate, target_velocity


@dataclass(frozen=True)
class MeanFlowConfig:
    """Hyper-parameters of the MeanFlow objective (defaults from Geng et al. 2025).

    Attributes:
        equal_fraction: fraction of samples with r = t (their target is the plain flow-matching one).
        mean, std: logit-normal law of the two times, *in MeanFlow's convention* (noise at 1); converted
            by :func:`meanflow_times`.
        adaptive_p: power of the adaptive loss weight 1 / (|delta|^2 + adaptive_c)^p (0 = plain MSE).
        adaptive_c: its offset.
    """

    equal_fraction: float = 0.75
    mean: float = -0.4
    std: float = 1.0
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3

    def __post_init__(self):
        if not 0.0 <= self.equal_fraction <= 1.0:
            raise ValueError(f"equal_fraction: expected a number in [0, 1], got {self.equal_fraction!r}")
        if not (math.isfinite(self.mean) and self.std > 0):
            raise ValueError(
                f"mean, std: expected a finite mean and std > 0, got {self.mean!r}, {self.std!r}"
            )
        if not (self.adaptive_p >= 0 and self.adaptive_c > 0):
            raise ValueError(
                "adaptive_p, adaptive_c: expected p >= 0 and c > 0, "
                f"got {self.adaptive_p!r}, {self.adaptive_c!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def meanflow_times(
    n: int,
    config: MeanFlowConfig = MeanFlowConfig(),
    *,
    generator: torch.Generator | None = None,
    device="cpu",
    dtype=torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r) [n] each, t <= r, in sdfm's convention (t = 0 noise).

    MeanFlow draws two logit-normal times, takes t' = max and r' = min (noise at t' = 1), and sets
    r' = t' for a fraction ``equal_fraction`` of the samples. Here t = 1 - t' and r = 1 - r'.
    """
    z = torch.randn(2, n, generator=generator, device=device, dtype=dtype)
    a = torch.sigmoid(config.mean + config.std * z)  # MeanFlow's convention: noise at 1
    t_mf, r_mf = a.max(dim=0).values, a.min(dim=0).values
    equal = torch.rand(n, generator=generator, device=device, dtype=dtype) < config.equal_fraction
    r_mf = torch.where(equal, t_mf, r_mf)
    return 1.0 - t_mf, 1.0 - r_mf  # the one conversion to sdfm's convention


def meanflow_target(
    model, xt: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v: torch.Tensor, cond=None
) -> torch.Tensor:
    """sg(u_tgt) = v + (r - t) d/dt u(x_t, t, r), with d/dt u by ``torch.func.jvp`` along (v, 1, 0).

    Computed in an fp32 island (autocast off, inputs cast to float32, or kept in float64) under
    ``torch.no_grad``: the target
    is a constant of the loss, and forward-mode AD of a bf16 network is too coarse for it. ``model`` is
    the plain module (not a DDP or compiled wrapper: the JVP needs no gradient synchronisation).

    Returns:
        The target [n, d] in float32 (float64 for float64 inputs).
    """
    device_type = xt.device.type
    dtype = torch.promote_types(xt.dtype, torch.float32)  # float32, or float64 for float64 inputs
    target = v.to(dtype).clone()
    # rows with r = t need no JVP (their target is v): with MeanFlow's 75% of them, 4x less work
    rows = torch.nonzero(r != t).squeeze(1)
    if rows.numel() == 0:
        return target
    x32, t32, r32, v32 = (a[rows].to(dtype) for a in (xt, t, r, v))
    c = None if cond is None else cond[rows]

    def u(x, t_, r_):
        return model(x, t_, c, r=r_).to(dtype)

    with torch.no_grad(), torch.autocast(device_type=device_type, enabled=False):
        _, dudt = torch.func.jvp(u, (x32, t32, r32), (v32, torch.ones_like(t32), torch.zeros_like(r32)))
    target[rows] += _expand(r32 - t32, dudt) * dudt
    return target


def meanflow_loss(
    model,
    x0: torch.Tensor,
    x1: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    cond: torch.Tensor | None = None,
    *,
    config: MeanFlowConfig = MeanFlowConfig(),
    jvp_model=None,
) -> tuple[torch.Tensor, LossStats]:
    """The MeanFlow loss: mean_i w_i |u(x_t, t, r) - sg(u_tgt)|^2 with w_i = sg(1 / (|delta_i|^2 + c)^p).

    The gradient flows through one ordinary forward of ``model`` (which may be wrapped by DDP,
    ``torch.compile`` or run under bf16 autocast); the target comes from a separate no-grad JVP of
    ``jvp_model`` (default ``model``). Under DDP pass ``model=ddp_model, jvp_model=ddp_model.module``:
    the gradient path goes through DDP's forward, so its reducer sees the graph and synchronises the
    gradients as usual; the JVP touches no parameter gradients. (Running the JVP through DDP or taking
    the gradient from the JVP's primal output of ``.module`` would bypass the reducer and silently
    train each rank on its own.)

    Args:
        model: ``u(x [n, d], t [n], cond, r=r [n]) -> [n, d]`` (a model built with ``mean_flow=True``).
        x0, x1: paired noise and data [n, d]; t, r: times [n] with t <= r (:func:`meanflow_times`).
        cond: labels or condition vectors, or None.

    Returns:
        The scalar loss and :class:`LossStats` whose ``loss`` is the *unweighted* mean squared error per
        dimension (the weighted objective is close to 1 by construction and says little).
    """
    if t.shape != r.shape:
        raise ValueError(f"r: shape {list(r.shape)} differs from t's {list(t.shape)}")
    if bool((r < t).any()):
        raise ValueError("r: expected r >= t (sdfm's convention: t = 0 noise, the average runs towards data)")
    xt = interpolate(x0, x1, t)
    v = target_velocity(x0, x1)
    target = meanflow_target(jvp_model if jvp_model is not None else model, xt, t, r, v, cond)
    u = model(xt, t, cond, r=r)
    if u.shape != target.shape:
        raise ValueError(f"model: returned shape {list(u.shape)}, expected {list(target.shape)}")
    sq = (u.float() - target).pow(2).flatten(1).sum(dim=1)
    weight = (sq.detach() + config.adaptive_c).pow(-config.adaptive_p) if config.adaptive_p > 0 else 1.0
    loss = (weight * sq).mean()
    stats = LossStats(loss=sq.detach().mean() / u[0].numel(), transport_cost=transport_cost(v))
    return loss, stats
