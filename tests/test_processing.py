"""data.color_space / equalize / normalize: exact values of the conversions, statistics, and the choice recorded
in meta.json and applied again by probe with no flag."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config
from PIL import Image

from ssl_toolkit import pretrain
from ssl_toolkit.data.processing import Processing
from ssl_toolkit.errors import UserError
from ssl_toolkit.eval.features import Preprocess

WHITE_RED = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]).view(1, 3, 1, 2)  # two pixels: white, pure red


def test_colour_spaces_scale_every_channel_to_unit_range():
    lab = Processing("lab")(WHITE_RED)
    assert lab[0, :, 0, 0].tolist() == pytest.approx([1.0, 128 / 255, 128 / 255], abs=1e-3)  # white: L = 100, a = b = 0
    assert lab[0, 0, 0, 1].item() == pytest.approx(53.24 / 100, abs=1e-3)  # red: L = 53.24
    hsv = Processing("hsv")(WHITE_RED)
    assert hsv[0, :, 0, 1].tolist() == pytest.approx([0.0, 1.0, 1.0], abs=1e-5)  # red: hue 0, full saturation and value
    ycbcr = Processing("ycbcr")(WHITE_RED)
    assert ycbcr[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.5, 0.5], abs=1e-4)
    gray = Processing("gray")(WHITE_RED)
    assert gray.shape == (1, 1, 1, 2) and gray[0, 0, 0, 1].item() == pytest.approx(0.299, abs=1e-3)
    x = torch.rand(4, 3, 8, 8)
    for space in ("hsv", "lab", "ycbcr"):
        y = Processing(space)(x)
        assert y.shape == x.shape and y.min() >= -1e-4 and y.max() <= 1 + 1e-4, space
    assert torch.equal(Processing()(x), x)


def test_equalisation_stretches_a_low_contrast_image():
    x = 0.4 + 0.1 * torch.rand(2, 1, 64, 64)  # values in [0.4, 0.5]; PIL-style global equalisation needs 256+ pixels per level step
    for how in ("global", "clahe"):
        y = Processing(equalize=how)(x)
        assert y.shape == x.shape
        assert (y.amax(dim=(2, 3)) - y.amin(dim=(2, 3))).min() > 0.3, how  # the range at least triples (CLAHE: clip limit 2)


@pytest.mark.parametrize("equalize", ["none", "global", "clahe"])
@pytest.mark.parametrize("space", ["rgb", "gray", "hsv", "lab", "ycbcr"])
def test_the_recipe_an_export_prints_is_the_processing_itself(space, equalize):
    """Exported backbones print these kornia lines for a plain-timm user: run as written, they give the toolkit's input."""
    import math

    import kornia

    proc = Processing(space, equalize, "zscore")
    torch.manual_seed(0)
    x0 = torch.rand(2, 3, 20, 24)
    scope = {"x": x0.clone(), "kornia": kornia, "torch": torch, "math": math}
    exec("\n".join(proc.recipe()), scope)
    assert torch.allclose(scope["x"], proc(x0.clone()), atol=1e-6)
    assert (proc.recipe() == []) == (space == "rgb" and equalize == "none")


def test_statistics_zscore_and_minmax():
    images = torch.tensor([[[[0, 255]]], [[[51, 102]]]], dtype=torch.uint8)  # (2, 1, 1, 2)
    mean, std = Processing(normalize="zscore").statistics(images)
    vals = torch.tensor([0, 255, 51, 102], dtype=torch.float64) / 255
    assert mean[0] == pytest.approx(vals.mean().item(), abs=1e-6) and std[0] == pytest.approx(vals.std().item(), abs=1e-6)
    assert Processing(normalize="minmax").statistics(images) == ((0.0,), (1.0,))


def test_colour_space_on_single_channel_data_is_refused():
    with pytest.raises(UserError, match="data.color_space=lab needs colour images; digits is single-channel"):
        Processing("lab").check(1, "digits")
    Processing("gray").check(1, "digits")


def test_inspect_refuses_a_colour_space_for_gray_data_before_reading_any_image(tmp_path):
    """Folders, shards and named sources: the refusal comes before the reading and hashing stages."""
    import ssl_toolkit as st
    from ssl_toolkit.inspection import run_inspection

    for c in "ab":
        (tmp_path / "gray" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (20, 20), 30 * i + (c == "b")).save(tmp_path / "gray" / c / f"{i}.png")
    st.shard(tmp_path / "gray", tmp_path / "shards", image_size=16, workers=1)
    for data, name in ((tmp_path / "gray", tmp_path / "gray"), (tmp_path / "shards", tmp_path / "shards"), ("digits", "digits")):
        stages: list[str] = []
        record = stages.append
        with pytest.raises(UserError, match=rf"^data.color_space=hsv needs colour images; {name} is single-channel \(use rgb or gray\)$"):
            run_inspection(
                {"data": {"name": str(data), "color_space": "hsv"}}, progress=lambda stage, done, total, record=record: record(stage)
            )
        assert set(stages) <= {"loading"}, (data, stages)


def test_clahe_on_images_smaller_than_its_grid_is_refused(tmp_path, cli):
    with pytest.raises(UserError, match="data.equalize=clahe needs images of at least 9 px .*; digits is 8 px"):
        Processing(equalize="clahe").check(1, "digits", 8)
    Processing(equalize="clahe").check(1, "digits", 9)
    for command in ("inspect", "pretrain"):
        code, _, err = cli(
            command,
            *(["synthetic"] if command == "inspect" else ["--data", "synthetic", "--out", tmp_path / "r"]),
            "--set",
            "data.synthetic_train=8",
            "--set",
            "data.synthetic_test=4",
            "--set",
            "data.image_size=8",
            "--set",
            "data.equalize=clahe",
            "--quiet",
        )
        assert code == 2 and "data.equalize=clahe needs images of at least 9 px" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.usefixtures("one_thread")
def test_processing_is_recorded_and_probe_applies_it(tmp_path, cli):
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32, color_space="lab", equalize="clahe", normalize="minmax")
    meta = pretrain(cfg, out=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert saved["processing"] == {"color_space": "lab", "equalize": "clahe", "normalize": "minmax"}
    pre = Preprocess.from_meta(saved)
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source

    x = load_source(DataConfig(name="synthetic", image_size=16, synthetic_train=64, synthetic_test=32)).train.images[:8]
    manual = Processing("lab", "clahe", "minmax")(x.float() / 255)
    mean = torch.tensor(saved["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(saved["std"]).view(1, 3, 1, 1)
    assert torch.allclose(pre(x), (manual - mean) / std, atol=1e-5)
    code, out, err = cli(
        "probe", tmp_path / "run", "--data", "synthetic", "--set", "data.synthetic_train=64", "--set", "data.synthetic_test=32", "--json"
    )
    assert code == 0, err
    assert meta["run_dir"]
    assert "single-channel" not in err
    code, out, err = cli("probe", tmp_path / "run", "--data", "digits", "--mode", "knn", "--k", "5")  # gray digits, a Lab backbone
    assert code == 0, err
    assert (
        "warning: digits is single-channel and the backbone was pretrained in data.color_space=lab on colour images: "
        "its images go in as R = G = B, whose lab colour channels are constant"
    ) in err.splitlines()


def test_colorization_refuses_another_colour_space(tmp_path, cli):
    code, out, err = cli(
        "pretrain", "--task", "colorization", "--data", "synthetic", "--set", "data.color_space=hsv", "--out", tmp_path / "c", "--quiet"
    )
    assert code == 2 and "colorization converts RGB itself; it needs data.color_space=rgb" in err
    assert not (tmp_path / "c" / "config.yaml").exists()
    for setting, value in (("equalize", "clahe"), ("normalize", "minmax")):  # its L statistics are of the images as they are
        code, out, err = cli(
            "pretrain", "--task", "colorization", "--data", "synthetic", "--set", f"data.{setting}={value}", "--out", tmp_path / "c", "-q"
        )
        assert (code, err) == (
            2,
            "error: colorization converts RGB itself and normalises what it derives by the statistics of the images as they are; "
            f"it takes data.equalize=none and data.normalize=zscore, not data.{setting}={value}\n",
        )
        assert not (tmp_path / "c").exists()


def test_colour_jitter_on_converted_channels_is_noted_once_and_not_when_turned_off(tmp_path, cli):
    tiny = ["--data", "synthetic", "--backbone", "test_resnet", "--epochs", "1", "--image-size", "16", "--quiet"]
    tiny += ["--set", "data.synthetic_train=32", "--set", "data.synthetic_test=16", "--set", "data.color_space=hsv"]
    code, _, err = cli("pretrain", "--task", "byol", *tiny, "--out", tmp_path / "b")
    assert code == 0, err
    note = "note: byol's colour jitter and random grayscale act on the hsv channels as if they were R, G, B; "
    assert err.count(note + "set jitter_p=0 and gray_p=0 in task_config.views and task_config.second_view") == 1
    off = ["--set", "task_config.views.jitter_p=0", "--set", "task_config.views.gray_p=0"]
    code, _, err = cli("pretrain", "--task", "simclr", *tiny, *off, "--out", tmp_path / "s")
    assert code == 0 and "colour jitter" not in err, err


def test_inspect_shows_channel_histograms_before_and_after(tmp_path, cli):
    out = tmp_path / "inspect.html"
    code, _, err = cli(
        "inspect",
        "synthetic",
        "--set",
        "data.synthetic_train=64",
        "--set",
        "data.synthetic_test=16",
        "--set",
        "data.image_size=16",
        "--set",
        "data.color_space=hsv",
        "--set",
        "data.equalize=global",
        "--out",
        out,
        "--json",
        "--quiet",
    )
    assert code == 0, err
    html = out.read_text()
    assert "Channels before and after processing" in html and 'alt="after processing"' in html
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.inspection.processing import processing_section

    source = load_source(DataConfig(name="synthetic", synthetic_train=64, synthetic_test=16, image_size=16))
    section, pictures = processing_section(source, Processing("hsv"))
    assert [h["channel"] for h in section["before"]] == ["R", "G", "B"] and [h["channel"] for h in section["after"]] == ["H", "S", "V"]
    assert all(sum(h["counts"]) == 64 * 16 * 16 for h in section["before"] + section["after"])
    red = source.train.images[:, 0].float().div(255)
    assert section["before"][0]["mean"] == pytest.approx(red.mean().item(), abs=1e-4)
    assert pictures["before"].startswith(b"\x89PNG") and pictures["after"].startswith(b"\x89PNG")
