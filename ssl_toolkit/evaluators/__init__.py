"""Evaluators (``ssl probe --mode NAME``), one module each, found by :data:`EVALUATORS`.

``linear`` and ``knn`` work on frozen, cached features; ``partial`` and ``finetune``
train through the backbone with Lightning. Nothing is imported until it is used.
"""

from ssl_toolkit.lazy import lazy_exports

_BASE = "ssl_toolkit.evaluators.base"
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "EVALUATORS": _BASE,
        "EvalContext": _BASE,
        "Evaluator": _BASE,
        "register_evaluator": _BASE,
        "knn_scores": "ssl_toolkit.evaluators.knn",
        "knn_search": "ssl_toolkit.evaluators.knn",
    },
)

__all__ = ["EVALUATORS", "EvalContext", "Evaluator", "knn_scores", "knn_search", "register_evaluator"]
