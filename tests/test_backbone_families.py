"""ResNet, ConvNeXt and ViT through every pretext task and every evaluator, on tiny timm models.

``test_resnet``, ``test_convnext`` and ``test_vit`` are timm's own 0.2-0.4M-parameter test
configurations of the three families; every run is two optimiser steps on 16-34 px images.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors.torch import load_file

from ssl_toolkit import pretrain, probe
from ssl_toolkit.backbones import auto_backbone, create_backbone, resnet_small_max_size, resolve_auto, stages
from ssl_toolkit.config import BackboneConfig, PretrainConfig, ProbeConfig, validate
from ssl_toolkit.errors import UserError
from ssl_toolkit.evaluators import EVALUATORS
from ssl_toolkit.pretext import TASKS

FAMILIES = ["test_resnet", "test_convnext", "test_vit"]
# (image size, task_config) small enough for two steps in about a second
TASK_SETTINGS = {
    "jigsaw": (20, {"grid": 2, "num_permutations": 4, "tile_dim": 32, "hidden_dim": 64}),
    "relative-position": (34, {"hidden_dim": 64}),
    "colorization": (16, {"decoder_dim": 32, "out_stride": 2, "prior_images": 64}),
    "inpainting": (16, {"decoder_dim": 32}),
    "moco": (16, {"queue_size": 32, "hidden_dim": 64}),
    "byol": (16, {"hidden_dim": 64}),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _pretrain(task: str, backbone: str, out, steps: int = 2) -> dict:
    size, task_config = TASK_SETTINGS.get(task, (16, {}))
    cfg = tiny_config(task, task_config=task_config, epochs=1)
    cfg["data"].update(image_size=size, synthetic_train=64, synthetic_test=48)
    cfg["backbone"]["name"] = backbone
    cfg["trainer"].update(batch_size=32, max_steps=steps)
    return pretrain(cfg, out=out)


def test_every_task_is_registered_here():
    assert set(TASK_SETTINGS) | {"rotation", "simclr"} == set(TASKS.names())


@pytest.mark.parametrize("backbone", FAMILIES)
@pytest.mark.parametrize("task", sorted(set(TASK_SETTINGS) | {"rotation", "simclr"}))
def test_task_pretrains_family(task, backbone, tmp_path):
    meta = _pretrain(task, backbone, tmp_path / "run")
    assert meta["backbone"]["timm_name"] == backbone and meta["steps"] == 2
    assert math.isfinite(meta["final_loss"])
    weights = load_file(str(tmp_path / "run" / "backbone.safetensors"))
    assert weights and not any(k.startswith("task.") for k in weights)


def test_small_image_rules_per_family():
    small = {n: create_backbone(BackboneConfig(name=n), 1, 28)[1] for n in FAMILIES}
    assert small["test_resnet"].small_stem and "patch_size" not in small["test_resnet"].kwargs
    assert small["test_convnext"].kwargs["patch_size"] == 1 and not small["test_convnext"].small_stem
    vit = small["test_vit"].kwargs
    assert (vit["patch_size"], vit["img_size"], vit["dynamic_img_size"], vit["dynamic_img_pad"]) == (4, 28, True, True)
    big = {n: create_backbone(BackboneConfig(name=n), 3, 96) for n in FAMILIES}
    assert not big["test_resnet"][1].small_stem
    assert "patch_size" not in big["test_convnext"][1].kwargs and "patch_size" not in big["test_vit"][1].kwargs
    # total stride 8 under the rule: a 32 px image leaves a 4x4 map (ConvNeXt) / an 8x8 token grid (ViT)
    convnext, _ = create_backbone(BackboneConfig(name="test_convnext"), 3, 32)
    assert convnext.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)
    vit_model, _ = create_backbone(BackboneConfig(name="test_vit"), 3, 32)
    assert vit_model.forward_features(torch.zeros(1, 3, 32, 32)).shape[1] == 64 + vit_model.num_prefix_tokens
    assert vit_model(torch.zeros(2, 3, 9, 9)).shape == (2, 64)  # any side: padded to the patch grid
    explicit, spec = create_backbone(BackboneConfig(name="test_vit", kwargs={"patch_size": 8}), 3, 32)
    assert spec.kwargs["patch_size"] == 8  # the user's kwargs win


def test_a_resnet_gets_the_small_stem_up_to_64_px_on_a_gpu_and_16_px_on_a_cpu():
    assert (resnet_small_max_size("cpu"), resnet_small_max_size("gpu"), resnet_small_max_size("cuda")) == (16, 64, 64)
    cpu = resnet_small_max_size("cpu")
    at28 = {n: create_backbone(BackboneConfig(name=n), 1, 28, cpu)[1] for n in FAMILIES}
    assert not at28["test_resnet"].small_stem
    # ConvNeXt and ViT keep the 64 px rule: a ConvNeXt's stride-32 stages need it below 32 px
    assert at28["test_convnext"].kwargs["patch_size"] == 1 and at28["test_vit"].kwargs["patch_size"] == 4
    assert create_backbone(BackboneConfig(name="test_resnet"), 1, 16, cpu)[1].small_stem
    forced = create_backbone(BackboneConfig(name="test_resnet", small_stem=True), 1, 28, cpu)[1]
    assert forced.small_stem  # an explicit choice wins on any machine


def test_a_resnet_with_timms_stem_drops_its_max_pool_at_32_px_and_less():
    cpu = resnet_small_max_size("cpu")
    grids = {}
    for size, stem_pool in ((28, None), (32, None), (33, None), (28, True), (64, False)):
        model, spec = create_backbone(BackboneConfig(name="resnet18", stem_pool=stem_pool), 1, size, cpu)
        assert not spec.small_stem
        with torch.no_grad():
            grids[size, stem_pool] = (spec.stem_pool, tuple(model.eval().forward_features(torch.zeros(1, 1, size, size)).shape[-2:]))
    assert grids == {
        (28, None): (False, (2, 2)),  # total stride 16; with the pool the last stage would see 1x1
        (32, None): (False, (2, 2)),
        (33, None): (True, (2, 2)),
        (28, True): (True, (1, 1)),
        (64, False): (False, (4, 4)),
    }
    # stem_pool=true means timm's stem: the small stem's rule (16 px on a CPU) steps aside
    assert create_backbone(BackboneConfig(name="test_resnet", stem_pool=True), 1, 16, cpu)[1].small_stem is False
    small = create_backbone(BackboneConfig(name="test_resnet"), 1, 16, cpu)[1]
    assert small.small_stem and small.stem_pool is False  # the small stem has no max-pool either
    assert create_backbone(BackboneConfig(name="test_vit"), 3, 28)[1].stem_pool  # other families: nothing to drop
    for stem_pool in (False, True):  # either way a choice the family cannot make
        with pytest.raises(UserError, match="'test_vit' has no ResNet-style stem max-pool; leave backbone.stem_pool unset$"):
            create_backbone(BackboneConfig(name="test_vit", stem_pool=stem_pool), 3, 28)
    with pytest.raises(UserError, match="small_stem=true has no max-pool; leave stem_pool unset"):
        validate(PretrainConfig, {"backbone": {"small_stem": True, "stem_pool": True}})


def test_backbone_auto_is_resnet10t_where_a_cpu_resnet_drops_the_stem_pool_and_resnet18_elsewhere():
    chosen = {(size, acc): auto_backbone(size, acc) for size in (8, 16, 17, 28, 32, 33, 224) for acc in ("cpu", "gpu")}
    assert chosen == {
        (8, "cpu"): "resnet18",  # the small stem's range on a CPU
        (16, "cpu"): "resnet18",
        (17, "cpu"): "resnet10t",
        (28, "cpu"): "resnet10t",
        (32, "cpu"): "resnet10t",
        (33, "cpu"): "resnet18",
        (224, "cpu"): "resnet18",
        **{(size, "gpu"): "resnet18" for size in (8, 16, 17, 28, 32, 33, 224)},
    }
    assert BackboneConfig().name == "auto"
    explicit = BackboneConfig(name="resnet18", stem_pool=False)
    assert resolve_auto(explicit, 28, "cpu") is explicit  # a name the user gave is kept
    assert resolve_auto(BackboneConfig(stem_pool=False), 28, "cpu") == BackboneConfig(name="resnet10t", stem_pool=False)
    with pytest.raises(ValueError, match="resolved by resolve_auto"):
        create_backbone(BackboneConfig(), 1, 28)


def test_a_run_records_the_backbone_auto_chose_and_the_baseline_follows_the_same_rule(tmp_path, capsys):
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=28, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, max_steps=1)
    del cfg["backbone"]
    meta = pretrain(cfg, out=tmp_path / "auto")
    err = capsys.readouterr().err
    assert "note: backbone auto is resnet10t at 28 px on a CPU" in err
    assert "px); backbone.name in the config chooses another\n" in err  # a Python caller is told the config key, not --backbone
    assert meta["backbone"]["timm_name"] == "resnet10t" and meta["backbone"]["stem_pool"] is False
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["backbone"]["name"] == "resnet10t"
    baseline = probe(None, {"mode": "knn", "data": cfg["data"]}, random_init=True)
    assert (baseline["backbone"], baseline["stem_pool"]) == ("resnet10t", False)  # the same network as the run
    # continued pretraining from a backbone keeps that backbone's network
    cont = pretrain({**cfg, "init_from": str(tmp_path / "auto")}, out=tmp_path / "cont")
    assert cont["backbone"]["timm_name"] == "resnet10t"


def as_before_settings_were_kept(run) -> None:
    """Make ``run``'s last.ckpt one from before checkpoints kept the run's settings (a resume then trusts config.yaml)."""
    state = torch.load(run / "last.ckpt", weights_only=True)
    del state["ssl_config"]
    torch.save(state, run / "last.ckpt")


def test_a_cpu_run_records_the_stem_it_chose_and_a_resume_keeps_the_recorded_one(tmp_path, capsys):
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=28, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, max_steps=2)
    meta = pretrain(cfg, out=tmp_path / "auto")
    err = capsys.readouterr().err
    assert "test_resnet keeps timm's stem without its max-pool at 28 px on a CPU" in err
    assert "px and less); backbone.small_stem=True or backbone.stem_pool=True/False in the config changes it\n" in err
    assert (meta["backbone"]["small_stem"], meta["backbone"]["stem_pool"]) == (False, False)
    recorded = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["backbone"]
    assert (recorded["small_stem"], recorded["stem_pool"]) == (False, False)
    # a run from before the max-pool rule: timm's stem with its pool at 28 px, no stem_pool in its config.yaml
    pooled = tmp_path / "pooled"
    pretrain({**cfg, "backbone": {"name": "test_resnet", "stem_pool": True}}, out=pooled)
    saved = yaml.safe_load((pooled / "config.yaml").read_text())
    del saved["backbone"]["stem_pool"]
    (pooled / "config.yaml").write_text(yaml.safe_dump(saved))
    as_before_settings_were_kept(pooled)
    resumed = pretrain({"trainer": {"epochs": 2, "max_steps": -1}}, resume=pooled)
    assert resumed["steps"] == 4 and resumed["backbone"]["stem_pool"] is True
    # a run from before the CPU rule: small stem at 28 px, and small_stem: null in its config.yaml
    run = tmp_path / "old"
    pretrain({**cfg, "backbone": {"name": "test_resnet", "small_stem": True}}, out=run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["backbone"]["small_stem"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    as_before_settings_were_kept(run)
    resumed = pretrain({"trainer": {"epochs": 2, "max_steps": -1}}, resume=run)
    assert resumed["steps"] == 4 and resumed["backbone"]["small_stem"] is True


@pytest.mark.parametrize("backbone", ["test_convnext", "test_vit"])
def test_stages_and_layer_decay_follow_timm(backbone):
    model, _ = create_backbone(BackboneConfig(name=backbone), 3, 16)
    names = [g.name for g in stages(model)]
    expected = ["stem"] + ([f"stages.{i}" for i in range(4)] if "convnext" in backbone else [f"blocks.{i}" for i in range(6)])
    assert names == expected
    ev = EVALUATORS.get("finetune")(ProbeConfig(mode="finetune", evaluator_config={"layer_decay": 0.5}))
    head = torch.nn.Linear(64, 3)
    groups = ev.param_groups(model, head, lr=1.0, weight_decay=0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + 2
    lrs = sorted({g["lr"] for g in groups})
    depth = len(lrs) - 1  # timm's layers: stem + blocks (+ final norm) before the head
    assert lrs == [0.5**k for k in range(depth, 0, -1)] + [10.0]
    assert depth == (
        11 if "convnext" in backbone else 7
    )  # timm's groups: ConvNeXt stem, downsamples, blocks, head norm; ViT stem + 6 blocks
    stem_lr = {
        g["lr"]
        for g in groups
        if any(p is model.stem[0].weight if hasattr(model, "stem") else p is model.patch_embed.proj.weight for p in g["params"])
    }
    assert stem_lr == {0.5**depth}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", FAMILIES)
def test_every_evaluator_on_family(backbone, tmp_path):
    run = tmp_path / "run"
    _pretrain("rotation", backbone, run, steps=3)
    data = {"name": "synthetic", "synthetic_train": 64, "synthetic_test": 48}
    base = {"data": data, "accelerator": "cpu", "batch_size": 32}
    for mode, extra in (
        ("linear", {}),
        ("knn", {"evaluator_config": {"k": 10}}),
        ("partial", {"evaluator_config": {"freeze_stages": 1}, "epochs": 1}),
        ("finetune", {"epochs": 1, "evaluator_config": {"layer_decay": 0.7}}),
    ):
        result = probe(run, {**base, "mode": mode, **extra})
        assert result["backbone"] == backbone and result["n_test"] == 48
        assert 0.0 <= result["top1"] <= 1.0
        if mode == "partial":
            first = {"test_resnet": "layer1", "test_convnext": "stages.0", "test_vit": "blocks.0"}[backbone]
            assert result["frozen"] == ["stem", first]
