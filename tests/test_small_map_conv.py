"""``trainer.small_map_conv``: convolutions on small maps as one dense matrix product, with the convolution's result."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_BACKBONE, bench_module, quiet_trainer
from pydantic import ValidationError
from torch import nn

from ssl_toolkit.config import TrainerConfig
from ssl_toolkit.data.loaders import make_loader
from ssl_toolkit.eval.features import model_fingerprint
from ssl_toolkit.small_map_conv import (
    SmallMapConv2d,
    convert_small_map_convs,
    dense_conv2d,
    patch_grad_conv2d,
    restore_convs,
    small_map_convs,
    tap_index,
    use_small_map_conv,
)

# (input side (h, w), kernel, stride, padding): the shapes a ResNet's last stages meet at 28-32 px, and edges
SHAPES = [
    ((2, 2), 3, 1, 1),  # resnet10t / resnet18 at 28 px without the stem's pool: layer4's second conv
    ((4, 4), 3, 2, 1),  # layer4's first conv
    ((4, 4), 1, 2, 0),  # a 1x1 downsample with stride
    ((1, 1), 3, 1, 1),  # resnet18 at 32 px with the pool: layer4 on 1x1 maps
    ((3, 3), 3, 1, 1),
    ((2, 3), 3, 1, 1),  # not square
    ((3, 2), 2, 1, 0),  # an even kernel without padding
]


def float64_conv_inputs(hw, k: int, channels_last: bool, bias: bool) -> list[torch.Tensor]:
    """``[x, weight]`` (and a bias) in float64 for a 6 -> 7 channel convolution, all requiring gradients."""
    torch.manual_seed(0)
    x = torch.randn(5, 6, *hw, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(7, 6, k, k, dtype=torch.float64)
    return [t.requires_grad_() for t in [x, w] + ([torch.randn(7, dtype=torch.float64)] if bias else [])]


def assert_same_gradients(out: torch.Tensor, ref: torch.Tensor, wanted: list[torch.Tensor]) -> None:
    g = torch.randn_like(ref)
    for got, exp in zip(torch.autograd.grad(out, wanted, g), torch.autograd.grad(ref, wanted, g), strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("hw", "k", "stride", "pad"), SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_dense_conv_gives_the_convolution_and_its_gradients(hw, k, stride, pad, channels_last, bias):
    wanted = float64_conv_inputs(hw, k, channels_last, bias)
    x, w, b = (wanted + [None])[:3]
    ref = F.conv2d(x, w, b, stride, pad)
    out = dense_conv2d(x, w, b, (stride, stride), (pad, pad))
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert_same_gradients(out, ref, wanted)


# (input side (h, w), kernel, stride, padding): where the patch weight gradient applies, and edges
PATCH_SHAPES = [
    ((4, 4), 3, 1, 1),  # resnet10t's layer3 at 28 px without the stem's pool
    ((7, 7), 3, 2, 1),  # its first conv
    ((8, 8), 3, 2, 1),  # resnet18's layer2 at 32 px with the pool
    ((5, 3), 3, 1, 1),  # not square
    ((4, 4), 2, 1, 0),  # an even kernel without padding
    ((6, 6), 5, 2, 2),  # a larger kernel
]


@pytest.mark.parametrize(("hw", "k", "stride", "pad"), PATCH_SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_patch_weight_gradient_gives_the_convolution_and_its_gradients(hw, k, stride, pad, channels_last, bias):
    wanted = float64_conv_inputs(hw, k, channels_last, bias)
    x, w, b = (wanted + [None])[:3]
    ref = F.conv2d(x, w, b, stride, pad)
    out = patch_grad_conv2d(x, w, b, (stride, stride), (pad, pad))
    assert type(out.grad_fn).__name__ == "PatchWeightGradConv2dBackward"
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same forward kernel
    assert_same_gradients(out, ref, wanted)


def test_patch_weight_gradient_under_bf16_autocast_gives_float32_parameters_their_gradient():
    torch.manual_seed(0)
    x = torch.randn(16, 32, 4, 4).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 32, 3, 3, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = patch_grad_conv2d(x, w, b, (1, 1), (1, 1))
        ref = F.conv2d(x, w, b, 1, 1)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grads = torch.autograd.grad(out.float().sum(), [w, b])
    grads_ref = torch.autograd.grad(ref.float().sum(), [w, b])
    for got, exp in zip(grads, grads_ref, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, exp, rtol=2e-2, atol=2e-2 * exp.abs().max().item())


@pytest.mark.parametrize(
    ("side", "stride", "k", "path"),
    [
        (4, 1, 3, "patches"),  # 4x4 outputs: 256 position pairs, too many for the dense matrix
        (8, 2, 3, "patches"),
        (7, 2, 3, "patches"),
        (7, 1, 3, "onednn"),  # 7x7 outputs: oneDNN's weight gradient wins
        (9, 2, 3, "onednn"),  # 81 input positions
        (8, 2, 1, "onednn"),  # a 1x1 downsample on 8x8: no patches to gather
        (3, 1, 3, "dense"),
    ],
)
def test_the_patch_path_is_taken_in_bf16_where_it_measured_faster(side, stride, k, path):
    conv, x = conv_on(side, k=k, stride=stride, padding=k // 2 if k > 1 else 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv._path(x) == path
        out = conv(x)
    assert (type(out.grad_fn).__name__ == "PatchWeightGradConv2dBackward") is (path == "patches")
    assert conv._path(x) in ("dense", "onednn")  # float32: the patch path lost on every shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).grad_fn is None  # without gradients the forward pass is oneDNN's, as before


def test_tap_index_joins_each_output_to_the_inputs_its_window_covers():
    no_tap = 9
    t = tap_index((2, 2), (3, 3), (1, 1), (1, 1)).view(4, 4)  # (4 outputs, 4 inputs)
    assert (t != no_tap).all()  # on a padded 2x2 map every output reads every input
    assert t[0].tolist() == [4, 5, 7, 8]  # the top-left output reads itself through the centre tap
    assert t[3].tolist() == [0, 1, 3, 4]
    # 4x4 -> 2x2 with stride 2: the corner output reads 2x2 inputs, the edges 2x3, the far corner 3x3
    t = tap_index((4, 4), (3, 3), (2, 2), (1, 1)).view(4, 16)
    assert (t != no_tap).sum(1).tolist() == [4, 6, 6, 9]
    for o in range(4):  # each output reads each tap at most once
        taps = t[o][t[o] != no_tap]
        assert len(set(taps.tolist())) == len(taps)
    # tap 4 is the kernel's centre: on a 1x1 map it is the only one inside the map
    assert tap_index((1, 1), (3, 3), (1, 1), (1, 1)).tolist() == [4]


@pytest.mark.parametrize("channels_last", [False, True])
def test_dense_conv_under_bf16_autocast_matches_the_convolution(channels_last):
    torch.manual_seed(0)
    x = torch.randn(8, 16, 4, 4).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3, requires_grad=True)  # float32 parameters, as under mixed precision
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dense_conv2d(x, w, None, (2, 2), (1, 1))
        ref = F.conv2d(x, w, None, 2, 1)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    (gw,) = torch.autograd.grad(out.float().sum(), [w])
    (gw_ref,) = torch.autograd.grad(ref.float().sum(), [w])
    assert gw.dtype == torch.float32
    torch.testing.assert_close(gw, gw_ref, rtol=2e-2, atol=5e-2)


def conv_on(side: int, k: int = 3, stride: int = 1, **kw) -> tuple[SmallMapConv2d, torch.Tensor]:
    conv = nn.Conv2d(4, 4, k, stride, kw.pop("padding", k // 2), **kw)
    (conv,) = convert_small_map_convs(nn.Sequential(conv))
    return conv, torch.zeros(2, 4, side, side)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("side", "stride", "fp32", "bf16"),
    [
        (1, 1, True, True),
        (2, 1, True, True),  # 4 x 4 position pairs
        (2, 2, True, True),
        (3, 1, False, True),  # 81: the bf16 limit
        (4, 2, False, True),  # 64
        (4, 1, False, False),  # 256: oneDNN's kernels win
        (5, 2, False, False),  # 25 input positions
    ],
)
def test_the_dense_path_is_taken_where_it_measured_faster(side, stride, fp32, bf16):
    conv, x = conv_on(side, stride=stride)
    assert conv._dense_applies(x) is fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv._dense_applies(x) is bf16
    assert conv._dense_applies(x.bfloat16()) is bf16
    downsample, _ = conv_on(side, k=1, stride=stride, padding=0)  # no zero taps: dense in either precision
    assert downsample._dense_applies(x) is (side * side <= 16)


@pytest.mark.parametrize("kw", [{"groups": 2}, {"dilation": 2, "padding": 2}, {"padding_mode": "reflect"}])
def test_convolutions_the_dense_path_does_not_cover_keep_onednn(kw):
    conv, x = conv_on(2, **kw)
    assert conv._dense_applies(x) is False
    x = torch.randn_like(x)
    plain = copy.deepcopy(conv)
    restore_convs([plain])
    torch.testing.assert_close(conv(x), plain(x), rtol=0, atol=0)  # the same kernel, bit for bit


def test_string_padding_keeps_onednn():
    (same,) = convert_small_map_convs(nn.Sequential(nn.Conv2d(4, 4, 3, padding="same")))
    assert same._dense_applies(torch.zeros(2, 4, 2, 2)) is False


def test_converting_swaps_only_the_class_and_restoring_leaves_no_trace():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TINY_BACKBONE, num_classes=0)
    before_repr, before_print = repr(model), model_fingerprint(model)
    params = {id(p) for p in model.parameters()}
    keys = list(model.state_dict())
    n_convs = sum(type(m) is nn.Conv2d for m in model.modules())
    with small_map_convs(model) as converted:
        assert converted == n_convs > 0
        assert all(type(m) is not nn.Conv2d for m in model.modules())
        assert {id(p) for p in model.parameters()} == params
        assert list(model.state_dict()) == keys  # checkpoints keep timm's names
    assert repr(model) == before_repr
    assert model_fingerprint(model) == before_print  # feature caches keep their keys
    with small_map_convs(model, enabled=False) as converted:
        assert converted == 0
        assert all(type(m) is not SmallMapConv2d for m in model.modules())


def test_a_converted_backbone_gives_the_same_loss_and_gradients():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=0)
    model.maxpool = nn.Identity()  # the toolkit's CPU stem at 28 px: layer4 on 2x2 maps
    model = model.double()
    twin = copy.deepcopy(model)
    x = torch.randn(6, 3, 28, 28, dtype=torch.float64)
    ref = model(x).pow(2).sum()
    ref.backward()
    with small_map_convs(twin):
        out = twin(x).pow(2).sum()
        out.backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=0)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cpu", True), ("auto", "cuda", False), (True, "cuda", True), (False, "cpu", False)],
)
def test_auto_converts_on_a_cpu(setting, device, expected):
    assert use_small_map_conv(setting, device) is expected


def test_the_setting_is_validated():
    assert TrainerConfig().small_map_conv == "auto"
    assert TrainerConfig(small_map_conv=False).small_map_conv is False
    with pytest.raises(ValidationError, match="small_map_conv"):
        TrainerConfig(small_map_conv="sometimes")


@pytest.mark.parametrize(("setting", "dense"), [("auto", True), (False, False)])
def test_a_fit_on_the_cpu_trains_through_the_dense_path_and_returns_plain_convolutions(setting, dense):
    """A real two-step Lightning fit: which class each convolution had while training, and after."""
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    module = bench_module("rotation", images)
    module.cfg = module.cfg.model_copy(update={"small_map_conv": setting})
    seen: list[bool] = []

    def record(conv, inputs):
        seen.append(isinstance(conv, SmallMapConv2d) and conv._dense_applies(inputs[0]))

    for m in module.backbone.modules():
        if type(m) is nn.Conv2d:
            m.register_forward_pre_hook(record)
    trainer = quiet_trainer(precision="32-true", max_steps=2)
    trainer.fit(module, make_loader(images, None, 8, shuffle=True, num_workers=0))
    assert seen and any(seen) is dense
    assert all(type(m) is nn.Conv2d for m in module.backbone.modules() if isinstance(m, nn.Conv2d))


def test_a_bf16_fit_trains_the_small_maps_through_both_paths():
    """A real bf16 fit of the tiny backbone at 32 px: the 4x4 maps take the patch weight gradient, the 2x2 the dense product."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    module = bench_module("rotation", images, precision="bf16-mixed")
    paths: dict[str, set[str]] = {}
    grads: dict[str, list[torch.Tensor]] = {}
    for name, m in module.backbone.named_modules():
        if type(m) is nn.Conv2d:
            m.register_forward_pre_hook(lambda conv, inputs, name=name: paths.setdefault(name, set()).add(conv._path(inputs[0])))
            m.weight.register_hook(lambda g, name=name: grads.setdefault(name, []).append(g.detach().clone()))
    trainer = quiet_trainer(precision="bf16-mixed", max_steps=2)
    trainer.fit(module, make_loader(images, None, 16, shuffle=True, num_workers=0))
    patched = [name for name, seen in paths.items() if seen == {"patches"}]
    assert patched and any(seen == {"dense"} for seen in paths.values()) and any(seen == {"onednn"} for seen in paths.values())
    for name in patched:  # the patch path's weights got a float32 gradient at each step
        assert len(grads[name]) == 2
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads[name])
        # (timm zero-initialises each block's last norm: the first step's branch gradients are zero on every path)
        assert grads[name][1].abs().sum() > 0
