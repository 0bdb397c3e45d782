"""Adversarial loss of context encoders.

Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by
Inpainting", CVPR 2016, Eq. (2): a discriminator tells real images from images whose
region was filled in by the reconstruction, and the reconstruction learns to fool it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class ContextEncoderAdversarialLoss(nn.Module):
    """The generator and discriminator terms of a context encoder's GAN loss (Pathak et al., CVPR 2016, Eq. 2).

    The generator term sees a frozen copy of the discriminator's weights, so it trains only
    the reconstruction; the discriminator term sees the fake detached, so it trains only the
    discriminator. Both are binary cross-entropies on the discriminator's logits, and both run
    it on the same batch (real and fake together): a batch-normalised discriminator then scores
    a fake alike in the two terms, and its running statistics are updated once, by the second.
    """

    def forward(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(generator loss, discriminator loss)``.

        Args:
            discriminator: Maps ``(B, C, H, W)`` images to ``(B, 1)`` logits of "real".
            real: ``(B, C, H, W)`` real images.
            fake: ``(B, C, H, W)`` images with the reconstruction pasted into the region.

        Returns:
            Two scalars: the generator's loss and the discriminator's loss.
        """
        frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
        frozen |= {k: v.clone() for k, v in discriminator.named_buffers()}  # batch statistics update a copy
        fooled = functional_call(discriminator, frozen, (torch.cat([real, fake]),))[len(real) :]  # (B, 1) of the fakes
        g_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        logits = discriminator(torch.cat([real, fake.detach()]))  # (2B, 1)
        labels = torch.cat([torch.ones_like(logits[: len(real)]), torch.zeros_like(logits[len(real) :])])
        d_loss = F.binary_cross_entropy_with_logits(logits, labels)
        return g_loss, d_loss
