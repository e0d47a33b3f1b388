"""Flow-matching pieces (layer L1): the linear path (t = 0 noise, t = 1 data), time samplers, the
flow-matching loss and the MeanFlow loss, and the registry of training objectives built on them."""

from sdfm.flow.losses import LossStats, flow_matching_loss
from sdfm.flow.meanflow import MeanFlowConfig, meanflow_loss, meanflow_target, meanflow_times
from sdfm.flow.objectives import OBJECTIVES, Objective, make_objective, register_objective
from sdfm.flow.paths import interpolate, target_velocity
from sdfm.flow.times import TIME_SAMPLERS, get_time_sampler, logit_normal, uniform

__all__ = [
    "OBJECTIVES",
    "TIME_SAMPLERS",
    "LossStats",
    "MeanFlowConfig",
    "Objective",
    "flow_matching_loss",
    "get_time_sampler",
    "interpolate",
    "logit_normal",
    "make_objective",
    "meanflow_loss",
    "meanflow_target",
    "meanflow_times",
    "register_objective",
    "target_velocity",
    "uniform",
]
