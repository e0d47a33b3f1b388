"""Metrics (layer L1): sample distances (exact W2 through POT, energy distance, MMD), properties of
learned flows (path curvature, transport cost), scores in the feature space of a small classifier
trained on real data, and a hook for real FID (optional extra)."""

from sdfm.metrics.classifier import (
    ClassifierConfig,
    FeatureClassifier,
    accuracy,
    classifier_features,
    classifier_predict,
    fit_classifier,
    frechet_distance,
    frechet_from_moments,
    label_tv,
)
from sdfm.metrics.distances import energy_distance, mmd_rbf, psnr, wasserstein2
from sdfm.metrics.fid import inception_fid
from sdfm.metrics.flows import PathStats, path_stats

__all__ = [
    "ClassifierConfig",
    "FeatureClassifier",
    "PathStats",
    "accuracy",
    "classifier_features",
    "classifier_predict",
    "energy_distance",
    "fit_classifier",
    "frechet_distance",
    "frechet_from_moments",
    "inception_fid",
    "label_tv",
    "mmd_rbf",
    "path_stats",
    "psnr",
    "wasserstein2",
]
