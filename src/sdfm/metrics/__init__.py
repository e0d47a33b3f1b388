"""Metrics (layer L1): sample distances (exact W2 through POT, energy distance, MMD) and properties of
learned flows (path curvature, transport cost)."""

from sdfm.metrics.distances import energy_distance, mmd_rbf, wasserstein2
from sdfm.metrics.flows import PathStats, path_stats

__all__ = ["PathStats", "energy_distance", "mmd_rbf", "path_stats", "wasserstein2"]
