"""Shared fixtures: an isolated toolkit home, the CLI in-process and as a real subprocess, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tiny, fast settings shared by the training tests: a 0.4M-parameter timm ResNet on 16-32 px images.
TINY_BACKBONE = "test_resnet"


@pytest.fixture(autouse=True)
def toolkit_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own ``$SSL_TOOLKIT_HOME`` (feature cache, checkpoint library)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(home))
    torch.manual_seed(0)
    return home


def tiny_config(task: str, data: str = "synthetic", epochs: int = 2, **extra) -> dict:
    """A pretraining config that trains in seconds on 2 CPU cores."""
    cfg = {
        "task": task,
        "data": {"name": data, "image_size": 32, **({"synthetic_train": 256, "synthetic_test": 128} if data == "synthetic" else {})},
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": epochs, "batch_size": 64, "progress_bar": False, "accelerator": "cpu"},
    }
    for key, value in extra.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg


def quiet_trainer(**kw):
    """A Lightning Trainer on the CPU that writes nothing and prints no bar or summary; ``kw`` adds or overrides."""
    import lightning as L

    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**settings, **kw})


def bench_module(task: str, images: torch.Tensor, precision: str = "32-true", batch_size: int = 8):
    """The PretrainModule ``benchmarks/throughput.py`` times: ``TINY_BACKBONE`` on ``images``' size, the engine's auto layout."""
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import build_module

    size = int(images.shape[-1])
    args = argparse.Namespace(backbone=TINY_BACKBONE, size=size, precision=precision, batch_size=batch_size, channels_last="auto")
    return build_module(task, images, args, {"num_classes": 0})


@pytest.fixture
def one_thread():
    """Tiny models run fastest, and with steady timings on a shared machine, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_ssl():
    """Run ``ssl ARGS`` as a real subprocess; returns the CompletedProcess (text, captured)."""

    def _run(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        return subprocess.run(
            [sys.executable, "-m", "ssl_toolkit", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=kw.pop("cwd", None),
            **kw,
        )

    return _run


@pytest.fixture
def own_registries(monkeypatch):
    """The task and evaluator registries, built-ins discovered, with whatever a test registers gone afterwards."""
    from ssl_toolkit.evaluators.base import EVALUATORS
    from ssl_toolkit.pretext.base import TASKS

    for registry in (TASKS, EVALUATORS):
        registry.names()  # discovery first, so later lookups do not run it into the copy
        monkeypatch.setattr(registry, "_items", dict(registry._items))


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the ``ssl`` entry point in-process; returns (exit code, stdout, stderr)."""
    from ssl_toolkit.cli import run

    def _cli(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["ssl", *map(str, args)])
        code = 0
        try:
            run()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return _cli
