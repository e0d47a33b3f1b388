"""Training objectives (layer L1), each registered under its name: what a training step draws besides
the pairs (times) and the loss it minimises. :func:`sdfm.train.train` calls ``objective.times`` and
``objective.loss`` and never branches on the name; ``sdfm train --objective`` takes its choices from
:data:`OBJECTIVES`. Adding an objective is one new class here (or in its own module) with
``@register_objective("name")``, plus its test.

- ``flow``: flow matching of a velocity field v(x_t, t) on the linear path (time sampler of the
  config: uniform or logit-normal).
- ``meanflow``: MeanFlow (Geng et al. 2025), a model of the average velocity u(x_t, t, r) for one-
  and few-step sampling (:mod:`sdfm.flow.meanflow`; the model is built with ``mean_flow=True``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdfm.flow.losses import LossStats, flow_matching_loss
from sdfm.flow.meanflow import MeanFlowConfig, meanflow_loss, meanflow_times
from sdfm.flow.times import get_time_sampler

#: name -> constructor from a training config (anything with the fields the objective reads)
OBJECTIVES: dict[str, Callable[[object], Objective]] = {}


def register_objective(name: str):
    """Class decorator: registers an objective constructor (called with the training config)."""

    def add(cls):
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return add


def make_objective(name: str, config) -> Objective:
    """The objective ``name`` for a training config; ValueError naming the choices."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name](config)


class Objective:
    """What a training step needs from an objective.

    Attributes:
        name: the registered name.
        model_config: entries the model config needs for this objective (e.g. ``mean_flow``).
    """

    name = ""
    model_config: dict = {}

    def check_model(self, model) -> None:
        """ValueError when ``model`` cannot be trained with this objective."""

    def times(self, n: int, *, generator, device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The times of a batch of n pairs: (t [n], r [n] or None)."""
        raise NotImplementedError

    def loss(self, forward, x0, x1, t, r, cond, *, model) -> tuple[torch.Tensor, LossStats]:
        """(loss, stats) of a batch; ``forward`` is the (possibly compiled / DDP-wrapped) model,
        ``model`` the plain module."""
        raise NotImplementedError


@register_objective("flow")
class FlowMatching(Objective):
    """|v(x_t, t, cond) - (x1 - x0)|^2 with t from the config's time sampler."""

    def __init__(self, config):
        self.sample_t = get_time_sampler(config.time_sampler)

    def times(self, n, *, generator, device, dtype):
        return self.sample_t(n, generator=generator, device=device, dtype=dtype), None

    def loss(self, forward, x0, x1, t, r, cond, *, model):
        return flow_matching_loss(forward, x0, x1, t, cond)


@register_objective("meanflow")
class MeanFlow(Objective):
    """MeanFlow's loss of an average-velocity model u(x_t, t, r) (``config.meanflow``)."""

    model_config = {"mean_flow": True}

    def __init__(self, config):
        self.config = getattr(config, "meanflow", None) or MeanFlowConfig()

    def check_model(self, model) -> None:
        if getattr(getattr(model, "config", None), "mean_flow", True) is False:
            raise ValueError("objective: 'meanflow' needs a model built with mean_flow=True (it takes r)")

    def times(self, n, *, generator, device, dtype):
        return meanflow_times(n, self.config, generator=generator, device=device, dtype=dtype)

    def loss(self, forward, x0, x1, t, r, cond, *, model):
        # gradient through `forward` (compiled / DDP wrapper), JVP target through the plain module
        return meanflow_loss(forward, x0, x1, t, r, cond, config=self.config, jvp_model=model)
