"""`ssl inspect`: facts, labels, exact/near duplicates, leakage, unreadable files, JSON/HTML/dedupe outputs.

A tiny labelled folder is built with planted duplicates:

* exact: ``train/cat/a.png`` = ``train/cat/a_copy.bmp`` (same pixels, other format), and
  ``train/dog/l.png`` = ``test/dog/l.tif`` (a train/test leak);
* near: ``train/cat/n.png`` ~ ``train/cat/n_small.png`` (resized), and
  ``train/dog/j.png`` ~ ``test/cat/j.jpg`` (re-encoded JPEG; a near leak);
* modes: one each of L, P, RGBA, CMYK and 16-bit, the rest RGB;
* unreadable: a truncated PNG (with markup in its name), random bytes, an empty file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.folder import load_folder
from ssl_toolkit.data.sources import DataSource, Split
from ssl_toolkit.errors import UserError
from ssl_toolkit.inspection import InspectConfig, inspect_data, run_inspection
from ssl_toolkit.inspection import duplicates as dup
from ssl_toolkit.inspection.duplicates import UnionFind
from ssl_toolkit.inspection.table import table_from_folder, table_from_source

BROKEN = "broken<script>.png"


def picture(seed: int, size: tuple[int, int] = (72, 60)) -> Image.Image:
    """A smooth random colour picture (sinusoid mix plus an ellipse); different seeds look unrelated."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(3):
            fx, fy = rng.uniform(-4, 4, 2)
            img[..., c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 6.3))
    img = (img - img.min()) / (np.ptp(img) + 1e-9) * 255
    im = Image.fromarray(img.astype(np.uint8), "RGB")
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    ImageDraw.Draw(im).ellipse([x0, y0, x0 + w // 3, y0 + h // 3], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def build_folder(root: Path) -> Path:
    d = {s: root / s for s in ("train/cat", "train/dog", "train/bird", "test/cat", "test/dog")}
    for p in d.values():
        p.mkdir(parents=True)
    for k in range(4):
        picture(k).save(d["train/cat"] / f"u{k}.png")
    picture(4).save(d["train/dog"] / "u4.png")
    picture(5).save(d["train/dog"] / "u5.png")
    picture(6).save(d["test/cat"] / "u6.png")
    picture(7).save(d["train/bird"] / "u7.png")
    # exact duplicates: same pixels, other formats
    picture(10).save(d["train/cat"] / "a.png")
    picture(10).save(d["train/cat"] / "a_copy.bmp")
    picture(11).save(d["train/dog"] / "l.png")
    picture(11).save(d["test/dog"] / "l.tif")
    # near duplicates: resized, and re-encoded as JPEG
    big = picture(12, (96, 80))
    big.save(d["train/cat"] / "n.png")
    big.resize((72, 60), Image.Resampling.LANCZOS).save(d["train/cat"] / "n_small.png")
    picture(13).save(d["train/dog"] / "j.png")
    picture(13).save(d["test/cat"] / "j.jpg", quality=85)
    # colour modes
    picture(20).convert("L").save(d["train/cat"] / "gray.png")
    picture(21).convert("RGBA").save(d["train/dog"] / "rgba.png")
    picture(22).convert("P", palette=Image.Palette.ADAPTIVE).save(d["train/dog"] / "pal.png")
    picture(23).convert("CMYK").save(d["test/cat"] / "cmyk.jpg")
    deep = np.asarray(picture(24).convert("L"), np.uint16) * 257
    Image.fromarray(deep).save(d["test/dog"] / "deep.png")
    # unreadable files
    buf = io.BytesIO()
    picture(30).save(buf, "PNG")
    (d["train/cat"] / BROKEN).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d["test/dog"] / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (d["train/dog"] / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_folder(tmp_path_factory.mktemp("inspect") / "data")


@pytest.fixture(scope="module")
def result(folder):
    return run_inspection(InspectConfig(data={"name": str(folder)}, max_imbalance=5))


def names(group: dict) -> set[str]:
    return {"/".join(Path(m["id"]).parts[-3:]) for m in group["members"]}


def test_counts_sizes_modes_formats(result):
    r = result.report
    assert r["kind"] == "folder"
    assert r["images"] == {"total": 21, "train": 16, "test": 5, "unreadable": 3}
    assert r["modes"]["modes"] == {"RGB": 16, "L": 1, "RGBA": 1, "P": 1, "CMYK": 1, "I;16": 1}
    assert r["modes"]["channels"] == {"1": 2, "3": 17, "4": 2}  # the palette image's colours are RGB
    assert r["modes"]["high_bit_depth"] == 1 and r["modes"]["mixed"]
    assert r["formats"] == {"PNG": 17, "JPEG": 2, "BMP": 1, "TIFF": 1}
    assert r["sizes"]["width"]["min"] == 72 and r["sizes"]["width"]["max"] == 96
    assert r["sizes"]["aspect_ratio"]["min"] == pytest.approx(1.2)
    assert sum(r["sizes"]["width"]["histogram"]["counts"]) == 21
    fs = r["file_sizes"]
    assert fs["total"] == sum(int(t) for t in result.table.nbytes) and fs["min"] > 0
    assert any("mixed colour modes" in w for w in r["warnings"])


def test_normalisation_matches_the_loader(folder, result):
    source = load_folder(folder, DataConfig(name=str(folder)))
    norm = result.report["normalisation"]
    assert norm["channels"] == source.channels == 3 and norm["image_size"] == 32
    assert norm["mean"] == pytest.approx(list(source.mean), abs=2e-5)
    assert norm["std"] == pytest.approx(list(source.std), abs=2e-5)
    assert sorted(p for p, _ in source.skipped) == sorted(u["path"] for u in result.report["unreadable"])


def test_labels_exact_counts_and_imbalance(result):
    lab = result.report["labels"]
    assert lab["classes"] == ["bird", "cat", "dog"]
    assert lab["splits"]["train"]["counts"] == {"bird": 1, "cat": 9, "dog": 6}
    assert lab["splits"]["test"]["counts"] == {"bird": 0, "cat": 3, "dog": 2}
    assert lab["splits"]["train"]["imbalance"] == 9.0 and lab["splits"]["test"]["imbalance"] == 1.5
    assert lab["imbalance"] == 12.0
    assert lab["splits"]["test"]["missing"] == ["bird"] and lab["splits"]["train"]["missing"] == []
    warnings = " | ".join(result.report["warnings"])
    assert "train split is imbalanced" in warnings and "test split is imbalanced" not in warnings
    assert "test split has no images of 1 class(es): bird" in warnings and "no test images" not in warnings


def test_a_folder_whose_split_puts_no_image_in_test_is_warned_about(tmp_path):
    from ssl_toolkit.inspection import run_inspection

    for c in ("a", "b"):  # one image a class: round(1 x 0.2) = 0 in test
        (tmp_path / c).mkdir()
        Image.new("RGB", (12, 12), (40, 90 if c == "a" else 200, 10)).save(tmp_path / c / "0.png")
    report = run_inspection({"data": {"name": str(tmp_path)}}).report
    assert (report["images"]["train"], report["images"]["test"]) == (2, 0)
    assert report["warnings"] == ["no test images: `ssl probe` needs a test split, and pretraining has no online probe"]


def test_exact_duplicates_across_formats_and_leak(result):
    ex = result.report["duplicates"]["exact"]
    assert sorted(map(sorted, map(names, ex["groups"]))) == [
        ["test/dog/l.tif", "train/dog/l.png"],
        ["train/cat/a.png", "train/cat/a_copy.bmp"],
    ]
    assert ex["num_groups"] == 2 and ex["redundant"] == 2
    assert ex["leak_groups"] == 1 and ex["leaked_test_images"] == 1
    leak = next(g for g in ex["groups"] if g["crosses_split"])
    assert names(leak) == {"train/dog/l.png", "test/dog/l.tif"}


def test_near_duplicates_found_and_unrelated_not_grouped(result):
    near = result.report["duplicates"]["near"]
    assert sorted(map(sorted, map(names, near["groups"]))) == [
        ["test/cat/j.jpg", "train/dog/j.png"],
        ["train/cat/n.png", "train/cat/n_small.png"],
    ]
    assert near["leak_groups"] == 1
    leak = next(g for g in near["groups"] if g["crosses_split"])
    assert leak["mixed_labels"] and leak["max_hamming"] <= near["max_hamming"]
    assert any("near-duplicate group(s) span both splits" in w for w in result.report["warnings"])


def test_unreadable_listed_with_reason(result):
    bad = {Path(u["path"]).name: u["reason"] for u in result.report["unreadable"]}
    assert set(bad) == {BROKEN, "garbage.jpg", "empty.png"}
    assert bad["empty.png"] == "empty file"
    assert "truncated" in bad[BROKEN] or "broken" in bad[BROKEN].lower()
    assert "cannot identify" in bad["garbage.jpg"]


def test_cli_json_html_and_dedupe_list(cli, folder, tmp_path):
    html, drops = tmp_path / "report.html", tmp_path / "drop.txt"
    code, out, err = cli("inspect", folder, "--json", "--out", html, "--dedupe-list", drops, "-q")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"]["total"] == 21 and report["dedupe"]["drop"] == 4
    dropped = ["/".join(Path(line).parts[-3:]) for line in drops.read_text().splitlines()]
    assert sorted(dropped) == ["test/cat/j.jpg", "test/dog/l.tif", "train/cat/a_copy.bmp", "train/cat/n_small.png"]
    assert all(Path(line).exists() for line in drops.read_text().splitlines())  # listed, never deleted
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script>" not in page and "broken&lt;script&gt;.png" in page
    assert page.count('src="data:image/') >= 21 + 8  # a grid per class plus the group members
    assert "train/test leak" in page and "http://" not in page and "https://" not in page


def test_the_page_keeps_a_long_class_name_on_screen(cli, tmp_path):
    import shutil

    from test_report import browser, write_named_classes

    write_named_classes(tmp_path / "imgs", ["L" * 150, "short"])
    page = tmp_path / "page.html"
    code, _, err = cli("inspect", tmp_path / "imgs", "--out", page, "-q")
    assert code == 0, err
    driver, profile = browser()
    try:
        driver.get(page.resolve().as_uri())
        overflow = driver.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0  # the class's heading wraps
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_cli_summary_text(cli, folder):
    code, out, err = cli("inspect", folder, "-q")
    assert code == 0, err
    assert "images          21 (train 16, test 5), unreadable files 3" in out
    assert "exact dups      2 group(s), 4 images, 2 redundant; LEAK: 1 group(s)" in out
    assert "empty.png: empty file" in out


def test_missing_path_is_a_user_error(cli, tmp_path):
    code, out, err = cli("inspect", tmp_path / "nope")
    assert code == 2 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    with pytest.raises(UserError):
        inspect_data(str(tmp_path / "nope"))


def test_tensor_source_batched_hashes_and_leak():
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(40, 3, 4, 4, generator=g), size=16, mode="bilinear")
    x = (base * 255).round().to(torch.uint8)
    train, test = x[:30].clone(), x[30:].clone()
    test[0] = train[3]  # exact leak
    noisy = train[5].int() + torch.randint(-2, 3, train[5].shape, generator=g)
    train[6] = noisy.clamp(0, 255).to(torch.uint8)  # near duplicate of train[5]
    y = torch.arange(40) % 4
    source = DataSource(
        "planted",
        Split(train, y[:30], [f"planted:train:{i}" for i in range(30)]),
        Split(test, y[30:], [f"planted:test:{i}" for i in range(10)]),
        ["a", "b", "c", "d"],
    )
    table = table_from_source(source)
    exact = [sorted(table.ids[i] for i in grp) for grp in dup.exact_groups(table)]
    assert exact == [["planted:test:0", "planted:train:3"]]
    i, j, _ = dup.near_pairs(table, 4, 0.01)
    assert [(table.ids[a], table.ids[b]) for a, b in zip(i, j)] == [("planted:train:5", "planted:train:6")]


def test_folder_and_tensor_paths_hash_alike(tmp_path):
    from ssl_toolkit.data.synthetic import make_synthetic

    x, _ = make_synthetic(24, 32, seed=3)
    for i, a in enumerate(x):
        Image.fromarray(a.permute(1, 2, 0).numpy()).save(tmp_path / f"{i:02d}.png")
    files = table_from_folder(tmp_path, DataConfig(name=str(tmp_path)))
    arrays = table_from_source(DataSource("s", Split(x, None, [f"s:{i}" for i in range(24)]), Split(x[:0], None, []), None))
    assert np.array_equal(files.dhash, arrays.dhash)
    assert np.abs(files.thumbs.astype(int) - arrays.thumbs.astype(int)).max() <= 1


def test_inspect_reads_large_jpegs_as_training_does_arrays_and_statistics(tmp_path):
    """Inspect's full decode (for its digests) gave large JPEGs other pixels than libjpeg's reduced-scale decode."""
    from ssl_toolkit.data.images import center_square, decode_crops
    from ssl_toolkit.data.scan import scan_bytes
    from ssl_toolkit.inspection.table import fingerprint

    rng = np.random.default_rng(0)
    for i in range(6):  # 96 x 72 photos at 16 px: libjpeg decodes them at 1/4
        noise = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((96, 72), Image.Resampling.BICUBIC).save(tmp_path / f"{i}.jpg", quality=90)
    cfg = DataConfig(name=str(tmp_path), image_size=16, test_fraction=0.5, stream=False)
    table = table_from_folder(tmp_path, cfg, keep_arrays=True)
    held = load_folder(tmp_path, cfg)
    for split in (held.train, held.test):
        for i, name in enumerate(split.ids):
            assert torch.equal(table.images[table.ids.index(name)], split.images[i])
    assert table.mean == pytest.approx(held.mean, abs=1e-6) and table.std == pytest.approx(held.std, abs=1e-6)
    data = (tmp_path / "0.jpg").read_bytes()  # a shard's item: the same bytes, read from memory
    scanned = scan_bytes("0.jpg", data, 16, 3, visit=fingerprint).array
    assert np.array_equal(scanned, decode_crops(io.BytesIO(data), 3, 16, lambda w, h: [center_square(w, h)])[0])


def test_cli_tensor_source(cli):
    code, out, err = cli("inspect", "synthetic", "--set", "data.synthetic_train=60", "--set", "data.synthetic_test=30", "--json", "-q")
    assert code == 0, err
    r = json.loads(out)
    assert r["kind"] == "tensor" and r["images"] == {"total": 90, "train": 60, "test": 30, "unreadable": 0}
    assert r["modes"]["modes"] == {"RGB": 90} and r["formats"] is None and r["file_sizes"] is None
    assert sum(r["labels"]["splits"]["train"]["counts"].values()) == 60
    assert len(r["normalisation"]["mean"]) == 3


def test_embedding_neighbours(folder, tmp_path):
    from conftest import TINY_BACKBONE

    from ssl_toolkit.backbones import create_backbone
    from ssl_toolkit.checkpoints import save_backbone
    from ssl_toolkit.config import BackboneConfig

    model, spec = create_backbone(BackboneConfig(name=TINY_BACKBONE), 3, 16)
    meta = {"task": "none", "backbone": spec.to_dict(), "in_chans": 3, "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_backbone(tmp_path / "bb", model, meta)
    r = inspect_data(InspectConfig(data={"name": str(folder)}, embed_threshold=-1.0), embed=str(tmp_path / "bb"))
    emb = r["duplicates"]["embedding"]
    assert emb["num_groups"] == 1 and emb["images"] == 21  # every pair passes a threshold of -1
    assert emb["pairs"] == 21 * 20 // 2 - 2  # exact copies are not counted as neighbours
    assert r["normalisation"]["image_size"] == 16


def test_union_find_groups():
    uf = UnionFind(6)
    uf.union(0, 1)
    uf.union(3, 4)
    uf.union(4, 5)
    assert [g.tolist() for g in uf.groups(np.arange(6))] == [[3, 4, 5], [0, 1]]


def small_labelled_folder(root: Path) -> Path:
    """``cat/`` and ``dog/``, four pictures each; ``dog/u0.png`` is ``cat/u0.png`` again (the same image, two labels)."""
    for c, seeds in (("cat", (40, 41, 42, 43)), ("dog", (40, 44, 45, 46))):
        (root / c).mkdir(parents=True)
        for k, seed in enumerate(seeds):
            picture(seed).save(root / c / f"u{k}.png")
    return root


def test_summary_marks_exact_duplicates_that_carry_different_labels(cli, tmp_path):
    root = small_labelled_folder(tmp_path / "data")
    code, out, err = cli("inspect", root, "-q")
    assert code == 0, err
    head = next(line for line in out.splitlines() if line.startswith("exact dups"))
    assert head.endswith("; MIXED LABELS: 1 group(s)")
    assert any(
        "mixed labels: " in line and "cat/u0.png [" in line and ", cat]" in line for line in out.splitlines()
    )  # after "leak: " when the pair spans the split
    assert "warning: labels: 1 exact-duplicate group(s) carry different labels (the same image in several classes)" in out


def test_an_output_into_the_inspected_data_or_onto_the_other_output_is_refused_before_work(cli, tmp_path):
    root = small_labelled_folder(tmp_path / "data")
    image = (root / "cat" / "u1.png").read_bytes()
    for option, path, why in (
        ("--dedupe-list", root / "cat" / "u1.png", f"is an image path inside {root}, the folder being read"),
        ("--dedupe-list", root / "dog" / "new.PNG", f"is an image path inside {root}, the folder being read"),  # read as an image next time
        ("--dedupe-list", root / "labels.csv", f"is the labels file of {root}"),
    ):
        code, out, err = cli("inspect", root, "-q", option, path)
        assert (code, out, err) == (2, "", f"error: {option} {path} {why}; writing it would change the data: choose a path outside it\n")
    assert (root / "cat" / "u1.png").read_bytes() == image and not (root / "dog" / "new.PNG").exists()
    assert not (root / "labels.csv").exists()
    code, _, err = cli("inspect", root, "-q", "--out", tmp_path / "r.json")  # the page is HTML, whatever the name says
    assert (code, err) == (2, "error: --out must end in .html or .htm, not 'r.json'\n")
    code, _, err = cli("inspect", root, "-q", "--out", tmp_path / "r.html", "--dedupe-list", tmp_path / "." / "r.html")
    assert (code, err) == (2, f"error: --out and --dedupe-list are the same file ({tmp_path / 'r.html'}); give each its own\n")
    assert not (tmp_path / "r.html").exists()
    code, _, err = cli("inspect", root, "-q", "--out", root / "inspect.html", "--dedupe-list", root / "drop.txt")  # not images: allowed
    assert code == 0 and (root / "drop.txt").read_text() == f"{root / 'dog' / 'u0.png'}\n" and (root / "inspect.html").is_file(), err


def test_the_data_files_a_source_reads_are_its_own(tmp_path, monkeypatch):
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.input_guard import data_file_clash
    from ssl_toolkit.data.shards import INFO_FILE

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / INFO_FILE).write_text("{}")
    assert data_file_clash(DataConfig(name=str(shards)), shards / "train" / "labels.npy") == f"is inside the shard set {shards}"
    assert data_file_clash(DataConfig(name=str(shards)), tmp_path / "labels.npy") is None
    fm = tmp_path / "fm"
    fm.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (fm / f"{stem}.gz").write_bytes(b"")
    cfg = DataConfig(name="fashion-mnist", path=str(fm))
    assert data_file_clash(cfg, fm / "t10k-labels-idx1-ubyte.gz") == f"is a Fashion-MNIST file in {fm}"
    assert data_file_clash(cfg, fm / "t10k-labels-idx1-ubyte") == f"is a Fashion-MNIST file in {fm}"  # read when the .gz is gone
    assert data_file_clash(cfg, fm / "notes.txt") is None and data_file_clash(DataConfig(name="digits"), tmp_path / "x.png") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tags.csv").write_text("file,labels\n")
    assert data_file_clash(DataConfig(name="digits", labels="tags.csv"), tmp_path / "tags.csv") == "is the labels file data.labels=tags.csv"
    link = tmp_path / "link"
    link.symlink_to(shards)
    assert data_file_clash(DataConfig(name=str(shards)), link / INFO_FILE) == f"is inside the shard set {shards}"  # through a symlink


def test_dedupe_list_leaves_out_names_with_a_newline_and_says_so(cli, tmp_path):
    root = small_labelled_folder(tmp_path / "data")
    picture(41).save(root / "cat" / "zz.png\nu1.png")  # a copy of cat/u1.png whose name holds a newline
    drops = tmp_path / "drop.txt"
    code, out, err = cli("inspect", root, "--dedupe-list", drops, "--json", "-q")
    assert code == 0, err
    listed = drops.read_text().splitlines()
    assert [Path(p).relative_to(root).as_posix() for p in listed] == ["dog/u0.png"]  # one kept per group: the first
    assert all(Path(p).is_file() for p in listed)  # xargs -d '\n' rm -- < drop.txt removes only listed files
    report = json.loads(out)
    assert report["dedupe"] == {"path": str(drops), "drop": 1, "left_out": [str(root / "cat" / "zz.png\nu1.png")]}
    code, out, err = cli("inspect", root, "--dedupe-list", drops, "-q")
    assert "left out, a newline in the name (delete by hand): cat/zz.png\\nu1.png" in out


def test_images_not_used_and_other_files_are_reported(cli, tmp_path):
    root = small_labelled_folder(tmp_path / "data")
    picture(50).save(root / "stray.png")
    (root / "cat" / "sub").mkdir()
    picture(51).save(root / "cat" / "sub" / "nested.png")
    (root / "dog" / "x.heic").write_bytes(b"x")
    (root / "README.txt").write_text("x")
    code, out, err = cli("inspect", root, "--json", "-q")
    assert code == 0, err
    r = json.loads(out)
    assert r["images"]["total"] == 8
    assert r["unused"] == {
        "images": 2,
        "top_level": 1,
        "nested": 1,
        "examples": [str(root / "stray.png"), str(root / "cat" / "sub" / "nested.png")],
        "other_files": {".heic": 1, ".txt": 1},
        "other_image_files": {".heic": 1},
    }
    assert "2 image(s) not used by the folder's layout (1 at the top level, 1 in nested folders; see docs/data.md)" in r["warnings"]
    code, out, err = cli("inspect", root, "-q")
    assert "not used        2 image(s) (1 at the top level, 1 in nested folders): stray.png, cat/sub/nested.png" in out
    assert "other files     .heic 1, .txt 1 (not images the toolkit reads)" in out
    assert "not used" not in err  # the summary says it once


ML_LABELS = {  # street/ and beach/ are plain folders here: labels.csv gives the labels
    "street/0.png": "car;person",
    "street/1.png": "person",
    "street/2.png": "car",
    "street/3.png": "car;dog",
    "street/4.png": "car;person",  # the pixels of street/0.png, the same label set
    "beach/0.png": "sea",
    "beach/1.png": "dog;person;sea",
    "beach/2.png": "person;sea",
    "beach/3.png": "dog",
    "beach/4.png": "dog;sea",  # the pixels of street/1.png, another label set
}


def multilabel_folder(root: Path) -> Path:
    """``street/`` and ``beach/``, five pictures each, with a ``labels.csv`` over car, dog, person and sea; two exact copies."""
    seeds = {"street/4.png": 60, "beach/4.png": 61}
    for k, name in enumerate(ML_LABELS):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        picture(seeds.get(name, 60 + k)).save(root / name)
    (root / "labels.csv").write_text("file,labels\n" + "".join(f"{f},{labels}\n" for f, labels in ML_LABELS.items()))
    return root


def test_a_multi_label_folder_is_inspected_with_its_label_sets_and_the_loaders_split(cli, tmp_path):
    root = multilabel_folder(tmp_path / "ml")
    source = load_folder(root, DataConfig(name=str(root)))
    result = run_inspection(str(root))
    r, table = result.report, result.table
    assert sorted(i for i, s in zip(table.ids, table.split) if s == 0) == sorted(source.train.ids)
    assert sorted(i for i, s in zip(table.ids, table.split) if s == 1) == sorted(source.test.ids)
    lab = r["labels"]
    assert (lab["classes"], lab["multilabel"]) == (["car", "dog", "person", "sea"], True)
    assert lab["counts"] == {"car": 4, "dog": 4, "person": 5, "sea": 4}  # images carrying each label
    assert lab["imbalance"] == 1.25
    assert r["unused"]["other_files"] == {}  # labels.csv is read, not left out
    for split, ids in (("train", source.train.ids), ("test", source.test.ids)):
        carried = [ML_LABELS[Path(i).relative_to(root).as_posix()].split(";") for i in ids]
        assert lab["splits"][split]["counts"] == {c: sum(c in s for s in carried) for c in lab["classes"]}
        assert lab["splits"][split]["total"] == len(ids)
    groups = {frozenset(names(g)): g for g in r["duplicates"]["exact"]["groups"]}
    same = groups[frozenset({"ml/street/0.png", "ml/street/4.png"})]
    other = groups[frozenset({"ml/street/1.png", "ml/beach/4.png"})]
    assert (same["mixed_labels"], other["mixed_labels"]) == (False, True)  # label sets compared for equality
    assert sorted(m["label"] for m in other["members"]) == ["dog;sea", "person"]
    assert "labels: 1 exact-duplicate group(s) carry different labels (the same image with different label sets)" in r["warnings"]
    code, out, err = cli("inspect", root, "-q")
    assert code == 0, err
    assert "classes         4 (multi-label); imbalance (largest/smallest) overall 1.25," in out
    other_csv = tmp_path / "colours.csv"  # data.labels names another file, as in training
    other_csv.write_text("file,labels\n" + "".join(f"{f},{'red' if f.startswith('street') else 'red;blue'}\n" for f in ML_LABELS))
    lab = run_inspection({"data": {"name": str(root), "labels": str(other_csv)}}).report["labels"]
    assert (lab["classes"], lab["counts"]) == (["blue", "red"], {"blue": 5, "red": 10})


def test_the_shards_of_a_multi_label_folder_are_inspected_as_the_folder(tmp_path):
    import ssl_toolkit as st

    root = multilabel_folder(tmp_path / "ml")
    st.shard(root, tmp_path / "shards", image_size=16, chunk_bytes="8kb", workers=1)
    folder_report = run_inspection(str(root)).report
    report = run_inspection(str(tmp_path / "shards")).report
    assert report["kind"] == "shards" and report["labels"] is not None
    assert {k: report["labels"][k] for k in ("classes", "multilabel", "counts", "splits")} == {
        k: folder_report["labels"][k] for k in ("classes", "multilabel", "counts", "splits")
    }
    labels = [sorted(m["label"] for m in g["members"]) for g in report["duplicates"]["exact"]["groups"]]
    assert sorted(labels) == [["car;person", "car;person"], ["dog;sea", "person"]]
    assert sorted(g["mixed_labels"] for g in report["duplicates"]["exact"]["groups"]) == [False, True]


def test_the_split_is_the_loaders_when_a_file_header_reads_but_its_pixels_do_not(tmp_path):
    root = tmp_path / "split1"
    for c, base in (("a", 70), ("b", 80)):
        (root / c).mkdir(parents=True)
        for k in range(10):
            picture(base + k, (24, 20)).save(root / c / f"{k:02d}.png")
    buf = io.BytesIO()
    picture(90, (24, 20)).save(buf, "PNG")
    (root / "a" / "00_trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # the header reads, the pixels do not
    source = load_folder(root, DataConfig(name=str(root)))
    result = run_inspection(str(root))
    table, r = result.table, result.report
    assert sorted(i for i, s in zip(table.ids, table.split) if s == 0) == sorted(source.train.ids)
    assert sorted(i for i, s in zip(table.ids, table.split) if s == 1) == sorted(source.test.ids)
    assert (r["normalisation"]["mean"], r["normalisation"]["std"]) == (list(source.mean), list(source.std))
    assert [(Path(u["path"]).name, "truncated" in u["reason"]) for u in r["unreadable"]] == [("00_trunc.png", True)]
    assert r["images"] == {"total": 20, "train": len(source.train), "test": len(source.test), "unreadable": 1}


def test_the_dedupe_list_drops_a_symbolic_link_and_never_the_file_a_kept_link_points_to(tmp_path):
    root = tmp_path / "sym"
    for split, seeds in (("train", (100, 101, 102, 103)), ("test", (104, 105))):
        (root / split).mkdir(parents=True)
        for seed in seeds:
            picture(seed).save(root / split / f"img{seed - 100}.png")
    (root / "train" / "a_link.png").symlink_to("img3.png")  # same split: the link goes, its target stays
    (root / "train" / "b_link.png").symlink_to(Path("..") / "test" / "img5.png")  # a leak: the training copy is the link
    drops = tmp_path / "drop.txt"
    report = inspect_data(str(root), dedupe_list=drops)
    assert sorted(map(sorted, map(names, report["duplicates"]["exact"]["groups"]))) == [
        ["sym/test/img5.png", "sym/train/b_link.png"],
        ["sym/train/a_link.png", "sym/train/img3.png"],
    ]
    assert drops.read_text() == f"{root / 'train' / 'a_link.png'}\n"
    for line in drops.read_text().splitlines():  # xargs -d '\n' rm -- < drop.txt
        Path(line).unlink()
    assert sorted(p.name for p in root.rglob("*.png") if p.exists()) == [
        "b_link.png",
        "img0.png",
        "img1.png",
        "img2.png",
        "img3.png",
        "img4.png",
        "img5.png",
    ]


def test_leaks_come_first_in_the_json_colour_is_kept_over_grayscale_and_shards_list_what_they_left_out(cli, tmp_path):
    """The JSON listed groups largest first (leaks first only in the terminal); a dedupe kept a grayscale copy
    over its colour original when its name sorted first; inspecting shards lost the files `ssl shard` left out."""
    import ssl_toolkit as st

    root = tmp_path / "d"
    for sub in ("train/a", "train/b", "test/a", "test/b"):
        (root / sub).mkdir(parents=True)
    for k in range(3):
        picture(200 + k).save(root / "train" / "a" / f"u{k}.png")
        picture(210 + k).save(root / "train" / "b" / f"u{k}.png")
    picture(220).save(root / "test" / "b" / "u.png")
    for name in ("train/a/x.png", "train/a/x2.bmp", "train/b/x3.png"):  # three copies, one split
        picture(230).save(root / name)
    picture(231).save(root / "train" / "a" / "y.png")  # two copies, a leak
    picture(231).save(root / "test" / "a" / "y.png")
    picture(232).save(root / "train" / "b" / "col.png")
    picture(232).convert("L").save(root / "train" / "b" / "0gray.png")  # near: duplicates are matched on grayscale
    (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG not an image")
    drops = tmp_path / "drop.txt"
    code, out, err = cli("inspect", root, "--json", "--dedupe-list", drops, "-q")
    assert code == 0, err
    exact = json.loads(out)["duplicates"]["exact"]["groups"]
    assert [(g["size"], g["crosses_split"]) for g in exact] == [(2, True), (3, False)]
    assert drops.read_text().splitlines() == [
        str(root / p) for p in ("test/a/y.png", "train/a/x2.bmp", "train/b/0gray.png", "train/b/x3.png")
    ]
    st.shard(root, tmp_path / "shards", image_size=16, workers=1)
    report = run_inspection(str(tmp_path / "shards")).report
    assert [(Path(u["path"]).name, "cannot identify" in u["reason"]) for u in report["unreadable"]] == [("broken.png", True)]
    assert report["images"]["unreadable"] == 1
    assert [(g["size"], g["crosses_split"]) for g in report["duplicates"]["exact"]["groups"]] == [(2, True), (3, False)]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_in_a_folder_that_takes_no_new_files_names_the_cause(cli):
    """/proc exists, yet creating a file there fails with ENOENT: the line read 'No such file or directory'."""
    code, _, err = cli("inspect", "digits", "--out", "/proc/x.html", "-q")
    assert (code, err.strip()) == (2, "error: --out /proc/x.html is not writable (/proc: no file can be created in it)")


def test_python_reads_an_inspect_config_file_as_the_command_line_does(cli, tmp_path):
    """``ssl inspect --config FILE`` had no Python counterpart: a path was taken for a dataset folder."""
    (tmp_path / "inspect.yaml").write_text("data:\n  name: digits\nnear_hamming: 3\n")
    report = inspect_data(str(tmp_path / "inspect.yaml"))
    code, out, err = cli("inspect", "digits", "--config", tmp_path / "inspect.yaml", "--json", "-q")
    assert code == 0, err
    assert report["duplicates"]["near"]["max_hamming"] == json.loads(out)["duplicates"]["near"]["max_hamming"] == 3
    assert report["images"] == json.loads(out)["images"]
    (tmp_path / "bad.yml").write_text("near_hamming: 99\n")
    with pytest.raises(UserError, match=r"bad\.yml: near_hamming: Input should be less than or equal to"):
        inspect_data(tmp_path / "bad.yml")


def test_off_a_terminal_the_stage_lines_are_the_stage_names_alone(cli):
    code, out, err = cli("inspect", "digits", "--set", "data.limit=100")
    assert code == 0, err
    assert err.splitlines()[:2] == ["loading", "hashing"]  # no padding meant for a bar that is not drawn
