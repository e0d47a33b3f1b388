"""Evaluation (layer L2): score trained flows across step budgets against held-out data, write
reports, and the ``sdfm demo`` comparison of I-FM, OT-FM and SD-FM."""

from sdfm.evaluation.evaluate import (
    ClassifierScorer,
    EvalConfig,
    EvalResult,
    evaluate_model,
    evaluate_run,
)

__all__ = ["ClassifierScorer", "EvalConfig", "EvalResult", "evaluate_model", "evaluate_run"]
