"""Streaming image folders: the cached index, crops from the original photo, workers, bad files mid-run."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE
from PIL import Image

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.images import center_square, decode_crops, draft_scale, random_resized_box
from ssl_toolkit.data.index import folder_index
from ssl_toolkit.data.loaders import split_loader
from ssl_toolkit.data.sources import load_source
from ssl_toolkit.data.stage import Crop, WorkerStage
from ssl_toolkit.data.stream import FileSplit, SkipLog
from ssl_toolkit.errors import UserError


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colour photo with a left-to-right red ramp and a top-to-bottom green ramp."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    a = np.stack([x, y, np.full_like(x, rng.integers(0, 255))], -1)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def make_folder(root: Path, n_per_class: int = 6, size: tuple[int, int] = (160, 120), classes=("a", "b")) -> Path:
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class if split == "train" else 2):
                photo(*size, seed=i).save(d / f"{i}.jpg", quality=92)
    return root


def truncated_jpeg(path: Path, size=(160, 120)) -> None:
    """A JPEG whose header reads but whose pixel data stops early."""
    buf = io.BytesIO()
    photo(*size, seed=99).save(buf, "JPEG", quality=92)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


# ----------------------------------------------------------------------------- the index


def test_index_is_built_once_then_read_from_the_cache_and_rebuilt_when_the_folder_changes(tmp_path):
    root = make_folder(tmp_path / "imgs")
    first = folder_index(root)
    assert (first.cached, len(first), first.classes, first.n_train) == (False, 16, ["a", "b"], 12)
    second = folder_index(root)
    assert second.cached and np.array_equal(second.rel, first.rel) and np.array_equal(second.labels, first.labels)
    assert (second.width.tolist(), second.height.tolist()) == ([160] * 16, [120] * 16)
    photo(160, 120, 5).save(root / "train" / "a" / "new.jpg")
    third = folder_index(root)
    assert (third.cached, len(third)) == (False, 17)


def test_a_corrupt_index_cache_is_rebuilt_not_trusted(tmp_path, toolkit_home):
    root = make_folder(tmp_path / "imgs")
    folder_index(root)
    (cache,) = (toolkit_home / "cache" / "index").glob("*.npz")
    good = {k: v for k, v in np.load(cache).items()}
    meta = json.loads(good["meta"].tobytes().decode())

    def edited(**change) -> bytes:
        arrays = dict(good)
        if "meta" in change:
            arrays["meta"] = np.frombuffer(json.dumps({**meta, **change.pop("meta")}).encode(), np.uint8)
        arrays.update(change)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    for bad in (
        b"not an npz file",
        b"",  # an empty file: numpy raises EOFError
        edited(labels=np.full_like(good["labels"], 9)),  # labels beyond the classes
        edited(meta={"classes": ["a"]}),
        edited(meta={"n_train": 5000}),  # more train files than files
    ):
        cache.write_bytes(bad)
        again = folder_index(root)
        assert (again.cached, len(again), again.classes) == (False, 16, ["a", "b"])
        assert folder_index(root).cached


def test_fifos_dangling_links_and_directories_named_like_images_are_listed_as_unusable(tmp_path):
    root = make_folder(tmp_path / "imgs")
    d = root / "train" / "a"
    os.mkfifo(d / "pipe.jpg")
    (d / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (d / "loop.png").symlink_to(d / "loop.png")
    (d / "folder.png").mkdir()
    index = folder_index(root)
    reasons = {Path(p).name: why for p, why in index.bad}
    assert len(index) == 16
    assert reasons["pipe.jpg"] == "a fifo, not a regular file"
    assert reasons["gone.jpg"] == "dangling symlink"
    assert "symbolic links" in reasons["loop.png"]
    assert reasons["folder.png"] == "a directory, not an image file"


# ----------------------------------------------------------------------------- crops from the original


def test_random_resized_boxes_cover_the_photo_at_the_allowed_areas_and_ratios():
    rng = np.random.default_rng(0)
    boxes = np.array([random_resized_box(1024, 768, (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(2000)])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / (1024 * 768)
    assert area.min() >= 0.08 - 1e-9 and area.max() <= 1.0 + 1e-9
    assert (w / h).min() >= 3 / 4 - 1e-9 and (w / h).max() <= 4 / 3 + 1e-9
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 1024 and boxes[:, 1].min() >= 0 and boxes[:, 3].max() <= 768
    assert boxes[:, 0].min() < 20 and boxes[:, 2].max() > 1004  # crops reach both edges of the photo
    assert center_square(1024, 768) == (128.0, 0.0, 896.0, 768.0)


def test_a_crop_is_resampled_from_the_original_pixels_and_draft_decoding_keeps_it(tmp_path):
    path = tmp_path / "big.jpg"
    photo(2048, 1536, 0).save(path, quality=95)
    box = (1024.0, 0.0, 2048.0, 1024.0)  # the top-right square: red high, green low
    assert draft_scale([box], 64) == 16.0
    crops = decode_crops(path, 3, 64, lambda w, h: [box])  # decoded at 1/8 scale
    with Image.open(path) as im:
        ref = np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR, box=box)).transpose(2, 0, 1)
    assert crops.shape == (1, 3, 64, 64) and crops.dtype == np.uint8
    assert np.abs(crops[0].astype(int) - ref.astype(int)).mean() < 2.0
    assert crops[0, 0].mean() > 180 and crops[0, 1].mean() < 90  # it is the top-right corner


# ----------------------------------------------------------------------------- streamed sources


def test_streamed_statistics_are_cached_with_the_index_and_a_bad_entry_is_recomputed(tmp_path, toolkit_home, monkeypatch):
    from ssl_toolkit.data import folder as folder_mod

    root = make_folder(tmp_path / "imgs")
    cfg = DataConfig(name=str(root), image_size=32, stream=True)
    first = load_source(cfg)
    (entry,) = (toolkit_home / "cache" / "index").glob("*.stats-*.json")
    decoded: list[int] = []
    real_sample = FileSplit.sample
    monkeypatch.setattr(FileSplit, "sample", lambda self, n, seed=0: decoded.append(n) or real_sample(self, n, seed))
    second = load_source(cfg)
    assert decoded == [] and (second.mean, second.std) == (first.mean, first.std)  # read back, nothing decoded
    load_source(cfg.model_copy(update={"image_size": 48}))  # another size: another entry
    assert decoded == [folder_mod.STATS_SAMPLE] and len(list(entry.parent.glob("*.stats-*.json"))) == 2
    for bad in (
        b"not json",
        b'{"version": 1, "mean": [0.5], "std": [0.2]}',
        b'{"version": 1, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}',
        b'{"version": 1, "mean": [0.5, 0.5, 0.5], "std": [0.2, 1e-30, 0.2]}',
        b'{"version": 1, "mean": [0.5, 1e308, 0.5], "std": [0.2, 0.2, 0.2]}',
    ):
        entry.write_bytes(bad)  # unreadable, wrong channel count, a std or mean no [0, 1] pixels have: recomputed
        again = load_source(cfg)
        assert (again.mean, again.std) == (first.mean, first.std)
    assert decoded == [folder_mod.STATS_SAMPLE] * 6


def test_streaming_and_in_memory_folders_hold_the_same_images(tmp_path):
    root = make_folder(tmp_path / "imgs")
    mem = load_source(DataConfig(name=str(root), image_size=32, stream=False))
    st = load_source(DataConfig(name=str(root), image_size=32, stream=True))
    assert isinstance(st.train, FileSplit) and not mem.streaming and st.streaming
    assert (len(st.train), len(st.test), st.classes, st.channels) == (12, 4, ["a", "b"], 3)
    assert torch.equal(st.train.labels, mem.train.labels) and list(st.train.ids) == mem.train.ids
    streamed = torch.cat(list(st.train.batches(5, workers=0)))
    assert streamed.shape == mem.train.images.shape
    assert torch.equal(streamed, mem.train.images)  # one decoding rule: JPEG draft scale and resize alike
    assert np.allclose(st.mean, mem.mean, atol=1e-5) and np.allclose(st.std, mem.std, atol=1e-5)


def test_auto_streams_above_a_quarter_of_the_memory_and_says_so(tmp_path, capsys, monkeypatch):
    import ssl_toolkit.data.folder as folder

    root = make_folder(tmp_path / "imgs")
    monkeypatch.setattr(folder, "available_memory", lambda: 100_000)  # 16 images x 3 x 64 x 64 = 196 KB
    src = load_source(DataConfig(name=str(root), image_size=64))
    assert src.streaming
    assert (
        "data: 16 images, 192.0 KiB decoded at 64 px (over 24.4 KiB: the lesser of 512 MiB and a quarter of the 97.7 KiB available): streaming from disk"
        in capsys.readouterr().err
    )
    monkeypatch.setattr(folder, "available_memory", lambda: 10**12)
    assert not load_source(DataConfig(name=str(root), image_size=64)).streaming
    assert capsys.readouterr().err == ""  # holding a folder in memory is the quiet default


def test_images_far_smaller_than_image_size_are_upscaled_with_a_note(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", size=(20, 14))  # 14 px shorter side
    load_source(DataConfig(name=str(root), image_size=28, stream=False))
    assert capsys.readouterr().err == ""  # 2x or less: quiet
    load_source(DataConfig(name=str(root), image_size=29, stream=True))
    assert capsys.readouterr().err.splitlines()[-1] == (
        "data: the median training image's shorter side is 14 px, upscaled to 29 px "
        "(set data.image_size to the images' own size to train at it)"
    )


def test_two_view_workers_hand_over_fixed_size_uint8_views(tmp_path):
    root = make_folder(tmp_path / "imgs")
    src = load_source(DataConfig(name=str(root), image_size=48, stream=True))
    stage = WorkerStage(crops=(Crop("random_resized", (0.2, 1.0)), Crop("random_resized", (0.2, 1.0))))
    x, y = next(iter(split_loader(src.train, 8, True, seed=0, stage=stage, workers=1)))
    assert (x.shape, x.dtype, y.shape) == ((8, 2, 3, 48, 48), torch.uint8, (8,))
    assert not torch.equal(x[:, 0], x[:, 1])  # two different crops of each photo


def test_a_file_that_goes_bad_mid_run_is_replaced_and_listed(tmp_path):
    root = make_folder(tmp_path / "imgs")
    truncated_jpeg(root / "train" / "a" / "0.jpg")  # its header reads: the index keeps it
    src = load_source(DataConfig(name=str(root), image_size=32, stream=True))
    assert len(src.train) == 12
    log = tmp_path / "skipped.txt"
    batches = list(split_loader(src.train, 4, False, workers=0, skip=SkipLog(log)))
    assert sum(len(x) for x, _ in batches) == 12
    assert log.read_text().startswith(str(root / "train" / "a" / "0.jpg") + "\t")
    with pytest.raises(UserError, match=r"unreadable image file during training \(--strict\): .*0\.jpg"):
        list(split_loader(src.train, 4, False, workers=0, skip=SkipLog(log, strict=True)))


def test_a_resumed_run_keeps_the_files_that_went_bad_before_it_in_skipped_txt(tmp_path):
    from ssl_toolkit.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_skipped([("/d/x.png", "cannot identify image file")])  # found when the data was loaded
    SkipLog(folder.skipped).record("/d/caf\udce9.jpg", "image file is truncated")  # a worker, mid-run (a non-UTF-8 name)
    folder.write_skipped([("/d/x.png", "cannot identify image file"), ("/d/y.png", "broken")], keep=True)  # --resume
    lines = folder.skipped.read_bytes().decode("utf-8", "surrogateescape").splitlines()
    assert lines == ["/d/x.png\tcannot identify image file", "/d/caf\udce9.jpg\timage file is truncated", "/d/y.png\tbroken"]
    folder.write_skipped([("/d/z.png", "broken")])  # a new run starts the list again
    assert folder.skipped.read_text() == "/d/z.png\tbroken\n"


# simclr with small views: the workers cut its two views and the small ones
@pytest.mark.parametrize(("task", "task_config"), [("rotation", {}), ("simclr", {"local_crops": 2})])
def test_pretraining_streams_a_folder(tmp_path, task, task_config):
    import ssl_toolkit as st

    root = make_folder(tmp_path / "imgs", n_per_class=8)
    truncated_jpeg(root / "train" / "b" / "3.jpg")
    cfg = {
        "task": task,
        "task_config": task_config,  # local_crops: the workers cut 2 + 2 crops per file
        "data": {"name": str(root), "image_size": 32, "stream": True, "workers": 1},
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 1, "batch_size": 8, "progress_bar": False, "accelerator": "cpu"},
    }
    meta = st.pretrain(cfg, out=tmp_path / "run")
    assert meta["steps"] == 2 and meta["dataset"]["n_train"] == 15  # 16 files, one went bad mid-run
    lines = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(root / "train" / "b" / "3.jpg") + "\t")


@pytest.mark.slow
def test_strict_stops_a_streaming_run_on_the_first_bad_file_with_one_line(tmp_path, run_ssl):
    root = make_folder(tmp_path / "imgs")
    truncated_jpeg(root / "train" / "a" / "1.jpg")
    r = run_ssl(
        "pretrain",
        "--task",
        "rotation",
        "--data",
        root,
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--backbone",
        TINY_BACKBONE,
        "--set",
        "data.stream=true",
        "--set",
        "data.workers=1",
        "--strict",
        "--out",
        tmp_path / "run",
    )
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error: unreadable image file during training (--strict):") and "1.jpg" in err[-1]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing to resume from: the folder it made is gone, so the command can run again


def test_probe_embed_and_report_read_a_streaming_folder(tmp_path):
    import ssl_toolkit as st

    root = make_folder(tmp_path / "imgs", n_per_class=8)
    data = {"name": str(root), "image_size": 32, "stream": True, "workers": 1}
    cfg = {
        "task": "rotation",
        "data": data,
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 1, "batch_size": 8, "progress_bar": False, "accelerator": "cpu"},
    }
    st.pretrain(cfg, out=tmp_path / "run")
    in_memory = {**data, "stream": False}
    for mode in ("linear", "knn", "finetune"):
        streamed = st.probe(
            tmp_path / "run", {"data": data, "mode": mode, "epochs": 1} if mode == "finetune" else {"data": data, "mode": mode}
        )
        held = st.probe(
            tmp_path / "run", {"data": in_memory, "mode": mode, "epochs": 1} if mode == "finetune" else {"data": in_memory, "mode": mode}
        )
        assert streamed["n_test"] == held["n_test"] == 4
        if mode != "finetune":  # the same pixels either way
            assert streamed["top1"] == held["top1"], mode
    out = st.embed(tmp_path / "run", data, out=tmp_path / "emb.npz")
    with np.load(tmp_path / "emb.npz") as emb:
        assert emb["embeddings"].shape[0] == out["rows"] == 20
        assert emb["labels"].tolist()[:4] == [0, 0, 0, 0]
    rep = st.report(tmp_path / "run", data, out=tmp_path / "report.html")
    assert (tmp_path / "report.html").stat().st_size > 10_000 and rep["labelled"]


def test_a_file_named_relatively_then_absolutely_is_listed_once(tmp_path, monkeypatch):
    """A run names its folder as typed (relative), its resume as config.yaml records it (absolute)."""
    from ssl_toolkit.run_folder import RunFolder

    monkeypatch.chdir(tmp_path)
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_skipped([("photos/a/bad.jpg", "broken")])  # the first run, --data photos
    SkipLog(folder.skipped).record("photos/b/late.jpg", "truncated")  # a worker of the first run
    SkipLog(folder.skipped).record(str(tmp_path / "photos/b/late.jpg"), "truncated")  # a worker of the resume
    folder.write_skipped([(str(tmp_path / "photos/a/bad.jpg"), "broken")], keep=True)  # the resume
    assert folder.skipped.read_text().splitlines() == [f"{tmp_path}/photos/a/bad.jpg\tbroken", f"{tmp_path}/photos/b/late.jpg\ttruncated"]


def test_names_with_tabs_newlines_and_backslashes_keep_skipped_txt_one_line_per_file(tmp_path):
    """A tab or newline in a file name split its line (path<TAB>reason) in two, or added a field."""
    from ssl_toolkit.data.skip_list import listed_names
    from ssl_toolkit.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    names = ["/d/bad\nname.png", "/d/tab\tname.png", "/d/back\\nslash.png"]
    folder.write_skipped([(names[0], "cannot identify\nimage file")])
    SkipLog(folder.skipped).record(names[1], "broken")  # a worker, mid-run
    SkipLog(folder.skipped).record(names[0], "again")  # listed already: not twice
    folder.write_skipped([(names[0], "x"), (names[2], "broken")], keep=True)  # --resume
    lines = folder.skipped.read_text().splitlines()
    assert lines == ["/d/bad\\nname.png\tcannot identify\\nimage file", "/d/tab\\tname.png\tbroken", "/d/back\\\\nslash.png\tbroken"]
    assert listed_names(folder.skipped.read_bytes()) == [n.encode() for n in names]
