"""Shards (litdata): `ssl shard`, training and evaluation on them, DDP once-per-epoch, mid-epoch resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_BACKBONE
from test_stream import make_folder, truncated_jpeg
from test_targets import make_multilabel_folder


@pytest.fixture(scope="module")
def shards_once(tmp_path_factory) -> Path:
    """One shard set for the module (writing it starts litdata's workers: seconds); tests get a copy each."""
    import ssl_toolkit as st

    base = tmp_path_factory.mktemp("shards-once")
    root = make_folder(base / "imgs", n_per_class=16)  # 32 train + 4 test images
    truncated_jpeg(root / "train" / "a" / "15.jpg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_TOOLKIT_HOME", str(base / "home"))
        result = st.shard(root, base / "shards", image_size=32, chunk_bytes="40kb", workers=1)  # what ssl shard --json prints
    assert (result["n_train"], result["n_test"], result["skipped"], result["classes"]) == (31, 4, 1, ["a", "b"])
    assert "15.jpg" in (base / "shards" / "skipped.txt").read_text()
    return base / "shards"


@pytest.fixture
def shards(shards_once, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(shards_once, tmp_path / "shards"))


def ssl_program(*prelude: str) -> str:
    """A ``python -c`` program: the ``prelude`` lines (patches), then the ``ssl`` command with the program's arguments."""
    return "".join(prelude) + "from ssl_toolkit.cli import run\nsys.argv = ['ssl', *sys.argv[1:]]\nrun()\n"


def read_log(path: Path) -> list[tuple[int, int]]:
    lines = path.read_text().split() if path.is_file() else []
    return [(int(e), int(r)) for e, r in zip(lines[::2], lines[1::2])]


def test_shards_train_and_evaluate(shards, tmp_path):
    import ssl_toolkit as st
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.shards import ShardSplit
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.errors import UserError

    src = load_source(DataConfig(name=str(shards)))
    assert isinstance(src.train, ShardSplit) and (len(src.train), len(src.test), src.image_size) == (31, 4, 32)
    with pytest.raises(UserError, match=r"^data.test_fraction applies to digits and an image folder only, not to .*shards: leave it out$"):
        load_source(DataConfig(name=str(shards), test_fraction=0.5))  # their split was fixed when they were written
    assert src.train.labels.tolist().count(0) == 15 and src.image(0).shape == (3, 32, 32) if hasattr(src, "image") else True
    cfg = {
        "task": "simclr",
        "data": {"name": str(shards), "workers": 1},
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 1, "batch_size": 8, "progress_bar": False, "accelerator": "cpu"},
    }
    meta = st.pretrain(cfg, out=tmp_path / "run")
    assert meta["steps"] == 3  # 31 samples, batches of 8, the last partial one dropped
    result = st.probe(tmp_path / "run", {"data": {"name": str(shards)}, "mode": "knn", "evaluator_config": {"k": 5}})
    assert result["n_test"] == 4
    st.embed(tmp_path / "run", str(shards), out=tmp_path / "e.npz", split="test")
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:  # the ids are the files the images came from
        source = Path(json.loads((shards / "ssl_shards.json").read_text())["source"])
        assert z["ids"].tolist() == [str(source / "test" / c / f"{i}.jpg") for c in "ab" for i in range(2)]


def test_shard_ids_are_the_original_paths_and_a_missing_or_damaged_names_file_is_refused(shards):
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.errors import UserError

    info = json.loads((shards / "ssl_shards.json").read_text())
    folder = load_source(DataConfig(name=info["source"], stream=True))
    src = load_source(DataConfig(name=str(shards)))
    assert info["names"] is True and list(src.test.ids) == list(folder.test.ids)
    assert list(src.train.ids) == [p for p in folder.train.ids if not p.endswith("/a/15.jpg")]  # the file that did not decode is left out
    names = shards / "train" / "names.npy"
    np.save(names, np.load(names)[:-1])
    with pytest.raises(UserError, match=r"^.*/train/names.npy does not hold 31 file names; write the shards again with ssl shard$"):
        load_source(DataConfig(name=str(shards)))
    names.unlink()
    with pytest.raises(UserError, match=r"^cannot read the file names of .*/train: .*No such file"):
        load_source(DataConfig(name=str(shards)))
    (shards / "ssl_shards.json").write_text(json.dumps({**info, "names": False}))  # as written before names were kept
    old = load_source(DataConfig(name=str(shards)))
    assert list(old.train.ids[:2]) == [f"{shards}:train:0", f"{shards}:train:1"] and old.test.ids[3] == f"{shards}:test:3"


def test_inspecting_shards_finds_what_inspecting_their_folder_finds(tmp_path, cli):
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.inspection import inspect_data

    root = make_folder(tmp_path / "imgs", n_per_class=8)  # seed i in both classes and splits: exact duplicates and leaks
    code, out, err = cli("shard", root, "--out", tmp_path / "sh", "--image-size", "32", "--workers", "1", "--json")
    assert code == 0, err
    printed = json.loads(out)  # alone on stdout; the table goes to stderr
    assert f"shards: {tmp_path / 'sh'}\n" in err
    assert (printed["n_train"], printed["n_test"], printed["out"]) == (16, 4, str(tmp_path / "sh"))
    folder, shards = inspect_data(str(root)), inspect_data(str(tmp_path / "sh"), out=tmp_path / "sh.html")
    assert shards["kind"] == "shards" and shards["images"] == {"total": 20, "train": 16, "test": 4, "unreadable": 0}
    for key in ("images", "sizes", "modes", "formats", "file_sizes", "normalisation", "labels", "warnings"):
        assert shards[key] == folder[key], key

    for kind in ("exact", "near"):  # ids too: a shard's id is its original file's path
        assert shards["duplicates"][kind] == folder["duplicates"][kind], kind
    assert shards["duplicates"]["exact"]["leak_groups"] == 2
    assert shards["duplicates"]["exact"]["groups"][0]["members"][0]["id"] == str(root / "train" / "a" / "0.jpg")
    page = (tmp_path / "sh.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 20  # thumbnails decoded from the items' bytes
    code, out, err = cli("inspect", tmp_path / "sh", "--dedupe-list", tmp_path / "drop.txt", "--json")
    assert code == 0, err
    drops = (tmp_path / "drop.txt").read_text().split()
    assert cli("inspect", root, "--dedupe-list", tmp_path / "drop-folder.txt", "--json")[0] == 0
    assert drops == (tmp_path / "drop-folder.txt").read_text().split() and len(drops) >= 12  # the 12 exact copies at least
    limited = load_source(DataConfig(name=str(tmp_path / "sh"), limit=5))
    assert (len(limited.train), len(limited.test)) == (5, 4)  # data.limit takes a seeded subset of the shards' training rows


def test_a_multilabel_folder_is_sharded_with_its_multi_hot_rows(tmp_path, cli):
    import ssl_toolkit as st
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source

    root = make_multilabel_folder(tmp_path / "f", n=60)
    assert st.shard(root, tmp_path / "shards", image_size=16, chunk_bytes="8kb", workers=1)["multilabel"] is True
    folder = load_source(DataConfig(name=str(root), image_size=16, stream=True))
    src = load_source(DataConfig(name=str(tmp_path / "shards")))
    assert src.target_kind == "multilabel" and src.classes == ["blue", "green", "red"]
    for a, b in ((src.train, folder.train), (src.test, folder.test)):  # the same rows, in the same order
        assert a.labels.dtype == torch.uint8 and torch.equal(a.labels, b.labels)
        assert torch.equal(a.image(3), b.image(3))
    cfg = {
        "task": "simclr",
        "data": {"name": str(tmp_path / "shards"), "workers": 1},
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 1, "batch_size": 8, "progress_bar": False, "accelerator": "cpu"},
    }
    n_train = len(src.train)
    assert st.pretrain(cfg, out=tmp_path / "run")["steps"] == n_train // 8  # multi-hot rows batched by the streaming loader
    code, out, err = cli("probe", tmp_path / "run", "--data", tmp_path / "shards", "--mode", "linear", "--json")
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["target_kind"] == "multilabel" and len(res["per_class_ap"]) == 3 and 0.0 <= res["mAP"] <= 1.0


def _ddp_epoch(rank: int, world: int, shard_dir: str, log: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), SSL_TOOLKIT_SAMPLE_LOG=log)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.loaders import split_loader
    from ssl_toolkit.data.sources import load_source

    src = load_source(DataConfig(name=shard_dir))
    loader = split_loader(src.train, 4, True, seed=0, workers=1)
    for epoch in range(2):
        loader.dataset.set_epoch(epoch + 1)
        for _ in loader:
            pass
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_processes_see_every_sample_once_per_epoch(shards, tmp_path):
    import torch.multiprocessing as mp

    log = str(tmp_path / "seen")
    mp.spawn(_ddp_epoch, args=(2, str(shards), log, 29511), nprocs=2, join=True)
    seen = {r: read_log(Path(f"{log}.rank{r}")) for r in (0, 1)}
    for epoch in (1, 2):
        rows = {r: [row for e, row in seen[r] if e == epoch] for r in (0, 1)}
        assert len(rows[0]) == len(rows[1]) > 0 and not set(rows[0]) & set(rows[1])  # disjoint parts
        union = rows[0] + rows[1]
        assert len(union) == len(set(union)) and len(union) >= 31 - 2 * 4  # once each; at most a last batch per rank dropped
    assert [row for e, row in seen[0] if e == 1] != [row for e, row in seen[0] if e == 2]  # reshuffled each epoch


@pytest.mark.slow
def test_a_killed_run_resumes_mid_epoch_without_repeating_or_skipping(shards, tmp_path, run_ssl, monkeypatch):
    log = tmp_path / "seen"
    monkeypatch.setenv("SSL_TOOLKIT_SAMPLE_LOG", str(log))
    rank0 = Path(f"{log}.rank0")
    args = [
        sys.executable,
        "-m",
        "ssl_toolkit",
        "pretrain",
        "--task",
        "rotation",
        "--data",
        str(shards),
        "--batch-size",
        "2",
        "--epochs",
        "3",
        "--backbone",
        TINY_BACKBONE,
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--set",
        "trainer.checkpoint_every_n_steps=4",
        "--set",
        "data.workers=1",
        "--set",
        "trainer.online_probe=false",
    ]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / "run" / "last.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and len(read_log(rank0)) >= 14:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    per_epoch = 15  # 31 samples in batches of 2, the last partial batch dropped
    step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
    epoch, in_epoch = divmod(step, per_epoch)
    assert in_epoch and epoch < 3, step  # the checkpoint is mid-epoch
    epoch += 1  # litdata counts epochs from 1
    before = [row for e, row in read_log(rank0) if e == epoch][: 2 * in_epoch]  # rows trained before the checkpoint
    rank0.unlink()
    r = run_ssl("pretrain", "--resume", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    after = read_log(rank0)
    resumed = before + [row for e, row in after if e == epoch]
    assert len(resumed) == len(set(resumed)) == 2 * per_epoch, (
        step,
        read_log(rank0.with_name("x")),
        before,
        after,
    )  # every sample of that epoch once
    for e in range(epoch + 1, 4):
        rows = [row for ep, row in after if ep == e]
        assert len(rows) == len(set(rows)) == 2 * per_epoch, (e, epoch, sorted({ep for ep, _ in after}), len(after))


@pytest.mark.parametrize("cut", [1, 3], ids=["second-step", "first-step-of-the-second-epoch"])
def test_a_ctrl_c_during_a_step_resumes_at_the_batch_it_cut_short(shards, tmp_path, monkeypatch, cut):
    import ssl_toolkit as st
    from ssl_toolkit import engine
    from ssl_toolkit.errors import Interrupted

    log = tmp_path / "seen"
    monkeypatch.setenv("SSL_TOOLKIT_SAMPLE_LOG", str(log))
    rank0 = Path(f"{log}.rank0")
    step = engine.PretrainModule.training_step

    def ctrl_c_in_a_step(self, batch, batch_idx):
        if self.global_step == cut:  # `cut` steps trained; the next batch is handed over, then cut short
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, batch, batch_idx)

    cfg = {
        "task": "rotation",
        "data": {"name": str(shards), "workers": 0},  # in-process reading: the state is the same, and it starts at once
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 2, "batch_size": 8, "online_probe": False},  # 31 rows: 3 batches of 8 per epoch
    }
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in an `ssl` process
    try:
        monkeypatch.setattr(engine.PretrainModule, "training_step", ctrl_c_in_a_step)
        with pytest.raises(Interrupted):
            st.pretrain(cfg, out=tmp_path / "run")
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(engine.PretrainModule, "training_step", step)
    handed = read_log(rank0)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == cut and len(handed) == 8 * (cut + 1)
    meta = st.pretrain({"trainer": {"epochs": 2}}, resume=tmp_path / "run")
    after = read_log(rank0)[len(handed) :]
    assert after[:8] == handed[-8:]  # the batch cut short comes again, first, in its epoch (litdata counts from 1)
    trained = handed[:-8] + after
    for epoch in (1, 2):  # each epoch's own order, every row of it trained once (3 batches)
        rows = [row for e, row in trained if e == epoch]
        assert len(rows) == len(set(rows)) == 24, (epoch, trained)
    assert {e for e, _ in trained} == {1, 2} and meta["steps"] == 6, meta


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "what"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_an_interrupted_shard_run_exits_130_or_143_and_leaves_no_shards_and_no_workers(tmp_path, signum, code, what):
    root = make_folder(tmp_path / "imgs", n_per_class=60, size=(32, 32))
    out = tmp_path / "sh"
    # each item slowed to 50 ms, so that the signal lands while litdata's writers work (they take ~0.2 s otherwise)
    slowed = ssl_program(
        "import sys, time\n"
        "from ssl_toolkit.data import shards\n"
        "read = shards._item\n"
        "shards._item = lambda job: (time.sleep(0.05), read(job))[1]\n"
    )
    args = [sys.executable, "-c", slowed, "shard", str(root), "--out", str(out), "--workers", "2", "--chunk-bytes", "8kb"]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob(".sh.partial-*/train/chunk-*")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.5)  # litdata's workers are writing
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and err.strip().splitlines()[-1] == f"{what}: no shards were written", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # neither --out nor the partial folder
    time.sleep(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # and no worker writes on
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(out).encode() in _read_or_empty(p)]  # none is left


@pytest.mark.slow
def test_a_ctrl_c_as_a_writer_starts_a_process_of_its_own_leaves_no_process_behind(tmp_path):
    root = make_folder(tmp_path / "imgs", n_per_class=4, size=(32, 32))
    pid_file = tmp_path / "remover.pid"
    # the signal reaches the command and the first writer just after that writer forked its remover and
    # before multiprocessing listed it (the remover, forked after the signal went out, gets none)
    racing = ssl_program(
        "import os, signal, sys\n"
        "import multiprocessing.process as mpp\n"
        "from litdata.processing import data_processor as d\n"
        "start = d.BaseWorker._start_remover\n"
        "def start_then_ctrl_c(self):\n"
        "    start(self)\n"
        "    if self.worker_index == 0 and getattr(self, 'remover', None) is not None:\n"
        "        mpp._children.discard(self.remover)\n"
        f"        open({str(pid_file)!r}, 'w').write(str(self.remover.pid))\n"
        "        os.kill(os.getppid(), signal.SIGINT)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "d.BaseWorker._start_remover = start_then_ctrl_c\n"
    )
    args = [sys.executable, "-c", racing, "shard", str(root), "--out", str(tmp_path / "sh"), "--workers", "2"]
    with open(tmp_path / "err", "w") as err:  # a file, not a pipe: a process left behind would hold a pipe open
        code = subprocess.run(
            args, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=err, timeout=120
        ).returncode
    stderr = (tmp_path / "err").read_text()
    assert code == 130 and stderr.strip().splitlines()[-1] == "interrupted: no shards were written", stderr
    remover = int(pid_file.read_text())

    def state() -> bytes:
        return _read_or_empty(Path(f"/proc/{remover}/stat")).split(b") ")[-1][:1]

    deadline = time.time() + 10
    while time.time() < deadline and state() not in (b"", b"Z"):
        time.sleep(0.1)
    left = state()
    if left not in (b"", b"Z"):
        os.kill(remover, signal.SIGKILL)
    assert left in (b"", b"Z")  # gone (or dead, not yet reaped)


def test_a_sigterm_while_the_folder_is_scanned_is_one_line_and_exit_143(tmp_path):
    root = make_folder(tmp_path / "imgs", n_per_class=2, size=(32, 32))
    scanning = ssl_program(  # the scan held up until the signal comes
        "import sys, time\n"
        "from ssl_toolkit.data import folder\n"
        "folder.load_folder = lambda *a, **k: (print('scanning', flush=True), time.sleep(60))\n"
    )
    args = [sys.executable, "-c", scanning, "shard", str(root), "--out", str(tmp_path / "sh")]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "scanning"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.strip()) == (143, "terminated: no shards were written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_an_out_another_run_wrote_meanwhile_is_one_line_and_keeps_that_runs_shards(tmp_path, cli, monkeypatch):
    from ssl_toolkit.data import shards

    root = make_folder(tmp_path / "imgs", n_per_class=2, size=(32, 32))
    write = shards._write_splits

    def and_another_run_lands(*args, **kwargs):  # as a second ssl shard to the same --out does, first
        result = write(*args, **kwargs)
        (tmp_path / "sh").mkdir()
        (tmp_path / "sh" / "ssl_shards.json").write_text("{}")
        return result

    monkeypatch.setattr(shards, "_write_splits", and_another_run_lands)
    code, _, err = cli("shard", root, "--out", tmp_path / "sh", "--workers", "1")
    assert (code, err.strip().splitlines()[-1]) == (
        2,
        f"error: --out {tmp_path / 'sh'} was written meanwhile (another ssl shard?); this run's shards were not kept",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "sh"] and (tmp_path / "sh" / "ssl_shards.json").read_text() == "{}"


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def test_damaged_shards_are_refused_in_one_line(shards, tmp_path, cli):
    import shutil

    import numpy as np

    def chunk(split: str) -> Path:
        return sorted((tmp_path / "d" / split).glob("chunk-*.bin"))[0]

    def edit_json(path: Path, change) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    def out_of_range_label(d: Path) -> None:
        labels = np.load(d / "train" / "labels.npy")
        labels[0] = 7
        np.save(d / "train" / "labels.npy", labels)

    damages = {
        "is missing": lambda d: chunk("train").unlink(),
        "holds 100 bytes": lambda d: os.truncate(chunk("test"), 100),
        "is not a litdata index": lambda d: (d / "train" / "index.json").write_text("{"),
        "lists": lambda d: edit_json(d / "train" / "index.json", lambda x: x["chunks"].pop()),
        "labels outside 0..1": out_of_range_label,
        "channels must be 1 or 3": lambda d: edit_json(d / "ssl_shards.json", lambda x: x.update(channels=5)),
        "mean and std need 3": lambda d: edit_json(d / "ssl_shards.json", lambda x: x.update(mean=[0.5])),
        "out of order": lambda d: edit_json(d / "train" / "index.json", lambda x: x["chunks"].insert(0, x["chunks"].pop(1))),
    }

    def flip_offsets(d: Path) -> None:  # the chunk's item offsets, its size unchanged
        data = bytearray(chunk("train").read_bytes())
        data[4:40] = bytes(b ^ 0xFF for b in data[4:40])
        chunk("train").write_bytes(bytes(data))

    damages["cannot be read (struct.error"] = flip_offsets
    for message, damage in damages.items():
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
        shutil.copytree(shards, tmp_path / "d")
        damage(tmp_path / "d")
        code, out, err = cli("inspect", tmp_path / "d", "--json", "--quiet")
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (message, err)
    # the same damage met by a training loader's worker process: one line too
    train = ["--task", "rotation", "--backbone", TINY_BACKBONE, "--epochs", "1", "--quiet", "--set", "data.workers=1"]
    code, out, err = cli("pretrain", "--data", tmp_path / "d", *train, "--out", tmp_path / "run")
    last = err.strip().splitlines()[-1]  # after the stem note
    assert code == 2 and last.startswith(f"error: shards in {tmp_path / 'd' / 'train'} are damaged: item "), err
    assert "Traceback" not in err and last.endswith("; write them again with ssl shard"), err


def test_item_i_of_shards_written_by_several_writers_is_row_i_of_the_folder(tmp_path):
    import numpy as np
    from PIL import Image

    import ssl_toolkit as st
    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 20)):
        for k in range(n):  # every image its own colour, so a row read from another position shows
            d = tmp_path / "imgs" / split / ("a" if k % 3 else "b")
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 40), tuple(int(v) for v in rng.integers(0, 256, 3))).save(d / f"{k}.png")
    st.shard(tmp_path / "imgs", tmp_path / "sh", image_size=16, chunk_bytes="1kb", workers=2)  # many chunks per writer
    folder = load_source(DataConfig(name=str(tmp_path / "imgs"), image_size=16, stream=True))
    shards = load_source(DataConfig(name=str(tmp_path / "sh")))
    for split in ("train", "test"):
        f, s = getattr(folder, split), getattr(shards, split)
        assert len(s) == len(f) and torch.equal(s.labels, f.labels)
        assert all(torch.equal(s.image(i), f.image(i)) for i in range(len(f))), split
        assert torch.equal(torch.cat(list(s.batches(7, workers=2))), torch.cat(list(f.batches(7, workers=0))))


def test_shards_smaller_than_a_batch_train_one_batch_as_a_folder_does(shards, tmp_path):
    import ssl_toolkit as st

    cfg = {
        "task": "rotation",
        "data": {"name": str(shards), "workers": 0},
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 1, "batch_size": 256, "progress_bar": False, "accelerator": "cpu", "online_probe": False},
    }
    assert st.pretrain(cfg, out=tmp_path / "run")["steps"] == 1  # 31 samples: one batch of 31


def test_shards_without_a_test_split_read_back(tmp_path, cli):
    from PIL import Image

    from ssl_toolkit.config import DataConfig
    from ssl_toolkit.data.sources import load_source

    for c in "ab":  # two images a class: the default split keeps both in train
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 90, 200 if c == "a" else 20)).save(tmp_path / "f" / c / f"{i}.png")
    code, _, err = cli("shard", tmp_path / "f", "--out", tmp_path / "s", "--image-size", "16", "--workers", "1")
    assert code == 0, err
    src = load_source(DataConfig(name=str(tmp_path / "s")))
    assert (len(src.train), len(src.test), src.train.labels.tolist()) == (4, 0, [0, 0, 1, 1])


def test_python_shard_mirrors_ssl_shard(tmp_path):
    import ssl_toolkit as st
    from ssl_toolkit.errors import UserError

    root = make_folder(tmp_path / "imgs", n_per_class=3, size=(24, 20))
    with pytest.raises(
        UserError, match=r"^shard\(\) does not use data\.image_size; the shards take data\.test_fraction.* \(the image size is image_size=;"
    ):
        st.shard(root, tmp_path / "s", data={"image_size": 16})
    with pytest.raises(UserError, match=r"^shard\(\): workers: should be a number, not true"):
        st.shard(root, tmp_path / "s", workers=True)
    with pytest.raises(UserError, match=r"^chunk_bytes='1 byte': give a size of 1 byte or more with its unit \(b, kb, mb, gb, tb\)"):
        st.shard(root, tmp_path / "s", chunk_bytes="1 byte")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        st.shard(root, tmp_path / "file", image_size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "imgs"]  # nothing written by a refused call
    import multiprocessing

    method, env = multiprocessing.get_start_method(allow_none=True), dict(os.environ)
    result = st.shard(root, tmp_path / "s", image_size=16, workers=1, data={"strict": True})  # what ssl shard --json prints
    # litdata's process-wide changes are undone: later DataLoader workers fork as before, none spawned
    assert (multiprocessing.get_start_method(allow_none=True), dict(os.environ)) == (method, env)
    assert (result["n_train"], result["n_test"], result["image_size"], result["out"]) == (6, 4, 16, str(tmp_path / "s"))
    assert json.loads((tmp_path / "s" / "ssl_shards.json").read_text())["n_train"] == 6
    with pytest.raises(UserError, match=r"holds shards already \(ssl_shards.json\): use it as it is, with data=.*s$"):
        st.shard(tmp_path / "s", tmp_path / "again")
    (tmp_path / "s" / "ssl_shards.json").unlink()
    with pytest.raises(UserError, match=r"; it looks like shards that lost ssl_shards.json: write them again with ssl shard$"):
        st.inspect_data(tmp_path / "s")


def test_a_run_that_max_steps_cut_mid_epoch_resumes_inside_that_epoch_on_shards(shards, tmp_path, monkeypatch):
    """litdata's loader state of the cut epoch carries over: the resume trains the rest of it, then the next."""
    import ssl_toolkit as st

    log = tmp_path / "seen"
    monkeypatch.setenv("SSL_TOOLKIT_SAMPLE_LOG", str(log))
    rank0 = Path(f"{log}.rank0")
    cfg = {
        "task": "rotation",
        "data": {"name": str(shards), "workers": 0},
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 2, "batch_size": 8, "online_probe": False, "max_steps": 5},  # 31 rows: 3 batches an epoch
    }
    meta = st.pretrain(cfg, out=tmp_path / "run")
    assert (meta["epochs"], meta["steps"]) == (1, 5)
    cut = read_log(rank0)
    rank0.unlink()
    meta = st.pretrain({"trainer": {"max_steps": -1}}, resume=tmp_path / "run")
    assert (meta["epochs"], meta["steps"]) == (2, 6)
    second = [row for e, row in cut if e == 2][:16] + [row for _, row in read_log(rank0)]  # litdata counts epochs from 1
    assert len(second) == len(set(second)) == 24  # the cut epoch's last batch, and no batch again


def test_the_partial_folder_a_killed_shard_run_left_is_removed_by_the_next(tmp_path):
    """A SIGKILL'd `ssl shard` left `.OUT.partial-PID` (its chunks) for ever; one whose process runs is another's."""
    from ssl_toolkit.data.shards import remove_abandoned_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".shards.partial-{dead.pid}"
    running = tmp_path / f".shards.partial-{os.getpid()}"
    other = tmp_path / f".shards2.partial-{dead.pid}"  # another --out's
    for d in (left, running, other):
        d.mkdir()
        (d / "chunk-0-0.bin").write_bytes(b"x")
    assert remove_abandoned_partials(tmp_path / "shards") == [left]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, other.name])
