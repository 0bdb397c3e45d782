"""`ssl report`: one self-contained HTML page, checked as text and in a real headless Chromium.

One report is built per module (UMAP's first call compiles with numba, so it runs once);
the CLI test reuses the compiled functions in-process.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_embed import save_random_backbone

EVIL = "<b>x<b>"  # a class folder whose name is markup ('/' cannot appear in a folder name)
CLASSES = ["cat", "dog", EVIL]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def write_image_folder(root: Path, n_per_class: int, labelled: bool = True) -> None:
    """Procedural shapes, one class per shape, as 16 px PNGs in class folders (or flat)."""
    from ssl_toolkit.data.synthetic import make_synthetic

    images, labels = make_synthetic(n_per_class * len(CLASSES), 16, seed=3, num_classes=len(CLASSES))
    for i, (img, y) in enumerate(zip(images.numpy(), labels.tolist())):
        folder = root / CLASSES[y] if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.transpose(img, (1, 2, 0))).save(folder / f"img{i:03d}.png")


def write_named_classes(root: Path, names: list[str]) -> None:
    """Eight random 16 px PNGs in a class folder per name, each class a little brighter than the last."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray((rng.random((16, 16, 3)) * 60 + 60 * k).astype(np.uint8)).save(root / name / f"{i}.png")


def write_run(run: Path, data_cfg: dict) -> None:
    """A tiny run folder: random-init backbone, metrics.csv, two probe results, sample grids of three epochs."""
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source

    src = load_source(DataConfig(**data_cfg))
    save_random_backbone(
        run,
        src.channels,
        src.image_size,
        src.mean,
        src.std,
        task="colorization",
        epochs=3,
        steps=1234,
        wall_seconds=12.5,
        dataset=src.describe(),
        versions={"ssl_toolkit": "0.1.0"},
    )
    # metrics.csv as a run writes it: the run folder's Lightning CSV logger, step rows then epoch rows
    from ssl_toolkit.trainer import RunCSVLogger

    logger = RunCSVLogger(save_dir=str(run), name="", version="")
    for e in range(3):
        for s in range(4):
            logger.log_metrics({"epoch": e, "loss_step": 2.0 - 0.1 * (4 * e + s)}, step=10 * e + s)
        logger.log_metrics({"epoch": e, "online_top1": 0.4 + 0.1 * e}, step=10 * e + 4)
        logger.log_metrics(
            {"epoch": e, "loss_epoch": 1.8 - 0.3 * e, "online_train_top1": 0.35 + 0.1 * e, "pretext_acc": 0.5 + 0.1 * e}, step=10 * e + 4
        )
    logger.finalize("success")
    assert [p.name for p in run.glob("*.csv")] == ["metrics.csv"]
    probes = run / "probes"
    probes.mkdir()
    linear = {
        "mode": "linear",
        "label_fraction": 1.0,
        "top1": 0.8125,
        "top5": None,
        "n_train": 150,
        "n_test": 150,
        "dataset": src.name,
        "classes": src.classes,
        "confusion": [[40, 5, 5], [3, 45, 2], [4, 1, 45]],
        "created": "2026-01-01T00:00:00+00:00",
    }
    knn = {
        "mode": "knn",
        "label_fraction": 0.1,
        "top1": 0.5,
        "top5": None,
        "n_train": 15,
        "n_test": 150,
        "dataset": src.name,
        "top1_by_k": {"15": 0.5, "1": 0.45},
        "created": "2026-01-01T00:00:00+00:00",
    }
    (probes / "linear-1.json").write_text(json.dumps(linear))
    (probes / "knn-0.1.json").write_text(json.dumps(knn))
    meta = json.loads((run / "meta.json").read_text())  # each record's summary, as a probe adds it
    summary = ("mode", "label_fraction", "top1", "top5", "n_train", "n_test", "dataset", "created")
    meta["probes"] = {"linear-1": {k: linear[k] for k in summary}, "knn-0.1": {k: knn[k] for k in summary}}
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "samples").mkdir()
    for epoch in range(3):
        Image.new("RGB", (40 + epoch, 20), (80 * epoch, 90, 200)).save(run / "samples" / f"epoch{epoch:03d}.png")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report of a tiny run on an image folder with a markup-named class, built once."""
    import ssl_toolkit as st

    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_TOOLKIT_HOME", str(root / "home"))
        write_image_folder(root / "imgs", 100)
        data = {"name": str(root / "imgs"), "test_fraction": 0.5}
        write_run(root / "run", data)
        result = st.report(root / "run", data, out=root / "r.html", umap={"n_neighbors": 10}, seed=7)
    return root, result, (root / "r.html").read_text(encoding="utf-8")


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(html: str) -> list[tuple[str, dict]]:
    p = Tags()
    p.feed(html)
    return p.tags


def test_report_shows_every_part(built):
    root, result, html = built
    assert result["path"] == str(root / "r.html") and result["labelled"]
    assert result["umap"]["seed"] == 7  # seed= seeds UMAP too when umap= sets no seed of its own (it stayed 0)
    tags = parse(html)
    ids = {a.get("id") for _, a in tags}
    for section in ("header", "training", "probes", "neighbours", "umap", "grids", "confusion", "samples"):
        assert section in ids, section
    for fact in ("test_resnet", "colorization", "12.5 s", "0.1.0", "imgs", "3 (1,234 steps)"):
        assert fact in html, fact
    assert f"Linear probe on {root / 'imgs'} with label fraction 1, top-1 81.25 %; rows" in html
    # probe table: both results; FAISS figures; k-means; the search choice
    assert "81.25" in html and "k=15: 50.00" in html
    for k in (1, 20, 200):
        value = result["knn"][str(k)]
        assert re.search(rf'id="knn-acc-{k}" data-value="{value}">{100 * value:.2f}<', html)
    assert 'id="recall-5"' in html and 'id="map-at-r"' in html and 'id="kmeans-nmi"' in html
    assert result["search"]["index"] == "exact" and "IndexFlatIP" in html
    assert result["clusters"]["k"] == 3 and len(result["clusters"]["nmi"]) == 3
    # images: every one embedded; grids have 2 queries per class x (query + 5 neighbours)
    imgs = [a for t, a in tags if t == "img"]
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert len(imgs) == 1 + 1 + 1 + 1 + 6 * 2 * len(CLASSES)  # curves, UMAP, confusion, samples, grids
    assert html.count('class="query"') == 2 * len(CLASSES)


def test_report_has_no_external_resources(built):
    _, _, html = built
    tags = parse(html)
    for tag, attrs in tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), (tag, attrs[key][:60])
        assert tag not in ("script", "iframe", "object", "embed")
    assert "url(" not in html and "@import" not in html


def test_text_from_data_is_escaped(built):
    _, _, html = built
    assert EVIL not in html
    assert "&lt;b&gt;x&lt;b&gt;" in html
    assert "<b>" not in html  # the template itself uses no <b>, so any would be injected


def test_only_the_latest_samples_are_shown(built):
    root, _, html = built
    latest = base64.b64encode((root / "run" / "samples" / "epoch002.png").read_bytes()).decode()
    older = base64.b64encode((root / "run" / "samples" / "epoch001.png").read_bytes()).decode()
    assert latest in html and older not in html
    assert "epoch 2" in html


def test_cli_report_on_unlabelled_images(built, cli, tmp_path):
    root, _, _ = built
    flat = tmp_path / "flat"
    write_image_folder(flat, 20, labelled=False)
    out = tmp_path / "u.html"
    code, stdout, err = cli("report", root / "run", "--data", flat, "--out", out, "--clusters", "4", "--umap-neighbors", "8")
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == f"report: {out}"
    html = out.read_text()
    assert 'id="knn-acc-1"' not in html and "no labels" in html and "k = 4" in html
    assert 'id="umap"' in html and html.count('class="query"') > 0
    code, _, err = cli("report", tmp_path / "missing-run", "--data", flat)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, stdout, err = cli("report", root / "run", "--data", root / "imgs", "--out", tmp_path / "l.html", "--clusters", "1000000")
    assert code == 0, err
    row = next(line for line in stdout.splitlines() if line.startswith("k-means NMI / ARI"))
    assert row.split(None, 4)[4] == "not run: k = 1,000,000 needs at least 2,000,000 points (2 per cluster); there are 60"
    few = tmp_path / "few"
    write_image_folder(few, 1, labelled=False)  # 3 images, 1 of them in the test split: too few for a UMAP layout
    code, _, err = cli("report", root / "run", "--data", few, "--out", tmp_path / "f.html")
    html = (tmp_path / "f.html").read_text()
    assert code == 0 and "Not drawn: UMAP needs at least 4 points, and there is 1." in html and "UMAP scatter" not in html, err
    assert "a test image (blue) and its 2 nearest training images by cosine similarity" in html  # the gallery holds 2
    one = tmp_path / "one"
    write_named_classes(one, ["only"])  # labelled, one class: every neighbour agrees, any clustering scores 0
    code, stdout, err = cli("report", root / "run", "--data", one, "--out", tmp_path / "o.html", "--split", "train", "--clusters", "2")
    html = (tmp_path / "o.html").read_text()
    assert code == 0 and f"warning: {one} has a single class; every neighbour is that class" in err, err
    row = next(line for line in stdout.splitlines() if line.startswith("k-means NMI / ARI"))
    assert row.split(None, 4)[4] == "not scored: the points hold one class, and any clustering of one class scores 0"
    knn_rows = [line.rsplit(None, 1)[0] for line in stdout.splitlines() if line.startswith(("kNN top-1", "Recall@"))]
    assert knn_rows == [
        "kNN top-1 k=1 (%)",
        "kNN top-1 k=5 (asked 20) (%)",
        "kNN top-1 k=5 (asked 200) (%)",
        "Recall@1 (%)",
        "Recall@5 (%)",
        "Recall@5 (asked 10) (%)",
    ]
    assert 'id="single-class"' in html and 'id="kmeans-unscored"' in html and 'id="kmeans-nmi"' not in html
    split = tmp_path / "split"  # two classes, the test split holds one: the queries agree, the gallery does not
    write_named_classes(split / "train", ["a", "b"])
    write_named_classes(split / "test", ["a"])
    code, stdout, err = cli("report", root / "run", "--data", split, "--out", tmp_path / "s.html")
    said = f"the test split of {split} holds a single class (a); kNN top-1, Recall@k and mAP@R say only how rarely"
    assert code == 0 and f"warning: {said}" in err, err
    assert f'<p class="note" id="single-class">One class: {said}' in (tmp_path / "s.html").read_text()
    code, stdout, err = cli("report", root / "run", "--data", split, "--out", tmp_path / "t.html", "--split", "test", "--json")
    result = json.loads(stdout)  # alone on stdout; the table and the path line go to stderr
    assert f"report: {tmp_path / 't.html'}\n" in err and result["path"] == str(tmp_path / "t.html")
    assert result["labelled"] and result["n_queries"] == 8 and set(result["knn"]) == {"1", "20", "200"}
    assert f"warning: the test split of {split} holds a single class (a); every neighbour is that class" in err, err


def browser():
    pytest.importorskip("selenium")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromedriver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1366,900",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts), profile


def test_report_in_headless_chromium(built, tmp_path):
    from selenium.webdriver.common.by import By

    root, result, _ = built
    driver, profile = browser()
    try:
        driver.get((root / "r.html").resolve().as_uri())
        errors = [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]
        assert errors == []
        images = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
        assert len(images) > 10
        assert all(done and width > 0 for done, width, _ in images), [a for d, w, a in images if not (d and w > 0)]
        for k in (1, 20, 200):
            assert driver.find_element(By.ID, f"knn-acc-{k}").text == f"{100 * result['knn'][str(k)]:.2f}"
        names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "td.class-name")]
        assert EVIL in names and driver.find_elements(By.TAG_NAME, "b") == []
        driver.set_window_size(700, 900)  # narrow: the probe table scrolls, and its short cells never break inside a word
        lines = driver.execute_script(
            "return Array.from(document.querySelectorAll('#probes td.short'))"
            ".map(c => { const r = document.createRange(); r.selectNodeContents(c); return r.getClientRects().length; });"
        )
        assert len(lines) == 2 * 5 and set(lines) == {1}, lines
        assert driver.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1366, min(height + 200, 12000))  # the whole page in one picture
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.width >= 1000 and im.height >= 900
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_training_curves_come_from_the_lightning_csv(built):
    from ssl_toolkit.eval.run_record import read_curves

    root, _, _ = built
    series = read_curves(root / "run" / "metrics.csv")
    steps, losses = series["loss_epoch"]
    assert steps == [4.0, 14.0, 24.0] and losses == pytest.approx([1.8, 1.5, 1.2])
    epochs, top1 = series["online_top1"]
    assert epochs == [1.0, 2.0, 3.0] and top1 == pytest.approx([0.4, 0.5, 0.6])
    assert len(series["loss_step"][0]) == 12


def test_a_ctrl_c_swallowed_inside_umap_still_stops_the_report_before_it_writes(built, tmp_path, monkeypatch):
    import os
    import signal

    import ssl_toolkit as st
    from ssl_toolkit.eval import analysis

    root, _, _ = built
    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(root / "home"))
    real = analysis.umap_projection

    def swallowing(*args, **kwargs):  # what numba's compiler does with an exception raised while it compiles
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "umap_projection", swallowing)
    out = tmp_path / "r.html"
    out.write_text("the old report")
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in an `ssl report` process
    try:
        with pytest.raises(KeyboardInterrupt):
            st.report(root / "run", {"name": str(root / "imgs"), "test_fraction": 0.5}, out=out, umap={"n_neighbors": 10})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before if before is not None else signal.default_int_handler)
    assert out.read_text() == "the old report" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_report_states_the_values_it_used_and_leaves_out_damaged_run_files(built, tmp_path, monkeypatch, capsys):
    import ssl_toolkit as st

    root, _, _ = built
    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(root / "home"))
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (run / "metrics.csv").write_bytes(b"epoch,loss\nfoo,bar\n\x00\xff\n")
    (run / "samples" / "epoch009.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a picture")
    Image.new("RGB", (30, 20), (5, 90, 200)).save(run / "samples" / "epoch009b.png")
    (run / "probes" / "knn-0.1.json").write_text('{"mode": "knn", "top1": ')  # cut short: its summary in meta.json is shown
    capsys.readouterr()
    out = tmp_path / "r.html"
    data = {"name": str(root / "imgs"), "test_fraction": 0.5}
    result = st.report(run, data, out=out, umap={"n_neighbors": 10**12}, clusters=10**6, split="test")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("warning: ") for line in err), err
    assert (
        err[0]
        == f"warning: {run / 'probes' / 'knn-0.1.json'} cannot be read as a probe result (Expecting value: line 1 column 25 (char 24)): the report shows its summary in meta.json"
    )
    assert "metrics.csv cannot be read (not UTF-8 text: byte 20)" in err[1] and "epoch009.png is left out" in err[2]
    # leave-one-out on the 150 test images: 149 others per query
    assert result["knn_k"] == {"1": 1, "20": 20, "200": 149} and result["umap"]["n_neighbors"] == 149
    assert result["umap"]["n_neighbors_asked"] == 10**12 and "nmi_mean" not in result["clusters"]
    assert result["clusters"]["not_run"] == "k = 1,000,000 needs at least 2,000,000 points (2 per cluster); there are 150"
    html = out.read_text(encoding="utf-8")
    assert "kNN top-1 (%), k = 149 (asked 200; each query has 149 other images)" in html
    assert "n_neighbors = 149 (asked 1000000000000; at most the 150 points less one)" in html
    assert 'id="kmeans-nmi"' not in html and "k-means: not run, so no NMI or ARI: k = 1,000,000 needs" in html
    assert 'id="training"' not in html and 'alt="epoch009b.png"' in html and 'alt="epoch009.png"' not in html
    assert '<td class="short">knn</td>' in html and "k=15: 50.00" not in html  # the summary has no details of its own
    from ssl_toolkit.errors import UserError

    with pytest.raises(UserError, match=r"^report\(\): queries_per_class: Input should be less than or equal to 10 \(got 11\)$"):
        st.report(run, data, out=out, queries_per_class=11)
    with pytest.raises(UserError, match=r"^umap: max_points: Input should be greater than or equal to 4 \(got 3\)$"):
        st.report(run, data, out=out, umap={"max_points": 3})


def test_long_and_bidi_class_names_stay_on_screen_and_read_as_written(built, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    import ssl_toolkit as st

    root, _, _ = built
    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(root / "home"))
    names = ["L" * 200, "\u202egnp.exe", "\u3000\u00a0"]
    write_named_classes(tmp_path / "imgs", names)
    out = tmp_path / "names.html"
    st.report(root / "run", {"name": str(tmp_path / "imgs"), "test_fraction": 0.5}, out=out, umap={"n_neighbors": 5})
    html = out.read_text(encoding="utf-8")
    assert "\u202e" not in html and "[U+202E]gnp.exe" in html
    driver, profile = browser()
    try:
        driver.get(out.resolve().as_uri())
        overflow = driver.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
        shown = sorted(e.text for e in driver.find_elements(By.CSS_SELECTOR, "td.class-name"))
        assert shown == sorted(["L" * 200, "[U+202E]gnp.exe", "'\\u3000\\xa0'"])
        table = driver.find_element(By.ID, "classes")
        assert table.rect["x"] + table.rect["width"] <= driver.execute_script("return document.documentElement.clientWidth")
        driver.set_window_size(500, 900)  # Chromium's narrowest window: the neighbour grids scroll inside their rows
        overflow = driver.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_path_is_checked_before_any_work(built, tmp_path, cli, monkeypatch):
    import ssl_toolkit as st
    from ssl_toolkit.errors import UserError

    root, _, _ = built
    data = {"name": str(root / "imgs"), "test_fraction": 0.5}
    (tmp_path / "emb.npz").write_bytes(b"embeddings")
    code, out, err = cli("report", root / "run", "--data", root / "imgs", "--out", tmp_path / "emb.npz")
    assert (code, out, err) == (2, "", "error: --out must end in .html or .htm, not 'emb.npz'\n")
    assert (tmp_path / "emb.npz").read_bytes() == b"embeddings"
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (run / "report.html").mkdir()  # the default page path is a folder: refused before the backbone is loaded
    with pytest.raises(UserError) as e:
        st.report(run, data)
    assert str(e.value) == f"out (default) {run / 'report.html'} is a folder; give a file path"
    code, out, err = cli("report", root / "run", "--data", root / "imgs", "--seed", "-1")
    assert (code, err) == (2, "error: Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295. (see 'ssl report --help')\n")


def test_the_default_page_goes_into_a_run_folder_and_never_into_the_checkpoint_library(built, tmp_path, monkeypatch):
    import ssl_toolkit as st
    from ssl_toolkit.eval.report import report_path
    from ssl_toolkit.library import library_root

    root, _, _ = built
    (tmp_path / "run").mkdir()
    assert report_path(tmp_path / "run", None) == tmp_path / "run" / "report.html"
    assert report_path(tmp_path / "run" / "backbone.safetensors", None) == Path("report.html")
    assert report_path(tmp_path / "run", tmp_path / "page.HTM") == tmp_path / "page.HTM"
    st.import_checkpoint(root / "run", name="tiny")
    monkeypatch.chdir(tmp_path)
    result = st.report("tiny", {"name": str(root / "imgs"), "test_fraction": 0.5}, umap={"n_neighbors": 5})
    assert result["path"] == "report.html" and (tmp_path / "report.html").is_file()
    assert sorted(p.name for p in (library_root() / "tiny").iterdir()) == ["backbone.safetensors", "meta.json"]


def test_leave_one_out_needs_two_images(built, tmp_path, cli):
    root, _, _ = built
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(one / "a.png")  # one image: a training split, no test split
    code, out, err = cli("report", root / "run", "--data", tmp_path / "one", "--out", tmp_path / "r.html")
    assert (code, out, err) == (2, "", f"error: {tmp_path / 'one'} has fewer than 2 images in its train split\n")
    assert not (tmp_path / "r.html").exists()


def test_class_names_that_matplotlib_would_read_as_markup_are_drawn(built, tmp_path, monkeypatch):
    import ssl_toolkit as st

    root, _, _ = built
    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(root / "home"))
    names = ["$\\foo$", "_under", "a$b$c"]
    write_named_classes(tmp_path / "imgs", names)
    out = tmp_path / "dollars.html"
    result = st.report(root / "run", {"name": str(tmp_path / "imgs"), "test_fraction": 0.5}, out=out, umap={"n_neighbors": 5})
    html = out.read_text(encoding="utf-8")
    assert result["labelled"] and "UMAP scatter" in html
    assert [c.strip() for c in re.findall(r'<td class="class-name">([^<]*)</td>', html)] == names
