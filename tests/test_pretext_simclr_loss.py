"""SimCLR's choice of contrastive loss (``task_config.loss``): NT-Xent, DCL, DCLW."""

import math
import warnings

import pytest
import timm
import torch
from lightly.loss import DCLLoss, DCLWLoss, NTXentLoss

from ssl_toolkit.errors import UserError
from ssl_toolkit.pretext import DataFacts, build_task
from ssl_toolkit.pretext.contrastive import von_mises_fisher_weights

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = DataFacts(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")


def decoupled_loss(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Yeh et al. (ECCV 2022), eq. 6, written out: the positive is not in the denominator."""
    z0, z1 = torch.nn.functional.normalize(z0, dim=1), torch.nn.functional.normalize(z1, dim=1)
    b = z0.shape[0]
    off = ~torch.eye(b, dtype=torch.bool)

    def one_side(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        pos = (a * c).sum(1) / t  # (B,)
        negs = torch.cat([(a @ a.T / t)[off].view(b, -1), (a @ c.T / t)[off].view(b, -1)], dim=1)  # (B, 2B - 2)
        return (-pos + torch.logsumexp(negs, dim=1)).mean()

    return (one_side(z0, z1) + one_side(z1, z0)) / 2


@pytest.mark.parametrize(("name", "cls"), [("ntxent", NTXentLoss), ("dcl", DCLLoss), ("dclw", DCLLoss)])
def test_the_task_uses_the_loss_it_is_given_at_its_temperature(name, cls):
    task = build_task("simclr", 8, {"loss": name, "temperature": 0.3}, FACTS)
    assert type(task.loss_fn) is cls and task.loss_fn.temperature == 0.3
    assert getattr(task.loss_fn, "weight_fn", None) is (von_mises_fisher_weights if name == "dclw" else None)


def test_dcl_drops_the_positive_from_the_denominator_and_so_stays_below_nt_xent():
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    task = build_task("simclr", backbone.num_features, {"loss": "dcl", "hidden_dim": 32}, FACTS)
    images = torch.rand(6, 3, 32, 32)
    task.seed_views(5, images.device)
    loss, _ = task(backbone, images)
    task.seed_views(5, images.device)
    with torch.no_grad():
        z = task.head(backbone(task.two_views(images)))
    assert loss.item() == pytest.approx(decoupled_loss(z[:6], z[6:], 0.2).item(), rel=1e-5)
    assert loss.item() < NTXentLoss(temperature=0.2)(z[:6], z[6:]).item()  # a smaller denominator, always


def test_dclw_weights_are_lightlys_average_to_one_and_raise_no_warning():
    torch.manual_seed(1)
    z0 = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    z1 = torch.nn.functional.normalize(z0 + 0.5 * torch.randn(16, 8), dim=1)
    w = von_mises_fisher_weights(z0, z1)
    assert w.shape == (16,) and w.mean().item() == pytest.approx(1.0, abs=1e-6)
    sim = (z0 * z1).sum(1)
    assert torch.equal(w.argsort(), (-sim).argsort())  # the pair that already agrees most weighs least
    task = build_task("simclr", 8, {"loss": "dclw"}, FACTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = task.loss_fn(z0, z1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lightly's own weight function warns on every call
        theirs = DCLWLoss(temperature=0.2)(z0, z1)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_an_unknown_loss_is_a_one_line_error_naming_the_choices():
    with pytest.raises(UserError, match=r"task_config \(simclr\).*loss.*'ntxent', 'dcl' or 'dclw'"):
        build_task("simclr", 8, {"loss": "infonce"}, FACTS)


@pytest.mark.parametrize("name", ["simclr", "moco"])
@pytest.mark.parametrize("temperature", [1e-9, 1e30])
def test_a_temperature_the_loss_cannot_use_is_a_one_line_error(name, temperature):
    with pytest.raises(UserError, match=rf"task_config \({name}\): temperature: Input should be"):
        build_task(name, 8, {"temperature": temperature}, FACTS)


@pytest.mark.parametrize(
    ("key", "value"),
    [("views.crop_ratio", [0, 1]), ("views.crop_scale", [0, 0]), ("views.crop_scale", [1, 0.2]), ("local_views.blur_sigma", [-5, -1])],
)
def test_a_view_range_out_of_order_or_bounds_is_a_one_line_error(key, value):
    view, field = key.split(".")
    with pytest.raises(UserError, match=rf"task_config \(simclr\): {key}: should be \[low, high\]"):
        build_task("simclr", 8, {view: {field: value}, "local_crops": 1}, FACTS)


def test_pretraining_with_dclw_and_small_views_trains_and_records_the_loss(tmp_path):
    from conftest import tiny_config

    import ssl_toolkit as st

    meta = st.pretrain(tiny_config("simclr", epochs=1, task_config={"loss": "dclw", "local_crops": 1}), out=tmp_path / "run")
    assert meta["steps"] == 4 and meta["task_config"]["loss"] == "dclw"
    assert math.isfinite(meta["final_loss"])
