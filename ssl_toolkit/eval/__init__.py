"""Evaluators; importing this package registers every built-in probe mode."""

from ssl_toolkit.eval import linear  # noqa: F401  (registration)
from ssl_toolkit.eval.base import EVALUATORS, EvalContext, Evaluator, register_evaluator

__all__ = ["EVALUATORS", "EvalContext", "Evaluator", "register_evaluator"]
