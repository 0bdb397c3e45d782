"""Inpainting: the masks cover exactly the requested area; the loss only looks inside them."""

import pytest
import torch

from ssl_toolkit.errors import UserError
from ssl_toolkit.pretext import DataFacts, build_task
from ssl_toolkit.pretext.inpainting import block_mask, boundary_band, center_mask, region_mask


def test_center_mask_is_the_central_square_of_the_requested_area():
    m = center_mask(3, 32, 0.25)
    assert m.shape == (3, 1, 32, 32) and set(m.unique().tolist()) == {0.0, 1.0}
    expected = torch.zeros(32, 32)
    expected[8:24, 8:24] = 1
    assert torch.equal(m[:, 0], expected.expand(3, 32, 32))
    assert center_mask(1, 20, 0.09).sum() == 36  # side round(20 * 0.3) = 6


def test_region_and_block_masks_cover_the_requested_area():
    g = torch.Generator().manual_seed(0)
    r = region_mask(8, 32, 0.3, generator=g)
    assert r.flatten(1).sum(1).tolist() == [round(0.3 * 32 * 32)] * 8
    b = block_mask(8, 32, 0.25, 4, generator=g)
    area = b.flatten(1).sum(1)
    assert (area <= 0.25 * 32 * 32).all() and (area >= 8 * 8).all()  # union of four 8 x 8 squares
    assert not torch.equal(b[0], b[1])


@pytest.mark.parametrize(
    ("cfg", "size", "message"),
    [
        ({"mask": "blocks", "num_blocks": 1000, "mask_fraction": 0.01}, 16, "each of the 1000 blocks covers less than one pixel"),
        ({"mask_fraction": 0.001}, 8, "the center mask covers less than one pixel"),  # round(8 * sqrt(0.001)) = 0
        ({"mask_fraction": 0.999}, 16, "the center mask covers all of t's 16 px images, leaving no context"),
        ({"mask": "regions", "mask_fraction": 0.999}, 16, "the regions mask covers all"),
        ({"mask": "blocks", "num_blocks": 1, "mask_fraction": 0.97}, 16, "each of the 1 blocks covers all"),
    ],
)
def test_a_mask_under_one_pixel_or_over_the_whole_image_is_refused(cfg, size, message):
    facts = DataFacts(channels=3, image_size=size, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    with pytest.raises(UserError, match=message):
        build_task("inpainting", 8, cfg, facts)


def test_boundary_band_is_the_inner_border():
    band = boundary_band(center_mask(1, 16, 0.25), 2)
    expected = torch.zeros(16, 16)
    expected[4:12, 4:12] = 1
    expected[6:10, 6:10] = 0
    assert torch.equal(band[0, 0], expected)


def test_loss_ignores_pixels_outside_the_hole():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    task = build_task("inpainting", 8, {"decoder_dim": 16}, facts)

    class Backbone(torch.nn.Module):
        num_features = 8

        def forward_features(self, x):
            return x[:, :1].repeat(1, 8, 1, 1)[:, :, ::4, ::4]  # (B, 8, 4, 4)

    x = torch.rand(2, 3, 16, 16)
    task.eval()
    loss, logs = task(Backbone(), x)
    hole = center_mask(2, 16, 0.25).bool().expand(-1, 3, -1, -1)
    pred = task.reconstruct(Backbone(), x, center_mask(2, 16, 0.25))
    target = task.normalize(x)
    assert torch.isclose(loss, (pred - target)[hole].pow(2).mean(), rtol=1e-5)
    assert torch.isclose(logs["recon_error"], ((pred - target) * 0.25)[hole].pow(2).mean(), rtol=1e-5)
    # the backbone saw the dataset mean in the hole
    seen = {}
    Backbone.forward_features = lambda self, inp: seen.setdefault("x", inp)[:, :1].repeat(1, 8, 1, 1)[:, :, ::4, ::4]
    task(Backbone(), x)
    assert (seen["x"][hole] == 0).all() and (seen["x"][~hole] != 0).any()


def test_adversarial_term_reaches_the_decoder_but_not_the_discriminator():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")

    class Backbone(torch.nn.Module):
        num_features = 8

        def forward_features(self, x):
            return x[:, :1].repeat(1, 8, 1, 1)[:, :, ::4, ::4]

    x = torch.rand(4, 3, 16, 16)
    grads = {}
    for weight in (0.01, 10.0):
        torch.manual_seed(0)
        task = build_task("inpainting", 8, {"decoder_dim": 16, "adversarial_weight": weight}, facts)
        loss, logs = task(Backbone(), x)
        assert "disc_loss" in logs
        loss.backward()
        grads[weight] = (
            [p.grad.clone() for p in task.discriminator.parameters()],
            [p.grad.clone() for p in task.decoder.parameters()],
        )
    # the discriminator learns from its own loss only; the generator term changes the decoder's gradient
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0.01][0], grads[10.0][0]))
    assert not all(torch.allclose(a, b) for a, b in zip(grads[0.01][1], grads[10.0][1]))
