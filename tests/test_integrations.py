"""Experiment loggers, progress lines off a terminal, and the ONNX export."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import timm
import torch
from conftest import tiny_config

from ssl_toolkit.backbones import BackboneSpec, apply_small_stem
from ssl_toolkit.checkpoints import load_backbone_files, save_backbone
from ssl_toolkit.pretraining import pretrain

needs = {
    name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} not installed")
    for name in ("tensorboard", "onnx", "onnxruntime")
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


def test_a_logger_without_its_package_names_the_extra(cli, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
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
