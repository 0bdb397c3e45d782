"""Linear probe on frozen, cached features.

The protocol of Zhang, Isola & Efros (2016) and Kolesnikov, Zhai & Beyer (2019): the
backbone is frozen, features are extracted once, standardised with the training split's
statistics, and a multinomial logistic regression is fit on them. It is trained full
batch with L-BFGS (the features fit in memory, and L-BFGS reaches the optimum in a few
dozen iterations where SGD would need many epochs). The L2 penalty is chosen from
``WEIGHT_DECAYS`` on a stratified 10% of the training labels held out from training
(strongest penalty first, each fit warm-started from the previous one, as along a
regularisation path), then the probe is refit on all training labels with that penalty;
the test split is never used for that choice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ssl_toolkit.evaluators import targets

WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_WEIGHT_DECAY = 1e-3  # when the hold-out cannot choose one
SMALL_PROBLEM = 4_000_000  # N * D below which one CPU thread beats several (thread start-up dominates)


@contextmanager
def cpu_threads_for(numel: int) -> Iterator[None]:
    """Run small CPU problems on one thread: L-BFGS makes many tiny calls, and thread hand-offs cost more than the maths."""
    before = torch.get_num_threads()
    if numel < SMALL_PROBLEM:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Zero-mean, unit-variance features using the statistics of ``train``."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 150,
    init: torch.nn.Linear | None = None,
    kind: str = "multiclass",
) -> torch.nn.Linear:
    """Logistic regression, full batch L-BFGS: multinomial, or one sigmoid per output.

    Args:
        x: ``(N, D)`` standardised features.
        y: ``(N,)`` labels (multiclass), or ``(N, K)`` float targets of the sigmoid kinds
            (:func:`~ssl_toolkit.evaluators.targets.as_targets`).
        num_classes: Outputs ``K`` (1 for binary).
        weight_decay: L2 penalty on the weights, ``wd / 2 * ||W||^2``.
        kind: Target kind (:mod:`~ssl_toolkit.evaluators.targets`): softmax or sigmoid loss.
        max_iter: L-BFGS iterations (the start is deterministic, so no seed is needed).
        init: Start from these weights (a warm start along the regularisation path);
            zeros otherwise.

    Returns:
        The fitted ``nn.Linear(D, K)``.
    """
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(init.weight if init is not None else torch.zeros_like(head.weight))
        head.bias.copy_(init.bias if init is not None else torch.zeros_like(head.bias))
    opt = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure():
        opt.zero_grad()
        loss = targets.loss(kind, head(x), y) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, seed: int = 0, kind: str = "multiclass"
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Fit the probe (choosing the L2 penalty on a held-out part of train) and score ``test_x``.

    For binary and multi-label targets the held-out part also chooses the decision
    thresholds (best F1 per output), and the scores are sigmoid probabilities.

    Returns:
        ``(N_test, outputs)`` scores and facts about the fit (chosen weight decay, held-out
        scores, thresholds).
    """
    with cpu_threads_for(train_x.numel()):
        return _linear_probe(train_x, train_y, test_x, num_classes, seed, kind)


def _linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, seed: int, kind: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    tr_x, te_x = standardize(train_x.float(), test_x.float())
    fit_idx, ho_idx = targets.holdout_split(train_y, 0.1, seed)
    y = targets.as_targets(kind, train_y)
    n_out = targets.outputs(kind, num_classes)
    sweep, thresholds = {}, None
    if len(ho_idx) and len(fit_idx):
        heads = {}
        prev = None
        for wd in sorted(WEIGHT_DECAYS, reverse=True):  # strongest first, each fit warm-starts the next
            prev = heads[wd] = fit_logistic_regression(tr_x[fit_idx], y[fit_idx], n_out, wd, init=prev, kind=kind)
            with torch.no_grad():
                sweep[wd] = targets.ranking_score(kind, targets.to_scores(kind, prev(tr_x[ho_idx])), train_y[ho_idx])
        scored = {wd: v for wd, v in sweep.items() if v is not None}  # binary: no ROC-AUC on a one-class hold-out
        best = max(scored, key=lambda wd: (scored[wd], wd)) if scored else DEFAULT_WEIGHT_DECAY  # ties -> stronger regularisation
        init = heads[best]
        with torch.no_grad():
            thresholds = targets.choose_thresholds(kind, targets.to_scores(kind, init(tr_x[ho_idx])), train_y[ho_idx])
    else:
        best, init = DEFAULT_WEIGHT_DECAY, None
    head = fit_logistic_regression(tr_x, y, n_out, best, init=init, kind=kind)
    with torch.no_grad():
        scores = targets.to_scores(kind, head(te_x))
    held = "holdout_acc" if kind == "multiclass" else f"holdout_{'roc_auc' if kind == 'binary' else 'map'}"
    facts: dict[str, Any] = {"weight_decay": best, held: {str(k): None if v is None else round(v, 4) for k, v in sweep.items()}}
    if thresholds is not None:
        facts["thresholds"] = thresholds
        if (note := targets.holdout_notes(kind, train_y[ho_idx])) is not None:
            facts["holdout"] = note
        if sweep and all(v is None for v in sweep.values()):  # nothing to rank the penalties by
            facts["holdout"] = "; ".join(filter(None, (f"weight decay {best:g} fixed, not chosen ({held} undefined)", note)))
    if not sweep:  # e.g. one training label per class: nothing to hold out, so nothing was chosen
        fixed = f"weight decay {best:g} was" if kind == "multiclass" else f"weight decay {best:g} and threshold 0.5 were"
        facts["holdout"] = f"none: too few training labels to hold any out, so {fixed} not chosen but fixed"
    return scores, facts


from ssl_toolkit.evaluators.base import EvalContext, Evaluator, register_evaluator  # noqa: E402


@register_evaluator("linear")
class LinearEvaluator(Evaluator):
    """Frozen backbone, cached standardised features, L-BFGS logistic regression."""

    description = "linear classifier on frozen, cached features"
    reads_training_settings = False  # epochs, lr, weight_decay, precision: refused

    def trainable_parameters(self, backbone: nn.Module, head: nn.Module | None) -> list[nn.Parameter]:
        """The classifier head only; the backbone is frozen."""
        return [] if head is None else list(head.parameters())

    def evaluate(self, ctx: EvalContext) -> tuple[torch.Tensor, dict[str, Any]]:
        train_x, test_x = self.features(ctx)
        train_y = ctx.source.train.labels[ctx.train_idx]
        return linear_probe(train_x, train_y, test_x, ctx.source.num_classes, seed=ctx.cfg.seed, kind=ctx.source.target_kind)
