"""`ssl probe` end to end: the JSON schema, the run-folder record, user errors, the online probe."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import TINY_BACKBONE, tiny_config

from ssl_toolkit.backbones import create_backbone
from ssl_toolkit.checkpoints import save_backbone
from ssl_toolkit.config import BackboneConfig

SMALL = [
    "--data",
    "synthetic",
    "--set",
    "data.synthetic_train=90",
    "--set",
    "data.synthetic_test=45",
    "--set",
    "data.image_size=16",
    "--accelerator",
    "cpu",
]


def saved_backbone(folder):
    model, spec = create_backbone(BackboneConfig(name=TINY_BACKBONE), 3, 16)
    meta = {"task": "none", "backbone": spec.to_dict(), "in_chans": 3, "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_backbone(folder, model, meta)
    return folder


def test_probe_json_schema_and_record(cli, tmp_path):
    run = saved_backbone(tmp_path / "run")
    code, out, err = cli("probe", run, "--mode", "knn", "--label-fraction", "0.5", "--json", *SMALL)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    for key, kind in {
        "mode": str,
        "label_fraction": float,
        "top1": float,
        "top5": float,
        "per_class_acc": list,
        "confusion": list,
        "n_train": int,
        "n_test": int,
        "num_classes": int,
        "dataset": str,
        "backbone": str,
        "seconds": float,
        "top1_by_k": dict,
    }.items():
        assert isinstance(result[key], kind), key
    k = result["num_classes"]
    assert result["mode"] == "knn" and 40 <= result["n_train"] <= 50 and result["n_test"] == 45
    assert len(result["per_class_acc"]) == k and len(result["confusion"]) == k
    assert sum(map(sum, result["confusion"])) == 45
    recorded = json.loads((run / "probes" / "synthetic-knn-0.5.json").read_text())
    assert recorded["top1"] == result["top1"]
    assert "synthetic-knn-0.5" in json.loads((run / "meta.json").read_text())["probes"]


def test_a_library_entry_without_data_takes_its_runs_folder_while_the_run_holds_its_weights(cli, tmp_path, monkeypatch):
    import shutil

    from PIL import Image

    from ssl_toolkit.pretraining import pretrain

    for split, n in (("train", 8), ("test", 4)):
        for k in range(n):
            (tmp_path / "imgs" / split / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), (30 * k, 90 * (k % 2), 60)).save(tmp_path / "imgs" / split / "ab"[k % 2] / f"{k}.png")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("rotation", data="imgs", epochs=1)  # a relative folder name, as typed
    cfg["data"].update(image_size=16)
    pretrain(cfg, out=tmp_path / "run")
    entry = json.loads((tmp_path / "run" / "meta.json").read_text())["library_name"]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the recorded name 'imgs' is no folder here
    code, out, err = cli("probe", entry, "--mode", "knn", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["dataset"], result["n_train"], result["n_test"]) == (str(tmp_path / "imgs"), 8, 4)
    shutil.rmtree(tmp_path / "run")  # the run is gone: its entry no longer knows where the data was
    code, out, err = cli("probe", entry, "--mode", "knn")
    assert (code, err.strip()) == (
        2,
        f"error: --data is needed: {entry} was pretrained on '{tmp_path / 'imgs'}', but the run that says how it was read "
        f"(its config.yaml: split, labels, data settings) is gone; give --data {tmp_path / 'imgs'} with those settings",
    )
    shutil.rmtree(tmp_path / "imgs")
    code, out, err = cli("probe", entry, "--mode", "knn")
    assert code == 2 and err.strip().endswith("nor a folder that still exists"), err


def test_without_data_probe_takes_the_data_the_backbone_was_pretrained_on(cli, tmp_path):
    from ssl_toolkit.pretraining import pretrain

    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(name="synthetic", image_size=16, synthetic_train=64, synthetic_test=32, synthetic_classes=3)
    pretrain(cfg, out=tmp_path / "run")
    code, out, err = cli("probe", tmp_path / "run", "--mode", "knn", "--json", "--set", "data.synthetic_test=24")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    facts = (result["dataset"], result["num_classes"], result["n_train"], result["n_test"])
    assert facts == ("synthetic", 3, 64, 24)  # the run's data, with the field given on top
    assert (tmp_path / "run" / "probes" / "synthetic-knn-1.json").is_file()
    code, out, err = cli("probe", tmp_path / "run", "--mode", "knn", "--k", "1000")
    assert code == 0 and "k               64 (of 1000 asked: the training set's size)" in out.splitlines(), out
    saved = saved_backbone(tmp_path / "bare")  # metadata that names no data
    code, out, err = cli("probe", saved, "--mode", "knn")
    assert code == 2 and err.strip() == f"error: --data is needed: {saved} does not say which data it was pretrained on"
    meta = json.loads((saved / "meta.json").read_text())
    (saved / "meta.json").write_text(json.dumps({**meta, "dataset": {"name": "tinyblobs"}}))  # a plugin's data, not installed here
    code, out, err = cli("probe", saved, "--mode", "knn")
    assert code == 2 and err.strip() == (
        f"error: --data is needed: {saved} was pretrained on 'tinyblobs', which is neither a registered dataset here "
        "(a data-source plugin that is not installed?) nor a folder that still exists"
    )


def test_random_init_finetune_baseline(cli):
    code, out, err = cli(
        "probe", "--random-init", "--backbone", TINY_BACKBONE, "--mode", "finetune", "--epochs", "1", "--batch-size", "32", "--json", *SMALL
    )
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["random_init"] and result["mode"] == "finetune" and result["frozen"] == []
    assert (  # 90 images in batches of 32: 2 steps an epoch
        "note: --epochs 1 is 2 optimiser steps here (90 training images, batch 32); the new head may stay near chance "
        "in under 100 (--epochs 50 makes 100; the default makes at least 100)"
    ) in err.splitlines()


def test_random_init_stem_follows_the_flag(cli):
    """The baseline can use timm's own stem, as a pretraining config with small_stem: false does."""
    stems = {}
    for flags in (["--small-stem"], ["--timm-stem"], ["--timm-stem", "--no-stem-pool"], ["--stem-pool"]):
        code, out, err = cli("probe", "--random-init", "--backbone", TINY_BACKBONE, *flags, "--json", *SMALL)
        assert code == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        stems[" ".join(flags)] = (result["small_stem"], result["stem_pool"])
    assert stems == {
        "--small-stem": (True, False),
        "--timm-stem": (False, False),  # 32 px synthetic images: timm's stem loses its max-pool
        "--timm-stem --no-stem-pool": (False, False),
        "--stem-pool": (False, True),
    }
    code, _, err = cli("probe", "--random-init", "--backbone", TINY_BACKBONE, "--small-stem", "--stem-pool", *SMALL)
    assert code == 2 and "small_stem=true has no max-pool; leave stem_pool unset" in err


def test_out_of_range_freeze_stages_and_fraction_exit_2(cli, tmp_path):
    run = saved_backbone(tmp_path / "run")
    code, _, err = cli("probe", run, "--mode", "partial", "--freeze-stages", "5", *SMALL)
    assert code == 2 and "use 0 to 4" in err and "layer4" in err
    code, _, err = cli("probe", run, "--mode", "partial", "--freeze-stages", "-1", *SMALL)
    assert code == 2 and "use 0 to 4" in err
    for bad in ("0", "1.5", "-0.2"):
        code, _, err = cli("probe", run, "--label-fraction", bad, *SMALL)
        assert code == 2 and "--label-fraction: " in err
    code, _, err = cli("probe", run, "--mode", "linear", "--freeze-stages", "1", *SMALL)
    assert code == 2 and "partial" in err
    for args in (("--mode", "knn", "--k", "99999999999"), ("--mode", "finetune", "--epochs", "10000000000")):  # were accepted
        code, _, err = cli("probe", run, *args, *SMALL)
        assert code == 2 and "Input should be less than or equal to 1000000 (got " in err, args
    code, _, err = cli("pretrain", "--data", "digits", "--epochs", "10000000000", "--out", run.parent / "long")
    assert (code, err.strip()) == (2, "error: --epochs: Input should be less than or equal to 1000000 (got 10000000000)")


def test_a_learning_rate_adamw_cannot_step_with_is_refused_before_training(cli):
    code, _, err = cli(
        "probe", "--random-init", "--backbone", TINY_BACKBONE, "--mode", "finetune", "--epochs", "1", "--lr", "1e300", *SMALL
    )
    assert code == 2 and "lr: Input should be less than or equal to 1000 for --mode finetune (got 1e+300)" in err
    assert "Traceback" not in err


def test_a_run_folder_the_result_cannot_be_recorded_in_is_refused_before_any_work(cli, tmp_path, toolkit_home):
    run = saved_backbone(tmp_path / "run")
    (run / "probes").write_text("not a folder")
    meta = (run / "meta.json").read_text()
    code, _, err = cli("probe", run, "--mode", "knn", *SMALL)
    assert code == 2 and "probes is a file, not a folder" in err and f"give the backbone file {run / 'backbone.safetensors'}" in err
    assert not list(toolkit_home.rglob("*.pt"))  # no feature was extracted for a result that could not be kept
    assert (run / "meta.json").read_text() == meta
    code, _, err = cli("probe", run / "backbone.safetensors", "--mode", "knn", *SMALL)
    assert code == 0, err
    assert (run / "probes").read_text() == "not a folder" and (run / "meta.json").read_text() == meta


def test_a_probe_record_keeps_its_seed_and_the_evaluators_settings(cli, tmp_path):
    run = saved_backbone(tmp_path / "run")
    code, out, err = cli("probe", run, "--mode", "knn", "--seed", "3", "--set", "evaluator_config.temperature=0.5", "--json", *SMALL)
    assert code == 0, err
    recorded = json.loads((run / "probes" / "synthetic-knn-1.json").read_text())
    assert recorded == json.loads(out.strip().splitlines()[-1])
    assert recorded["seed"] == 3 and recorded["settings"] == {"k": 200, "temperature": 0.5}


def test_a_data_setting_the_backbones_recorded_input_would_override_is_refused(cli, tmp_path, toolkit_home):
    run = saved_backbone(tmp_path / "run")  # pretrained at 16 px, rgb, no equalisation
    data = ["--data", "synthetic", "--set", "data.synthetic_train=90", "--set", "data.synthetic_test=45"]
    for args, setting in (
        (("probe", run, "--mode", "knn", *data, "--set", "data.color_space=hsv"), "data.color_space=hsv differs from the backbone's rgb"),
        (("probe", run, "--mode", "knn", *data, "--set", "data.image_size=8"), "data.image_size=8 differs from the backbone's 16"),
        (("embed", run, *data, "--set", "data.equalize=global", "--out", tmp_path / "e.npz"), "data.equalize=global differs"),
        (("report", run, *data, "--set", "data.image_size=32", "--out", tmp_path / "r.html"), "data.image_size=32 differs"),
    ):
        code, _, err = cli(*args)
        assert code == 2 and setting in err and "leave data." in err, args
    assert not (run / "probes").exists() and not (tmp_path / "e.npz").exists() and not (tmp_path / "r.html").exists()
    code, _, err = cli("probe", run, "--mode", "knn", *data, "--set", "data.image_size=16", "--set", "data.color_space=rgb")
    assert code == 0, err  # the recorded values themselves may be given


def test_the_k_row_says_when_the_default_k_is_clipped(cli, tmp_path):
    run = saved_backbone(tmp_path / "run")
    code, out, err = cli("probe", run, "--mode", "knn", "--json", *SMALL)
    assert code == 0, err
    assert json.loads(out)["k"] == 90  # stdout holds the JSON alone
    assert "90 (of 200 asked: the training set's size)" in err  # the table: stderr, beside --json


def test_classes_missing_from_either_split_are_named(cli, tmp_path):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, classes in (("train", "xyzv"), ("test", "xyzw")):
        for c in classes:
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(4):
                pixels = torch.randint(0, 256, (16, 16, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    run = saved_backbone(tmp_path / "run")
    code, out, err = cli("probe", run, "--mode", "knn", "--data", tmp_path / "data", "--accelerator", "cpu", "--json")
    assert code == 0, err
    assert "class(es) w have test images but no training image" in err
    assert "class(es) v have no test image: the scores say nothing of them" in err
    assert json.loads(out.strip().splitlines()[-1])["per_class_acc"][1] == 0.0  # classes sort: v, w, x, y, z


def test_online_probe_never_touches_the_backbone():
    from ssl_toolkit.backbones import feature_dim
    from ssl_toolkit.callbacks import OnlineProbe
    from ssl_toolkit.config import TrainerConfig
    from ssl_toolkit.engine import PretrainModule

    class NoPretext(torch.nn.Module):
        """A task whose own loss ignores the backbone, so any backbone gradient would come from the probe."""

        def normalize(self, x):
            return x

        def forward(self, backbone, x):
            return torch.zeros((), requires_grad=True), {"features": backbone(x)}

    backbone, _ = create_backbone(BackboneConfig(name=TINY_BACKBONE), 3, 16)
    module = PretrainModule(backbone, NoPretext(), TrainerConfig(), lr=0.1, weight_decay=0.0, optimizer="sgd")
    OnlineProbe(feature_dim(backbone), 4).setup(None, module, "fit")  # what the Trainer does before building the optimiser
    x, y = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 4, (8,))
    module.log = lambda *a, **k: None  # no Trainer attached
    module.training_step((x, y), 0).backward()
    assert all(p.grad is None or not p.grad.any() for p in backbone.parameters())
    assert module.online_head.weight.grad is not None and module.online_head.weight.grad.any()


def test_online_top1_in_metrics_csv(tmp_path):
    from ssl_toolkit.pretraining import pretrain

    cfg = tiny_config("rotation", epochs=1, trainer={"batch_size": 32})
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    meta = pretrain(cfg, out=tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    values = [r["online_top1"] for r in rows if r.get("online_top1")]
    last = float(values[-1])
    assert last == pytest.approx(meta["final_metrics"]["online_top1"], abs=1e-6)  # what meta.json reports is the logged value
    assert last * 64 == pytest.approx(round(last * 64), abs=1e-3)  # a share of the 64 training images (2 batches of 32)


@pytest.mark.slow
def test_finetune_keeps_lightning_banners_off_the_output(run_ssl):
    r = run_ssl("probe", "--random-init", "--backbone", TINY_BACKBONE, "--mode", "finetune", "--epochs", "1", "--batch-size", "32", *SMALL)
    assert r.returncode == 0, r.stderr
    for banner in ("GPU available", "TPU available", "Tip:", "stepping batches", "`Trainer.fit` stopped"):
        assert banner not in r.stdout + r.stderr
    assert r.stdout.splitlines()[0].split() == ["mode", "finetune"]


def test_a_folder_where_the_result_file_goes_is_refused_before_the_evaluation(tmp_path, cli):
    from test_embed import save_random_backbone

    save_random_backbone(tmp_path / "run", 1, 8, (0.5,), (0.25,))
    (tmp_path / "run" / "probes" / "digits-knn-1.json").mkdir(parents=True)
    before = (tmp_path / "run" / "meta.json").read_bytes()
    code, out, err = cli("probe", tmp_path / "run", "--data", "digits", "--mode", "knn")
    record = tmp_path / "run" / "probes" / "digits-knn-1.json"
    assert (code, out, err) == (2, "", f"error: {record} is a folder where the probe writes its result; move it away first\n")
    assert (tmp_path / "run" / "meta.json").read_bytes() == before


def test_a_plugin_evaluators_output_is_checked_before_anything_is_recorded(cli, tmp_path, own_registries):
    from ssl_toolkit.evaluators.base import Evaluator, register_evaluator

    def plugin(name, make):
        @register_evaluator(name)
        class Plugin(Evaluator):
            reads_training_settings = False

            def trainable_parameters(self, backbone, head):
                return []

            def evaluate(self, ctx):
                return make(torch.zeros(len(ctx.source.test), ctx.source.num_classes))  # (45, 6)

    plugin("objfact", lambda s: (s, {"obj": object()}))
    plugin("nanfact", lambda s: (s, {"x": float("nan")}))
    plugin("arrayscores", lambda s: (s.numpy(), {}))
    plugin("scoresonly", lambda s: s)
    plugin("fine", lambda s: (s, {"pair": (1, 2.5), "note": None}))
    run = saved_backbone(tmp_path / "run")
    meta = (run / "meta.json").read_text()
    json_kinds = "; facts are recorded as JSON: finite numbers, strings, booleans, None, and lists or string-keyed dicts of those"
    for mode, error in [
        ("objfact", f"evaluator 'objfact' returned fact 'obj' of type object{json_kinds}"),
        ("nanfact", f"evaluator 'nanfact' returned fact 'x' = nan (not finite){json_kinds}"),
        (
            "arrayscores",
            "evaluator 'arrayscores' returned scores of type numpy.ndarray; it needs a torch.Tensor with one row per test image (45)",
        ),
        (
            "scoresonly",
            "evaluator 'scoresonly' returned a torch.Tensor; evaluate() returns a pair (scores, facts): the test scores and a dict of facts",
        ),
    ]:
        code, out, err = cli("probe", run, "--mode", mode, "--json", *SMALL)
        assert (code, out, err) == (2, "", f"error: {error}\n"), mode
        assert not (run / "probes").exists() and (run / "meta.json").read_text() == meta
    code, out, err = cli("probe", run, "--mode", "fine", "--json", *SMALL)
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert (run / "probes" / "synthetic-fine-1.json").read_text() == json.dumps(json.loads(line), indent=2) + "\n"
    assert json.loads(line)["pair"] == [1, 2.5] and json.loads(line)["note"] is None


def test_the_partial_record_names_the_stages_it_froze_and_the_table_the_exact_fraction(cli, tmp_path):
    from ssl_toolkit.eval.report import probe_details

    run = saved_backbone(tmp_path / "run")
    code, out, err = cli("probe", run, "--mode", "partial", "--epochs", "1", "--label-fraction", "0.999999999999", "--json", *SMALL)
    assert code == 0, err
    record = json.loads((run / "probes" / "synthetic-partial-0.999999999999.json").read_text())
    assert record["settings"]["freeze_stages"] == 3  # the default, N - 1 of test_resnet's 4 stages
    assert record["frozen"] == ["stem", "layer1", "layer2", "layer3"]
    assert probe_details(record) == "layer_decay=1.0, augment=basic, grad_checkpointing=False, freeze_stages=3"
    knn = {"k": 6, "settings": {"k": 200, "temperature": 0.1}}  # a 6-image training subset clips k
    assert probe_details(knn) == "k=6 (of 200 asked), temperature=0.1"
    assert probe_details({"k": 200, "settings": {"k": 200, "temperature": 0.1}}) == "k=200, temperature=0.1"
    assert "label fraction  0.999999999999\n" in err
    code, out, err = cli("probe", run, "--mode", "partial", "--epochs", "1", "--freeze-stages", "0", "--json", *SMALL)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["settings"]["freeze_stages"] == 0
    assert "label fraction  1\n" in err
