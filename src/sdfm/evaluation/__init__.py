"""Evaluation (layer L2): score trained flows across step budgets against held-out data, write
reports, and the ``sdfm demo`` comparison of I-FM, OT-FM and SD-FM."""

from sdfm.evaluation.evaluate import ClassifierScorer, evaluate_model, evaluate_run
from sdfm.evaluation.results import EvalConfig, EvalResult

__all__ = ["ClassifierScorer", "EvalConfig", "EvalResult", "evaluate_model", "evaluate_run"]
