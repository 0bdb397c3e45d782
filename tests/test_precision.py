"""Precision choice: ``auto`` and the CPU bfloat16 check for strided convolutions on 1x1 maps."""

from __future__ import annotations

import pytest
import timm
import yaml
from conftest import tiny_config

from ssl_toolkit.errors import UserError
from ssl_toolkit.precision import choose_precision, strided_convs_on_1x1
from ssl_toolkit.pretraining import pretrain


@pytest.fixture(scope="module")
def resnet18():
    return timm.create_model("resnet18", pretrained=False, num_classes=0)  # timm's own stem: 32 px -> 8 px


def test_strided_convs_that_see_1x1_maps_are_found(resnet18):
    # 8 px: stem 4, max-pool 2, layer2 1 -> layer3.0.conv1 and layer4.0.conv1 (3x3, stride 2, padded) get 1x1
    assert strided_convs_on_1x1(resnet18, 3, 8) == ["layer3.0.conv1", "layer4.0.conv1"]
    assert strided_convs_on_1x1(resnet18, 3, 16) == ["layer4.0.conv1"]
    assert strided_convs_on_1x1(resnet18, 3, 32) == []  # layer4 gets 2x2
    assert resnet18.training  # the dry pass leaves the mode as it was


def test_auto_avoids_cpu_bf16_where_it_is_wrong_and_explicit_bf16_is_refused(resnet18):
    assert choose_precision("auto", "cpu", resnet18, 3, 8) == "32-true"
    assert choose_precision("32-true", "cpu", resnet18, 3, 8) == "32-true"
    assert choose_precision("bf16-mixed", "cpu", resnet18, 3, 32) == "bf16-mixed"
    with pytest.raises(UserError, match=r"\(layer3\.0\.conv1, layer4\.0\.conv1 at 8 px input\); use precision 32-true"):
        choose_precision("bf16-mixed", "cpu", resnet18, 3, 8)
    # short names are their full ones, and 16-mixed is bf16-mixed on a CPU (Lightning trains it so there)
    assert [choose_precision(p, "cpu", resnet18, 3, 32) for p in ("32", "bf16", "16", "16-mixed")] == ["32-true"] + ["bf16-mixed"] * 3
    for asked, why in (("bf16", ""), ("16-mixed", r" \(16-mixed on a CPU is bf16-mixed\)"), ("16", r" \(16 on a CPU is bf16-mixed\)")):
        with pytest.raises(UserError, match=rf"^bf16-mixed{why} on the CPU computes wrong gradients .* at 8 px input"):
            choose_precision(asked, "cpu", resnet18, 3, 8)


def test_jigsaw_tiles_decide_the_precision_before_anything_is_written(tmp_path, one_thread):
    cfg = tiny_config("jigsaw", epochs=1, backbone={"name": "resnet18", "small_stem": False})
    cfg["trainer"].update(max_steps=1, batch_size=8, precision="bf16-mixed")  # 32 px images, 8 px tiles
    with pytest.raises(UserError, match=r"wrong gradients for strided convolutions on 1x1 maps"):
        pretrain(cfg, out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    cfg["trainer"]["precision"] = "auto"
    meta = pretrain(cfg, out=tmp_path / "run")
    assert meta["precision"] == "32-true"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["trainer"]["precision"] == "32-true"


def test_bf16_on_a_cpu_without_native_bfloat16_gets_a_note_that_it_is_emulated(monkeypatch):
    import ssl_toolkit.precision as precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    note = precision.emulated_bf16_note("bf16-mixed", "cpu")
    assert note is not None and note.startswith("note: this CPU has no native bfloat16 (AVX-512 BF16 or AMX): bf16-mixed is emulated")
    assert precision.emulated_bf16_note("32-true", "cpu") is None
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.emulated_bf16_note("bf16-mixed", "cpu") is None
