"""Experiment loggers, progress lines off a terminal, and the ONNX export."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import tiny_config

from ssl_toolkit.backbones import BackboneSpec, apply_small_stem
from ssl_toolkit.checkpoints import load_backbone_files, save_backbone
from ssl_toolkit.pretraining import pretrain

needs = {
    name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} not installed")
    for name in ("tensorboard", "onnx", "onnxruntime", "mlflow", "wandb")
}


def _small(**trainer) -> dict:
    cfg = tiny_config("rotation", epochs=2)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, log_every_n_steps=1, **trainer)
    return cfg


@needs["tensorboard"]
@pytest.mark.slow
def test_tensorboard_logger_writes_events_tensorboard_reads(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pretrain(_small(logger="tensorboard"), out=tmp_path / "run")
    assert (tmp_path / "run" / "metrics.csv").is_file()  # always written
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss_step")]
    assert steps and steps == sorted(steps) and max(steps) <= 4  # 64 images / 32 = 2 steps x 2 epochs
    assert len(events.Scalars("loss_epoch")) == 2
    hparams = yaml.safe_load((tmp_path / "run" / "tensorboard" / "hparams.yaml").read_text())  # the resolved config
    assert (hparams["task"], hparams["trainer.batch_size"], hparams["data.name"]) == ("rotation", 32, "synthetic")


@needs["mlflow"]
def test_an_mlflow_run_gets_the_config_and_a_resume_logs_on_into_the_same_run(tmp_path, cli, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--task", "rotation", "--data", "synthetic", "--backbone", "test_resnet", "--image-size", "16", "--batch-size", "32"]
    args += ["--set", "data.synthetic_train=64", "--set", "data.synthetic_test=32", "--set", "trainer.log_every_n_steps=1", "-q"]
    code, _, err = cli("pretrain", *args, "--epochs", "1", "--logger", "mlflow", "--out", tmp_path / "run")
    assert code == 0 and "Creating it" not in err, err  # MLflow 3's file store opted into, its notice kept off the output
    record = json.loads((tmp_path / "run" / "logger.json").read_text())
    client = MlflowClient((tmp_path / "run" / "mlruns").as_uri())
    run = client.get_run(record["run_id"])
    assert (run.data.params["trainer.batch_size"], run.data.params["trainer.epochs"], run.data.params["task"]) == ("32", "1", "rotation")
    code, _, err = cli("pretrain", "--resume", tmp_path / "run", "--epochs", "2", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "logger.json").read_text())["run_id"] == record["run_id"]
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [record["run_id"]]  # one run, continued
    assert [m.step for m in client.get_metric_history(record["run_id"], "loss_epoch")] == [1, 3]  # both epochs
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # the command's process setting, not left behind


@needs["mlflow"]
def test_two_mlflow_runs_from_python_each_log_into_their_own_store_and_a_file_uri_given_is_taken(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    import ssl_toolkit as st

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = _small(logger="mlflow", progress_bar=False)
    cfg["trainer"]["epochs"] = 1
    for run in ("a", "b"):
        st.pretrain(cfg, out=tmp_path / run)
        record = json.loads((tmp_path / run / "logger.json").read_text())
        assert record["where"] == (tmp_path / run / "mlruns").as_uri()  # MLflow set its URI in the process: not taken as the user's
        assert MlflowClient(record["where"]).get_run(record["run_id"]).info.status == "FINISHED"
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "store").as_uri())  # a file store of the user's: MLflow 3 asks to opt in
    st.pretrain(cfg, out=tmp_path / "c")
    record = json.loads((tmp_path / "c" / "logger.json").read_text())
    assert record["where"] == (tmp_path / "store").as_uri() and not (tmp_path / "c" / "mlruns").exists()
    assert MlflowClient(record["where"]).get_run(record["run_id"]).data.params["task"] == "rotation"


@needs["mlflow"]
def test_a_logger_that_cannot_start_is_one_line(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://x")
    code, out, err = cli("pretrain", "--backbone", "test_resnet", "--epochs", "1", "--logger", "mlflow", "-q", "--out", tmp_path / "run")
    line = err.splitlines()[-1]
    assert code == 2 and line.startswith("error: --logger mlflow could not start: ") and "nosuchscheme://x" in line, err
    assert not (tmp_path / "run").exists()  # nothing left of a run that never trained


@needs["wandb"]
def test_a_wandb_run_gets_the_config_quietly_and_a_resume_continues_its_id(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    args = ["--task", "rotation", "--data", "synthetic", "--backbone", "test_resnet", "--image-size", "16", "--batch-size", "32"]
    args += ["--set", "data.synthetic_train=64", "--set", "data.synthetic_test=32"]
    code, _, err = cli("pretrain", *args, "--epochs", "1", "--logger", "wandb", "--out", tmp_path / "run")
    assert code == 0, err
    assert "wandb:" not in err and "\x1b" not in err  # stderr is no terminal here: W&B's banner and colours stay off
    record = json.loads((tmp_path / "run" / "logger.json").read_text())
    assert (record["logger"], record["where"]) == ("wandb", "mine")
    code, _, err = cli("pretrain", "--resume", tmp_path / "run", "--epochs", "2", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "logger.json").read_text()) == record
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs and all(p.name.endswith(record["run_id"]) for p in runs)  # sessions of one run (one folder within a second)
    logged = b"".join(p.read_bytes() for run in runs for p in run.glob("*.wandb"))
    assert b"trainer.batch_size" in logged  # the config


def test_a_logger_without_its_package_names_the_extra(cli, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))  # not installed
    code, out, err = cli("pretrain", "--logger", "wandb", "--backbone", "test_resnet", "--out", tmp_path / "run")
    assert code == 2 and err.strip() == "error: --logger wandb needs the wandb package: pip install 'ssl-toolkit[wandb]'"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, run_ssl):
    done = run_ssl(
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
        "--epochs",
        "3",
        "--set",
        "data.synthetic_train=64",
        "--set",
        "data.synthetic_test=32",
        "--set",
        "trainer.progress_every_n_steps=2",
        "--out",
        tmp_path / "run",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["step 2/6", "step 4/6", "step 6/6"], done.stderr
    assert all(line.startswith("epoch ") and " images/s  ETA " in line and "\r" not in line for line in lines)
    assert len(done.stdout.strip().splitlines()) == 3  # summary, run folder, checkpoint


@pytest.mark.slow
def test_on_a_terminal_the_bar_draws_on_stderr_counting_epochs_from_one_to_the_runs_last_step(tmp_path):
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios
    import threading
    from pathlib import Path

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 30 rows, 120 columns
    args = ["--task", "rotation", "--data", "synthetic", "--backbone", "test_resnet", "--image-size", "16", "--batch-size", "16"]
    args += ["--epochs", "2", "--set", "data.synthetic_train=64", "--set", "data.synthetic_test=32", "--set", "trainer.max_steps=3"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssl_toolkit", "pretrain", *args, "--out", str(tmp_path / "run")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the terminal's other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=600)
    reader.join(timeout=30)
    os.close(master)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, terminal
    frames = [f for f in terminal.replace("\n", "\r").split("\r") if f.startswith("epoch ")]
    assert frames and frames[-1].startswith("epoch 1/2: 100%") and "| 3/3 [" in frames[-1], frames  # max_steps ends the bar
    assert stdout.decode().splitlines()[0].startswith("pretrained rotation") and "it/s" not in stdout.decode()  # no frames on stdout


@pytest.mark.slow
def test_progress_lines_under_a_time_budget_count_down_the_budget(tmp_path, run_ssl):
    args = ["--task", "rotation", "--data", "synthetic", "--backbone", "test_resnet", "--image-size", "16", "--batch-size", "32"]
    sets = ["data.synthetic_train=64", "data.synthetic_test=32", "trainer.progress_every_n_steps=1", "trainer.max_minutes=0.1"]
    done = run_ssl("pretrain", *args, "--epochs", "1000", *[a for s in sets for a in ("--set", s)], "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("epoch ")]
    totals = [int(line.split("  ")[1].split("/")[1]) for line in lines]
    etas = [sum(int(x) * m for x, m in zip(line.rsplit("ETA ", 1)[1].split(":"), (3600, 60, 1))) for line in lines]
    assert len(lines) >= 2 and max(etas) <= 6  # a 6 s budget, not the 1000 epochs' hours (few steps on a loaded machine)
    assert totals[-1] < 2000 and totals[-1] >= len(lines)  # the steps the budget allows, not 1000 x 2


@needs["onnx"]
@needs["onnxruntime"]
@pytest.mark.slow
def test_onnx_export_matches_torch_with_any_batch_size(tmp_path, cli):
    import onnxruntime as ort

    spec = BackboneSpec("test_resnet", {"num_classes": 0, "in_chans": 3}, small_stem=True)
    model = timm.create_model(spec.timm_name, **spec.kwargs)
    apply_small_stem(model)
    save_backbone(
        tmp_path / "run",
        model,
        {
            "task": "rotation",
            "backbone": spec.to_dict(),
            "in_chans": 3,
            "image_size": 16,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
    )
    out = tmp_path / "export" / "backbone.onnx"  # its folder is created, as for the other formats
    code, stdout, err = cli("checkpoints", "export", tmp_path / "run", "--out", out, "--format", "onnx")
    assert code == 0, err
    meta = json.loads((out.parent / "backbone.onnx.json").read_text())
    assert meta["export_format"] == "onnx" and meta["onnx_opset"] == 18 and "onnxruntime" in stdout
    torch_model, _ = load_backbone_files(tmp_path / "run")
    session = ort.InferenceSession(str(out))
    for batch in (1, 5):
        x = torch.rand(batch, 3, 16, 16)
        want = torch_model(x).detach().numpy()
        got = session.run(["features"], {"images": x.numpy()})[0]
        assert got.shape == want.shape == (batch, 96)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    code, _, err = cli("checkpoints", "export", tmp_path / "run", "--out", out, "--format", "onnx")
    assert code == 2 and "already exists; use --overwrite" in err
    code, _, err = cli("checkpoints", "import", out)
    assert code == 2 and err.strip().endswith("is an ONNX graph; load or import the checkpoint it was exported from")
