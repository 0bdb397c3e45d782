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


def _refused_at_parse(script: str, args: list[str], tmp_path, monkeypatch, capsys) -> str:
    """``script``'s ``main`` run in this process with ``args``: it must exit 2 before any work; the last line of its stderr."""
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", REPO / "benchmarks" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


TASK_LIST = "byol, colorization, inpainting, jigsaw, moco, relative-position, rotation, simclr"
NO_PROC = "cannot write in /proc: No such file or directory"


@pytest.mark.parametrize(
    ("script", "args", "line"),
    [
        ("throughput.py", ["--size", "-1"], "argument --size: must be between 8 and 1024, got -1"),
        ("throughput.py", ["--parts", "2", "--backbone", "bogus"], "argument --backbone: unknown timm model 'bogus'"),
        ("throughput.py", ["--parts", "9"], "argument --parts: unknown part '9'; choose from 1, 2, 3"),
        ("throughput.py", ["--steps", "3", "--window", "5"], "--steps (3) must be at least --window (5)"),
        (
            "compile_speed.py",
            ["--precisions", "32-true,bogus"],
            "argument --precisions: unknown precision 'bogus'; choose from 32-true, 32, bf16-mixed, bf16, 16-mixed, 16",
        ),
        ("compile_speed.py", ["--steps", "0"], "argument --steps: must be at least 1, got 0"),
        ("profile_step.py", ["--tasks", "bogus"], f"argument --tasks: unknown task 'bogus'; choose from {TASK_LIST}"),
        ("profile_step.py", ["--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (
            "precision.py",
            ["--task", "rotatio"],
            f"argument --task: unknown task 'rotatio' (did you mean 'rotation'?); choose from {TASK_LIST}",
        ),
        ("precision.py", ["--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
        (
            "precision.py",
            ["--data", "{tmp}/nothere"],
            "argument --data: no dataset or folder '{tmp}/nothere'; datasets: digits, fashion-mnist, synthetic",
        ),
        (
            "augment_policies.py",
            ["--policies", "basic,bogus", "--out", "{tmp}/out.json"],
            "argument --policies: unknown policy 'bogus'; choose from none, basic, randaugment, autoaugment, trivialaugment",
        ),
        (
            "augment_policies.py",
            ["--seeds", "0,x", "--out", "{tmp}/out.json"],
            "argument --seeds: must be comma-separated integers, got '0,x'",
        ),
        ("augment_policies.py", ["--out", "/proc/x/a.json"], f"argument --out: /proc/x/a.json: {NO_PROC}"),
        (
            "backbone_families.py",
            ["--backbones", "resnet18,bogus", "--out", "{tmp}/out.json"],
            "argument --backbones: unknown timm model 'bogus'",
        ),
        ("backbone_families.py", ["--out", "/proc/x/bf.json"], f"argument --out: /proc/x/bf.json: {NO_PROC}"),
        (
            "backbone_families.py",
            ["--out", "{tmp}/afile/bf.json"],
            "argument --out: {tmp}/afile/bf.json: {tmp}/afile is a file, not a folder",
        ),
        (
            "report_speed.py",
            ["--data", "bogus", "--out", "{tmp}/out"],
            "argument --data: no dataset or folder 'bogus'; datasets: digits, fashion-mnist, synthetic",
        ),
        ("report_speed.py", ["--out", "/proc/x"], f"argument --out: /proc/x: {NO_PROC}"),
        ("report_speed.py", ["--out", "{tmp}/afile"], "argument --out: {tmp}/afile is a file, not a folder"),
        ("data_speed.py", ["--folder", "{tmp}/nothere", "--work", "{tmp}/out"], "argument --folder: no folder {tmp}/nothere"),
        (
            "data_speed.py",
            ["--folder", "{tmp}/photos", "--work", "{tmp}/out", "--parts", "bogus"],
            "argument --parts: unknown part 'bogus'; choose from loader, model, decode, memory, commands, step",
        ),
        (
            "data_speed.py",
            ["--folder", "{tmp}/photos", "--work", "{tmp}/out", "--sizes", "0"],
            "argument --sizes: every value must be at least 1, got '0'",
        ),
        ("recipe_sweep.py", ["--out", "/proc/x/r.json"], f"--out /proc/x/r.json: {NO_PROC}"),
        ("simclr_budget.py", ["--rows", "ours", "--out", "/proc/x/s.json"], f"argument --out: /proc/x/s.json: {NO_PROC}"),
        (
            "simclr_budget.py",
            ["--rows", "ours", "--out", "{tmp}/out.json", "--work", "{tmp}/afile"],
            "--work {tmp}/afile is a file, not a folder",
        ),
        ("eval_speed.py", ["--k", "0"], "argument --k: must be at least 1, got 0"),
        ("eval_speed.py", ["--knn-train", "100"], "--k (200) must be at most --knn-train (100)"),
        ("eval_speed.py", ["--temperature", "nan"], "argument --temperature: must be a finite number above 0, got 'nan'"),
        ("inspect_speed.py", ["--folder", "-3"], "argument --folder: takes a number of images: 0 (no folder) or 10 to 70,000, got -3"),
        ("inspect_speed.py", ["--folder", "{tmp}/photos"], "argument --folder: takes a number of images, got '{tmp}/photos'"),
        (
            "fmnist.py",
            ["--protocol", "bogus"],
            "argument --protocol: unknown protocol 'bogus'; choose from quick, budget15, budget30, "
            "budget15-default-stem, budget15-resnet10t",
        ),
        ("fmnist.py", ["--tasks", "simclr,bogus"], f"argument --tasks: unknown task 'bogus'; choose from {TASK_LIST}"),
        (
            "finetune_seeds.py",
            ["--target", "x", "--out", "{tmp}/afile/y.json"],
            "error: --out {tmp}/afile/y.json: {tmp}/afile is a file, not a folder",
        ),
        ("gpu.py", ["--dry-run", "--window", "0"], "argument --window: must be at least 1, got 0"),
        ("make_photos.py", ["--out", "{tmp}/out", "--n", "0"], "argument --n: must be at least 1, got 0"),
        (
            "make_photos.py",
            ["--out", "{tmp}/out", "--width", "0"],
            "argument --width: must be an even number of pixels from 2 to 8192, got 0",
        ),
        (
            "make_photos.py",
            ["--out", "{tmp}/out", "--test-fraction", "nan"],
            "argument --test-fraction: must be in (0, 0.5] so that both splits get images, got 'nan'",
        ),
        ("make_photos.py", ["--out", "/proc/x"], f"argument --out: /proc/x: {NO_PROC}"),
        ("make_photos.py", ["--out", "{tmp}/afile"], "argument --out: {tmp}/afile is a file, not a folder"),
        ("make_photos.py", ["--out", "{tmp}/photos"], "argument --out: {tmp}/photos is not empty; give a new or empty folder"),
        ("make_photos.py", ["--out", "{tmp}/out", "--link-from", "{tmp}/nothere"], "argument --link-from: no folder {tmp}/nothere"),
        ("make_photos.py", ["--out", "{tmp}/out", "--link-from", "{tmp}/empty"], "--link-from {tmp}/empty holds no .jpg files"),
    ],
)
def test_benchmark_scripts_refuse_a_bad_option_before_any_work(tmp_path, monkeypatch, capsys, script, args, line):
    """Every script checks its options first: exit 2, one ``error:`` line, nothing written."""
    if str(tmp_path).startswith("/proc") or not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    (tmp_path / "afile").write_text("")
    (tmp_path / "empty").mkdir()
    (tmp_path / "photos" / "test").mkdir(parents=True)  # a folder without train/
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    last = _refused_at_parse(script, [a.format(tmp=tmp_path) for a in args], tmp_path, monkeypatch, capsys)
    expected = line.format(tmp=tmp_path)
    assert last == (expected if expected.startswith("error: ") else f"{script}: error: {expected}")
    assert sorted(tmp_path.rglob("*")) == before, "nothing is written"


def test_gpu_benchmark_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    """Without CUDA and without ``--dry-run`` nothing runs on the CPU by surprise, and no temporary folder is left."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "gpu.py: error: no CUDA device on this machine; --dry-run runs every row on the CPU with tiny sizes"
    )
    assert done.stdout == "" and not list(tmp_path.iterdir())
