"""Data sources: counts, shapes, splits, determinism, folders and Fashion-MNIST IDX files."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ssl_toolkit as st
from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.fashion_mnist import read_idx
from ssl_toolkit.data.sources import channel_stats, load_source
from ssl_toolkit.data.synthetic import make_synthetic
from ssl_toolkit.errors import UserError


def test_digits_counts_shapes_and_stratified_split():
    src = load_source(DataConfig(name="digits", image_size=16))
    assert len(src.train) + len(src.test) == 1797
    assert src.train.images.shape[1:] == (1, 16, 16) and src.train.images.dtype == torch.uint8
    assert src.channels == 1 and src.image_size == 16 and src.num_classes == 10
    # every class keeps round(20%) of its images for test
    counts = np.bincount(load_source(DataConfig(name="digits")).test.labels.numpy(), minlength=10)
    full = np.bincount(__import__("sklearn.datasets").datasets.load_digits().target, minlength=10)
    assert counts.tolist() == [int(round(n * 0.2)) for n in full]
    assert not set(src.train.ids) & set(src.test.ids)


def test_digits_split_is_seeded():
    a = load_source(DataConfig(name="digits", split_seed=3))
    b = load_source(DataConfig(name="digits", split_seed=3))
    c = load_source(DataConfig(name="digits", split_seed=4))
    assert a.test.ids == b.test.ids
    assert a.test.ids != c.test.ids


def test_synthetic_is_colour_labelled_and_deterministic():
    x1, y1 = make_synthetic(60, 24, seed=7)
    x2, y2 = make_synthetic(60, 24, seed=7)
    x3, _ = make_synthetic(60, 24, seed=8)
    assert x1.shape == (60, 3, 24, 24) and x1.dtype == torch.uint8
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.bincount(y1).tolist() == [10] * 6  # balanced classes
    # colour: the channels differ
    assert (x1[:, 0].float() - x1[:, 1].float()).abs().mean() > 5
    src = load_source(DataConfig(name="synthetic", synthetic_train=50, synthetic_test=20, synthetic_classes=4, image_size=20))
    assert (len(src.train), len(src.test), src.num_classes, src.channels, src.image_size) == (50, 20, 4, 3, 20)


def test_channel_stats_are_computed_from_data():
    x = torch.zeros(2, 2, 4, 4, dtype=torch.uint8)
    x[:, 1] = 255
    mean, std = channel_stats(x)
    assert mean == (0.0, 1.0)
    assert std == (0.001, 0.001)  # clamped away from zero


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_from_explicit_path_and_env(tmp_path, monkeypatch):
    root = tmp_path / "fm"
    root.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (30, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    src = load_source(DataConfig(name="fashion-mnist", path=str(root)))
    assert (len(src.train), len(src.test), src.channels, src.image_size, src.num_classes) == (30, 10, 1, 28, 10)
    assert src.train.labels.tolist() == (np.arange(30) % 10).tolist()
    assert np.array_equal(src.test.images[:, 0].numpy(), read_idx(root / "t10k-images-idx3-ubyte.gz"))
    assert src.describe()["path"] == str(root)  # the copy that was read is recorded
    monkeypatch.setenv("SSL_TOOLKIT_DATA", str(tmp_path))
    (tmp_path / "fashion-mnist").symlink_to(root)
    src = load_source(DataConfig(name="fashion-mnist"))
    assert len(src.train) == 30 and src.describe()["path"] == str(tmp_path / "fashion-mnist")


def test_fashion_mnist_missing_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_TOOLKIT_DATA", str(tmp_path))
    import ssl_toolkit.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "_idx_path", lambda folder, stem: None)
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_source(DataConfig(name="fashion-mnist"))


def test_fashion_mnist_explicit_path_is_used_or_refused(tmp_path):
    with pytest.raises(UserError, match="data.path does not exist: /nonexistent"):
        load_source(DataConfig(name="fashion-mnist", path="/nonexistent"))
    with pytest.raises(UserError, match="holds no Fashion-MNIST IDX files"):
        load_source(DataConfig(name="fashion-mnist", path=str(tmp_path)))


def test_fashion_mnist_files_come_from_one_folder_and_must_agree(tmp_path):
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    _write_idx(a / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(a / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 28, 28)))
    _write_idx(a / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    _write_idx(b / "train-labels-idx1-ubyte.gz", np.arange(7))  # another copy's labels
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte\(.gz\) missing in .*/a, next to train-images"):
        load_source(DataConfig(name="fashion-mnist", path=str(tmp_path)))
    (b / "train-labels-idx1-ubyte.gz").rename(a / "train-labels-idx1-ubyte.gz")
    with pytest.raises(UserError, match=r"train files in .*/a do not match: \(20, 28, 28\) images, \(7,\) labels"):
        load_source(DataConfig(name="fashion-mnist", path=str(tmp_path)))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    src = load_source(DataConfig(name="fashion-mnist"))
    assert (len(src.train), len(src.test)) == (60000, 10000)
    assert torch.bincount(src.test.labels).tolist() == [1000] * 10


def _img(path: Path, mode: str, colour, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_folder_with_class_subfolders_is_labelled_and_split(tmp_path):
    for c in ("cat", "dog"):
        for i in range(10):
            _img(tmp_path / c / f"{i}.png", "RGB", (i * 20, 100, 50))
    src = load_source(DataConfig(name=str(tmp_path), image_size=8))
    assert src.classes == ["cat", "dog"] and src.channels == 3
    assert (len(src.train), len(src.test)) == (16, 4)
    assert torch.bincount(src.test.labels).tolist() == [2, 2]
    assert src.train.images.shape[1:] == (3, 8, 8)


def test_a_folder_that_grows_keeps_its_test_files_in_test(tmp_path):
    """The drawn split follows each file's own key: files added later move no earlier test file to train,
    and only as many earlier training files into test as each class's test count grows."""

    def split(**data):
        src = load_source(DataConfig(name=str(tmp_path), image_size=8, **data))
        return set(src.train.ids), set(src.test.ids)

    for c in ("cat", "dog"):
        for i in range(20):
            _img(tmp_path / c / f"{i}.png", "RGB", (i * 10, 100, 50))
    train, test = split()
    assert (len(train), len(test)) == (32, 8) and split() == (train, test)  # drawn again: the same
    for c in ("cat", "dog"):
        for i in range(20, 30):
            _img(tmp_path / c / f"{i}.png", "RGB", (i * 5, 0, 0))
    train2, test2 = split()
    assert (len(train2), len(test2)) == (48, 12)
    assert test <= test2  # no earlier test file is now trained on
    assert len(train & test2) <= 2 * (round(30 * 0.2) - round(20 * 0.2))  # at most the growth of each class's test count
    (tmp_path / "cat" / "3.png").write_bytes(b"not an image")  # a file that stops decoding leaves the others where they were
    train3, test3 = split()
    gone = str(tmp_path / "cat" / "3.png")
    assert train3 | test3 == (train2 | test2) - {gone} and len(test3 - test2) <= 1
    assert split(split_seed=1) != (train3, test3)  # another seed, another draw
    listing = split(split_draw="listing")  # the rule of runs made before split_draw: a permutation in listing order
    assert len(listing[1]) == 12 and listing != (train3, test3)
    limited = load_source(DataConfig(name=str(tmp_path), image_size=8, limit=10))
    assert len(limited.train) == 10 and set(limited.train.ids) <= train3 and set(limited.test.ids) == test3
    with pytest.raises(UserError, match=r"^data.split_draw applies to an image folder only, not to digits: leave it out$"):
        load_source(DataConfig(name="digits", split_draw="listing"))


def test_a_class_folder_whose_files_all_fail_to_open_is_not_a_class(tmp_path, capsys):
    for c in ("cat", "dog"):
        for i in range(5):
            _img(tmp_path / c / f"{i}.png", "RGB", (i * 20, 100, 50))
    (tmp_path / "bird").mkdir()
    for i in range(3):
        (tmp_path / "bird" / f"{i}.jpg").write_bytes(b"not an image")
    line = "warning: 1 class folder(s) with no readable image, left out of the classes: bird (their files are listed as unreadable)"
    for _ in ("built", "read from the index cache"):
        src = load_source(DataConfig(name=str(tmp_path), image_size=8))
        assert src.classes == ["cat", "dog"] and sorted(set(src.train.labels.tolist())) == [0, 1]  # two classes: binary metrics
        assert line in capsys.readouterr().err.splitlines()
    report = st.inspect_data(str(tmp_path))
    assert report["empty_classes"] == ["bird"] and line.removeprefix("warning: ") in report["warnings"]
    assert report["labels"]["classes"] == ["cat", "dog"]


def test_a_run_saved_without_split_draw_keeps_the_listing_rule_for_its_folder(tmp_path):
    from ssl_toolkit.config import PretrainConfig
    from ssl_toolkit.run_folder import RunFolder

    for name, rule in ((str(tmp_path / "photos"), "listing"), ("digits", "names")):
        saved = PretrainConfig(task="rotation", data={"name": name}).model_dump(mode="json")
        assert saved["data"].pop("split_draw") == "names"  # a config written now records the rule
        run = tmp_path / f"run-{rule}"
        run.mkdir()
        (run / RunFolder.CONFIG).write_text(json.dumps(saved))  # YAML reads JSON
        assert RunFolder(run).read_run_config().data.split_draw == rule


def test_folder_train_test_splits_unlabelled_modes_and_alpha(tmp_path):
    _img(tmp_path / "train" / "a.png", "RGBA", (255, 0, 0, 0))  # fully transparent red -> white
    _img(tmp_path / "train" / "b.jpg", "L", 128)
    _img(tmp_path / "train" / "c.bmp", "RGB", (0, 0, 255))
    _img(tmp_path / "test" / "d.png", "P", 3)
    src = load_source(DataConfig(name=str(tmp_path), image_size=8))
    assert src.classes is None and src.train.labels is None
    assert (len(src.train), len(src.test)) == (3, 1)
    assert src.channels == 3
    a = src.train.images[src.train.ids.index(str(tmp_path / "train" / "a.png"))]
    assert a.float().mean() == 255  # alpha composited onto white
    b = src.train.images[src.train.ids.index(str(tmp_path / "train" / "b.jpg"))]
    assert torch.equal(b[0], b[1]) and abs(b.float().mean() - 128) <= 1  # gray replicated to RGB


@pytest.mark.parametrize("stream", [False, True])
def test_a_png_colour_key_is_transparency_composited_onto_white_on_every_path(tmp_path, stream):
    """RGB and L PNGs with a tRNS colour key kept the keyed colour (black) where a keyed palette image went white."""
    half = np.zeros((8, 8), np.uint8)
    half[:, 4:] = 200  # left half: the transparent key (0), right half: opaque 200
    rgb, gray = tmp_path / "rgb", tmp_path / "gray"
    for i in range(2):
        (rgb / "a").mkdir(parents=True, exist_ok=True), (gray / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.dstack([half] * 3)).save(rgb / "a" / f"{i}.png", transparency=(0, 0, 0))
        Image.fromarray(half).save(gray / "a" / f"{i}.png", transparency=0)
    for root, channels in ((rgb, 3), (gray, 1)):
        src = load_source(DataConfig(name=str(root), image_size=8, test_fraction=0.5, stream=stream))
        assert src.channels == channels
        x = src.train.image(0)  # (C, 8, 8) uint8
        assert x.shape == (channels, 8, 8)
        assert (x[:, :, :4] == 255).all() and (x[:, :, 4:] == 200).all()


def test_folder_all_grayscale_stays_single_channel_and_16bit_is_rescaled(tmp_path):
    Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)).save(tmp_path / "a.png")
    _img(tmp_path / "b.png", "L", 0, size=(6, 6))
    src = load_source(DataConfig(name=str(tmp_path), image_size=8, test_fraction=0.5))
    assert src.channels == 1
    values = sorted(int(x.float().mean()) for x in torch.cat([src.train.images, src.test.images]))
    assert values == [0, 255]


def test_float_images_in_0_to_1_span_the_8bit_range_and_others_keep_theirs(tmp_path):
    """A float TIFF in [0, 1] (the usual float convention) was read as 0-255 values: all black."""
    for name, value in (("half", 0.5), ("one", 1.0), ("byte", 128.0), ("word", 65535.0)):
        Image.fromarray(np.full((6, 6), value, dtype=np.float32)).save(tmp_path / f"{name}.tif")
    Image.fromarray(np.array([[np.nan, 0.25]] * 2, dtype=np.float32)).save(tmp_path / "nan.tif")
    src = load_source(DataConfig(name=str(tmp_path), image_size=8, test_fraction=0.2))
    assert src.channels == 1
    images = torch.cat([src.train.images, src.test.images])
    means = {Path(i).stem: round(float(x.float().mean())) for i, x in zip(src.train.ids + src.test.ids, images)}
    assert means == {"half": 127, "one": 255, "byte": 128, "word": 255, "nan": 32}, means  # NaN read as 0


def test_folder_skips_unreadable_files(tmp_path):
    for i in range(4):
        _img(tmp_path / f"{i}.png", "RGB", (i, i, i))
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    src = load_source(DataConfig(name=str(tmp_path), image_size=8, test_fraction=0.25))
    assert len(src.train) + len(src.test) == 4
    assert sorted(Path(p).name for p, _ in src.skipped) == ["bad.png", "empty.jpg"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no images in"),
        (lambda p: (p / "x.png").write_text("nope"), "no readable image"),
    ],
)
def test_folder_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        load_source(DataConfig(name=str(tmp_path)))


def test_test_fraction_that_leaves_no_training_image_is_refused(tmp_path):
    for c in ("cat", "dog"):
        for i in range(2):
            _img(tmp_path / c / f"{i}.png", "RGB", (i * 90, 100, 50))
    for stream in (False, True):
        with pytest.raises(UserError, match=r"no training images in .* \(4 test image\(s\)\); .*data.test_fraction=0.9"):
            load_source(DataConfig(name=str(tmp_path), test_fraction=0.9, stream=stream, workers=0))
    with pytest.raises(UserError, match=r"no training images in digits \(1797 test image\(s\)\)"):
        load_source(DataConfig(name="digits", test_fraction=0.999, image_size=8))


def test_a_pretraining_split_without_test_images_is_warned_once(tmp_path, cli, capsys):
    for c in ("cat", "dog"):
        for i in range(2):  # two images a class: the default test_fraction 0.2 rounds both into train
            _img(tmp_path / "f" / c / f"{i}.png", "RGB", (i * 90, 100, 50))
    tiny = ["--backbone", "test_resnet", "--epochs", "1", "--image-size", "16", "--quiet"]
    code, _, err = cli("pretrain", "--data", tmp_path / "f", *tiny, "--out", tmp_path / "run")
    assert code == 0, err
    assert err.count(f"warning: {tmp_path / 'f'} has no test images: no online probe, and ssl probe will need --data") == 1
    code, _, err = cli(
        "pretrain", "--data", tmp_path / "f", *tiny, "--set", "data.test_fraction=0.5", "--image-size", "28", "--out", tmp_path / "split"
    )
    assert code == 0 and "no test images" not in err, err
    assert "px and less); --set backbone.small_stem=true or backbone.stem_pool=true/false changes it\n" in err  # at 28 px on a CPU
    config = {
        "task": "rotation",
        "data": {"name": str(tmp_path / "f"), "image_size": 16},
        "backbone": {"name": "test_resnet"},
        "trainer": {"epochs": 1},
    }
    capsys.readouterr()
    st.pretrain(config, out=tmp_path / "python")
    assert "no online probe, and probe() will need data= with a test split (a folder" in capsys.readouterr().err


def test_a_folder_given_by_a_relative_path_is_recorded_absolute_so_the_run_resumes_and_probes_from_elsewhere(tmp_path, cli, monkeypatch):
    import yaml

    for c in ("cat", "dog"):
        for i in range(5):
            _img(tmp_path / "work" / "imgs" / c / f"{i}.png", "RGB", (i * 40, 100 if c == "cat" else 200, 50))
    (tmp_path / "work" / "tags.csv").write_text("file,labels\n" + "".join(f"{c}/{i}.png,{c}\n" for c in ("cat", "dog") for i in range(5)))
    monkeypatch.chdir(tmp_path / "work")
    tiny = ["--backbone", "test_resnet", "--image-size", "16", "--quiet", "--no-online-probe"]
    code, _, err = cli("pretrain", "--data", "imgs", *tiny, "--epochs", "1", "--set", "data.labels=tags.csv", "--out", tmp_path / "run")
    assert code == 0, err
    data = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]
    assert (data["name"], data["labels"]) == (str(tmp_path / "work" / "imgs"), str(tmp_path / "work" / "tags.csv"))
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["dataset"]["name"] == str(tmp_path / "work" / "imgs")  # as config.yaml
    code, out, err = cli("probe", tmp_path / "run", "--data", "imgs", "--set", "data.labels=tags.csv", "--mode", "knn", "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["dataset"] == str(tmp_path / "work" / "imgs"), err
    again = ("--data", "imgs", *tiny, "--set", "data.labels=tags.csv", "--out", tmp_path / "run")  # the first command's paths, as typed
    code, out, err = cli("pretrain", *again, "--epochs", "1", "--auto-resume")
    assert code == 0 and out.startswith(f"{tmp_path / 'run'} is already finished (1 epoch, "), err
    monkeypatch.chdir(tmp_path)  # another working folder: the recorded paths still name the data
    code, out, err = cli("probe", tmp_path / "run", "--mode", "knn", "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["dataset"] == str(tmp_path / "work" / "imgs"), err
    code, _, err = cli("pretrain", "--resume", tmp_path / "run", "--epochs", "2", "--quiet")
    assert code == 0, err


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match=r"unknown dataset 'digitz' \(did you mean 'digits'\?\); valid: digits, fashion-mnist, synthetic"):
        load_source(DataConfig(name="digitz"))
    with pytest.raises(UserError, match="data path does not exist"):
        load_source(DataConfig(name="./nowhere/at/all"))


def test_a_long_index_build_shows_progress_lines_on_stderr_and_none_when_silenced(tmp_path, monkeypatch, capsys, toolkit_home):
    from ssl_toolkit.data.index import folder_index
    from ssl_toolkit.pass_progress import silenced

    for i in range(4):
        _img(tmp_path / "imgs" / "a" / f"{i}.png", "RGB", (i * 40, 100, 50))
    monkeypatch.setattr("ssl_toolkit.pass_progress.EVERY_SECONDS", 0.0)  # a line after every file but the last
    assert len(folder_index(tmp_path / "imgs", use_cache=False)) == 4
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"reading image headers (index): {k}/4 images" for k in (1, 2, 3)], lines
    with silenced():  # ssl pretrain -q
        folder_index(tmp_path / "imgs", use_cache=False)
    assert capsys.readouterr().err == ""
