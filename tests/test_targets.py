"""Binary and multi-label targets: labels.csv folders, label subsets, metrics against scikit-learn, kNN label
frequencies, and the evaluators and CLI end to end on a 3-label folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.labels_csv import read_labels_csv
from ssl_toolkit.data.sources import load_source
from ssl_toolkit.errors import UserError
from ssl_toolkit.evaluators import targets
from ssl_toolkit.evaluators.knn import label_frequencies

NAMES = ("red", "green", "blue")


def make_multilabel_folder(root: Path, n: int = 60, size: int = 16, seed: int = 0) -> Path:
    """``n`` images whose labels are the colours of the squares drawn on them, with a labels.csv."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True)
    rows = ["file,labels"]
    for i in range(n):
        y = rng.random(3) < 0.45
        y[i % 3] = True  # every label frequent enough, no empty set
        img = np.full((size, size, 3), 20, np.uint8)
        for c in np.flatnonzero(y):
            r0, c0 = rng.integers(0, size // 2, 2)
            img[r0 : r0 + size // 2, c0 : c0 + size // 2, c] = 230
        Image.fromarray(img).save(root / "imgs" / f"{i:03d}.png")
        rows.append(f"imgs/{i:03d}.png," + ";".join(name for name, v in zip(NAMES, y) if v))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_read_labels_csv_aligns_multi_hot_rows_with_files(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("file,labels\nc.png,dog\n./a.png,cat;dog\nb.png, cat \n")
    y, classes = read_labels_csv(tmp_path, [tmp_path / "a.png", Path("b.png"), tmp_path / "c.png"])
    assert classes == ["cat", "dog"]
    assert y.dtype == np.uint8 and y.tolist() == [[1, 1], [1, 0], [0, 1]]


@pytest.mark.parametrize(
    "body, message",
    [
        ("a.png,cat\nmissing.png,dog\n", "row 3: file missing.png does not exist"),
        ("a.png,\n", "row 2: a.png has an empty label set"),
        ("a.png,cat;;dog\n", "row 2: an empty label in 'cat;;dog'"),
        ("a.png,cat\na.png,dog\n", "row 3: a.png is listed twice"),
        ("b.png,cat\n", "1 image(s) have no row, e.g. a.png"),
        ("a.png,cat\nb.png,dog\nlabels.csv,cat\n", "row 4: labels.csv is not an image file (.bmp, .gif"),  # silently ignored before
        ("a.png,cat\nb.png,dog\n../a.png,cat\n", "row 4: ../a.png is outside "),
    ],
)
def test_read_labels_csv_errors_name_the_row(tmp_path, body, message):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text("file,labels\n" + body)
    files = [tmp_path / "a.png"] if "no row" in message else [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labels_csv(tmp_path, files)


def test_folder_with_labels_csv_is_multilabel_and_data_labels_names_another_file(tmp_path):
    root = make_multilabel_folder(tmp_path / "f", n=30)
    source = load_source(DataConfig(name=str(root), stream=False))
    assert source.target_kind == "multilabel" and source.classes == ["blue", "green", "red"]
    assert source.train.labels.shape == (len(source.train), 3) and source.train.labels.dtype == torch.uint8
    assert len(source.train) + len(source.test) == 30
    other = tmp_path / "other.csv"
    other.write_text("file,labels\n" + "".join(f"imgs/{i:03d}.png,{'odd' if i % 2 else 'even'}\n" for i in range(30)))
    source = load_source(DataConfig(name=str(root), labels=str(other), stream=False))
    assert source.classes == ["even", "odd"] and source.train.labels.sum(1).eq(1).all()
    with pytest.raises(UserError, match="data.labels: file does not exist"):
        load_source(DataConfig(name=str(root), labels=str(tmp_path / "nope.csv"), stream=False))


def test_label_subset_keeps_every_label():
    labels = torch.zeros(200, 4, dtype=torch.uint8)
    labels[:, 0] = 1
    labels[7, 3] = 1  # a rare label: one image in 200
    labels[100:150, 1] = 1
    idx = targets.label_subset(labels, 0.05, seed=0)
    assert labels[idx].sum(0).gt(0).tolist() == [True, True, False, True]  # label 2 has no image at all
    assert 10 <= len(idx) <= 12 and 7 in idx.tolist()
    single = torch.tensor([0] * 50 + [1] * 3)
    assert set(single[targets.label_subset(single, 0.1, seed=1)].tolist()) == {0, 1}


def test_multilabel_and_binary_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.4).astype(np.uint8)
    prob = np.clip(y * 0.5 + rng.random((200, 3)) * 0.6, 0, 1)
    thresholds = [0.5, 0.6, 0.7]
    rep = targets.target_report("multilabel", torch.from_numpy(prob), torch.from_numpy(y), thresholds)
    aps = [average_precision_score(y[:, j], prob[:, j]) for j in range(3)]
    assert rep["per_class_ap"] == pytest.approx(aps, abs=1e-6) and rep["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)
    pred = (prob >= np.array(thresholds)).astype(int)
    assert rep["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-6)
    assert rep["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
    yb, pb = y[:, 0], prob[:, :1]
    rep = targets.target_report("binary", torch.from_numpy(pb), torch.from_numpy(yb), [0.5])
    assert rep["roc_auc"] == pytest.approx(roc_auc_score(yb, pb[:, 0]), abs=1e-6)
    assert rep["f1"] == pytest.approx(f1_score(yb, pb[:, 0] >= 0.5), abs=1e-6)


def test_macro_f1_averages_the_labels_with_a_test_positive_as_map_does():
    """A label without test positives added an F1 of 0 to macro F1 (scikit-learn's zero_division) while mAP left it out."""
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(np.uint8)
    y[:, 2] = 0  # no test positive
    prob = np.clip(y * 0.5 + rng.random((60, 3)) * 0.6, 0, 1)
    rep = targets.target_report("multilabel", torch.from_numpy(prob), torch.from_numpy(y), [0.5, 0.5, 0.5])
    pred = (prob >= 0.5).astype(int)
    assert rep["per_class_ap"][2] is None and rep["mAP"] == pytest.approx(np.mean(rep["per_class_ap"][:2]), abs=1e-6)
    assert rep["macro_f1"] == pytest.approx(f1_score(y[:, :2], pred[:, :2], average="macro"), abs=1e-6)
    assert rep["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-6)  # every label
    assert targets.target_report("multilabel", torch.from_numpy(prob), torch.zeros(60, 3, dtype=torch.uint8), None)["macro_f1"] is None


@pytest.mark.parametrize("seed", range(12))
def test_the_multilabel_holdout_keeps_a_positive_to_fit_on_and_one_to_choose_a_threshold_on(seed):
    """A random 10% left common labels without a held-out positive (threshold fixed at 0.5, never reached by kNN
    votes), and could hold out a label's only positive (no positive to fit on: threshold 0.0, everything positive)."""
    labels = torch.zeros(80, 5, dtype=torch.uint8)
    labels[:40, 0] = 1  # common
    labels[::9, 1] = 1  # 9 positives
    labels[[3, 50], 2] = 1  # two positives
    labels[[11, 11 + 40], 3] = 1
    labels[7, 4] = 1  # a single positive
    fit, held = targets.holdout_split(labels, 0.1, seed)
    assert sorted(fit.tolist() + held.tolist()) == list(range(80))  # a partition of the rows
    assert 8 <= len(held) <= 8 + 5
    assert labels[fit].sum(0).gt(0).all()  # every label has a positive to fit on
    assert labels[held][:, :4].sum(0).gt(0).all() and 7 not in held.tolist()  # two or more: one held out; one: never
    again, _ = targets.holdout_split(labels, 0.1, seed)
    assert torch.equal(fit, again)  # seeded
    assert targets.fixed_thresholds_note("multilabel", labels[held]) == (  # the single positive's label only
        f"threshold 0.5 fixed, not chosen, for 1 of 5 labels (positions 4 in per_class_ap): their {len(held)} held-out "
        "image(s) are all positive or all negative for them"
    )
    assert targets.fixed_thresholds_note("binary", torch.tensor([1, 1])) is not None
    assert targets.fixed_thresholds_note("binary", torch.tensor([0, 1])) is None
    assert targets.holdout_notes("binary", torch.tensor([0, 0, 0, 1])) == (
        "threshold chosen on the one held-out positive image: it sits at that image's score, a thin choice"
    )
    assert targets.holdout_notes("binary", torch.tensor([0, 1, 0, 1])) is None
    multi_hot = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 0]])  # label 0: one positive; label 1: all positive; label 2: none
    assert targets.holdout_notes("multilabel", multi_hot) == (
        "threshold 0.5 fixed, not chosen, for 2 of 3 labels (positions 1, 2 in per_class_ap): their 3 held-out image(s) are all "
        "positive or all negative for them; threshold chosen on one held-out positive image for 1 of 3 labels (positions 0 in "
        "per_class_ap): it sits at that image's score, a thin choice"
    )


def test_thresholds_maximise_held_out_f1():
    y = torch.tensor([[0], [0], [0], [1], [1], [0], [1], [1]])
    scores = torch.tensor([[0.1], [0.2], [0.3], [0.35], [0.4], [0.45], [0.8], [0.9]])
    (t,) = targets.choose_thresholds("binary", scores, y)
    assert t == pytest.approx(0.325)  # >= 0.35 gets every positive with one false positive (F1 0.889); halfway down to 0.3


def test_scores_tied_with_the_chosen_threshold_stay_positive():
    """kNN vote fractions and duplicate images tie; a float32 score equal to the chosen one must not fall below it."""
    tied = torch.tensor(0.84304297, dtype=torch.float32)  # 0.8430429697..., which rounds up to 0.843043 at 6 digits
    scores = torch.stack([torch.full((10,), 0.2), tied.expand(10)]).reshape(-1, 1)  # (20, 1): 10 negatives, then 10 positives
    y = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(10, dtype=torch.long)]).reshape(-1, 1)
    (t,) = targets.choose_thresholds("binary", scores, y)
    assert 0.2 < t < float(tied)
    rep = targets.target_report("binary", scores, y[:, 0], [t])
    assert (rep["accuracy"], rep["f1"]) == (1.0, 1.0)
    multi = targets.choose_thresholds("multilabel", torch.cat([scores, scores], 1), torch.cat([y, y], 1))
    assert (
        multi == [t, t]
        and targets.target_report("multilabel", torch.cat([scores, scores], 1), torch.cat([y, y], 1), multi)["micro_f1"] == 1.0
    )


def test_knn_label_frequencies_match_brute_force():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(80, 8)).astype(np.float32), rng.normal(size=(10, 8)).astype(np.float32)
    y = (rng.random((80, 3)) < 0.5).astype(np.float32)
    k, t = 7, 0.1
    got = label_frequencies(torch.from_numpy(train), torch.from_numpy(y), torch.from_numpy(test), k, t).numpy()
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sim = b @ a.T
    for i in range(10):
        nn_idx = np.argsort(-sim[i])[:k]
        w = np.exp(sim[i, nn_idx] / t)
        np.testing.assert_allclose(got[i], (w[:, None] * y[nn_idx]).sum(0) / w.sum(), rtol=1e-5)


def _pretrain_on(root: Path, run: Path) -> None:
    from conftest import tiny_config

    from ssl_toolkit import pretrain

    cfg = tiny_config("rotation", data=str(root), epochs=1)
    cfg["data"].update(image_size=16, stream=False)
    cfg["trainer"].update(batch_size=32)
    pretrain(cfg, out=run)


@pytest.mark.usefixtures("one_thread")
def test_multilabel_folder_through_every_probe_mode(tmp_path, cli):
    root = make_multilabel_folder(tmp_path / "f", n=60)
    run = tmp_path / "run"
    _pretrain_on(root, run)
    code, out, err = cli("probe", run, "--data", root, "--mode", "linear", "--json")
    assert code == 0, err
    assert "mAP (%)" in err and "AP per class (%)" in err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["target_kind"] == "multilabel" and res["top1"] is None and len(res["per_class_ap"]) == 3
    assert 0.0 <= res["mAP"] <= 1.0 and len(res["thresholds"]) == 3
    for mode, extra in (
        ("knn", ["--k", "5"]),
        ("finetune", ["--augment", "randaugment", "--epochs", "1"]),
        ("partial", ["--epochs", "1", "--label-fraction", "0.2"]),
    ):
        code, out, err = cli("probe", run, "--data", root, "--mode", mode, *extra, "--json")
        assert code == 0, (mode, err)
        res = json.loads(out.strip().splitlines()[-1])
        assert res["metric"] == "mAP" and 0.0 <= res["mAP"] <= 1.0 and len(res["thresholds"]) == 3, mode
        assert res.get("augment") == {"finetune": "randaugment", "partial": "basic"}.get(mode), mode
    code, out, err = cli("probe", run, "--data", root, "--mode", "linear", "--augment", "randaugment")
    assert code == 2 and "augment applies to --mode finetune or partial, not linear" in err and err.count("\n") == 1


@pytest.mark.usefixtures("one_thread")
def test_binary_metrics_that_are_undefined_are_none_not_zero():
    scores = torch.tensor([[-5.0], [-4.0], [-3.0], [-2.0]])  # every probability far below the threshold
    rep = targets.target_report("binary", scores, torch.tensor([0, 0, 1, 1]), [0.5])
    assert (rep["precision"], rep["recall"], rep["f1"], rep["accuracy"]) == (None, 0.0, 0.0, 0.5)  # nothing predicted positive
    rep = targets.target_report("binary", scores, torch.tensor([0, 0, 0, 0]), [0.5])
    assert (rep["roc_auc"], rep["precision"], rep["recall"], rep["f1"]) == (None, None, None, None)  # nothing positive at all


def test_binary_targets_get_one_sigmoid_and_roc_auc(cli):
    data = ["--data", "synthetic", "--set", "data.image_size=16"]
    data += [a for k in ("classes=2", "train=120", "test=60") for a in ("--set", f"data.synthetic_{k}")]
    code, out, err = cli("probe", "--random-init", "-b", "test_resnet", *data, "--mode", "linear", "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["target_kind"] == "binary" and res["metric"] == "roc_auc" and len(res["thresholds"]) == 1
    assert {"roc_auc", "f1", "precision", "recall", "accuracy"} <= set(res) and "ROC-AUC (%)" in err
    assert res["top1"] == res["accuracy"] and res["positive_class"] == res["classes"][1]  # F1, precision, recall are of label 1
    code, out, err = cli("probe", "--random-init", "-b", "test_resnet", *data, "--mode", "knn", "--label-fraction", "0.02", "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])  # one image per class: none to hold out, as the linear probe says too
    assert res["n_train"] == 2 and res["threshold"] == 0.5
    assert res["holdout"] == "none: too few training labels to hold any out, so threshold 0.5 was not chosen but fixed"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_report_shows_multilabel_metrics(tmp_path, cli):
    root = make_multilabel_folder(tmp_path / "f", n=40)
    run = tmp_path / "run"
    _pretrain_on(root, run)
    assert cli("probe", run, "--data", root, "--mode", "linear")[0] == 0
    code, out, err = cli("report", run, "--data", root)
    assert code == 0, err
    html = (run / "report.html").read_text()
    assert "linear probe AP (%)" in html and "mAP " in html and "Multi-label data" in html
    rows = dict(line.split(",") for line in (root / "labels.csv").read_text().splitlines()[1:])
    grids = html[html.index('<section id="grids">') : html.index("</section>", html.index('<section id="grids">'))]
    assert "green = shares a label with the query, red = shares none" in grids
    figures = re.findall(
        r'<figure class="(\w+)"><img[^>]*><figcaption><strong class="label">(?:&#x2717; )?([^<]*)</strong><small>(?:[^<]* · )?([^<]*)</small>',
        grids,
    )
    assert len(figures) >= 12  # queries and their neighbours, each captioned with its labels
    query_labels = None
    for kind, labels, image_id in figures:
        assert labels == ", ".join(sorted(rows[image_id].split(";")))  # the classes are in name order
        if kind == "query":
            query_labels = set(labels.split(", "))
        else:  # green when it shares a label with its query, red when none
            assert kind == ("ok" if query_labels & set(labels.split(", ")) else "bad")


@pytest.mark.parametrize("mode", ["linear", "knn"])
def test_two_solid_colours_are_told_apart_by_every_probe(tmp_path, mode):
    """Every image of a class is the same colour, so every score of a class ties: none may fall below its threshold."""
    import ssl_toolkit as st

    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        for name, rgb in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", tuple(int(v) for v in rng.integers(24, 80, 2)), rgb).save(tmp_path / split / name / f"{k}.png")
    result = st.probe(None, {"mode": mode, "data": {"name": str(tmp_path), "image_size": 16}}, random_init=True, backbone="test_resnet")
    assert (result["target_kind"], result["roc_auc"], result["accuracy"], result["f1"]) == ("binary", 1.0, 1.0, 1.0)


def test_two_class_scores_of_both_classes_are_read_as_the_probability_of_label_1():
    """A plugin evaluator written for class scores returns (N, 2) on two-class data: column 0 is label 0, not the positive."""
    from ssl_toolkit.eval.probe import evaluation_report, positive_scores

    labels = torch.tensor([0, 1, 1, 0, 1])
    oracle = positive_scores("oracle", torch.nn.functional.one_hot(labels, 2).float())  # perfect scores
    rep = evaluation_report("binary", oracle, labels, 2, None)
    assert (rep["roc_auc"], rep["accuracy"], rep["f1"]) == (1.0, 1.0, 1.0)
    cosine = torch.tensor([[0.9, 0.8], [0.7, 0.75], [0.6, 0.9], [0.95, 0.1], [0.2, 0.3]])  # similarities to each class mean
    assert (positive_scores("m", cosine)[:, 0] >= 0.5).tolist() == [False, True, True, False, True]  # the argmax
    probability = torch.tensor([0.2, 0.9, 0.6, 0.1, 0.7])
    assert torch.equal(positive_scores("linear", probability), probability.view(-1, 1))  # the built-ins' form, unchanged
    with pytest.raises(UserError, match=r"^evaluator 'm' returned scores of shape \(5, 3\); two-class data needs \(5, 2\) class scores "):
        positive_scores("m", torch.rand(5, 3))
