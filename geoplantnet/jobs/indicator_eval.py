"""Moved to :mod:`geoplantnet.evaluation.indicators`; this name stays until refresh imports it from there."""

from geoplantnet.evaluation.indicators import evaluate_indicators, score_indicators, truth_indicators

__all__ = ["evaluate_indicators", "score_indicators", "truth_indicators"]
