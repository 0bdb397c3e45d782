"""The recipe benchmarks read their protocol and check every setting before any budget is spent;
the speed benchmarks build the backbone they are asked for.

``recipe_sweep.py`` and ``simclr_budget.py`` run for hours when they run; these tests start
them with one bad setting each, which must stop them at the start with a one-line error
(exit code 2) after the protocol and the config models have been read for real.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


def _run(script: str, *args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--task", "rotation", "--point", "backbone.stem_pool=false", "--point", "trainer.nope=1"],
            "--point 'trainer.nope=1': unknown key 'trainer.nope'",
        ),
        (["--task", "simclr", "--point", "task_config.temperature=0"], "temperature: Input should be greater than 0"),
        (["--task", "rotatio"], "--task: unknown task 'rotatio'; choose one of"),
        (["--minutes", "nan"], "--minutes must be a positive number"),
        (["--no-defaults"], "--no-defaults needs at least one --point"),
    ],
)
def test_recipe_sweep_refuses_a_bad_point_before_training(tmp_path, args, message):
    done = _run("recipe_sweep.py", *args, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ours-set", "trainer.nope=1"], "--ours-set: unknown key 'trainer.nope'"),
        (["--ours-set", "trainer.lr=-1"], "trainer.lr: Input should be greater than 0"),
        (["--ours-set", "backbone.small_stem=true", "--ours-set", "backbone.stem_pool=true"], "small_stem=true has no max-pool"),
        (["--ours-image-size", "4"], "--ours-image-size must be between 8 and 1024"),
    ],
)
def test_simclr_budget_refuses_a_bad_setting_before_training(tmp_path, args, message):
    done = _run("simclr_budget.py", "--rows", "ours", *args, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(("stem_pool", "grid"), [(True, 1), (False, 2)])
def test_speed_benchmarks_build_the_stem_they_are_asked_for(stem_pool, grid):
    """``--no-stem-pool`` (throughput, MFU, compile) trains the toolkit's default stem at 32 px: total stride 16."""
    import argparse

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import create_backbone

    model = create_backbone(argparse.Namespace(backbone="resnet18", stem_pool=stem_pool), {"num_classes": 0}).eval()
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (grid, grid)
