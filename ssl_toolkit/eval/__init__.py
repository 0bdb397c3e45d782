"""Evaluators; importing this package registers every built-in probe mode.

``linear`` and ``knn`` work on frozen, cached features; ``partial`` and ``finetune``
train through the backbone with Lightning.
"""

from ssl_toolkit.eval import finetune, knn, linear  # noqa: F401  (registration)
from ssl_toolkit.eval.base import EVALUATORS, EvalContext, Evaluator, register_evaluator
from ssl_toolkit.eval.knn import knn_scores, knn_search

__all__ = ["EVALUATORS", "EvalContext", "Evaluator", "knn_scores", "knn_search", "register_evaluator"]
