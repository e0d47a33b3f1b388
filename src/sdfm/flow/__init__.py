"""Flow-matching pieces (layer L1): the linear path (t = 0 noise, t = 1 data), time samplers, the
flow-matching loss and the MeanFlow loss."""

from sdfm.flow.losses import LossStats, flow_matching_loss
from sdfm.flow.meanflow import MeanFlowConfig, meanflow_loss, meanflow_target, meanflow_times
from sdfm.flow.paths import interpolate, target_velocity
from sdfm.flow.times import TIME_SAMPLERS, get_time_sampler, logit_normal, uniform

__all__ = [
    "TIME_SAMPLERS",
    "LossStats",
    "MeanFlowConfig",
    "flow_matching_loss",
    "get_time_sampler",
    "interpolate",
    "logit_normal",
    "meanflow_loss",
    "meanflow_target",
    "meanflow_times",
    "target_velocity",
    "uniform",
]
