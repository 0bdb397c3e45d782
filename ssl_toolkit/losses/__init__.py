"""Losses, one per module: tensors in, a scalar out, the paper in the docstring.

Shared by the pretext tasks and their tests; nothing is imported until it is used.
"""

from ssl_toolkit.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "RebalancedSoftCrossEntropy": "ssl_toolkit.losses.rebalanced_soft_ce",
        "MaskedL2Loss": "ssl_toolkit.losses.masked_l2",
        "ContextEncoderAdversarialLoss": "ssl_toolkit.losses.context_adversarial",
    },
)

__all__ = ["ContextEncoderAdversarialLoss", "MaskedL2Loss", "RebalancedSoftCrossEntropy"]
