"""Batched on-device views: shapes, per-sample randomness, determinism, single-channel handling."""

from __future__ import annotations

import torch

from ssl_toolkit.data.augment import BatchedViews, ViewConfig, color_jitter, gaussian_blur, random_resized_crop


def test_views_keep_shape_and_differ_per_sample():
    x = torch.rand(1, 3, 32, 32).expand(8, 3, 32, 32).contiguous()  # the same image 8 times
    views = BatchedViews(ViewConfig(), 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    v1, v2 = views(x), views(x)
    assert v1.shape == (8, 3, 32, 32) and v1.dtype == torch.float32
    # every sample draws its own parameters: no two views of the same image are equal
    flat = torch.cat([v1, v2]).flatten(1)
    dist = torch.cdist(flat, flat)
    assert (dist + torch.eye(16) * 1e9).min() > 1e-3


def test_views_are_reproducible_with_a_generator():
    x = torch.rand(4, 3, 16, 16)
    views = BatchedViews(ViewConfig(blur_p=0.5), 16, (0.0,) * 3, (1.0,) * 3)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(views(x, g1), views(x, g2))


def test_identity_crop_without_flip_returns_the_image():
    x = torch.rand(3, 1, 8, 8)
    out = random_resized_crop(x, 8, (1.0, 1.0), (1.0, 1.0), flip_p=0.0)
    assert torch.allclose(out, x, atol=1e-5)
    flipped = random_resized_crop(x, 8, (1.0, 1.0), (1.0, 1.0), flip_p=1.0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_single_channel_jitter_changes_only_brightness_and_contrast():
    x = torch.rand(6, 1, 8, 8) * 0.35 + 0.25  # stays below 1 after a 1.5x brightness factor
    out = color_jitter(x, ViewConfig(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.9, hue=0.4))
    assert torch.allclose(out, x)  # saturation and hue have no meaning on gray images
    out = color_jitter(x, ViewConfig(jitter_p=1.0, brightness=0.5, contrast=0.0))
    ratio = (out / x).flatten(1)
    assert torch.allclose(ratio.min(1).values, ratio.max(1).values, atol=1e-5)  # one factor per image
    assert ratio[:, 0].std() > 0.01  # ... that differs between images


def test_a_saturation_above_one_never_inverts_colours():
    x = torch.tensor([0.6, 0.3, 0.3]).view(1, 3, 1, 1).expand(64, 3, 4, 4)  # reddish
    cfg = ViewConfig(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=3.0, hue=0.0)
    out = color_jitter(x, cfg, torch.Generator().manual_seed(0))
    assert (out[:, 0] >= out[:, 1] - 1e-6).all()  # factor from [max(0, 1 - s), 1 + s]: red stays red, or gray


def test_hue_rotation_preserves_gray_and_blur_preserves_constant_images():
    gray = torch.full((4, 3, 8, 8), 0.4)
    out = color_jitter(gray, ViewConfig(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5))
    assert torch.allclose(out, gray, atol=1e-5)
    const = torch.full((4, 3, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(const, 1.0, (0.1, 40.0)), const, atol=1e-5)
    x = torch.rand(4, 3, 32, 32)
    blurred = gaussian_blur(x, 1.0, (30.0, 40.0))
    assert blurred.std() < x.std() * 0.9
