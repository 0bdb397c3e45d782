"""What the report and inspection pages state and show: values as used, damaged run files, names from data.

Fast checks without UMAP or a browser; the full report is driven in ``test_report.py``.
"""

from __future__ import annotations

import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from ssl_toolkit.eval import analysis as A
from ssl_toolkit.eval import clustering as C
from ssl_toolkit.eval import plots
from ssl_toolkit.eval.run_record import read_curves, sample_picture


def points(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# values as used
# ---------------------------------------------------------------------------------------
def test_kmeans_with_fewer_than_two_points_per_cluster_is_not_scored():
    labels = np.arange(100)  # 100 classes, one query each: every point its own cluster scored NMI = ARI = 1
    res = C.cluster(points(100), 100, labels)
    assert res.nmi == [] and res.ari == [] and res.assignments is None
    assert res.not_run == "k = 100 needs at least 200 points (2 per cluster); there are 100"
    summary = res.summary()
    assert "nmi_mean" not in summary and summary["k"] == 100 and summary["points"] == 100
    huge = C.cluster(points(45), 100_000, None).summary()
    assert huge["k"] == 100_000 and huge["not_run"].startswith("k = 100,000 needs at least 200,000 points")
    ran = C.cluster(points(100), 50, labels % 50, seeds=(0,))
    assert ran.not_run is None and len(ran.nmi) == 1 and len(np.unique(ran.assignments)) == 50
    one = C.cluster(points(40), 4, np.zeros(40, dtype=np.int64), seeds=(0,))  # one class: NMI and ARI are 0 for any clustering
    assert one.nmi == [] and one.unscored == "the points hold one class, and any clustering of one class scores 0"
    assert one.assignments is not None and "nmi_mean" not in one.summary() and one.summary()["unscored"] == one.unscored
    single = C.cluster(points(40), 1, np.arange(40) % 4, seeds=(0,))  # one cluster: as meaningless
    assert single.nmi == [] and single.unscored == "k = 1 puts every point in one cluster, which scores 0 against any labels"


def test_analysis_states_the_neighbours_used_when_the_gallery_is_small():
    q, g = points(30, seed=1), points(45, seed=2)
    ql, gl = np.arange(30) % 3, np.arange(45) % 3
    an = A.analyze(q, ql, g, gl, project=False)
    summary = an.summary()
    assert summary["knn_k"] == {"1": 1, "20": 20, "200": 45} and summary["recall_k"] == {"1": 1, "5": 5, "10": 10}
    assert summary["per_query"] == 45 and summary["per_class_knn_k"] == 20
    assert summary["clusters"]["not_run"] is None and len(summary["clusters"]["nmi"]) == 3  # 30 points, k = 3
    loo = A.analyze(q[:8], ql[:8], project=False).summary()  # leave-one-out: 7 other images per query
    assert loo["knn_k"] == {"1": 1, "20": 7, "200": 7} and loo["recall_k"]["10"] == 7 and loo["per_class_knn_k"] == 7
    assert loo["clusters"]["not_run"] is None and loo["clusters"]["points"] == 8  # k = 3 classes, 8 >= 2 * 3


def test_k_text_says_when_and_why_k_was_capped():
    from ssl_toolkit.eval.report import k_text

    an = A.analyze(points(30, seed=1), np.arange(30) % 3, points(45, seed=2), np.arange(45) % 3, project=False)
    assert [k_text(k, an) for k in (1, 20, 200)] == ["1", "20", "45 (asked 200; the gallery has 45 images)"]
    loo = A.analyze(points(8), np.arange(8) % 2, project=False)
    assert k_text(20, loo) == "7 (asked 20; each query has 7 other images)"


# ---------------------------------------------------------------------------------------
# damaged run files
# ---------------------------------------------------------------------------------------
def test_a_metrics_csv_that_is_not_utf8_is_unreadable(tmp_path):
    from ssl_toolkit.eval.run_record import UnreadableFile

    path = tmp_path / "metrics.csv"
    path.write_bytes(b"epoch,loss\nfoo,bar\n\x00\xff\n")
    with pytest.raises(UnreadableFile, match=r"^not UTF-8 text: byte 20$"):
        read_curves(path)
    path.write_bytes(b"epoch,step,loss_step\n0,1,2.5\n0,2,x\n0,3,1.5,extra,cells\n")  # bad cells and long rows are skipped
    assert read_curves(path) == {"loss_step": ([1.0, 3.0], [2.5, 1.5])}
    assert read_curves(tmp_path / "missing.csv") == {}


def test_a_probe_result_with_fields_of_the_wrong_type_is_replaced_by_its_summary_with_a_warning(tmp_path):
    import json

    from ssl_toolkit.eval.run_record import read_probes

    probes = tmp_path / "probes"
    probes.mkdir()
    good = {"mode": "linear", "label_fraction": 0.5, "top1": 0.8, "confusion": [[1, 0], [0, 1]], "classes": ["a", "b"]}
    (probes / "good.json").write_text(json.dumps(good))
    (probes / "words.json").write_text(json.dumps({"mode": "knn", "label_fraction": "lots", "top1": "high"}))
    (probes / "ragged.json").write_text(json.dumps({**good, "mode": "knn", "confusion": [[1, 0], [0]]}))
    (probes / "binary.json").write_bytes(b"\xff\xfe{}")
    (probes / "before-resume.json").write_text(json.dumps({**good, "mode": "knn"}))  # of the backbone a resume trained on
    current = {
        "probes": {
            "good": {"mode": "linear", "top1": 0.1},  # the file, not the summary, is read when it is sound
            "words": {"mode": "knn", "label_fraction": 1.0, "top1": 0.7},
            "ragged": {"mode": "linear"},  # no summary to fall back on either
            "binary": {"mode": "partial", "top1": 0.6},
        }
    }
    said: list[str] = []
    assert [(r["mode"], r["top1"]) for r in read_probes(tmp_path, current, said.append)] == [
        ("knn", 0.7),
        ("linear", 0.8),
        ("partial", 0.6),
    ]
    assert len(said) == 4
    assert (
        said[0]
        == f"{probes / 'binary.json'} cannot be read as a probe result (not UTF-8 text: byte 0): the report shows its summary in meta.json"
    )
    assert said[1].startswith(f"{probes / 'ragged.json'} cannot be read as a probe result (the result: confusion is not a square")
    assert said[2] == "the probe ragged in meta.json is left out of the report (not a probe result (no top1))"
    assert said[3].startswith(f"{probes / 'words.json'} cannot be read as a probe result (label_fraction: Input should be a valid number")
    assert read_probes(tmp_path, {}, said.append) == []  # a resumed run's metadata starts its probes afresh
    outside = {"probes": {"../probes/good": {"mode": "knn", "top1": 0.5}}}  # a key is a file name in probes/, never a path
    assert read_probes(tmp_path, outside, said.append) == [{"mode": "knn", "top1": 0.5}]
    assert read_probes(None, {"probes": {"x": {"top1": [1]}, "y": {"mode": "knn", "top1": 0.5}}}, said.append) == [
        {"mode": "knn", "top1": 0.5}
    ]
    assert said[-1] == "the probe x in meta.json is left out of the report (top1: Input should be a valid number)"


def test_a_probe_rows_details_name_its_seed_and_settings_so_two_records_can_be_told_apart():
    from ssl_toolkit.eval.report import probe_rows
    from ssl_toolkit.eval.run_record import read_probes

    knn = {"mode": "knn", "top1": 0.5, "top1_by_k": {"20": 0.5, "1": 0.25}, "seed": 0, "settings": {"k": 20, "temperature": 0.1}}
    partial = {"mode": "partial", "top1": 0.4, "seed": 3, "settings": {"freeze_stages": 2, "augment": "<b>"}}
    rows = probe_rows(read_probes(None, {"probes": {"a": knn, "b": partial, "c": {**partial, "settings": [1]}}}, print))
    assert [r["notes"] for r in rows] == ["k=20: 50.00, k=1: 25.00; k=20, temperature=0.1", "seed 3; freeze_stages=2, augment=<b>"]


def test_probe_rows_show_each_recorded_label_fraction_exactly():
    from ssl_toolkit.eval.report import probe_rows

    fractions = [1.0, 0.999999999999, 0.1, 1e-05, 0.30000000000000004]
    rows = probe_rows([{"mode": "linear", "top1": 0.5, "label_fraction": f} for f in fractions])
    assert [r["fraction"] for r in rows] == ["1", "0.999999999999", "0.1", "1e-05", "0.30000000000000004"]


def test_huge_finite_values_are_left_out_of_the_curves_not_a_crash():
    png = plots.training_curves({"loss_step": ([1.0], [1e308]), "loss_epoch": ([1.0, 2.0], [1.0, 0.5])})
    assert png is not None
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        assert im.width > 100
    assert plots.training_curves({"loss_step": ([1e308], [1.0])}) is None  # nothing left to draw
    kept, dropped = plots._drawable({"loss_step": ([1.0, 2.0, 3.0], [2.0, -1e101, 1.0])})
    assert kept["loss_step"][1].tolist() == [2.0, 1.0] and dropped == {"loss_step": 1}


def test_sample_pictures_must_decode(tmp_path):
    from ssl_toolkit.eval.run_record import UnreadableFile

    fake = tmp_path / "epoch001.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UnreadableFile, match="not a readable image"):
        sample_picture(fake)
    good = Image.new("RGB", (30, 20), (10, 200, 30))
    truncated = tmp_path / "epoch002.png"
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    truncated.write_bytes(buf.getvalue()[:-30])
    with pytest.raises(UnreadableFile):
        sample_picture(truncated)
    jpeg = tmp_path / "epoch003.png"  # a JPEG under a .png name is embedded as what it is
    good.save(jpeg, format="JPEG")
    pic = sample_picture(jpeg)
    assert pic["src"].startswith("data:image/jpeg;base64,") and pic["width"] == 120


# ---------------------------------------------------------------------------------------
# names from data on a page
# ---------------------------------------------------------------------------------------
def test_names_are_shown_visibly_and_escaped(tmp_path):
    from ssl_toolkit.html_page import render_page, shown_name

    assert shown_name("\u202egnp.exe") == "[U+202E]gnp.exe"
    assert shown_name("a\u200e\u200f\u202a\u2066\u2069b") == "a[U+200E][U+200F][U+202A][U+2066][U+2069]b"
    assert shown_name("\u3000\u00a0") == "'\\u3000\\xa0'" and shown_name("\u3164") == "'\\u3164'" and shown_name("") == "''"
    assert shown_name("cat") == "cat" and shown_name("日本") == "日本"
    (tmp_path / "t.html").write_text('{{ x }}|{{ y|name }}|{{ z|join(", ") }}|<i title="{{ x }}"></i>')
    html = render_page(tmp_path, "t.html", {"x": "<b>\u202eexe.png", "y": " \t", "z": ["<a>", "\u2067"]})
    assert html == ('&lt;b&gt;[U+202E]exe.png|&#39; \\t&#39;|&lt;a&gt;, [U+2067]|<i title="&lt;b&gt;[U+202E]exe.png"></i>')


def test_umap_legend_entries_are_shortened():
    long = "L" * 200
    png = plots.umap_scatter(points(20, 2), np.arange(20) % 2, [long, "short"], "t")
    with Image.open(io.BytesIO(png)) as im:
        assert im.width < 1.6 * im.height  # a 200-character entry would make the figure about 3 times as wide as high
    assert plots.legend_label(long) == "L" * 39 + "…" and plots.legend_label("cat") == "cat"


class Tables(HTMLParser):
    """Per ``table.bars``: whether it has a caption and how many header cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, int]] = []
        self.inside = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.inside = "bars" in (dict(attrs).get("class") or "").split()
            if self.inside:
                self.tables.append({"caption": 0, "th": 0})
        elif self.inside and tag in ("caption", "th"):
            self.tables[-1][tag] += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False


def test_inspect_histograms_have_headers_captions_and_one_value_bins(tmp_path):
    from ssl_toolkit.inspection import InspectConfig, run_inspection
    from ssl_toolkit.inspection.html import histogram_rows, render_html
    from ssl_toolkit.units import human_size

    rows = histogram_rows({"edges": [1100.0, 1101.0, 1150.0], "counts": [2, 1]}, human_size)
    assert [r["label"] for r in rows] == ["1.1 KiB", "1.1 KiB"]
    assert histogram_rows({"edges": [16.0, 16.0], "counts": [4]})[0]["label"] == "16"
    assert histogram_rows({"edges": [1.0, 2.5], "counts": [4]})[0]["label"] == "1 - 2.5"
    rtl = "\u202eevil"
    for k, name in enumerate(["cat", rtl, "L" * 200]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 20), (40 * k, 100 * i, 7)).save(tmp_path / "data" / name / f"\u202e{i}gnp.png")
    page = render_html(run_inspection(InspectConfig(data={"name": str(tmp_path / "data")})))
    parser = Tables()
    parser.feed(page)
    assert len(parser.tables) >= 4 and all(t["caption"] == 1 and t["th"] >= 3 for t in parser.tables), parser.tables
    assert "\u202e" not in page and "[U+202E]evil" in page and "[U+202E]0gnp.png" in page
    assert "overflow-wrap: anywhere" in page


def test_class_names_with_dollars_or_a_leading_underscore_are_drawn_as_written():
    from matplotlib.figure import Figure

    from ssl_toolkit.eval.report import plot_label

    names = ["$\\foo$", "_under", "a$b$c", "\u202ex"]
    assert [plot_label(n) for n in names] == ["\\$\\foo\\$", "\u200b_under", "a\\$b\\$c", "[U+202E]x"]
    with pytest.raises(ValueError, match="Unknown symbol"):  # mathtext, as matplotlib reads the bare name
        plots.umap_scatter(points(8, 2), np.arange(8) % 4, names, "t")
    assert plots.umap_scatter(points(8, 2), np.arange(8) % 4, [plot_label(n) for n in names], "t").startswith(b"\x89PNG")
    assert plots.confusion_heatmap(np.eye(4, dtype=int), [plot_label(n) for n in names]).startswith(b"\x89PNG")
    ax = Figure().subplots()
    for name in names:
        ax.scatter([0], [0], label=plot_label(name))
    assert ax.get_legend_handles_labels()[1] == [plot_label(n) for n in names]  # "_under" alone would be left out
