"""The losses against values worked out by hand."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_toolkit.losses import ContextEncoderAdversarialLoss, MaskedL2Loss, RebalancedSoftCrossEntropy


def test_rebalanced_soft_ce_is_cross_entropy_with_one_hot_targets_and_equal_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    one_hot = F.one_hot(torch.tensor([0, 2]), 3).float()
    loss = RebalancedSoftCrossEntropy()(logits, one_hot, torch.full((2,), 7.0))
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 2])))


def test_rebalanced_soft_ce_weights_rows_and_reads_soft_targets():
    # two classes, equal logits: every row's cross-entropy is log 2 whatever its soft target
    logits = torch.zeros(2, 2)
    target = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    assert math.isclose(RebalancedSoftCrossEntropy()(logits, target, torch.tensor([1.0, 3.0])).item(), math.log(2), rel_tol=1e-6)
    # row 0: logits (log 3, 0) -> p = (3/4, 1/4), CE with target (1, 0) = log(4/3);
    # row 1: p = (1/2, 1/2), CE = log 2; weights 1 and 3 -> (log(4/3) + 3 log 2) / 4
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = (math.log(4 / 3) + 3 * math.log(2)) / 4
    assert math.isclose(RebalancedSoftCrossEntropy()(logits, target, torch.tensor([1.0, 3.0])).item(), expected, rel_tol=1e-6)


def test_masked_l2_counts_only_weighted_pixels():
    target = torch.zeros(1, 2, 2, 2)
    pred = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]]])  # (1, 2, 2, 2)
    # per-pixel mean over channels of the squared error: [[5, 2], [0, 8]]
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert MaskedL2Loss()(pred, target, mask).item() == (5 + 8) / 2
    border = torch.tensor([[[[2.0, 1.0], [0.0, 0.0]]]])  # a border pixel weighted twice
    assert MaskedL2Loss()(pred, target, border).item() == (2 * 5 + 2) / 3


def test_context_adversarial_terms_at_an_undecided_discriminator_and_their_gradients():
    disc = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    nn.init.zeros_(disc[1].weight)
    nn.init.zeros_(disc[1].bias)  # logit 0 everywhere: every BCE term is log 2
    real = torch.rand(3, 1, 2, 2)
    fake = torch.rand(3, 1, 2, 2, requires_grad=True)
    g_loss, d_loss = ContextEncoderAdversarialLoss()(disc, real, fake)
    assert math.isclose(g_loss.item(), math.log(2), rel_tol=1e-6) and math.isclose(d_loss.item(), math.log(2), rel_tol=1e-6)
    g_loss.backward()
    assert disc[1].weight.grad is None and fake.grad is not None  # the generator term never trains the discriminator
    d_loss.backward()
    assert disc[1].bias.grad is not None and math.isclose(disc[1].bias.grad.item(), 0.0, abs_tol=1e-7)  # 3 real, 3 fake at p = 1/2


def test_context_adversarial_terms_score_a_fake_alike_under_batch_norm():
    """The generator term ran the discriminator on the fakes alone, the discriminator term on real and fake:
    batch norm gave the same fake two scores, and its running statistics took both batches."""
    torch.manual_seed(0)
    disc = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    real, fake = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8) * 0.3
    seen: list[torch.Tensor] = []
    disc[4].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        expected = disc[1].running_mean * 0.9 + 0.1 * disc[0](torch.cat([real, fake])).mean((0, 2, 3))
    ContextEncoderAdversarialLoss()(disc, real, fake.requires_grad_())
    torch.testing.assert_close(seen[0][4:], seen[1][4:])  # the fakes' logits in the generator and discriminator terms
    torch.testing.assert_close(disc[1].running_mean, expected)  # one update, from the real-and-fake batch
