"""Faults a long run must survive: SIGKILL + resume, SIGTERM, corrupt files, NaN loss, failed writes."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_config
from PIL import Image

from ssl_toolkit.atomic import atomic_write_bytes
from ssl_toolkit.errors import UserError
from ssl_toolkit.pretraining import pretrain
from ssl_toolkit.trainer import AtomicCheckpointIO

TINY_ARGS = [
    "pretrain",
    "--task",
    "rotation",
    "--data",
    "synthetic",
    "--backbone",
    "test_resnet",
    "--image-size",
    "16",
    "--batch-size",
    "32",
    "--set",
    "data.synthetic_train=192",
    "--set",
    "data.synthetic_test=64",
    "-q",
]


def _popen(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "ssl_toolkit", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_after_the_first_epoch_then_resume_finishes_the_planned_run(tmp_path, run_ssl):
    """No checkpoint option set: ``last.ckpt`` is written at every epoch end by default."""
    run = tmp_path / "run"
    proc = _popen([*TINY_ARGS, "--epochs", "3", "--out", str(run)], tmp_path)
    _wait_for(run / "last.ckpt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / "last.ckpt", weights_only=True)["global_step"]
    assert killed_at in (6, 12) and not (run / "backbone.safetensors").exists()  # an epoch end: 6 steps per epoch

    done = run_ssl("pretrain", "--resume", run, "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    meta = json.loads((run / "meta.json").read_text())
    assert meta["epochs"] == 3 and meta["steps"] == 18  # 192 images / 32 = 6 steps x 3 epochs
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    epochs_with_loss = [int(r["epoch"]) for r in rows if r["loss_epoch"]]
    assert epochs_with_loss == [0, 1, 2]  # continuous: every epoch once, in order
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)
    # the finished backbone landed in the library and loads
    from ssl_toolkit import load_backbone

    model, lib_meta = load_backbone(meta.get("library_name") or str(run))
    assert lib_meta["steps"] == 18 and model(torch.zeros(1, 3, 16, 16)).shape == (1, 96)


def test_an_epoch_row_lost_to_a_kill_after_the_checkpoint_is_written_back_on_resume(tmp_path):
    """Lightning writes the epoch-end checkpoint before it logs the epoch's row; a kill in between loses only the file write."""
    from ssl_toolkit.trainer import restore_metrics

    run = tmp_path / "run"
    pretrain(tiny_config("rotation", epochs=2), out=run)
    metrics = run / "metrics.csv"
    logged = list(csv.DictReader(metrics.open()))
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    row = ckpt["ssl_epoch_row"]
    assert row["epoch"] == 1 and row["step"] == ckpt["global_step"] - 1 and set(row) > {"loss_epoch", "pretext_acc"}
    epoch_row = [r for r in logged if r["loss_epoch"] and r["epoch"] == "1"]
    assert len(epoch_row) == 1 and all(epoch_row[0][k] == str(v) for k, v in row.items())  # the row Lightning logged

    restore_metrics(metrics, run / "last.ckpt")  # the row is there: nothing changes
    assert list(csv.DictReader(metrics.open())) == logged
    with metrics.open("w", newline="") as f:  # the kill: every row but the epoch's last one reached the file
        writer = csv.DictWriter(f, fieldnames=list(logged[0]))
        writer.writeheader()
        writer.writerows(r for r in logged if r is not epoch_row[0])
    restore_metrics(metrics, run / "last.ckpt")
    assert list(csv.DictReader(metrics.open())) == logged
    metrics.unlink()  # killed before the first row was flushed: the file is made with the row
    restore_metrics(metrics, run / "last.ckpt")
    assert [r["loss_epoch"] for r in csv.DictReader(metrics.open())] == [epoch_row[0]["loss_epoch"]]
    before = metrics.read_bytes()
    for bad in ({"epoch": "one", "step": 11, "loss_epoch": 1.0}, {"loss_epoch": 1.0}, ["not", "a", "row"]):
        torch.save({**ckpt, "ssl_epoch_row": bad}, tmp_path / "bad.ckpt")
        restore_metrics(metrics, tmp_path / "bad.ckpt")  # a row of the wrong shape is ignored, not written
        assert metrics.read_bytes() == before


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    run = tmp_path / "run"
    proc = _popen([*TINY_ARGS, "--epochs", "50", "--out", str(run)], tmp_path)
    _wait_for(run / "metrics.csv", proc)  # first epoch done, training goes on
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "ssl pretrain --resume" in err.strip().splitlines()[-1]
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] >= 6


def test_sigusr1_saves_and_requeues_the_slurm_job_and_the_same_auto_resume_command_continues_the_run(tmp_path, cli):
    bin_dir = tmp_path / "bin"  # a stand-in for SLURM's scontrol that records what it was asked
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "asked.txt"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    run = tmp_path / "run"
    command = [*TINY_ARGS, "--epochs", "50", "--out", str(run), "--auto-resume"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "31"}
    env.pop("SLURM_NTASKS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssl_toolkit", *command], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(run / "metrics.csv", proc)  # first epoch done, training goes on
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith("; SIGUSR1: SLURM job 31 requeued: it runs the same command again (with --auto-resume it continues the run)")
    ), err
    assert (tmp_path / "asked.txt").read_text() == "requeue 31\n"
    assert sorted(p.name for p in run.glob("*.ckpt")) == ["last.ckpt"]  # none of Lightning's hpc_ckpt_N.ckpt
    trained = torch.load(run / "last.ckpt", weights_only=True)["epoch"]
    again = [*command[1:-5], "--epochs", str(trained + 1), *command[-3:]]  # the requeued job, asking for one epoch more
    code, out, err = cli("pretrain", *again)
    assert code == 0 and out.startswith(f"pretrained rotation on synthetic: {trained + 1} epochs, ") and " since the resume, " in out, err
    code, out, err = cli("pretrain", *again)
    assert (code, out.split(" (")[0]) == (0, f"{run} is already finished"), err


def test_auto_resume_resumes_a_begun_run_starts_a_new_one_and_starts_again_one_stopped_before_its_checkpoint(tmp_path):
    from ssl_toolkit.pretraining import auto_resumed

    run = tmp_path / "run"
    assert auto_resumed(run, False, None) == (run, False, None)  # nothing there: a new run
    run.mkdir()
    (run / "config.yaml").write_text("task: rotation\n")
    assert auto_resumed(run, False, None) == (run, True, None)  # stopped before its first checkpoint: started again
    (run / "last.ckpt").write_bytes(b"")
    assert auto_resumed(run, False, None) == (None, False, run)  # resumed (the resume judges the checkpoint)
    with pytest.raises(UserError, match="^auto_resume needs out: "):
        auto_resumed(None, False, None)
    with pytest.raises(UserError, match="^auto_resume chooses between starting and resuming itself; leave resume out$"):
        auto_resumed(run, False, run)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="holds files"):  # a folder of other files is not taken over
        pretrain(tiny_config("rotation"), out=tmp_path / "mine", auto_resume=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _folder_with_bad_files(root: Path) -> None:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (20, 20), (i * 20, 200 if c == "a" else 30, 90)).save(root / c / f"{i}.png")
    (root / "a" / "truncated.jpg").write_bytes(_jpeg_bytes()[:200])
    (root / "b" / "zero.png").write_bytes(b"")
    (root / "b" / "text.png").write_text("this is not a png")


def _jpeg_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def test_corrupt_files_are_skipped_listed_and_refused_under_strict(tmp_path):
    data = tmp_path / "data"
    _folder_with_bad_files(data)
    cfg = tiny_config("rotation", data=str(data), epochs=1)
    cfg["data"]["image_size"] = 16
    meta = pretrain(cfg, out=tmp_path / "run")
    assert meta["dataset"]["n_train"] + meta["dataset"]["n_test"] == 24
    skipped = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in skipped) == ["text.png", "truncated.jpg", "zero.png"]
    cfg["data"]["strict"] = True
    with pytest.raises(UserError, match=r"3 unreadable image file\(s\)"):
        pretrain(cfg, out=tmp_path / "strict")


def test_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config("rotation", epochs=3)
    cfg["trainer"].update(lr=1e8, optimizer="sgd", checkpoint_every_n_steps=1)  # diverges within a few steps
    with pytest.raises(UserError, match=r"training stopped: loss is (nan|inf) at step \d+") as err:
        pretrain(cfg, out=run)
    bad_step = int(str(err.value).split("at step ")[1].split(";")[0])
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] <= bad_step
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (run / "backbone.safetensors").exists()  # nothing with broken weights is saved
    assert not (run / "meta.json").exists()


def _poison_gradients(monkeypatch, calls: set[int] | None) -> None:
    """Make rotation's loss finite but its stem gradient NaN on the given forward calls (all if None)."""
    from ssl_toolkit.pretext.rotation import RotationTask

    real_forward, count = RotationTask.forward, [0]

    def forward(self, backbone, images):
        loss, logs = real_forward(self, backbone, images)
        count[0] += 1
        if calls is None or count[0] in calls:
            w = next(backbone.parameters())
            loss = loss + 0.0 * torch.sqrt((w - w.detach()).abs().sum())  # value 0; d/dw = 0 * inf = NaN
        return loss, logs

    monkeypatch.setattr(RotationTask, "forward", forward)


def test_an_update_with_non_finite_gradients_is_skipped(tmp_path, monkeypatch, one_thread):
    _poison_gradients(monkeypatch, {2})
    meta = pretrain(tiny_config("rotation", epochs=1), out=tmp_path / "run")
    assert meta["skipped_steps"] == 1 and meta["steps"] == 4
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_gradients_non_finite_five_steps_in_a_row_stop_training(tmp_path, monkeypatch, one_thread):
    _poison_gradients(monkeypatch, None)
    with pytest.raises(UserError, match=r"training stopped: gradients are not finite \(backbone\.\S+\) for 5 steps in a row at step 4"):
        pretrain(tiny_config("rotation", epochs=3), out=tmp_path / "run")
    assert not (tmp_path / "run" / "backbone.safetensors").exists()


def test_a_write_that_fails_half_way_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing_unless_more_epochs_are_asked(tmp_path, cli, toolkit_home):
    run = tmp_path / "run"
    code, _, err = cli(*TINY_ARGS, "--epochs", "1", "--out", run)
    assert code == 0, err
    before, library = _tree_bytes(run), _tree_bytes(toolkit_home / "checkpoints")
    code, out, err = cli("pretrain", "--resume", run, "-q")
    assert (code, err) == (0, "")
    assert "is already finished (1 epoch, 6 steps); nothing changed" in out
    code, out, err = cli("pretrain", "--resume", run, "-q", "--name", "longer", "--logger", "tensorboard")
    assert code == 0 and "nothing changed" in out
    assert err == f"note: {run} is already finished and nothing is trained, so --logger, --name are not used\n"
    assert out.strip().endswith(f"To train further: ssl pretrain --resume {run} --epochs N (N > 1)")
    code, out, err = cli("pretrain", "--resume", run, "--epochs", "2", "--set", "trainer.max_steps=6", "-q")
    assert code == 0, err  # the step limit is the one in the way: the hint named --epochs, which had just been given
    assert out.strip().endswith(f"To train further: ssl pretrain --resume {run} --set trainer.max_steps=M (M > 6, or -1 for no limit)")
    assert _tree_bytes(run) == before and _tree_bytes(toolkit_home / "checkpoints") == library

    code, _, err = cli("pretrain", "--resume", run, "--lr", "0.5")
    assert code == 2 and err.startswith("error: --resume cannot change trainer.lr")
    assert _tree_bytes(run) == before
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace("\n  lr: ", "\n  lr: 0.5\n  old_lr: ", 1).replace("\n  old_lr: ", "\n  # was: ", 1))
    code, _, err = cli("pretrain", "--resume", run, "--epochs", "2")  # the optimiser state would restore the old rate
    assert code == 2 and err.startswith(
        f"error: cannot resume {run}: its config.yaml has trainer.lr 0.5, but its checkpoint was trained with "
    )
    assert err.endswith(f"(was config.yaml edited?); put the value back, or start a new run from its weights with --init-from {run}\n")
    (run / "config.yaml").write_text(saved)
    assert _tree_bytes(run) == before

    bare = tmp_path / "bare"  # finished, then its last.ckpt deleted: the backbone is all there is
    shutil.copytree(run, bare)
    (bare / "last.ckpt").unlink()
    code, out, err = cli("pretrain", "--resume", bare, "-q")
    assert code == 0 and "is already finished (1 epoch, 6 steps); nothing changed" in out, err
    code, _, err = cli("pretrain", "--resume", bare, "--epochs", "2", "-q")
    assert (code, err) == (
        2,
        f"error: cannot train {bare} further: its last.ckpt is gone (its backbone is kept); "
        f"a new run can start from that backbone with --init-from {bare}\n",
    )  # not "start it again with --overwrite", which would throw the trained run away
    assert _tree_bytes(bare) == {k: v for k, v in before.items() if k != "last.ckpt"}

    code, out, err = cli("pretrain", "--resume", run, "--epochs", "2", "-q")
    assert code == 0 and out.startswith("pretrained rotation on synthetic: 2 epochs, 12 steps, ") and "s since the resume, loss " in out, (
        err
    )
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["epochs"], meta["steps"]) == (2, 12)
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["epochs"] == 2
    assert len(list((toolkit_home / "checkpoints").iterdir())) == 2  # the longer run is a new entry


def test_an_overwrite_that_fails_gives_the_previous_run_back_and_one_that_finishes_replaces_it(tmp_path, one_thread, monkeypatch):
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    run = tmp_path / "run"
    pretrain(cfg, out=run)
    (run / "probes").mkdir()
    (run / "probes" / "synthetic-linear-1.json").write_text('{"top1": 0.5}')  # the old run's probe result
    (run / "report.html").write_text("<p>the old run</p>")  # and its report (`ssl report RUN`)
    before = _tree_bytes(run)
    diverging = {**cfg, "trainer": {**cfg["trainer"], "lr": 1e300}}
    with pytest.raises(UserError, match="non-finite|not finite|nan"):
        pretrain(diverging, out=run, overwrite=True)
    assert _tree_bytes(run) == before and not (run / ".replaced").exists()

    from ssl_toolkit.run_folder import RunFolder

    def full_disk(self, resolved):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m, pytest.raises(OSError, match="No space left"):
        m.setattr(RunFolder, "write_config", full_disk)  # fails while the folder is prepared, before training
        pretrain(cfg, out=run, overwrite=True)
    assert _tree_bytes(run) == before and not (run / ".replaced").exists()

    import ssl_toolkit.library as library

    real_write = library._write_file
    with monkeypatch.context() as m:  # the library's disk is full: /dev/full fails every write with ENOSPC
        m.setattr(library, "_write_file", lambda path, data: real_write(Path("/dev/full"), data))
        with pytest.raises(
            UserError, match=rf"could not take the backbone: No space left on device \(/dev/full\).*; {run} is left as it was$"
        ):
            pretrain(cfg, out=run, overwrite=True)
        assert _tree_bytes(run) == before and not (run / ".replaced").exists()
        with pytest.raises(UserError, match=rf"; the run is kept in {run}2: add it with import_checkpoint\('{run}2'\)$"):
            pretrain(cfg, out=tmp_path / "run2")
    assert json.loads((tmp_path / "run2" / "meta.json").read_text()).get("library_name") is None
    with pytest.raises(UserError, match=rf"^out={run / 'sub'} is inside the run or backbone folder {run}; choose a folder outside it$"):
        pretrain(cfg, out=run / "sub")  # its --overwrite would carry this run along
    assert not (run / "sub").exists()

    longer = {**cfg, "trainer": {**cfg["trainer"], "epochs": 2}}
    meta = pretrain(longer, out=run, overwrite=True)
    assert meta["epochs"] == 2 and json.loads((run / "meta.json").read_text())["epochs"] == 2
    assert not (run / ".replaced").exists() and not (run / "probes").exists()  # the old run's results went with it
    assert not (run / "report.html").exists()  # it described the old backbone


def test_a_second_writer_of_a_run_folder_is_refused_while_the_first_holds_it(tmp_path, one_thread):
    from ssl_toolkit.folder_lock import FolderLock

    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    run = tmp_path / "run"
    first = FolderLock(run).acquire()  # what a running ssl pretrain holds
    with pytest.raises(
        UserError, match=rf"^{run} is being written by another ssl pretrain \(pid {os.getpid()}\); wait for it or choose another out$"
    ):
        pretrain(cfg, out=run)
    assert not run.exists()
    first.release()
    assert not first.path.exists()  # a released lock leaves no file behind: locks/ does not grow one per run folder
    pretrain(cfg, out=run)  # free again; and each call lets go when it returns or fails
    assert not first.path.exists()
    with pytest.raises(UserError, match="unknown dataset"):  # found when the data loads, with the lock held
        pretrain({**cfg, "data": {**cfg["data"], "name": "no-such-data"}}, out=run, overwrite=True)
    pretrain(cfg, out=run, overwrite=True)
    assert FolderLock(run).acquire() is not None


def test_a_lock_whose_file_was_removed_after_it_was_opened_is_taken_again_on_the_new_file(tmp_path):
    import fcntl

    from ssl_toolkit.folder_lock import FolderLock

    holder = FolderLock(tmp_path / "run").acquire()
    stale = os.open(holder.path, os.O_RDWR)  # a second process opened the file, then the holder let go (and removed it)
    holder.release()
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old file: lockable, but no longer the lock
    try:
        second = FolderLock(tmp_path / "run").acquire()  # takes the path's new file, not refused by the stale one
        with pytest.raises(UserError, match="is being written by another ssl pretrain"):
            FolderLock(tmp_path / "run").acquire()
        second.release()
    finally:
        os.close(stale)


def test_a_lock_left_to_a_forked_worker_of_a_killed_run_is_taken_over(tmp_path):
    from ssl_toolkit.folder_lock import FolderLock

    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from ssl_toolkit.folder_lock import FolderLock\n"
        "FolderLock(Path(sys.argv[1])).acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    null = os.open(os.devnull, os.O_RDWR)\n"
        "    os.dup2(null, 1), os.dup2(null, 2)\n"  # let the test's pipes close
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
        "os._exit(0)\n"  # the run dies; its forked DataLoader worker still holds the lock's file
    )
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", script, str(run)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    orphan = int(done.stdout)
    try:
        lock = FolderLock(run).acquire()
        lock.release()
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_resuming_from_a_config_yaml_edited_by_hand_to_another_network_is_one_line(tmp_path, one_thread):
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    run = tmp_path / "run"
    pretrain(cfg, out=run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["task_config"]["hidden_dim"] = 7  # another head: the checkpoint's weights no longer fit
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    before = _tree_bytes(run)
    with pytest.raises(  # the checkpoint keeps the settings it was trained with: the edit is found before any work
        UserError,
        match=r"^cannot resume .*run: its config.yaml has task_config \{'hidden_dim': 7\}, but its checkpoint was trained with \{'hidden_dim': 0\} \(was config.yaml edited\?\)",
    ):
        pretrain({"trainer": {"epochs": 2}}, resume=run)
    assert _tree_bytes(run) == before
    state = torch.load(run / "last.ckpt", weights_only=True)
    torch.save({**state, "ssl_config": '{"trainer.lr": '}, run / "last.ckpt")  # cut short
    with pytest.raises(UserError, match=r"^cannot resume from .*last.ckpt: the settings it keeps are damaged \(not a JSON object\)$"):
        pretrain({"trainer": {"epochs": 2}}, resume=run)
    del state["ssl_config"]  # as a checkpoint from before the settings were kept: found when its weights do not fit
    torch.save(state, run / "last.ckpt")
    before = _tree_bytes(run)
    with pytest.raises(
        UserError,
        match=r"^cannot resume .*run: last.ckpt does not fit the network its config.yaml describes \(.*\); was config.yaml edited\?$",
    ):
        pretrain({"trainer": {"epochs": 2}}, resume=run)
    assert _tree_bytes(run) == before


def test_resume_accepts_how_long_and_how_progress_is_shown_and_refuses_the_rest(tmp_path):
    from ssl_toolkit.config import PretrainConfig
    from ssl_toolkit.resume import resume_config
    from ssl_toolkit.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    folder.config.write_text(yaml.safe_dump(PretrainConfig().model_dump(mode="json")))
    cfg, changed = resume_config(folder, {"trainer": {"epochs": 12, "progress_every_n_steps": 3, "progress_bar": False, "seed": 0}})
    assert changed == ["trainer.epochs", "trainer.progress_every_n_steps", "trainer.progress_bar"]  # seed unchanged: not a change
    assert (cfg.trainer.epochs, cfg.trainer.progress_every_n_steps, cfg.trainer.progress_bar) == (12, 3, False)
    with pytest.raises(UserError, match=r"^--resume cannot change trainer.batch_size \(saved 256, asked 64\)"):
        resume_config(folder, {"trainer": {"progress_every_n_steps": 3, "batch_size": 64}})


@pytest.mark.parametrize("max_steps", [-1, 4])
def test_a_finished_run_resumed_for_another_epoch_trains_it_with_or_without_a_step_limit(tmp_path, max_steps, one_thread):
    """With ``max_steps`` set, Lightning's own restart took the finished epoch's counters for the new one and trained nothing."""
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"]["batch_size"] = 32  # 2 steps an epoch
    run = tmp_path / "run"
    assert pretrain(cfg, out=run)["steps"] == 2
    meta = pretrain({"trainer": {"epochs": 2, "max_steps": max_steps}}, resume=run)
    assert (meta["epochs"], meta["steps"]) == (2, 4)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows if r["loss_epoch"]] == [0, 1]


def test_a_run_whose_final_save_failed_resumes_to_the_same_final_metrics(tmp_path, monkeypatch, one_thread):
    """The resume trains no step, so Lightning has no metrics: meta.json takes the last logged ones."""
    import ssl_toolkit.checkpoints as checkpoints

    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"]["batch_size"] = 32
    whole = pretrain(cfg, out=tmp_path / "whole")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    run = tmp_path / "run"
    with monkeypatch.context() as m, pytest.raises((OSError, UserError)):
        m.setattr(checkpoints, "save_backbone", full_disk)
        pretrain(cfg, out=run)
    assert (run / "last.ckpt").is_file() and not (run / "meta.json").exists()
    meta = pretrain({}, resume=run)
    assert (meta["epochs"], meta["steps"]) == (1, 2)
    assert {"loss_epoch", "pretext_acc", "online_top1"} <= set(meta["final_metrics"])  # what metrics.csv logged of the whole run's
    assert meta["final_metrics"] == pytest.approx({k: whole["final_metrics"][k] for k in meta["final_metrics"]}, abs=1e-6)
    assert meta["final_loss"] == pytest.approx(whole["final_loss"], abs=1e-6) and math.isfinite(meta["final_loss"])


def test_a_run_that_max_steps_cut_mid_epoch_resumes_inside_that_epoch_with_one_row_per_epoch(tmp_path, monkeypatch, one_thread):
    """Lightning counted the cut epoch as trained: a resume started the next one (the rest never trained), or found nothing to do."""
    from ssl_toolkit import engine

    step = engine.PretrainModule.training_step
    seen: list[tuple[int, int]] = []

    def recording(self, batch, batch_idx):
        seen.append((self.current_epoch, int(batch[0].long().sum())))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(engine.PretrainModule, "training_step", recording)
    cfg = tiny_config("rotation", epochs=3)
    cfg["data"].update(image_size=16, synthetic_train=128, synthetic_test=32)
    cfg["trainer"]["batch_size"] = 32  # 4 steps an epoch
    pretrain(cfg, out=tmp_path / "whole")
    whole, seen[:] = list(seen), []
    cfg["trainer"]["max_steps"] = 6  # two steps into the second epoch
    meta = pretrain(cfg, out=tmp_path / "cut")
    assert (meta["epochs"], meta["steps"]) == (1, 6)  # one epoch trained to its end
    meta = pretrain({"trainer": {"max_steps": -1}}, resume=tmp_path / "cut")
    assert (meta["epochs"], meta["steps"]) == (3, 12) and seen == whole  # the same batches in the same order
    rows = list(csv.DictReader((tmp_path / "cut" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows if r["loss_epoch"]] == [0, 1, 2]  # the cut epoch's partial row is gone


def test_a_cut_run_written_by_an_older_version_resumes_inside_its_cut_epoch_with_one_row_for_it(tmp_path, one_thread):
    """Older versions recorded the cut epoch in meta.json's epochs and kept its partial row in last.ckpt."""
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=128, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, max_steps=3)  # 3 of the only epoch's 4 steps
    run = tmp_path / "cut"
    pretrain(cfg, out=run)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "epochs": 1}))  # as an older version wrote it
    state = torch.load(run / "last.ckpt", weights_only=True)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    partial = next(r for r in rows if r["loss_epoch"])
    state["ssl_epoch_row"] = {k: float(v) if "." in v else int(v) for k, v in partial.items() if v}  # the cut epoch's row, kept
    torch.save(state, run / "last.ckpt")
    meta = pretrain({"trainer": {"max_steps": 4}}, resume=run)
    assert (meta["epochs"], meta["steps"]) == (1, 4) and not meta.get("finished")  # trained on, not "already finished"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows if r["loss_epoch"]] == [0]  # the partial row not written back beside the whole one


def test_a_resume_that_lengthens_the_run_trains_its_first_step_at_the_new_schedules_rate(tmp_path, one_thread):
    cfg = tiny_config("rotation", epochs=2)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, log_every_n_steps=1, max_steps=6)
    pretrain(cfg, out=tmp_path / "whole")
    pretrain({**cfg, "trainer": {**cfg["trainer"], "max_steps": 3}}, out=tmp_path / "cut")  # its cosine ends at step 3
    pretrain({"trainer": {"max_steps": 6}}, resume=tmp_path / "cut")  # laid over 6 steps from here on

    def rates(run: str) -> dict[int, float]:
        return {int(r["step"]): float(r["lr"]) for r in csv.DictReader((tmp_path / run / "metrics.csv").open()) if r.get("lr")}

    whole, cut = rates("whole"), rates("cut")
    assert sorted(cut) == sorted(whole) and cut[min(cut)] == whole[min(whole)]
    assert [cut[s] for s in sorted(cut)][3:] == [whole[s] for s in sorted(whole)][3:]  # the resumed steps: the 6-step schedule
    assert all(rate > 0 for rate in cut.values())  # not the 3-step schedule's end, 0


def test_last_ckpt_every_n_minutes_within_an_epoch(tmp_path):
    run = tmp_path / "run"
    proc = _popen([*TINY_ARGS, "--epochs", "3", "--set", "trainer.checkpoint_every_minutes=0.00001", "--out", str(run)], tmp_path)
    end = time.time() + 300
    while not (run / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < end, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)
    try:
        first = torch.load(run / "last.ckpt", weights_only=True)["global_step"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 1 <= first < 6  # written inside the first epoch (6 steps), by the time trigger


def test_ctrl_c_after_an_epochs_last_step_keeps_that_epochs_row_on_resume(tmp_path, monkeypatch):
    from ssl_toolkit import engine
    from ssl_toolkit.errors import Interrupted

    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(tmp_path / "home"))
    end_of_epoch = engine.PretrainModule.on_train_batch_end

    def ctrl_c_at_step_4(self, outputs, batch, batch_idx):  # 256 images, 64 per step: the first epoch's last step
        end_of_epoch(self, outputs, batch, batch_idx)
        if self.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    def epoch_rows(run: Path) -> list[tuple[str, str, str]]:
        rows = csv.DictReader((run / "metrics.csv").open())
        return [(r["epoch"], r["step"], r["loss_epoch"]) for r in rows if r["loss_epoch"]]

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in an `ssl` process
    try:
        pretrain(tiny_config("rotation", epochs=2), out=tmp_path / "whole")
        monkeypatch.setattr(engine.PretrainModule, "on_train_batch_end", ctrl_c_at_step_4)
        with pytest.raises(Interrupted):
            pretrain(tiny_config("rotation", epochs=2), out=tmp_path / "cut")
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(engine.PretrainModule, "on_train_batch_end", end_of_epoch)
    pretrain({"trainer": {"epochs": 2}}, resume=tmp_path / "cut")
    whole = epoch_rows(tmp_path / "whole")
    assert [(e, s) for e, s, _ in whole] == [("0", "3"), ("1", "7")]
    assert epoch_rows(tmp_path / "cut") == whole  # the first epoch's row was lost before: the Ctrl-C came before Lightning logged it


def test_a_resumed_loader_with_a_persistent_worker_skips_the_trained_batches_once():
    """The folder loader's state, as Lightning saves and restores it: the cut epoch goes on after its trained batches,
    and later epochs are whole, also from a persistent worker (which keeps the index sampler it started with)."""
    from ssl_toolkit.data.loaders import EpochShuffleSampler, ImageTensorDataset, ResumableLoader

    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)  # (40, 1, 1, 1): each image its own index

    def loader() -> ResumableLoader:
        sampler = EpochShuffleSampler(40, seed=3)
        return ResumableLoader(ImageTensorDataset(images, None), batch_size=8, sampler=sampler, num_workers=1, persistent_workers=True)

    def epoch(dl: ResumableLoader, e: int, stop: int | None = None) -> list[list[int]]:
        dl.sampler.set_epoch(e)
        out = []
        for x, _ in dl:
            out.append(x.flatten().tolist())
            if len(out) == stop:
                break
        return out

    whole = loader()
    order = [epoch(whole, 0), epoch(whole, 1)]
    cut = loader()
    assert epoch(cut, 0, stop=3) == order[0][:3]
    cut.rewind_to(2)  # a Ctrl-C in the third step: two batches trained
    state = cut.state_dict()
    assert state == {"batches": 2, "length": 5}
    resumed = loader()
    resumed.load_state_dict(state)
    assert len(resumed) == 5  # the epoch's length, whatever the resume skips
    assert epoch(resumed, 0) == order[0][2:] and epoch(resumed, 1) == order[1]  # then a whole epoch
    other = loader()
    other.load_state_dict({"batches": 2, "length": 9})  # another loader's state: nothing skipped
    assert epoch(other, 0) == order[0]
    for dl in (whole, cut, resumed, other):
        dl._iterator._shutdown_workers()  # persistent workers live on with their loaders


def test_a_ctrl_c_mid_epoch_resumes_at_the_batch_it_cut_short_in_the_same_order(tmp_path, monkeypatch):
    """In-memory data (folders use the same loader): the resumed epoch goes on from the batch cut short, not from its start."""
    from ssl_toolkit import engine
    from ssl_toolkit.errors import Interrupted

    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(tmp_path / "home"))
    step = engine.PretrainModule.training_step
    seen: list[tuple[int, int]] = []
    cut = {"at": None}

    def recording(self, batch, batch_idx):
        if self.global_step == cut["at"]:
            cut["at"] = None
            os.kill(os.getpid(), signal.SIGINT)  # Python raises it here: this step's batch is never trained
        seen.append((self.current_epoch, int(batch[0].long().sum())))
        return step(self, batch, batch_idx)

    cfg = tiny_config("rotation", epochs=2)
    cfg["trainer"].update(batch_size=32, online_probe=False)  # 8 steps an epoch
    monkeypatch.setattr(engine.PretrainModule, "training_step", recording)
    pretrain(cfg, out=tmp_path / "whole")
    whole, seen[:] = list(seen), []
    cut["at"] = 11  # the fourth step of the second epoch
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in an `ssl` process
    try:
        with pytest.raises(Interrupted):
            pretrain(cfg, out=tmp_path / "cut")
    finally:
        signal.signal(signal.SIGINT, before)
    assert len(seen) == 11 and torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)["global_step"] == 11
    meta = pretrain({"trainer": {"epochs": 2}}, resume=tmp_path / "cut")
    assert seen == whole and meta["steps"] == len(whole) == 16  # before: the epoch started again (batches 0-4 twice, 5-7 never)


def test_an_interrupt_whose_checkpoint_a_stopped_peer_prevented_says_so(tmp_path):
    """DDP SIGTERM: when a collective fails because the other process left, the message follows the file, not the hope."""
    from types import SimpleNamespace

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ssl_toolkit.callbacks import CheckpointOnInterrupt
    from ssl_toolkit.pretraining import interrupt_outcome
    from ssl_toolkit.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    saver = CheckpointOnInterrupt(folder.last_ckpt)

    def peer_gone(path, write_first):
        if write_first:
            path.write_bytes(b"checkpoint")  # written, then the barrier after it fails
        raise RuntimeError("Connection closed by peer")

    for rank, write_first, saved in ((0, False, False), (0, True, True), (1, False, True)):
        folder.last_ckpt.unlink(missing_ok=True)
        trainer = SimpleNamespace(world_size=2, global_rank=rank, callbacks=[saver])
        trainer.save_checkpoint = lambda path, w=write_first: peer_gone(path, w)
        saver.on_exception(trainer, None, SIGTERMException())
        assert saver.saved is saved, (rank, write_first)
    saver.saved = False  # rank 0 of the first case: nothing written, none before
    assert interrupt_outcome(trainer, folder) == (
        "its checkpoint could not be written (another process had stopped first) and none was saved before; run the command again"
    )
    folder.last_ckpt.write_bytes(b"an earlier checkpoint")
    assert interrupt_outcome(trainer, folder).startswith(
        "its checkpoint could not be written (another process had stopped first); continue"
    )
    saver.saved = True
    assert interrupt_outcome(trainer, folder) == f"checkpoint saved, continue with: ssl pretrain --resume {folder}"
    with pytest.raises(RuntimeError):  # one process: a failed save is a real error
        saver.on_exception(
            SimpleNamespace(world_size=1, global_rank=0, save_checkpoint=lambda p: peer_gone(p, False)), None, KeyboardInterrupt()
        )


def test_a_ddp_ctrl_c_writes_the_checkpoint_from_the_first_process_without_any_collective(tmp_path):
    """Ctrl-C stops each process wherever the signal finds it, maybe a collective apart (a
    gradient bucket sent by one only): a barrier then waits for ever. So no Trainer save (it
    ends with a barrier): the first process writes the file alone, the others nothing."""
    from types import SimpleNamespace

    from ssl_toolkit.callbacks import CheckpointOnInterrupt

    path = tmp_path / "last.ckpt"
    written: list[tuple[dict, Path]] = []

    def collective(*args):
        raise AssertionError("a collective on Ctrl-C")

    for rank in (1, 0):
        saver = CheckpointOnInterrupt(path)
        trainer = SimpleNamespace(world_size=2, global_rank=rank, save_checkpoint=collective)
        trainer._checkpoint_connector = SimpleNamespace(dump_checkpoint=lambda weights_only: {"global_step": 11})
        trainer.strategy = SimpleNamespace(save_checkpoint=lambda ckpt, p: written.append((ckpt, p)), barrier=collective)
        saver.on_exception(trainer, None, KeyboardInterrupt())
        assert saver.saved is True and written == ([] if rank else [({"global_step": 11}, path)])


def test_ctrl_c_after_an_optimiser_step_and_again_as_the_resume_starts_keeps_batches_steps_and_rows(tmp_path, monkeypatch):
    """A Ctrl-C after a batch's optimiser step but before Lightning counted the batch trained it
    again on resume (one step too many); each resume of a step cut short, or stopped as it
    started, moved the step column of metrics.csv by one."""
    from lightning.pytorch.loops.progress import _Progress

    from ssl_toolkit import engine
    from ssl_toolkit.errors import Interrupted

    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(tmp_path / "home"))
    step, start, counted = (
        engine.PretrainModule.training_step,
        engine.PretrainModule.on_train_start,
        _Progress.increment_completed,
    )
    seen: list[int] = []
    stop: dict[str, object] = {}

    def training_step(self, batch, batch_idx):
        seen.append(int(batch[0].long().sum()))
        stop["optimizer"] = self.trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step
        return step(self, batch, batch_idx)

    def increment_completed(tracker):
        counted(tracker)
        if stop.get("at") == "step 6" and tracker is stop.get("optimizer") and tracker.total.completed == 6:
            os.kill(os.getpid(), signal.SIGINT)  # between the optimiser step's count and the batch's

    def on_train_start(self):
        start(self)
        if stop.get("at") == "start":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(engine.PretrainModule, "training_step", training_step)
    monkeypatch.setattr(engine.PretrainModule, "on_train_start", on_train_start)
    monkeypatch.setattr(_Progress, "increment_completed", increment_completed)

    def rows(run: Path) -> list[tuple[str, str]]:
        return [(r["epoch"], r["step"]) for r in csv.DictReader((run / "metrics.csv").open()) if r["loss_epoch"]]

    cfg = tiny_config("rotation", epochs=2)  # 4 steps an epoch
    pretrain(cfg, out=tmp_path / "whole")
    whole, seen[:] = list(seen), []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in an `ssl` process
    try:
        stop["at"] = "step 6"
        with pytest.raises(Interrupted, match="at step 6"):
            pretrain(cfg, out=tmp_path / "cut")
        stop["at"] = "start"
        with pytest.raises(Interrupted, match="at step 6"):
            pretrain({}, resume=tmp_path / "cut")
    finally:
        signal.signal(signal.SIGINT, before)
    stop["at"] = None
    meta = pretrain({}, resume=tmp_path / "cut")
    assert meta["steps"] == 8 and seen == whole  # the batch whose step ran is not trained again
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole") == [("0", "3"), ("1", "7")]


@pytest.mark.parametrize("task", ["moco", "byol"])
def test_a_momentum_run_resumed_after_a_ctrl_c_inside_a_step_or_a_crash_ends_as_the_whole_run(task, tmp_path, monkeypatch):
    """MoCo keeps a queue of keys, MoCo and BYOL momentum copies, and a step changes them (and batch norm's statistics,
    and the view streams): a resume, from a Ctrl-C's save or from a step checkpoint, repeats and misses none of it."""
    from safetensors.torch import load_file

    from ssl_toolkit import engine
    from ssl_toolkit.errors import Interrupted

    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(tmp_path / "home"))
    queue = {"queue_size": 96} if task == "moco" else {}
    cfg = tiny_config(task, epochs=2, trainer={"checkpoint_every_n_steps": 2, "online_probe": False}, task_config=queue)
    step = engine.PretrainModule.training_step

    def stop_inside_step_3(how):
        def training_step(self, batch, batch_idx):
            loss = step(self, batch, batch_idx)  # forward done: statistics, queue and views moved on
            if self.global_step == 3:
                if how == "ctrl-c":
                    os.kill(os.getpid(), signal.SIGINT)
                raise RuntimeError("the machine went away")
            return loss

        return training_step

    pretrain(cfg, out=tmp_path / "whole")
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in an `ssl` process
    try:
        monkeypatch.setattr(engine.PretrainModule, "training_step", stop_inside_step_3("ctrl-c"))
        with pytest.raises(Interrupted):
            pretrain(cfg, out=tmp_path / "ctrl-c")
        monkeypatch.setattr(engine.PretrainModule, "training_step", stop_inside_step_3("crash"))
        with pytest.raises(RuntimeError, match="went away"):
            pretrain(cfg, out=tmp_path / "crash")  # last.ckpt: the one written after step 2
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(engine.PretrainModule, "training_step", step)
    assert torch.load(tmp_path / "crash" / "last.ckpt", weights_only=True)["global_step"] == 2
    whole = load_file(tmp_path / "whole" / "backbone.safetensors")
    for cut in ("ctrl-c", "crash"):
        pretrain({}, resume=tmp_path / cut)
        resumed = load_file(tmp_path / cut / "backbone.safetensors")
        assert resumed.keys() == whole.keys()
        assert all(torch.equal(resumed[k], whole[k]) for k in whole), cut


def test_a_disk_that_fills_during_training_keeps_the_last_good_checkpoint_and_says_how_to_go_on(tmp_path, one_thread, monkeypatch):
    from ssl_toolkit.trainer import AtomicCheckpointIO

    cfg = tiny_config("rotation", epochs=3)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, online_probe=False)
    run = tmp_path / "run"
    real, saves = AtomicCheckpointIO.save_checkpoint, []

    def fills_after_the_first(self, checkpoint, path, storage_options=None):
        saves.append(checkpoint["global_step"])
        if len(saves) > 1:
            raise OSError(28, "No space left on device", str(path))  # as a full disk reports it, naming the file
        real(self, checkpoint, path, storage_options)

    with monkeypatch.context() as m:
        m.setattr(AtomicCheckpointIO, "save_checkpoint", fills_after_the_first)
        with pytest.raises(UserError) as e:
            pretrain(cfg, out=run)
    assert str(e.value) == (
        f"training stopped: No space left on device ({run / 'last.ckpt'}); the last good checkpoint is kept in {run / 'last.ckpt'}; "
        f"free some space, then continue with: pretrain(resume={str(run)!r})"  # the Python API's terms (the CLI: ssl pretrain --resume)
    )
    assert saves == [2, 4] and torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 2  # the first epoch's
    assert pretrain(None, resume=run)["steps"] == 6  # space freed: the run goes on from there
