"""Pretraining end to end through Lightning: run folder, falling loss, config, overwrite and resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from ssl_toolkit.callbacks import process_seconds
from ssl_toolkit.errors import UserError
from ssl_toolkit.pretraining import pretrain


def epoch_losses(run: Path) -> list[float]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [float(r["loss_epoch"]) for r in rows if r.get("loss_epoch")]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["rotation", "simclr"])
def test_two_epochs_on_synthetic_lower_the_loss_and_write_the_run_folder(tmp_path, task):
    run = tmp_path / task
    meta = pretrain(tiny_config(task, epochs=3), out=run)
    for name in ("config.yaml", "metrics.csv", "last.ckpt", "backbone.safetensors", "meta.json"):
        assert (run / name).is_file(), name
    losses = epoch_losses(run)
    assert len(losses) == 3 and losses[-1] < losses[0]
    saved = json.loads((run / "meta.json").read_text())
    assert saved["task"] == task and saved["epochs"] == 3
    assert saved["backbone"]["timm_name"] == "test_resnet" and saved["backbone"]["kwargs"]["num_classes"] == 0
    assert saved["in_chans"] == 3 and saved["image_size"] == 32 and len(saved["mean"]) == 3
    assert saved["dataset"]["name"] == "synthetic" and saved["dataset"]["n_train"] == 256
    assert meta["weights_sha256"] == saved["weights_sha256"]
    age = process_seconds()  # this process's age now; its first training batch came before the fit ended
    assert age is not None and age - saved["wall_seconds"] - 30 < saved["startup_seconds"] < age
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["task"] == task and resolved["trainer"]["lr"] > 0 and "task_config" in resolved
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(r.get("online_top1") for r in rows) and any(r.get("pretext_acc") for r in rows)
    if task == "rotation":
        assert float(meta["final_metrics"]["pretext_acc"]) > 0.25 + 0.1  # above 4-way chance


def test_existing_run_folder_is_not_overwritten_without_flag(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    with pytest.raises(
        UserError, match=r"already holds files \(not a run's\); use overwrite=True to replace them, or choose another out folder$"
    ):
        pretrain(tiny_config("rotation", epochs=1), out=run)
    assert (run / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_a_budget_that_ends_before_the_first_step_says_the_backbone_is_untrained(tmp_path, capsys):
    meta = pretrain(tiny_config("rotation", trainer={"max_minutes": 1e-9}), out=tmp_path / "run")
    err = capsys.readouterr().err
    assert meta["steps"] == 0 and err.endswith(
        "warning: the run ended before its first step (trainer.max_minutes ran out): the backbone saved is its random initialisation, untrained\n"
    )


def test_resume_continues_to_the_planned_epochs(tmp_path):
    run = tmp_path / "r"
    cfg = tiny_config("rotation", epochs=1)
    pretrain(cfg, out=run)
    # raise the planned epochs in the saved config, as a user extending a run would
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["trainer"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    meta = pretrain(resume=run)
    assert meta["epochs"] == 2
    assert len(epoch_losses(run)) == 2


def test_unknown_task_and_config_keys_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"unknown task 'rotatoin' \(did you mean 'rotation'\?\)"):
        pretrain(tiny_config("rotatoin"), out=tmp_path / "a")
    with pytest.raises(UserError, match=r"unknown task 'SimCLR' \(did you mean 'simclr'\?\)"):  # case does not count
        pretrain(tiny_config("SimCLR"), out=tmp_path / "a")
    bad = tiny_config("rotation")
    bad["trainer"]["learning_rate"] = 0.1
    with pytest.raises(UserError, match=r"unknown key 'trainer.learning_rate'"):
        pretrain(bad, out=tmp_path / "b")
    bad = tiny_config("simclr")
    bad["task_config"] = {"temprature": 0.1}
    with pytest.raises(UserError, match=r"unknown key 'temprature' \(did you mean 'temperature'\?\)"):
        pretrain(bad, out=tmp_path / "c")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "task, data, size, changed",
    [
        ("relative-position", "synthetic", 32, {"gap": 0.25}),
        ("jigsaw", "synthetic", 28, {"gap": 0.1}),
        ("relative-position", "synthetic", 28, {"gap": 0.125}),
    ],
)
def test_task_geometry_adapts_to_small_images_when_not_set(tmp_path, cli, task, data, size, changed):
    code, out, err = cli(
        "pretrain",
        "--task",
        task,
        "--data",
        data,
        "--image-size",
        size,
        "--backbone",
        "test_resnet",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--set",
        "data.synthetic_train=64",
        "--set",
        "data.synthetic_test=32",
        "-q",
        "--no-online-probe",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ") and "timm's stem" not in line]
    assert len(notes) == 1 and f"{task} on {size} px images" in notes[0], err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["task_config"]
    assert {k: saved[k] for k in changed} == changed
    explicit = (
        ["--set", "task_config.gap=0.5", "--set", "task_config.jitter=0.075"]
        if task == "relative-position"
        else ["--set", "task_config.gap=0.15"]
    )
    code, out, err = cli(
        "pretrain",
        "--task",
        task,
        "--data",
        data,
        "--image-size",
        size,
        "--backbone",
        "test_resnet",
        "--epochs",
        "1",
        *explicit,
        "--out",
        tmp_path / "explicit",
    )
    assert code == 2 and "needs images of at least" in err  # a geometry the user set is never changed


def test_too_small_for_any_geometry_names_the_smallest_size_the_adaptation_reaches_and_that_size_trains(tmp_path, cli):
    small = ["--backbone", "test_resnet", "--epochs", "1", "--batch-size", "32", "-q", "--no-online-probe"]
    small += ["--set", "data.synthetic_train=64", "--set", "data.synthetic_test=32"]
    code, out, err = cli(
        "pretrain", "--task", "relative-position", "--data", "synthetic", "--image-size", "20", *small, "--out", tmp_path / "a"
    )
    assert code == 2 and err.count("\n") == 1, err
    assert err.strip().endswith(
        "relative-position needs images of at least 34 px (8 px patches with gap 0.5), "
        "or 24 px with jitter 0.0 and gap 0.0; synthetic is 20 px (--image-size 24)"
    ), err
    assert not (tmp_path / "a").exists()
    code, out, err = cli(
        "pretrain", "--task", "relative-position", "--data", "synthetic", "--image-size", "24", *small, "--out", tmp_path / "b"
    )
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["task_config"]
    assert (saved["gap"], saved["jitter"]) == (0.0, 0.0)
    code, out, err = cli("tasks")
    assert "needs: >= 34 px (24 px with a smaller jitter and gap)" in out and "needs: >= 30 px (24 px with a smaller gap)" in out


def test_the_seed_fixes_the_initial_weights_and_so_the_whole_run(tmp_path, one_thread):
    import torch
    from safetensors.torch import load_file

    def run(name: str, seed: int) -> tuple[float, dict]:
        cfg = tiny_config("rotation", epochs=1, trainer={"seed": seed, "max_steps": 2, "online_probe": False})
        meta = pretrain(cfg, out=tmp_path / name)
        return meta["final_loss"], load_file(str(tmp_path / name / "backbone.safetensors"))

    loss_a, weights_a = run("a", 0)
    loss_b, weights_b = run("b", 0)
    loss_c, weights_c = run("c", 1)
    assert loss_a == loss_b  # two runs with one seed: the same initial weights, data order and views
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert loss_c != loss_a and not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)


@pytest.mark.parametrize("max_minutes", [None, 60.0])
def test_the_learning_rate_cosine_ends_at_zero_when_the_epochs_end_the_run_before_the_budget(max_minutes):
    """A real 4-step fit: with a one-hour ``max_minutes`` the two epochs end the run, and the cosine with them."""
    import lightning as L
    from conftest import bench_module, quiet_trainer

    from ssl_toolkit.data.loaders import make_loader

    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    module = bench_module("rotation", images)
    module.cfg = module.cfg.model_copy(update={"max_minutes": max_minutes})
    lrs: list[float] = []

    class RecordLr(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = quiet_trainer(max_epochs=2, callbacks=[RecordLr()])
    trainer.fit(module, make_loader(images, None, 8, shuffle=True, num_workers=0))
    base = module.lr
    assert len(lrs) == 4
    # steps 0..3 of 4: cos(pi * s / 4) -> 1, 0.854, 0.5, 0.146 of the peak (the time share of an hour adds nothing)
    assert lrs == pytest.approx([base, 0.8536 * base, 0.5 * base, 0.1464 * base], rel=1e-3)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_warm_up_epochs_are_epochs_of_the_data_when_max_steps_ends_the_run_first():
    """4 epochs of 2 batches planned, cut at 4 steps: one warm-up epoch is 2 steps, not 4 // 4 = 1."""
    import lightning as L
    from conftest import bench_module, quiet_trainer

    from ssl_toolkit.data.loaders import make_loader

    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    module = bench_module("rotation", images)
    module.cfg = module.cfg.model_copy(update={"warmup_epochs": 1.0})
    lrs: list[float] = []

    class RecordLr(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = quiet_trainer(max_epochs=4, max_steps=4, callbacks=[RecordLr()])
    trainer.fit(module, make_loader(images, None, 8, shuffle=True, num_workers=0))
    base = module.lr
    # warm-up over steps 0, 1 (1/2, 2/2 of the peak), then the cosine over the 2 steps left of 4: 1, 0.5
    assert lrs == pytest.approx([0.5 * base, base, base, 0.5 * base], rel=1e-6)


def test_a_resumed_budget_run_keeps_the_share_of_the_budget_it_had_spent():
    """The cosine of a ``max_minutes`` run follows the time spent before the resume too (Lightning's Timer keeps it)."""
    import lightning as L
    from conftest import bench_module, quiet_trainer
    from lightning.pytorch.callbacks import Timer

    from ssl_toolkit.data.loaders import make_loader

    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    module = bench_module("rotation", images)
    module.cfg = module.cfg.model_copy(update={"max_minutes": 1.0})
    timer = Timer(duration={"minutes": 1})
    timer.load_state_dict({"time_elapsed": {"train": 30.0}})  # what last.ckpt restores: half the minute spent
    lrs: list[float] = []
    shares: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            shares.append(pl_module.time_progress())

    trainer = quiet_trainer(max_epochs=1, callbacks=[timer, Record()])
    trainer.fit(module, make_loader(images, None, 8, shuffle=True, num_workers=0))
    assert len(shares) == 2 and 0.5 <= shares[0] < 0.6  # not 0: the resumed run does not start its cosine again
    assert lrs[0] <= 0.5 * module.lr  # cos(pi * 0.5) of the peak, or less


def test_the_python_api_does_not_warn_about_the_run_folder_it_wrote_itself(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pretrain(tiny_config("rotation", epochs=1), out=tmp_path / "run")
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]


def test_refused_before_training_one_image_an_empty_out_overwrite_with_resume_and_a_run_in_the_library(tmp_path, cli, toolkit_home):
    args = ("pretrain", "--backbone", "test_resnet", "--epochs", "1", "-q")
    for task in ("jigsaw", "rotation"):  # jigsaw's head normalises its batch: one image crashed inside training
        code, out, err = cli(
            *args, "--task", task, "--data", "synthetic", "--image-size", "40", "--set", "data.limit=1", "--out", tmp_path / task
        )
        assert (code, err) == (2, "error: pretraining needs at least 2 training images; synthetic has 1 (--set data.limit=1)\n")
        assert not (tmp_path / task).exists()
    assert cli(*args, "--data", "synthetic", "--out", "") == (2, "", "error: --out is empty; give the run folder to write\n")
    entry = toolkit_home / "checkpoints" / "someone"
    entry.mkdir(parents=True)
    (entry / "meta.json").write_text("{}")
    code, out, err = cli(*args, "--data", "synthetic", "--out", entry, "--overwrite")
    assert (code, err) == (
        2,
        f"error: --out {entry} is inside the checkpoint library ({toolkit_home / 'checkpoints'}); write to a folder of your own\n",
    )
    assert [p.name for p in entry.iterdir()] == ["meta.json"]
    code, out, err = cli("pretrain", "--resume", tmp_path / "run", "--overwrite")
    assert (code, err) == (
        2,
        f"error: --resume {tmp_path / 'run'} continues the run in that folder; --overwrite would start it again: leave one out\n",
    )


def test_a_runs_config_yaml_is_reused_as_config_with_name_overridden_from_any_folder(tmp_path, cli, monkeypatch, one_thread):
    """--name overrides the file's name as --epochs its trainer.epochs; init_from is saved absolute, as the data paths."""
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"]["batch_size"] = 32
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "work" / "base.yaml").write_text(yaml.safe_dump(cfg))
    assert cli("pretrain", "--config", "base.yaml", "--name", "first", "--out", "runs/a", "-q")[0] == 0
    code, _, err = cli("pretrain", "--config", "runs/a/config.yaml", "--init-from", "runs/a", "--name", "second", "--out", "runs/b", "-q")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "work" / "runs" / "b" / "config.yaml").read_text())
    assert (saved["name"], saved["init_from"]) == ("second", str(tmp_path / "work" / "runs" / "a"))
    code, _, err = cli("pretrain", "--resume", "runs/b", "--init-from", "runs/a", "--epochs", "2", "-q")  # as typed: the same folder
    assert code == 0, err
    code, _, err = cli("pretrain", "--resume", "runs/b", "--init-from", "runs", "--epochs", "3", "-q")
    assert code == 2 and f"--resume cannot change init_from (saved '{tmp_path / 'work' / 'runs' / 'a'}', asked 'runs')" in err
    monkeypatch.chdir(tmp_path)  # elsewhere: the saved init_from still names the run
    code, _, err = cli("pretrain", "--config", "work/runs/b/config.yaml", "--name", "third", "--out", "c", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["library_name"] == "third"
