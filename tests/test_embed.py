"""`ssl embed`: streamed embeddings in .npz / .npy, through the evaluators' feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_BACKBONE

from ssl_toolkit.config import PretrainConfig

DATA = {"name": "synthetic", "image_size": 16, "synthetic_train": 96, "synthetic_test": 40, "synthetic_classes": 3}


def save_random_backbone(folder: Path, in_chans: int, image_size: int, mean, std, **meta) -> torch.nn.Module:
    """A randomly initialised tiny timm backbone saved as a backbone folder (weights + meta.json)."""
    from ssl_toolkit.backbones import create_backbone
    from ssl_toolkit.checkpoints import save_backbone
    from ssl_toolkit.config import BackboneConfig

    torch.manual_seed(0)
    model, spec = create_backbone(BackboneConfig(name=TINY_BACKBONE), in_chans, image_size)
    info = {
        "task": "random-init",
        "backbone": spec.to_dict(),
        "in_chans": in_chans,
        "image_size": image_size,
        "mean": list(mean),
        "std": list(std),
        **meta,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_backbone(folder, model, info)
    return model.eval()


@pytest.fixture
def run_dir(tmp_path):
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source

    src = load_source(DataConfig(**DATA))
    save_random_backbone(tmp_path / "run", src.channels, src.image_size, src.mean, src.std)
    return tmp_path / "run", src


def reference_features(run: Path, src) -> dict[str, np.ndarray]:
    from ssl_toolkit.eval.features import Preprocess, extract
    from ssl_toolkit.library import load_backbone_any

    model, meta, _ = load_backbone_any(run)
    pre = Preprocess(meta["in_chans"], tuple(meta["mean"]), tuple(meta["std"]))
    return {s: extract(model, getattr(src, s).images, pre).numpy() for s in ("train", "test")}


def test_embed_npz_rows_labels_ids_and_cache(run_dir, tmp_path):
    import ssl_toolkit as st
    from ssl_toolkit.eval.embed import load_embeddings
    from ssl_toolkit.eval.features import FeatureCache, Preprocess, model_fingerprint
    from ssl_toolkit.library import load_backbone_any

    run, src = run_dir
    res = st.embed(run, DATA, tmp_path / "e.npz", batch_size=32)
    assert res["rows"] == 136 and res["splits"] == {"train": 96, "test": 40} and res["cached"] == []
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert set(z.files) == {"embeddings", "labels", "ids", "split", "index", "classes", "meta"}
        emb = z["embeddings"]
        assert emb.dtype == np.float32 and emb.shape == (136, res["dim"])
        np.testing.assert_array_equal(z["labels"], np.concatenate([src.train.labels.numpy(), src.test.labels.numpy()]))
        assert list(z["ids"][:2]) == src.train.ids[:2] and z["ids"][-1] == src.test.ids[-1]
        assert list(z["split"]).count("test") == 40 and z["index"][96] == 0 and z["index"][-1] == 39
        assert json.loads(str(z["meta"]))["backbone"] == TINY_BACKBONE
    ref = reference_features(run, src)
    np.testing.assert_allclose(emb[:96], ref["train"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb[96:], ref["test"], rtol=1e-4, atol=1e-5)

    # the evaluators' cache now holds both splits: no forward pass for them, nor for a second embed
    model, meta, _ = load_backbone_any(run)
    cache = FeatureCache()
    pre = Preprocess(meta["in_chans"], tuple(meta["mean"]), tuple(meta["std"]))
    got = cache.get(model, src, "test", pre, model_fingerprint(model))
    assert cache.forward_passes == 0
    np.testing.assert_array_equal(got.numpy(), emb[96:])
    saved = PretrainConfig.model_validate({"task": "rotation", "data": DATA}).model_dump(mode="json")  # as a run saves it
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    again = st.embed(run, out=tmp_path / "e2.npz")  # no data given: the run's pretraining data
    assert again["cached"] == ["train", "test"] and again["rows"] == 136
    loaded = load_embeddings(tmp_path / "e2.npz")
    np.testing.assert_array_equal(loaded.features, emb)
    assert loaded.part("test").labels.tolist() == src.test.labels.tolist()


def test_embed_npy_memmap_one_split(run_dir, tmp_path, cli):
    from ssl_toolkit.eval.embed import embed, load_embeddings

    run, src = run_dir
    res = embed(run, DATA, tmp_path / "t.npy", split="test", batch_size=16)
    assert res["meta_path"].endswith("t.meta.npz") and res["splits"] == {"test": 40}
    feats = np.load(tmp_path / "t.npy", mmap_mode="r")
    assert isinstance(feats, np.memmap) and feats.shape == (40, res["dim"])
    e = load_embeddings(tmp_path / "t.npy")
    assert isinstance(e.features, np.memmap) and e.labels.tolist() == src.test.labels.tolist() and set(e.split) == {"test"}
    np.testing.assert_allclose(np.asarray(feats), reference_features(run, src)["test"], rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob(".*.npy")), "temporary files are cleaned up"

    code, out, err = cli("embed", run, "--data", "digits", "--out", tmp_path / "bad.txt")
    assert code == 2 and err.strip().count("\n") == 0 and ".npz or .npy" in err
    code, out, err = cli("embed", run, "--out", tmp_path / "x.npz")  # no --data, and the backbone names no dataset
    assert code == 2 and "--data is needed" in err


def two_class_folder(folder: Path) -> Path:
    """Six 16 px PNGs in each of ``a/`` and ``b/``."""
    from PIL import Image

    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (40 * i, 100 if c == "a" else 200, 30)).save(folder / c / f"{i}.png")
    return folder


def test_cli_embed_prints_the_file(run_dir, tmp_path, cli, monkeypatch):
    import re

    run, _ = run_dir
    folder = two_class_folder(tmp_path / "imgs")
    monkeypatch.setattr("ssl_toolkit.pass_progress.EVERY_SECONDS", 0.0)  # a progress line after every batch but the last
    code, out, err = cli("embed", run, "--data", folder, "--out", tmp_path / "f.npz", "--batch-size", "4")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"embeddings: {tmp_path / 'f.npz'}"
    lines = [line for line in err.splitlines() if line.startswith("features")]
    assert [line.split("  ")[0] for line in lines] == ["features (train): 4/10 images", "features (train): 8/10 images"], err
    assert all(re.fullmatch(r"features \(train\): \d+/10 images  \d+ images/s  ETA \d:\d\d:\d\d", line) for line in lines), lines
    with np.load(tmp_path / "f.npz") as z:
        assert len(z["embeddings"]) == 12 and list(z["classes"]) == ["a", "b"]
        assert all(str(i).endswith(".png") for i in z["ids"])
    code, out, err = cli("embed", run, "--data", folder, "--out", tmp_path / "g.npz", "--json")
    assert code == 0, err
    result = json.loads(out)  # alone on stdout
    assert f"embeddings: {tmp_path / 'g.npz'}\n" in err  # the table and the path line: stderr
    assert (result["path"], result["rows"], result["splits"]) == (str(tmp_path / "g.npz"), 12, {"train": 10, "test": 2})
    code, out, err = cli("embed", run, "--data", folder, "--set", "data.test_fraction=0.5", "--out", tmp_path / "h.npz", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["splits"] == {"train": 6, "test": 6}  # a data setting, as other commands take
    code, out, err = cli("embed", run, "--set", "trainer.epochs=3", "--out", tmp_path / "i.npz")
    assert (code, err) == (2, "error: --set takes data.KEY=VALUE here, not trainer\n")


def test_evaluation_takes_data_strict_warns_of_unreadable_files_and_never_writes_into_the_data(run_dir, tmp_path, cli):
    run, _ = run_dir
    folder = two_class_folder(tmp_path / "imgs")
    (folder / "a" / "bad.png").write_bytes(b"")
    code, out, err = cli("embed", run, "--data", folder, "--out", tmp_path / "e.npz")
    # named by its path in the folder: another class may hold a file of the same name
    assert code == 0 and err == f"warning: skipped 1 unreadable image file(s) in {folder} (a/bad.png); ssl inspect {folder} lists them\n"
    with np.load(tmp_path / "e.npz") as z:
        assert len(z["ids"]) == 12
    strict = f"error: 1 unreadable image file(s) in {folder} (--strict): a/bad.png\n"
    for command in (("embed", run, "--out", tmp_path / "s.npz"), ("probe", run, "--mode", "knn")):
        code, out, err = cli(*command, "--data", folder, "--set", "data.strict=true")
        assert (code, err) == (2, strict)
    assert not (tmp_path / "s.npz").exists()
    code, out, err = cli("probe", run, "--data", folder, "--mode", "knn")
    assert code == 0 and err.count("warning: skipped 1 unreadable image file(s)") == 1, err
    (folder / "a" / "bad.png").unlink()
    code, _, err = cli("shard", folder, "--out", tmp_path / "sh", "--workers", "1")
    assert code == 0, err
    labels = (tmp_path / "sh" / "train" / "labels.npy").read_bytes()
    code, out, err = cli("embed", run, "--data", tmp_path / "sh", "--out", tmp_path / "sh" / "train" / "labels.npy")
    assert (code, out) == (2, "") and err.startswith(f"error: --out {tmp_path / 'sh' / 'train' / 'labels.npy'} is inside the shard set ")
    assert (tmp_path / "sh" / "train" / "labels.npy").read_bytes() == labels


def test_npy_whose_metadata_file_is_a_folder_is_refused_before_anything_is_written(run_dir, tmp_path, cli):
    run, _ = run_dir
    (tmp_path / "e.meta.npz").mkdir()
    (tmp_path / "e.npy").write_text("an earlier file")
    code, out, err = cli("embed", run, "--data", "digits", "--out", tmp_path / "e.npy")
    assert (code, out) == (2, "")
    assert err == (
        f"error: --out {tmp_path / 'e.npy'} keeps its other arrays in {tmp_path / 'e.meta.npz'}, which is a folder; "
        "remove it or choose another name\n"
    )
    assert (tmp_path / "e.npy").read_text() == "an earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.meta.npz", "e.npy", "run"]


def embeddings_arrays(n: int = 4) -> dict[str, np.ndarray]:
    """The arrays of a valid ``.npz`` as `ssl embed` writes it, ``n`` rows of two classes."""
    return {
        "embeddings": np.ones((n, 3), dtype=np.float32),
        "labels": np.arange(n, dtype=np.int64) % 2,
        "ids": np.array([f"d:train:{i}" for i in range(n)]),
        "split": np.array(["train"] * n),
        "index": np.arange(n, dtype=np.int64),
        "classes": np.array(["a", "b"]),
        "meta": np.array(json.dumps({"backbone": TINY_BACKBONE})),
    }


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"ids": None}, "no ids array"),
        ({"embeddings": np.ones((4, 3))}, "embeddings are float64 of shape (4, 3), not (N, D) float32"),
        ({"embeddings": np.ones(4, dtype=np.float32)}, "embeddings are float32 of shape (4,), not (N, D) float32"),
        ({"index": np.arange(3)}, "index is int64 of shape (3,), not 4 rows"),
        ({"labels": np.ones(4, dtype=np.float32)}, "labels is float32 of shape (4,), not 4 rows"),
        ({"split": np.array(["train", "val", "test", "test"])}, "split holds values other than train, test"),
        ({"labels": np.array([0, 1, 2, 0])}, "labels outside 0 to 1"),
        ({"labels": np.ones((4, 3), dtype=np.int64)}, "labels is int64 of shape (4, 3), not 4 rows of 2 label columns"),
        ({"labels": np.full((4, 2), 2, dtype=np.int64)}, "multi-hot labels hold values other than 0 and 1"),
        ({"meta": np.array("[1, 2]")}, "meta is not a JSON object"),
        ({"meta": np.array("{not json")}, "meta is not a JSON object"),
    ],
)
def test_load_embeddings_refuses_a_file_embed_would_not_write(tmp_path, change, why):
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.eval.embed import load_embeddings

    arrays = {k: v for k, v in {**embeddings_arrays(), **change}.items() if v is not None}
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(UserError) as e:
        load_embeddings(tmp_path / "e.npz")
    assert str(e.value) == f"{tmp_path / 'e.npz'} is not an embeddings file written by ssl embed: {why}"


def test_load_embeddings_reads_a_valid_file_and_refuses_damaged_ones(tmp_path):
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.eval.embed import load_embeddings

    arrays = embeddings_arrays()
    np.savez(tmp_path / "e.npz", **arrays)
    loaded = load_embeddings(tmp_path / "e.npz")
    assert loaded.labels.tolist() == [0, 1, 0, 1] and loaded.classes == ["a", "b"] and loaded.meta == {"backbone": TINY_BACKBONE}
    multi_hot = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], dtype=np.int64)  # as ssl embed writes a labels.csv folder's
    np.savez(tmp_path / "m.npz", **{**arrays, "labels": multi_hot})
    assert load_embeddings(tmp_path / "m.npz").labels.tolist() == multi_hot.tolist()
    (tmp_path / "cut.npz").write_bytes((tmp_path / "e.npz").read_bytes()[:200])
    with pytest.raises(UserError, match=r"^cannot read .*cut\.npz: "):
        load_embeddings(tmp_path / "cut.npz")
    np.save(tmp_path / "x.npy", arrays["embeddings"])
    with pytest.raises(UserError, match=r"x\.meta\.npz is missing next to .*x\.npy$"):
        load_embeddings(tmp_path / "x.npy")
    np.savez(tmp_path / "x.meta.npz", **{k: v for k, v in arrays.items() if k != "embeddings"})
    assert load_embeddings(tmp_path / "x.npy").features.shape == (4, 3)
    with open(tmp_path / "y.npy", "wb") as f:  # an archive under the name of an array
        np.savez(f, a=np.ones(2))
    np.savez(tmp_path / "y.meta.npz", **{k: v for k, v in arrays.items() if k != "embeddings"})
    with pytest.raises(UserError, match="the embeddings are not one array$"):
        load_embeddings(tmp_path / "y.npy")
    np.save(tmp_path / "z.npy", arrays["embeddings"])
    (tmp_path / "z.npy").rename(tmp_path / "z.npz")  # an array under the name of an archive
    with pytest.raises(UserError, match=r"^cannot read .*z\.npz: not an \.npz archive$"):
        load_embeddings(tmp_path / "z.npz")


def test_a_run_config_that_is_not_utf8_or_yaml_and_outputs_into_the_library_are_one_line(run_dir, tmp_path, cli, toolkit_home):
    run, _ = run_dir
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00")
    for command in (("probe", run, "--mode", "knn"), ("embed", run, "--out", tmp_path / "e.npz")):
        assert cli(*command) == (2, "", f"error: config file {run / 'config.yaml'} is not UTF-8 text\n")
    (run / "config.yaml").write_text("data: [1, 2\n")
    code, out, err = cli("probe", run, "--mode", "knn")
    assert (code, out) == (2, "") and err.startswith(f"error: config file {run / 'config.yaml'} is not valid YAML: ")
    saved = PretrainConfig.model_validate({"task": "rotation", "data": DATA}).model_dump(mode="json")
    saved["trainer"]["epochs"] = "abc"  # a hand edit outside data: read back and checked whole, as a resume checks it
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    for command in (("probe", run, "--mode", "knn"), ("embed", run, "--out", tmp_path / "e.npz")):
        code, out, err = cli(*command)
        assert (code, out) == (2, "") and err.startswith(f"error: {run / 'config.yaml'}: trainer.epochs: Input should be a valid integer")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": DATA}))  # cut short
    code, out, err = cli("probe", run, "--mode", "knn")
    assert (code, err) == (2, f"error: {run / 'config.yaml'} is not a saved run config (no task, backbone, trainer)\n")
    assert not (run / "probes").exists() and not (tmp_path / "e.npz").exists()
    (run / "config.yaml").unlink()
    entry = toolkit_home / "checkpoints" / "someone"
    entry.mkdir(parents=True)
    for command in ("embed", "report"):
        out_file = entry / ("e.npz" if command == "embed" else "r.html")
        code, out, err = cli(command, run, "--data", "digits", "--out", out_file)
        assert (code, err) == (
            2,
            f"error: --out {out_file} is inside the checkpoint library ({toolkit_home / 'checkpoints'}); write to a file outside it\n",
        )
    assert list(entry.iterdir()) == []
