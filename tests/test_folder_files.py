"""Which files of an image folder are read, and how: names that are not UTF-8, EXIF orientation,
images the layout leaves out, other picture types, and files that go bad mid-run counted once."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from PIL import Image, ImageOps

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.images import decode_crops, draft_scale
from ssl_toolkit.data.index import folder_index
from ssl_toolkit.data.layout import NOT_UTF8, NOT_UTF8_FOLDER, folder_layout
from ssl_toolkit.data.loaders import split_loader
from ssl_toolkit.data.scan import scan_file
from ssl_toolkit.data.sources import load_source
from ssl_toolkit.data.stream import SkipLog
from ssl_toolkit.errors import UserError

NOT_UTF8_NAME = b"bad\xff\xfename.png"


def noise(seed: int, size: tuple[int, int] = (24, 24)) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def class_folder(root: Path, per_class: int = 6, classes=("cat", "dog")) -> Path:
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            noise(100 * k + i).save(root / c / f"{i}.png")
    return root


def save_bytes_name(folder: Path, name: bytes, im: Image.Image) -> bytes:
    path = os.fsencode(folder) + b"/" + name
    with open(path, "wb") as f:
        im.save(f, "PNG")
    return path


def exif_photo(path: Path, stored: tuple[int, int], orientation: int) -> Image.Image:
    """A JPEG stored at ``stored`` (w, h) with an EXIF orientation; returns the upright picture (PIL's reference)."""
    w, h = stored
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    im = Image.fromarray(np.stack([x, y, np.full_like(x, 60)], -1).astype(np.uint8), "RGB")  # red grows rightwards, green downwards
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif)
    with Image.open(path) as f:
        return ImageOps.exif_transpose(f.convert("RGB"))


# ----------------------------------------------------------------------------- names that are not UTF-8


def test_a_file_name_that_is_not_utf8_is_listed_as_unusable_and_never_read(tmp_path):
    root = class_folder(tmp_path / "imgs")
    save_bytes_name(root / "dog", NOT_UTF8_NAME, noise(7))
    bad_dir = os.fsencode(root) + b"/bird\xff"
    os.mkdir(bad_dir)
    save_bytes_name(Path(os.fsdecode(bad_dir)), b"1.png", noise(8))
    layout = folder_layout(root)
    assert layout.classes == ["cat", "dog"] and len(layout.paths) == 12
    assert sorted(layout.bad) == [  # as text: the bytes that are not UTF-8 shown as U+FFFD
        (f"{root}/bird\ufffd/1.png", NOT_UTF8_FOLDER),
        (f"{root}/dog/bad\ufffd\ufffdname.png", NOT_UTF8),
    ]
    src = load_source(DataConfig(name=str(root), image_size=16))
    assert len(src.train) + len(src.test) == 12 and len(src.skipped) == 2
    for ids in (src.train.ids, src.test.ids, [p for p, _ in src.skipped]):  # every later stage gets text
        "\n".join(ids).encode("utf-8")
    again = folder_index(root)  # the cached index round-trips the listed names byte for byte
    assert again.cached and sorted(again.bad) == sorted(layout.bad)


def test_a_data_path_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/d\xff"))
    class_folder(root)
    with pytest.raises(UserError, match="data path is not valid UTF-8"):
        folder_layout(root)


def test_commands_past_pretraining_read_a_folder_with_a_name_that_is_not_utf8(tmp_path, cli):
    import ssl_toolkit as st

    root = class_folder(tmp_path / "imgs", per_class=8)
    save_bytes_name(root / "dog", NOT_UTF8_NAME, noise(7))
    save_bytes_name(root / "cat", b"copy\xff.png", noise(0))  # an exact copy of cat/0.png
    data = {"name": str(root), "image_size": 16}
    cfg = {
        "task": "rotation",
        "data": data,
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 1, "batch_size": 8, "progress_bar": False, "accelerator": "cpu"},
    }
    meta = st.pretrain(cfg, out=tmp_path / "run")
    assert meta["dataset"]["n_train"] + meta["dataset"]["n_test"] == 16
    skipped = (tmp_path / "run" / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert skipped == [f"{root}/cat/copy\ufffd.png\t{NOT_UTF8}", f"{root}/dog/bad\ufffd\ufffdname.png\t{NOT_UTF8}"]
    out = st.embed(tmp_path / "run", data, out=tmp_path / "emb.npz")
    assert out["rows"] == 16
    assert st.probe(tmp_path / "run", {"data": data, "mode": "knn"})["n_test"] == 4
    code, out, err = cli("inspect", root, "--out", tmp_path / "page.html", "--dedupe-list", tmp_path / "drop.txt", "-q")
    assert code == 0, err
    assert (tmp_path / "page.html").stat().st_size > 1000 and (tmp_path / "drop.txt").read_text() == ""
    assert "dog/bad\ufffd\ufffdname.png: file name is not valid UTF-8; rename it" in out


# ----------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", [6, 8, 3, 5])
def test_decoding_turns_a_photo_upright_as_its_exif_orientation_says(tmp_path, orientation):
    path = tmp_path / "rot.jpg"
    ref = exif_photo(path, (40, 20), orientation)  # (40, 20) stored, upright per PIL's exif_transpose
    rec = scan_file(path, 16, 3)
    assert (rec.width, rec.height) == ref.size
    box = (0.0, 0.0, float(ref.size[0]), float(ref.size[1]))
    crops = decode_crops(path, 3, 16, lambda w, h: [(0.0, 0.0, float(w), float(h))])
    expect = np.asarray(ref.resize((16, 16), Image.Resampling.BILINEAR, box=box)).transpose(2, 0, 1)
    assert np.abs(crops[0].astype(int) - expect.astype(int)).max() <= 1
    square = np.asarray(ImageOps.fit(ref, (16, 16), method=Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(rec.array, square)


def test_draft_decoding_of_a_turned_jpeg_crops_the_upright_picture(tmp_path):
    path = tmp_path / "big.jpg"
    ref = exif_photo(path, (2048, 1024), 6)  # upright: 1024 wide, 2048 tall
    box = (0.0, 1024.0, 1024.0, 2048.0)  # the bottom square of the upright photo
    sizes = []
    crops = decode_crops(path, 3, 64, lambda w, h: sizes.append((w, h)) or [box])
    assert sizes == [(1024, 2048)] and draft_scale([box], 64) == 16.0
    expect = np.asarray(ref.resize((64, 64), Image.Resampling.BILINEAR, box=box)).transpose(2, 0, 1)
    assert np.abs(crops[0].astype(int) - expect.astype(int)).mean() < 2.0


def test_streamed_and_in_memory_folders_and_inspect_see_turned_photos_upright(tmp_path):
    from ssl_toolkit.inspection import run_inspection

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    refs = [exif_photo(root / "a" / f"{i}.jpg", (40, 20), 6) for i in range(3)]
    noise(1, (20, 40)).save(root / "a" / "tall.png")
    held = load_source(DataConfig(name=str(root), image_size=20, stream=False, test_fraction=0.01))
    streamed = load_source(DataConfig(name=str(root), image_size=20, stream=True, test_fraction=0.01))
    first = held.train.ids.index(str(root / "a" / "0.jpg"))
    expect = np.asarray(ImageOps.fit(refs[0], (20, 20), method=Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(held.train.images[first].numpy(), expect)
    assert np.abs(streamed.train.image(0).numpy().astype(int) - expect.astype(int)).max() <= 1
    report = run_inspection(str(root)).report
    assert report["sizes"]["aspect_classes"] == {"portrait": 4, "square": 0, "landscape": 0}
    assert report["sizes"]["common"] == [{"width": 20, "height": 40, "count": 4}]


# ----------------------------------------------------------------------------- files the layout leaves out


def test_images_at_the_top_level_and_in_nested_folders_are_counted_and_named_not_used(tmp_path, capsys):
    root = class_folder(tmp_path / "imgs")
    noise(50).save(root / "stray.png")
    (root / "cat" / "session1" / "deep").mkdir(parents=True)
    noise(51).save(root / "cat" / "session1" / "a.png")
    noise(52).save(root / "cat" / "session1" / "deep" / "b.jpg")
    (root / "dog" / "loop").symlink_to(root / "dog")  # not followed
    layout = folder_layout(root)
    assert len(layout.paths) == 12 and layout.classes == ["cat", "dog"]  # what is used does not change
    u = layout.unused
    assert (u.top_level, u.nested) == (1, 2)
    assert [Path(p).relative_to(root).as_posix() for p in u.examples] == ["stray.png", "cat/session1/a.png", "cat/session1/deep/b.jpg"]
    load_source(DataConfig(name=str(root), image_size=24))
    err = [line for line in capsys.readouterr().err.splitlines() if "not used" in line]
    assert err == [
        f"warning: 3 image(s) in {root} are not used (1 at the top level, 2 in nested folders): "
        "stray.png, cat/session1/a.png, cat/session1/deep/b.jpg (layouts: docs/data.md, Image folders)"
    ]


def test_images_beside_train_and_test_and_below_an_unlabelled_folder_are_counted(tmp_path):
    root = tmp_path / "imgs"
    for split in ("train", "test", "extra"):
        (root / split).mkdir(parents=True)
        noise(len(split)).save(root / split / "x.png")
    noise(9).save(root / "top.png")
    (root / "train" / "sub" / "deeper").mkdir(parents=True)  # sub/ holds no image itself: not a class folder
    noise(10).save(root / "train" / "sub" / "deeper" / "y.png")
    layout = folder_layout(root)
    assert (len(layout.paths), layout.n_train, layout.labels) == (2, 1, None)
    assert (layout.unused.top_level, layout.unused.nested) == (1, 2)
    with pytest.raises(UserError, match=r"no images in .*; 1 image\(s\) in folders no layout reads"):
        (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
        noise(11).save(tmp_path / "deep" / "a" / "b" / "z.png")
        folder_layout(tmp_path / "deep")
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)  # train/ without test/ or val/: its class folders are nested
    noise(12).save(tmp_path / "half" / "train" / "a" / "z.png")
    with pytest.raises(
        UserError, match=r"\(train/ needs test/ or val/ beside it; for a seeded split of its images use --data .*half/train\)$"
    ):
        folder_layout(tmp_path / "half")


def test_gif_first_frame_is_read_and_other_picture_types_are_counted(tmp_path, capsys):
    root = class_folder(tmp_path / "imgs", per_class=3)
    frames = [noise(60 + k).quantize(64) for k in range(3)]
    frames[0].save(root / "cat" / "anim.gif", save_all=True, append_images=frames[1:])
    for name in ("a.heic", "b.heic", "c.ico"):
        (root / "dog" / name).write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    src = load_source(DataConfig(name=str(root), image_size=24, test_fraction=0.01))
    assert len(src.train) == 7
    gif = src.train.ids.index(str(root / "cat" / "anim.gif"))
    assert np.array_equal(src.train.images[gif].numpy(), np.asarray(frames[0].convert("RGB")).transpose(2, 0, 1))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == [
        f"warning: 3 file(s) in {root} of image types the toolkit does not read are not used "
        "(.heic 2, .ico 1; it reads .bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)"
    ]
    assert dict(folder_layout(root).unused.other) == {".heic": 2, ".ico": 1, ".txt": 1}


# ----------------------------------------------------------------------------- files that go bad mid-run


def truncated_png(path: Path) -> None:
    buf = io.BytesIO()
    noise(99, (64, 64)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_a_file_that_goes_bad_mid_run_is_listed_once_and_left_out_of_the_counts(tmp_path, capsys):
    root = class_folder(tmp_path / "imgs", per_class=8)
    for name in ("0.png", "1.png"):  # neighbours: the first one's replacement is the second
        truncated_png(root / "cat" / name)
    src = load_source(DataConfig(name=str(root), image_size=16, stream=True, test_fraction=0.01))
    assert len(src.train) == 16
    log = tmp_path / "skipped.txt"
    log.write_text("/elsewhere/x.png\tempty file\n")  # what the index found, written before training
    for _ in range(2):  # two epochs
        batches = list(split_loader(src.train, 4, False, workers=0, skip=SkipLog(log)))
        assert sum(len(x) for x, _ in batches) == 16
    SkipLog(log).record(str(root / "cat" / "1.png"), "again, from another worker")
    lines = log.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["/elsewhere/x.png", str(root / "cat" / "0.png"), str(root / "cat" / "1.png")]
    assert src.train.readable() == 14 and src.describe()["n_train"] == 14
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: cannot decode")]
    assert len(warned) == 2


def test_evaluation_stops_at_a_file_that_does_not_decode_instead_of_reading_another_in_its_place(tmp_path, cli):
    root = class_folder(tmp_path / "imgs", per_class=8)
    truncated_png(root / "cat" / "2.png")  # its header is whole: the index takes it, decoding it fails
    src = load_source(DataConfig(name=str(root), image_size=16, stream=True, test_fraction=0.01))
    assert len(src.train) == 16
    with pytest.raises(UserError, match=r"cannot decode .*2\.png \(.*\), found only when read .*so remove or repair it$"):
        list(src.train.batches(4, workers=0))  # before: the next file's features under this row, with a warning
    code, out, err = cli("inspect", root, "-q")  # says which files do not decode
    assert code == 0 and "2.png" in out, err


def test_the_skip_log_is_shared_by_worker_processes(tmp_path):
    root = class_folder(tmp_path / "imgs", per_class=8)
    for name in ("3.png", "4.png"):  # rows 11 and 12: one item each, in two worker processes
        truncated_png(root / "dog" / name)
    src = load_source(DataConfig(name=str(root), image_size=16, stream=True, test_fraction=0.01))
    log = tmp_path / "skipped.txt"
    for _ in range(2):  # a new log object per epoch: only the file says what is listed
        x = torch.cat([b for b, _ in split_loader(src.train, 1, False, workers=2, skip=SkipLog(log))])
        assert x.shape == (16, 3, 16, 16)
    listed = [line.split("\t")[0] for line in log.read_text().splitlines()]  # in the order the workers met them
    assert sorted(listed) == [str(root / "dog" / "3.png"), str(root / "dog" / "4.png")]


def test_a_link_to_another_tree_beside_the_class_folders_is_not_walked(tmp_path):
    root = class_folder(tmp_path / "imgs")
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    noise(70).save(elsewhere / "x.png")
    (root / "outside").symlink_to(tmp_path / "elsewhere")  # holds no image itself: no class, and its tree is not the folder's
    (root / "cat" / "sub").mkdir()
    noise(71).save(root / "cat" / "sub" / "y.png")
    layout = folder_layout(root)
    assert (layout.classes, layout.unused.nested, layout.unused.examples) == (["cat", "dog"], 1, [str(root / "cat" / "sub" / "y.png")])
