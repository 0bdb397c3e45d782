"""The command line end to end, as a user runs it: pretrain -> probe --json in real processes."""

from __future__ import annotations

import json

import pytest

BASELINE = ("--random-init", "-b", "test_resnet", "--data", "digits")  # an untrained backbone, evaluated

pytestmark = pytest.mark.slow  # real processes: each imports the whole stack


def test_pretrain_then_probe_through_real_processes(tmp_path, run_ssl):
    run = tmp_path / "rot"
    done = run_ssl(
        "pretrain",
        "--task",
        "rotation",
        "--data",
        "digits",
        "--image-size",
        "16",
        "--backbone",
        "test_resnet",
        "--epochs",
        "2",
        "--batch-size",
        "128",
        "--out",
        run,
        "-q",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "pretrained rotation on digits: 2 epochs" in done.stdout
    assert f"run folder: {run}" in done.stdout

    probe = run_ssl("probe", run, "--data", "digits", "--json", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)  # stdout holds the JSON alone
    assert result["mode"] == "linear" and result["label_fraction"] == 1.0
    assert result["n_train"] == 1438 and result["n_test"] == 359
    assert 0.5 < result["top1"] <= result["top5"] <= 1.0  # 10 classes: chance is 0.1
    assert len(result["per_class_acc"]) == 10 and sum(map(sum, result["confusion"])) == 359
    assert result["seconds"] > 0
    assert "top-1 (%)" in probe.stderr  # the table, beside it
    saved = json.loads((run / "probes" / "digits-linear-1.json").read_text())
    assert saved["top1"] == result["top1"]


def test_a_command_without_its_subcommand_prints_its_help(cli):
    for args in ((), ("checkpoints",)):
        code, out, err = cli(*args)
        assert (code, err) == (0, "") and out.startswith(f"Usage: ssl {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND [ARGS]...")
        assert "Commands:" in out and len(out.splitlines()) > 10


def test_help_explains_every_option(run_ssl):
    done = run_ssl("pretrain", "--help")
    assert done.returncode == 0
    for option in (
        "--task",
        "--data",
        "--backbone",
        "--image-size",
        "--epochs",
        "--batch-size",
        "--lr",
        "--config",
        "--set",
        "--out",
        "--seed",
        "--resume",
        "--accelerator",
        "--devices",
        "--precision",
        "--strategy",
    ):
        assert option in done.stdout, option
    text = " ".join(done.stdout.split())  # the bounds come from the config fields that check them
    assert "Square image side in pixels, 8 to 1,024. [default: the dataset's]" in text
    assert "Images per batch (per device), >= 2. [default: 256]" in text


def test_help_ranges_are_read_from_the_fields():
    from ssl_toolkit.cli import field_range
    from ssl_toolkit.config import PretrainConfig, ProbeConfig
    from ssl_toolkit.inspection.config import InspectConfig

    assert field_range(ProbeConfig, "label_fraction") == "> 0, <= 1"
    assert field_range(InspectConfig, "embed_threshold") == "-1 to 1"
    assert field_range(PretrainConfig, "trainer.lr") == "> 0"
    assert field_range(PretrainConfig, "task") == ""


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("probe", *BASELINE, "--batch-size", "0"), "error: --batch-size: Input should be greater than or equal to 1 (got 0)"),
        (("probe", *BASELINE, "--label-fraction", "0"), "error: --label-fraction: Input should be greater than 0 (got 0.0)"),
        (("probe", *BASELINE, "--mode", "knn", "--k", "0"), "error: --k: Input should be greater than or equal to 1 (got 0)"),
        (("pretrain", "--seed", "-1"), "error: --seed: Input should be greater than or equal to 0 (got -1)"),
        (("inspect", "digits", "--workers", "0"), "error: --workers: Input should be greater than or equal to 1 (got 0)"),
        # the same values given as config keys keep the key's name
        (("probe", *BASELINE, "--set", "batch_size=0"), "error: config: batch_size: Input should be greater than or equal to 1 (got 0)"),
        (
            ("probe", *BASELINE, "--mode", "knn", "--set", "evaluator_config.k=0"),
            "error: evaluator_config (knn): k: Input should be greater than or equal to 1 (got 0)",
        ),
    ],
)
def test_a_bad_option_value_is_named_by_its_option(cli, tmp_path, monkeypatch, args, line):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*args)
    assert (code, err) == (2, line + "\n")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_where_to_run_under_the_other_commands_name_points_to_this_ones(cli):
    code, _, err = cli("probe", *BASELINE, "--device", "cpu")
    assert (code, err) == (
        2,
        "error: No such option '--device'. ('ssl probe' takes --accelerator: cpu, gpu or auto, as Lightning names them)\n",
    )
    code, _, err = cli("embed", "digits", "--accelerator", "cpu")
    assert (code, err) == (
        2,
        "error: No such option '--accelerator'. ('ssl embed' takes --device: cpu, cuda or cuda:N, as torch names them)\n",
    )
    code, _, err = cli("inspect", "digits", "--device", "cpu")  # takes neither: no hint
    assert (code, err) == (2, "error: No such option '--device'. (see 'ssl inspect --help')\n")


@pytest.mark.parametrize("command", [("pretrain",), ("probe", *BASELINE), ("inspect", "digits")])
def test_a_second_config_file_is_refused_not_silently_preferred(cli, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("{}\n")
    (tmp_path / "b.yaml").write_text("{}\n")
    code, _, err = cli(*command, "--config", "a.yaml", "--config", "b.yaml")
    assert (code, err) == (
        2,
        f"error: Invalid value for '--config': given 2 times (a.yaml, b.yaml); give one file (--set adds to it) (see 'ssl {command[0]} --help')\n",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml"]
