"""Evaluation around the evaluators: feature cache, probe(), metrics, embeddings, analysis, report.

The evaluators themselves live in :mod:`ssl_toolkit.evaluators`. Nothing is imported
until it is used, so importing this package costs nothing; import the submodules
(``ssl_toolkit.eval.probe``, ``ssl_toolkit.eval.report``, ...) for their functions.
"""

from ssl_toolkit.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {"FeatureCache": "ssl_toolkit.eval.features", "Preprocess": "ssl_toolkit.eval.features"},
)

__all__ = ["FeatureCache", "Preprocess"]
