"""The recipe benchmarks read their protocol and check every setting before any budget is spent;
the speed benchmarks build the backbone they are asked for.

``recipe_sweep.py`` and ``simclr_budget.py`` run for hours when they run; these tests start
them with one bad setting each, which must stop them at the start with a one-line error
(exit code 2) after the protocol and the config models have been read for real. Most
settings are tried on the script's ``main`` in this process, with its training step
replaced by one that fails the test; one case per script runs it as a real process.
"""

from __future__ import annotations

import importlib.util
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


def _refused_in_process(script: str, args: list[str], train: tuple[str, ...], tmp_path, monkeypatch, capsys) -> str:
    """``script``'s ``main`` run with ``args``: it must exit 2 before calling any of ``train``; its stderr."""
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", REPO / "benchmarks" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def trained(*_args, **_kwargs):
        raise AssertionError(f"{script} started training with {args}")

    for name in train:
        monkeypatch.setattr(module, name, trained)
    monkeypatch.setattr(sys, "argv", [script, *args, "--out", str(tmp_path / "out.json")])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 2
    assert not (tmp_path / "out.json").exists()
    return capsys.readouterr().err


def test_recipe_sweep_refuses_a_bad_point_in_a_real_process(tmp_path):
    done = _run("recipe_sweep.py", "--task", "simclr", "--point", "task_config.temperature=0", tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "temperature: Input should be greater than 0" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--task", "rotation", "--point", "backbone.stem_pool=false", "--point", "trainer.nope=1"],
            "--point 'trainer.nope=1': unknown key 'trainer.nope'",
        ),
        (["--task", "rotatio"], "--task: unknown task 'rotatio'; choose one of"),
        (["--minutes", "nan"], "--minutes must be a positive number"),
        (["--no-defaults"], "--no-defaults needs at least one --point"),
    ],
)
def test_recipe_sweep_refuses_a_bad_point_before_training(tmp_path, monkeypatch, capsys, args, message):
    assert message in _refused_in_process("recipe_sweep.py", args, ("run_point",), tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ours-set", "trainer.nope=1"], "--ours-set: unknown key 'trainer.nope'"),
        (["--ours-set", "trainer.lr=-1"], "trainer.lr: Input should be greater than 0"),
        (["--ours-set", "backbone.small_stem=true", "--ours-set", "backbone.stem_pool=true"], "small_stem=true has no max-pool"),
        (["--ours-image-size", "4"], "--ours-image-size must be between 8 and 1024"),
    ],
)
def test_simclr_budget_refuses_a_bad_setting_before_training(tmp_path, monkeypatch, capsys, args, message):
    stderr = _refused_in_process("simclr_budget.py", ["--rows", "ours", *args], ("ours", "lightly_row"), tmp_path, monkeypatch, capsys)
    assert message in stderr


def test_simclr_budget_refuses_a_work_folder_that_holds_a_run(tmp_path):
    (tmp_path / "work" / "ours").mkdir(parents=True)
    done = _run("simclr_budget.py", "--rows", "ours", "--work", str(tmp_path / "work"), tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "already holds a run (ours/)" in done.stderr and "Traceback" not in done.stderr
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


def test_finetune_seeds_gives_pretrained_and_scratch_the_same_network_and_labels(tmp_path):
    """``finetune_seeds.py``: per seed one fine-tune of the target and one of the same network from scratch."""
    import json

    import torch

    from ssl_toolkit.backbones import create_backbone
    from ssl_toolkit.checkpoints import save_backbone
    from ssl_toolkit.config import BackboneConfig, DataConfig
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.eval.probe import label_subset

    src = load_source(DataConfig(name="digits"))
    torch.manual_seed(1)
    model, spec = create_backbone(BackboneConfig(name="test_resnet", small_stem=False, stem_pool=False), src.channels, src.image_size)
    meta = {"task": "random-init", "backbone": spec.to_dict(), "in_chans": src.channels, "image_size": src.image_size}
    save_backbone(tmp_path / "run", model, {**meta, "mean": list(src.mean), "std": list(src.std)})

    done = _run(
        "finetune_seeds.py",
        "--target",
        str(tmp_path / "run"),
        "--data",
        "digits",
        "--fraction",
        "0.1",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["backbone"] == {"name": "test_resnet", "small_stem": False, "stem_pool": False, "kwargs": {}}
    assert [(r["kind"], r["seed"]) for r in result["rows"]] == [("pretrained", 0), ("scratch", 0), ("pretrained", 1), ("scratch", 1)]
    for r in result["rows"]:  # both kinds fine-tune the same network on the seed's stratified 10%
        assert r["network"] == "test_resnet, small stem False, stem pool False"
        assert r["n_train"] == len(label_subset(src.train.labels, 0.1, r["seed"]))
    top1 = {(r["kind"], r["seed"]): 100 * r["top1"] for r in result["rows"]}
    assert all(0 <= v <= 100 for v in top1.values())
    gaps = [top1["pretrained", s] - top1["scratch", s] for s in (0, 1)]
    assert abs(result["gap_mean"] - sum(gaps) / 2) < 1e-9 and result["gap_min"] == min(gaps)
    assert "| gap |" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fraction", "0"], "--fraction must be in (0, 1]"),
        (["--fraction", "nan"], "--fraction must be in (0, 1]"),
        (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
        (["--epochs", "0"], "--epochs and --batch-size must be at least 1"),
    ],
)
def test_finetune_seeds_refuses_a_bad_setting_before_training(tmp_path, monkeypatch, capsys, args, message):
    stderr = _refused_in_process(
        "finetune_seeds.py", ["--target", str(tmp_path / "missing"), *args], ("run",), tmp_path, monkeypatch, capsys
    )
    assert message in stderr


def test_finetune_seeds_says_in_one_line_that_a_target_is_missing(tmp_path):
    done = _run("finetune_seeds.py", "--target", str(tmp_path / "missing"), tmp_path=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_finetune_seeds_refuses_an_unwritable_out_before_training(tmp_path):
    (tmp_path / "out.json").mkdir()  # --out names a folder
    done = _run("finetune_seeds.py", "--target", str(tmp_path / "missing"), tmp_path=tmp_path)
    assert done.returncode == 2 and "error: --out" in done.stderr and "Traceback" not in done.stderr
