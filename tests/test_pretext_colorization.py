"""Colorization: Lab conversion, the 313 ab bins, soft targets, rebalancing and decoding."""

import pytest
import timm
import torch

from ssl_toolkit.data.color import lab_lightness, lab_to_rgb, rgb_to_lab
from ssl_toolkit.errors import UserError
from ssl_toolkit.eval.features import Preprocess
from ssl_toolkit.pretext import DataFacts, build_task
from ssl_toolkit.pretext.colorization import ab_bins, annealed_mean, rebalancing_weights, soft_encode

# sRGB (D65) -> Lab reference values, as tabulated by B. Lindbloom's colour calculator
REFERENCE = {
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
    (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
    (1.0, 0.0, 0.0): (53.2408, 80.0925, 67.2032),
    (0.0, 1.0, 0.0): (87.7347, -86.1827, 83.1793),
    (0.0, 0.0, 1.0): (32.2970, 79.1875, -107.8602),
}


def test_lab_conversion_matches_reference_values():
    rgb = torch.tensor(list(REFERENCE), dtype=torch.float64).view(-1, 3, 1, 1)
    lab = rgb_to_lab(rgb).view(-1, 3)
    assert (lab - torch.tensor(list(REFERENCE.values()), dtype=torch.float64)).abs().max() < 1e-3
    lab32 = rgb_to_lab(rgb.float()).view(-1, 3)
    assert (lab32.double() - torch.tensor(list(REFERENCE.values()), dtype=torch.float64)).abs().max() < 1e-3


def test_lab_round_trip_and_lightness():
    rgb = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lab = rgb_to_lab(rgb)
    assert (lab_to_rgb(lab) - rgb).abs().max() < 1e-6
    assert torch.allclose(lab_lightness(rgb), lab[:, :1] / 100)
    gray = rgb[:, :1]
    assert torch.allclose(lab_lightness(gray), rgb_to_lab(gray.expand(-1, 3, -1, -1))[:, :1] / 100)


def test_ab_bins_are_the_papers_313():
    bins = ab_bins()
    assert bins.shape == (313, 2)
    assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100 and bins[:, 1].min() == -110
    assert (bins % 10 == 0).all()
    # every in-gamut colour sits in a grid cell whose four corners are all bins
    v = torch.linspace(0, 1, 17, dtype=torch.float64)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).view(1, 3, -1, 1)
    ab = rgb_to_lab(rgb).view(3, -1)[1:].T
    lo = torch.floor(ab / 10) * 10
    keys = {tuple(b) for b in bins.long().tolist()}
    for da in (0, 10):
        for db in (0, 10):
            corners = (lo + torch.tensor([da, db], dtype=torch.float64)).long().tolist()
            assert all(tuple(c) in keys for c in corners)


def test_soft_encoding_rebalancing_and_annealed_mean():
    bins = ab_bins()
    ab = torch.tensor([[0.0, 0.0], [31.0, -42.0]])
    target, near = soft_encode(ab, bins, k=5, sigma=5.0)
    assert torch.allclose(target.sum(1), torch.ones(2)) and (target > 0).sum(1).tolist() == [5, 5]
    assert bins[near].tolist() == [[0.0, 0.0], [30.0, -40.0]]
    prior = torch.zeros(313)
    prior[near[0]] = 0.9
    prior[near[1]] = 0.1
    w = rebalancing_weights(prior, bins, sigma=5.0, lam=0.5)
    smooth = torch.exp(-torch.cdist(bins, bins).pow(2) / 50) @ prior
    smooth = smooth / smooth.sum()
    assert torch.isclose((smooth * w).sum(), torch.tensor(1.0))  # E_p~[w] = 1
    assert w[near[1]] > w[near[0]]  # the rarer colour weighs more
    assert torch.allclose(w * (0.5 * smooth + 0.5 / 313), (w * (0.5 * smooth + 0.5 / 313))[0].expand(313))  # w ~ 1 / mix
    logits = torch.full((1, 313, 1, 1), -4.0)
    logits[0, near[1]] = 4.0
    assert torch.allclose(annealed_mean(logits, bins, 0.01).view(2), bins[near[1]], atol=1e-3)  # T -> 0: the mode
    mean = annealed_mean(logits, bins, 1.0).view(2)
    assert (mean - bins[near[1]]).norm() > 1.0  # T = 1: the mean, pulled towards the other bins


def test_backbone_sees_l_and_probing_feeds_the_same():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    task = build_task("colorization", 8, {}, facts)
    assert type(task).backbone_in_chans(task.config, facts) == 1
    images = (torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    task.fit_data_prior(images)
    assert torch.isclose(task.prior.sum(), torch.tensor(1.0)) and (task.weights > 0).all()
    meta = task.backbone_input()
    assert meta["in_chans"] == 1 and meta["input_transform"] == "lab_l"
    x = task.normalize(images.float() / 255)
    assert x.shape == (20, 1, 16, 16) and abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    assert torch.allclose(Preprocess.from_meta(meta)(images), x, atol=1e-5)


def test_colour_images_that_hold_no_colour_are_refused():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    task = build_task("colorization", 8, {}, facts)
    gray = (torch.rand(20, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).expand(-1, 3, -1, -1)
    with pytest.raises(
        UserError, match=r"^colorization needs colour images; the 20 training images sampled hold none \(a and b at most 0\.0"
    ):
        task.fit_data_prior(gray)
    tinted = gray.clone()
    tinted[0, 0, 0, 0] = 255 if int(gray[0, 1, 0, 0]) < 200 else 0  # one pixel of colour is enough
    task.fit_data_prior(tinted)


@pytest.mark.parametrize(("key", "value"), [("prior_lambda", 0.0), ("prior_sigma", 1e-30), ("soft_sigma", 1e-30), ("temperature", 1e-40)])
def test_settings_that_make_the_loss_or_colours_nan_are_refused(key, value):
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    with pytest.raises(UserError, match=rf"task_config \(colorization\): {key}: Input should be greater than"):
        build_task("colorization", 8, {key: value}, facts)


def test_the_smallest_accepted_settings_train_with_a_finite_loss():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    cfg = {"prior_lambda": 1e-9, "prior_sigma": 0.01, "soft_sigma": 0.01, "temperature": 0.01, "decoder_dim": 8}
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0, in_chans=1)
    task = build_task("colorization", int(backbone.num_features), cfg, facts)
    gen = torch.Generator().manual_seed(0)
    task.fit_data_prior((torch.rand(8, 3, 16, 16, generator=gen) * 255).to(torch.uint8))
    loss, logs = task(backbone, torch.rand(4, 3, 16, 16, generator=gen))
    assert torch.isfinite(loss) and torch.isfinite(logs["recon_error"])


def test_an_out_stride_above_the_image_side_is_refused():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    with pytest.raises(UserError, match="out_stride 17 is larger than t's 16 px images"):
        build_task("colorization", 8, {"out_stride": 17}, facts)
    assert build_task("colorization", 8, {"out_stride": 16}, facts).config.out_stride == 16
