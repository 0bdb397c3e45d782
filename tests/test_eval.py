"""Evaluators: frozen stays frozen, partial freezing is exact, kNN matches a reference, caching works."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE

from ssl_toolkit.backbones import create_backbone, stages
from ssl_toolkit.config import BackboneConfig, DataConfig, ProbeConfig
from ssl_toolkit.data.sources import load_source
from ssl_toolkit.eval.features import FeatureCache, Preprocess
from ssl_toolkit.eval.probe import label_subset
from ssl_toolkit.evaluators import EVALUATORS, EvalContext
from ssl_toolkit.evaluators.finetune import HEAD_LR_SCALE
from ssl_toolkit.evaluators.knn import knn_scores


def make_ctx(mode: str, fraction: float = 1.0, **cfg) -> EvalContext:
    """A random-init test_resnet (small stem) on 16 px synthetic shapes, 96 train / 48 test images."""
    data = DataConfig(name="synthetic", image_size=16, synthetic_train=96, synthetic_test=48)
    pcfg = ProbeConfig(mode=mode, data=data, label_fraction=fraction, accelerator="cpu", batch_size=32, **cfg)
    source = load_source(data)
    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name=TINY_BACKBONE), source.channels, source.image_size)
    pre = Preprocess(source.channels, source.mean, source.std)
    idx = label_subset(source.train.labels, fraction, pcfg.seed)
    return EvalContext(model=model.eval(), meta={}, source=source, pre=pre, train_idx=idx, cfg=pcfg)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_stages_follow_feature_info_with_small_stem():
    model, spec = create_backbone(BackboneConfig(name=TINY_BACKBONE), 3, 16)
    assert spec.small_stem
    groups = stages(model)
    assert [g.name for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert groups[0].prefixes == ["conv1", "bn1", "act1", "maxpool"]
    owned = [n for n, _ in model.named_parameters() if any(g.owns(n) for g in groups)]
    assert owned == [n for n, _ in model.named_parameters()]  # every weight of a ResNet lies in a stage


@pytest.mark.parametrize(
    ("arch", "expected", "stem"),
    [
        ("efficientnet_b0", ["blocks.0", "blocks.1", "blocks.2", "blocks.3..blocks.4", "blocks.5..blocks.6"], ["conv_stem", "bn1"]),
        ("mobilenetv3_small_050", ["blocks.0", "blocks.1", "blocks.2..blocks.3", "blocks.4..blocks.5"], ["conv_stem", "bn1"]),
        ("regnetx_002", ["s1", "s2", "s3", "s4"], ["stem"]),
    ],
)
def test_every_block_lies_in_one_stage_of_families_whose_marks_skip_blocks(arch, expected, stem):
    """EfficientNet's blocks.3 and .5 belonged to no stage (trained at any K), MobileNetV3's stem was split
    with bn1 made stage 1, and RegNet's stem was stage 1 (K=0 froze nothing)."""
    import timm

    groups = stages(timm.create_model(arch, pretrained=False, num_classes=0))
    assert [g.name for g in groups] == ["stem", *expected] and groups[0].prefixes == stem
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    tops = {p.split(".")[0] for g in groups for p in g.prefixes}  # conv_stem, bn1, blocks; stem, s1 .. s4
    body = [n for n, _ in model.named_parameters() if n.split(".")[0] in tops]
    assert body and all(sum(g.owns(n) for g in groups) == 1 for n in body)  # every weight of them in exactly one group


def test_a_linear_probe_with_nothing_to_hold_out_says_what_it_did_not_choose():
    from ssl_toolkit.evaluators.linear import linear_probe

    x = torch.randn(2, 4)  # one training label per class: none can be held out
    _, facts = linear_probe(x, torch.tensor([0, 1]), torch.randn(3, 4), 2, kind="binary")
    assert (facts["weight_decay"], facts["holdout_roc_auc"]) == (1e-3, {})
    assert (
        facts["holdout"]
        == "none: too few training labels to hold any out, so weight decay 0.001 and threshold 0.5 were not chosen but fixed"
    )
    _, facts = linear_probe(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(3, 4), 3)
    assert facts["holdout"].endswith(", so weight decay 0.001 was not chosen but fixed")
    y = torch.tensor([0, 0, 0, 0, 0, 1])  # the one positive stays in the fit: the held-out image is a negative
    _, facts = linear_probe(torch.randn(6, 4), y, torch.randn(3, 4), 2, kind="binary")
    assert facts["weight_decay"] == 1e-3 and set(facts["holdout_roc_auc"].values()) == {None}  # undefined, not 0: nothing chosen by it
    assert facts["holdout"] == (
        "weight decay 0.001 fixed, not chosen (holdout_roc_auc undefined); "
        "threshold 0.5 fixed, not chosen: the 1 held-out image(s) are all of one class"
    )


def test_linear_probe_leaves_backbone_bit_identical_and_reuses_cache():
    ctx = make_ctx("linear")
    before = snapshot(ctx.model)
    calls = count_forwards(ctx.model)
    cache = FeatureCache()
    scores, facts = EVALUATORS.get("linear")(ctx.cfg, cache).evaluate(ctx)
    assert scores.shape == (48, ctx.source.num_classes)
    assert cache.forward_passes == 2 and calls[0] > 0  # train + test extracted once
    after = ctx.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers
    assert not ctx.model.training
    assert facts["weight_decay"] in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1) and len(facts["holdout_acc"]) == 5 and "holdout" not in facts

    calls[0] = 0
    second = FeatureCache()  # a new process: same on-disk cache
    scores2, _ = EVALUATORS.get("linear")(ctx.cfg, second).evaluate(ctx)
    assert second.forward_passes == 0 and calls[0] == 0
    assert torch.allclose(scores, scores2)


def test_a_feature_cache_entry_of_the_wrong_width_type_or_with_nan_is_recomputed(toolkit_home):
    ctx = make_ctx("knn")
    cache = FeatureCache()
    first, hit = cache.features(ctx.model, ctx.source, "train", ctx.pre)
    assert not hit
    (entry,) = [p for p in (toolkit_home / "cache").rglob("*.pt") if torch.load(p, weights_only=True).shape[0] == len(ctx.source.train)]
    good = torch.load(entry, weights_only=True)
    for bad in (good[:, :3].clone(), good.double(), torch.full_like(good, float("nan")), good.long()):
        torch.save(bad, entry)
        again, hit = FeatureCache().features(ctx.model, ctx.source, "train", ctx.pre)
        assert not hit and np.array_equal(again, first)
    assert FeatureCache().features(ctx.model, ctx.source, "train", ctx.pre)[1]  # the recomputed entry is used again


def test_a_cache_that_cannot_be_written_is_one_warning_and_the_features_are_still_given(tmp_path, capsys):
    ctx = make_ctx("knn")
    (tmp_path / "cache").write_text("a file where the cache folder would go")
    cache = FeatureCache(tmp_path / "cache" / "features")
    train, hit = cache.features(ctx.model, ctx.source, "train", ctx.pre)
    test, _ = cache.features(ctx.model, ctx.source, "test", ctx.pre)
    assert not hit and cache.forward_passes == 2 and train.shape[0] == len(ctx.source.train) and np.isfinite(test).all()
    err = capsys.readouterr().err
    assert err.count("warning: features are not cached: Not a directory") == 1
    assert np.array_equal(train, FeatureCache(tmp_path / "elsewhere").features(ctx.model, ctx.source, "train", ctx.pre)[0])


def test_the_feature_cache_tells_apart_networks_with_the_same_weights():
    """resnet18 with and without its stem max-pool has one state_dict; their features must not be shared."""
    from ssl_toolkit.eval.features import extract, model_fingerprint

    source = load_source(DataConfig(name="synthetic", image_size=32, synthetic_train=24, synthetic_test=8))
    models = {}
    for pool in (True, False):
        torch.manual_seed(0)  # the random-init baseline's seeding: the same weights both times
        models[pool], _ = create_backbone(BackboneConfig(name=TINY_BACKBONE, small_stem=False, stem_pool=pool), source.channels, 32)
        models[pool].eval()
    with_pool, without = snapshot(models[True]), snapshot(models[False])
    assert with_pool.keys() == without.keys() and all(torch.equal(with_pool[k], without[k]) for k in with_pool)
    assert model_fingerprint(models[True]) != model_fingerprint(models[False])

    pre = Preprocess(source.channels, source.mean, source.std)
    cache = FeatureCache()
    first, hit = cache.features(models[True], source, "test", pre)
    second, hit2 = cache.features(models[False], source, "test", pre)
    assert not hit and not hit2 and cache.forward_passes == 2
    np.testing.assert_allclose(np.asarray(second), extract(models[False], source.test.images, pre).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(first), np.asarray(second))
    assert cache.features(models[False], source, "test", pre)[1]  # and each is still found again


def test_partial_freezes_exactly_the_frozen_stages():
    ctx = make_ctx("partial", evaluator_config={"freeze_stages": 2}, epochs=1, lr=1e-2)
    before = snapshot(ctx.model)
    EVALUATORS.get("partial")(ctx.cfg).evaluate(ctx)
    after = ctx.model.state_dict()
    groups = stages(ctx.model)
    frozen, trained = groups[:3], groups[3:]  # stem, layer1, layer2 | layer3, layer4
    for name in before:
        if any(g.owns(name) for g in frozen):
            assert torch.equal(before[name], after[name]), f"{name} moved although frozen"
    for g in trained:
        params = [n for n, _ in ctx.model.named_parameters() if g.owns(n)]
        assert any(not torch.equal(before[n], after[n]) for n in params), f"{g.name} did not train"
        bn_means = [n for n in before if g.owns(n) and n.endswith("running_mean")]
        assert any(not torch.equal(before[n], after[n]) for n in bn_means), f"{g.name} BN statistics did not move"


def test_finetune_layer_decay_groups():
    ctx = make_ctx("finetune", evaluator_config={"layer_decay": 0.5})
    ev = EVALUATORS.get("finetune")(ctx.cfg)
    head = torch.nn.Linear(int(ctx.model.num_features), ctx.source.num_classes)
    groups = ev.param_groups(ctx.model, head, lr=1.0, weight_decay=0.05)
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(ctx.model.parameters())) + 2  # everything trains
    lrs = sorted({g["lr"] for g in groups})
    assert lrs == [0.5**5, 0.5**4, 0.5**3, 0.5**2, 0.5, HEAD_LR_SCALE]  # stem ... layer4, head
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim <= 1 for p in g["params"]))


def test_knn_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    labels = rng.integers(0, 5, size=300)
    k, t = 15, 0.1
    scores = knn_scores(torch.from_numpy(train), torch.from_numpy(labels), torch.from_numpy(test), k=k, T=t, num_classes=5)

    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sim = b @ a.T  # (40, 300)
    ref = np.zeros((40, 5))
    for i in range(40):
        nn_idx = np.argsort(-sim[i])[:k]
        for j in nn_idx:
            ref[i, labels[j]] += np.exp(sim[i, j] / t)
        ref[i] /= np.exp(sim[i, nn_idx[0]] / t)  # each row is scaled so that its nearest neighbour weighs 1
    np.testing.assert_allclose(scores.numpy(), ref, rtol=1e-4)
    assert (scores.argmax(1).numpy() == ref.argmax(1)).all()
    assert knn_scores(train, labels, test, k=1000, T=t).shape == (40, 5)  # k clipped to the training set


def test_top5_counts_no_class_that_kept_its_place_only_by_a_tie():
    """kNN scores leave most classes at exactly 0; topk filled the top 5 from them in an arbitrary order."""
    from ssl_toolkit.eval.metrics import classification_report

    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.standard_normal((60, 8)).astype(np.float32))
    labels = torch.arange(60) % 10
    test = torch.from_numpy(rng.standard_normal((40, 8)).astype(np.float32))
    truth = torch.from_numpy(rng.integers(0, 10, 40))
    one = classification_report(knn_scores(train, labels, test, k=1, T=0.1, num_classes=10), truth, 10)
    assert one["top5"] == one["top1"]  # one neighbour votes for one class: the other nine tie at 0
    scores = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.3], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.3], [3.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.0]]
    )
    report = classification_report(scores, torch.tensor([0, 7, 4]), 8)
    assert report["top1"] == 0.0 and report["top5"] == pytest.approx(1 / 3, abs=1e-6)  # only the voted class 7 is a hit
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert classification_report(logits, torch.tensor([4, 1]), 7)["top5"] == 0.5  # distinct scores: the 5 highest


def test_knn_vote_stays_finite_and_exact_at_a_small_temperature():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=200)
    for t in (1e-3, 1e-300):
        scores = knn_scores(train, labels, test, k=10, T=t, num_classes=4)
        assert torch.isfinite(scores).all()
        a = train / np.linalg.norm(train, axis=1, keepdims=True)
        b = test / np.linalg.norm(test, axis=1, keepdims=True)
        sim = (b @ a.T).astype(np.float64)
        ref = np.full((30, 4), -np.inf)  # log of each class's summed weight
        for i in range(30):
            for j in np.argsort(-sim[i])[:10]:
                ref[i, labels[j]] = np.logaddexp(ref[i, labels[j]], sim[i, j] / t)
        assert (scores.argmax(1).numpy() == ref.argmax(1)).all()
    ctx = make_ctx("knn", evaluator_config={"temperature": 1e-3})
    scores, facts = EVALUATORS.get("knn")(ctx.cfg).evaluate(ctx)
    assert torch.isfinite(scores).all() and all(0 < v <= 1 for v in facts["top1_by_k"].values())


def test_knn_evaluator_reports_each_k():
    from ssl_toolkit.eval.probe import evaluation_report

    ctx = make_ctx("knn", evaluator_config={"k": 50})
    scores, facts = EVALUATORS.get("knn")(ctx.cfg).evaluate(ctx)
    assert facts["k"] == 50 and set(facts["top1_by_k"]) == {"50", "20", "1"}
    assert scores.shape == (48, ctx.source.num_classes)
    for t in (0.1, 1e9):  # at 1e9 the votes differ below float32's resolution: top1 reads them as top1_by_k does
        ctx = make_ctx("knn", evaluator_config={"k": 50, "temperature": t})
        scores, facts = EVALUATORS.get("knn")(ctx.cfg).evaluate(ctx)
        labels, classes = ctx.source.test.labels, ctx.source.num_classes
        assert evaluation_report("multiclass", scores, labels, classes, None)["top1"] == facts["top1_by_k"]["50"]


def test_label_subset_is_stratified_exact_and_seeded():
    labels = torch.tensor([0] * 40 + [1] * 25 + [2] * 7 + [3] * 1)
    sub = label_subset(labels, 0.2, seed=3)
    assert torch.bincount(labels[sub]).tolist() == [8, 5, 1, 1]  # max(1, round(n_c * F))
    assert len(sub.unique()) == len(sub)
    assert torch.equal(sub, label_subset(labels, 0.2, seed=3))
    assert not torch.equal(sub, label_subset(labels, 0.2, seed=4))
    assert torch.bincount(labels[label_subset(labels, 0.5, seed=0)]).tolist() == [20, 12, 4, 1]
    assert len(label_subset(labels, 1.0, seed=0)) == len(labels)


@pytest.mark.parametrize(("mode", "head_trains"), [("linear", True), ("knn", False)])
def test_frozen_feature_evaluators_freeze_the_whole_backbone(mode, head_trains):
    ctx = make_ctx(mode)
    head = torch.nn.Linear(8, 3)
    trainable = EVALUATORS.get(mode)(ctx.cfg).freeze(ctx.model, head)
    assert not any(p.requires_grad for p in ctx.model.parameters())
    assert [p.requires_grad for p in head.parameters()] == [head_trains, head_trains]
    assert {id(p) for p in trainable} == ({id(p) for p in head.parameters()} if head_trains else set())


def test_feature_extraction_on_the_cpu_bounds_the_pixels_of_a_pass_and_keeps_every_row():
    from torch import nn

    from ssl_toolkit.eval.features import CPU_FORWARD_PIXELS, Preprocess, extract_into

    seen: list[int] = []

    class MeanPool(nn.Module):
        def forward(self, x):  # (B, C, S, S) -> (B, C)
            seen.append(len(x))
            return x.mean(dim=(2, 3))

    pre = Preprocess(3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    big = torch.randint(0, 256, (10, 3, 1000, 1000), dtype=torch.uint8)
    out = np.zeros((10, 3), np.float32)
    extract_into(MeanPool(), big, pre, out, batch_size=256)
    per_pass = CPU_FORWARD_PIXELS // (1000 * 1000)
    assert seen == [per_pass] * (10 // per_pass) + ([10 % per_pass] if 10 % per_pass else [])
    expected = ((big.float() / 255 - 0.5) / 0.25).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4)
    seen.clear()
    extract_into(MeanPool(), torch.zeros(600, 3, 32, 32, dtype=torch.uint8), pre, np.zeros((600, 3), np.float32), batch_size=512)
    assert seen == [512, 88]  # small images: the asked batch size


@pytest.mark.parametrize("kind", ["folder in memory", "folder streamed", "shards"])
def test_images_rewritten_under_the_same_names_are_not_read_from_the_feature_cache(tmp_path, toolkit_home, kind):
    import os
    import shutil

    from PIL import Image

    import ssl_toolkit as st

    def write(colour_of_first) -> None:
        """The folder (and its shards), with the first test image of class b in ``colour_of_first``."""
        for split, n in (("train", 8), ("test", 4)):
            for k in range(n):
                d = tmp_path / "imgs" / split / ("a" if k % 2 else "b")
                d.mkdir(parents=True, exist_ok=True)
                colour = colour_of_first if (split, k) == ("test", 0) else (40 * k, 100, 200 - 20 * k)
                Image.new("RGB", (24, 20), colour).save(d / f"{k}.png")
        stamp = 10**18 + (colour_of_first[2] << 30)  # a later modification time (a file system may keep only seconds)
        os.utime(tmp_path / "imgs" / "test" / "b" / "0.png", ns=(stamp, stamp))
        if kind == "shards":
            shutil.rmtree(tmp_path / "sh", ignore_errors=True)
            st.shard(tmp_path / "imgs", tmp_path / "sh", image_size=16, workers=1)

    def source():
        if kind == "shards":
            return load_source(DataConfig(name=str(tmp_path / "sh")))
        return load_source(DataConfig(name=str(tmp_path / "imgs"), image_size=16, stream=kind == "folder streamed"))

    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name=TINY_BACKBONE), 3, 16)
    model.eval()
    write((255, 0, 0))
    pre = Preprocess(3, (0.5,) * 3, (0.25,) * 3)  # fixed: the statistics of the two folders differ
    first, hit = FeatureCache().features(model, data := source(), "test", pre)
    assert not hit and FeatureCache().features(model, source(), "test", pre)[1]  # the same files: from the cache
    row = 2  # the test rows are a/1, a/3, b/0, b/2
    assert kind == "shards" or data.test.ids[row].endswith("b/0.png")
    write((0, 0, 255))  # one test image rewritten under its name
    again, hit = FeatureCache().features(model, source(), "test", pre)
    others = [i for i in range(len(first)) if i != row]
    assert not hit and not np.allclose(again[row], first[row]) and np.allclose(again[others], first[others])


def test_a_backbone_that_cannot_take_the_image_size_is_one_line_before_any_training(cli, tmp_path):
    """A ConvNeXt keeping timm's stride-32 stages at 16 px ended in a convolution's traceback (exit 1) once training began."""
    code, _, err = cli(
        "pretrain",
        "--data",
        "digits",
        "--image-size",
        "16",
        "--backbone",
        "test_convnext",
        "--set",
        "backbone.small_stem=false",
        "--out",
        tmp_path / "run",
    )
    assert code == 2 and err.startswith("error: backbone 'test_convnext' cannot take 16 px images (Calculated padded input size")
    assert err.strip().endswith("; give a larger --image-size, or leave backbone.small_stem unset") and not (tmp_path / "run").exists()
    model, _ = create_backbone(BackboneConfig(name="test_convnext", small_stem=False), 1, 32)  # at 32 px it runs
    assert model.training  # the check leaves the mode as it was


def test_an_input_transform_whose_plugin_is_not_installed_names_its_task():
    from ssl_toolkit.errors import UserError

    meta = {"in_chans": 1, "mean": [0.5], "std": [0.25], "input_transform": "inverted", "task": "invert-flip"}
    pre = Preprocess.from_meta(meta)
    with pytest.raises(
        UserError,
        match=r"^the backbone sees the input transform 'inverted' of task 'invert-flip', which is not registered here: install the "
        r"package that provides task 'invert-flip' \(docs/plugins.md\); registered transforms: lab_l$",
    ):
        pre(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    lab = Preprocess.from_meta({**meta, "input_transform": "lab_l", "task": "colorization"})
    assert lab(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)).shape == (2, 1, 8, 8)  # L of white, normalised
