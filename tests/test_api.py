"""The Python API: its arguments are checked as the command line's options are, and it leaves the caller's process as it was."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config

import ssl_toolkit as st
from ssl_toolkit.config import DataConfig, PretrainConfig, ProbeConfig, TrainerConfig
from ssl_toolkit.errors import UserError


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One finished 1-epoch rotation run (built through the API, in its own library)."""
    folder = tmp_path_factory.mktemp("api") / "run"
    home = folder.parent / "home"
    before = os.environ.get("SSL_TOOLKIT_HOME")
    os.environ["SSL_TOOLKIT_HOME"] = str(home)
    try:
        st.pretrain(tiny_config("rotation", epochs=1), out=folder)
    finally:
        os.environ.pop("SSL_TOOLKIT_HOME") if before is None else os.environ.__setitem__("SSL_TOOLKIT_HOME", before)
    return folder


def test_pretrain_leaves_the_callers_random_streams_environment_and_log_levels_as_they_were(tmp_path):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "SSL_TOOLKIT_RUN_DIR")}
    multiprocessing.set_start_method(None, force=True)  # unset, as in a fresh process (another test's Trainer may have fixed it)
    meta = st.pretrain(tiny_config("rotation", epochs=1), out=tmp_path / "run")
    assert multiprocessing.get_start_method(allow_none=True) is None  # Lightning's worker check fixed it: the caller may still choose
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert {k: os.environ.get(k) for k in env} == env
    assert logging.getLogger("lightning.pytorch").level == logging.INFO
    assert (tmp_path / "run" / "meta.json").is_file() and meta["task"] == "rotation"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda p: st.pretrain({}, out=p / "r", overwrite="no"),
            r"^pretrain\(\): overwrite: Input should be a valid boolean \(got 'no'\)$",
        ),
        (lambda p: st.pretrain({}, outt=p / "r"), r"^pretrain\(\): unexpected keyword argument: outt \(did you mean 'out'\?\)$"),
        (lambda p: st.report("x", umap_neighbors=5), r"^report\(\): unexpected keyword argument: umap_neighbors$"),
        (
            lambda p: st.embed("x", "digits", p / "e.npz", "all", 8, "cpu", 9),
            r"^embed\(\): takes at most 6 positional arguments; 9 is one too many$",
        ),
        (lambda p: st.show_checkpoint(), r"^show_checkpoint\(\): missing required argument: name$"),
        (lambda p: st.shard(p, p / "s", image_size=True), r"^shard\(\): image_size: should be a number, not true \(got True\)$"),
        (lambda p: st.pretrain(resume=p / "nope"), r"^cannot resume .*nope: no such folder$"),
        (lambda p: st.pretrain({}, out=5), r"^pretrain\(\): out should be str \| Path \| None \(got 5\)$"),
        (lambda p: st.probe(123), r"^probe\(\): target should be str \| Path \| None \(got 123\)$"),
        (
            lambda p: st.pretrain({1: 2, "trainer": {"epochs": 1, "batch_size": 8, "lr": 0.1, "weight_decay": 0.0, "seed": 3, "x": "y"}}),
            r"^pretrain\(\): config should be PretrainConfig \| dict\[str, Any\] \| str \| Path \| None \(got \{1: 2, 'trainer'.{61}\.\.\.: its key 1 is not a string\)$",
        ),
        (lambda p: st.load_backbone(None), r"^load_backbone\(\): target should be str \| Path \(got None\)$"),
        (
            lambda p: st.embed("x", "digits", p / "e.npz", batch_size=0),
            r"^embed\(\): batch_size: Input should be greater than or equal to 1 \(got 0\)$",
        ),
        (lambda p: st.embed("x", "digits", p / "e.npz", batch_size=2.5), r"^embed\(\): batch_size: .*fractional part \(got 2.5\)$"),
        (
            lambda p: st.embed("x", "digits", p / "e.npz", split="val"),
            r"^embed\(\): split: Input should be 'train', 'test' or 'all' \(got 'val'\)$",
        ),
        (lambda p: st.embed("x", "digits", p / "e.npz", device="tpu"), r"^device='tpu' is not a device; use cpu, cuda or cuda:N$"),
        (
            lambda p: st.report("x", "digits", p / "r.html", clusters=0),
            r"^report\(\): clusters: Input should be greater than or equal to 1 \(got 0\)$",
        ),
        (
            lambda p: st.embed("x", "digits", p / "e.npz", batch_size=True),
            r"^embed\(\): batch_size: should be a number, not true \(got True\)$",
        ),
        (
            lambda p: st.report("x", "digits", p / "r.html", clusters=True),
            r"^report\(\): clusters: should be a number, not true \(got True\)$",
        ),
        (lambda p: st.report("x", "digits", p / "r.html", seed=False), r"^report\(\): seed: should be a number, not false \(got False\)$"),
        (
            lambda p: st.report("x", "digits", p / "r.html", seed=-1),
            r"^report\(\): seed: Input should be greater than or equal to 0 \(got -1\)$",
        ),
        (
            lambda p: st.report("x", "digits", p / "r.html", umap={"n_neighbor": 5}),
            r"^umap: unknown key 'n_neighbor' \(did you mean 'n_neighbors'\?\)$",
        ),
        (
            lambda p: st.report("x", "digits", p / "r.html", umap={"n_neighbors": 1}),
            r"^umap: n_neighbors: Input should be greater than or equal to 2 \(got 1\)$",
        ),
        (
            lambda p: st.report("x", "digits", p / "r.html", umap={"metric": "bogus"}),
            r"^umap: metric: Input should be 'cosine', .* \(got 'bogus'\)$",
        ),
        (lambda p: st.probe("x", random_init=True), r"^give a target or random_init=True, not both \(x would not be evaluated\)$"),
        (lambda p: st.probe(), r"^probe\(\) needs a target \(run folder, backbone file or library name\) or random_init=True$"),
        (
            lambda p: st.probe("x", backbone="resnet50"),
            r"^backbone= chooses the random_init=True baseline; a target's own backbone is evaluated$",
        ),
        (lambda p: st.probe("x", p / "missing.yaml"), r"^config file does not exist: .*missing\.yaml$"),
        (
            lambda p: st.export_checkpoint("x", p / "b.bin", format="zip"),
            r"^export_checkpoint\(\): format: Input should be 'safetensors', 'timm', 'torch' or 'onnx'",
        ),
    ],
)
def test_a_wrong_argument_is_one_user_error_naming_it_before_any_work(tmp_path, call, message):
    with pytest.raises(UserError, match=message):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_output_path_is_named_as_such_not_taken_for_the_working_folder(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, message in (
        (("report", "x", "--out", ""), "error: --out is empty: give a file name\n"),
        (("embed", "x", "--out", " "), "error: --out is empty: give a file name ending in .npz or .npy\n"),
        (("inspect", "digits", "--dedupe-list", ""), "error: --dedupe-list is empty: give a file name\n"),
        (("checkpoints", "export", "x", "--out", ""), "error: --out is empty: give a file name\n"),
        (("report", "x", "--out", "sub/.html"), "error: --out sub/.html has no name before .html: give one, e.g. sub/out.html\n"),
    ):
        code, _, err = cli(*args)
        assert (code, err) == (2, message), args
    assert list(tmp_path.iterdir()) == []


def test_report_embed_and_inspect_refuse_to_write_over_a_runs_own_files(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("task: rotation\n")
    (folder / "metrics.csv").write_text("epoch\n")
    calls = [
        (lambda: st.report("x", "digits", folder / "config.yaml"), "out"),
        (lambda: st.inspect_data("digits", out=folder / "metrics.csv"), "out"),
        (lambda: st.inspect_data("digits", dedupe_list=str(folder / "config.yaml")), "dedupe_list"),
    ]
    for call, option in calls:
        with pytest.raises(UserError, match=f"^{option}=.* would replace a file of the run or backbone in .*; choose another name$"):
            call()
    assert (folder / "config.yaml").read_text() == "task: rotation\n" and (folder / "metrics.csv").read_text() == "epoch\n"


def test_the_top_level_functions_are_the_documented_ones_with_their_signatures():
    import inspect

    from ssl_toolkit.eval.probe import probe
    from ssl_toolkit.pretraining import pretrain

    assert st.pretrain is pretrain and st.probe is probe
    assert list(inspect.signature(st.pretrain).parameters) == ["config", "out", "overwrite", "resume", "name", "auto_resume"]
    assert list(inspect.signature(st.embed).parameters)[:3] == ["target", "data", "out"]
    assert "Args:" in (st.report.__doc__ or "") and "Args:" in (st.inspect_data.__doc__ or "")
    assert {"pretrain", "probe", "embed", "report", "inspect_data", "list_tasks"} <= set(dir(st))


def test_an_error_names_the_functions_arguments_in_python_and_the_options_on_the_command_line(run, tmp_path, cli, monkeypatch):
    from ssl_toolkit.api import in_python_terms

    folder = tmp_path / "e.npz"
    folder.mkdir()
    with pytest.raises(UserError, match=rf"^out={folder} is a folder$"):
        st.embed(run, out=folder)
    run_copy = tmp_path / "r"
    run_copy.mkdir()
    (run_copy / "x").write_text("")
    with pytest.raises(
        UserError, match=r"already holds files \(not a run's\); use overwrite=True to replace them, or choose another out folder$"
    ):
        st.pretrain(tiny_config("rotation", epochs=1), out=run_copy)  # no config.yaml: nothing to continue
    (run_copy / "config.yaml").write_text("task: rotation\n")
    with pytest.raises(UserError, match=rf"use overwrite=True to replace them, or continue with: pretrain\(resume='{run_copy}'\)$"):
        st.pretrain(tiny_config("rotation", epochs=1), out=run_copy)
    code, _, err = cli("pretrain", "--task", "rotation", "--out", run_copy)
    assert (code, err) == (
        2,
        f"error: {run_copy} already holds files; use --overwrite to replace them, or continue with: ssl pretrain --resume {run_copy}\n",
    )
    monkeypatch.chdir(tmp_path)  # a relative folder, as typed
    with pytest.raises(UserError, match=r"use overwrite=True to replace them, or continue with: pretrain\(resume='r'\)$"):
        st.pretrain(tiny_config("rotation", epochs=1), out="r")
    assert in_python_terms("(--set trainer.backbone_chunk=null keeps it)") == "(trainer.backbone_chunk=null in the config keeps it)"
    assert in_python_terms("continue with: ssl pretrain --resume /r") == "continue with: pretrain(resume='/r')"
    assert in_python_terms("/tmp/a--out/b (--strict, --freeze-stages 9)") == "/tmp/a--out/b (data.strict, evaluator_config.freeze_stages=9)"
    # what the caller gave is quoted as given, though it holds text shaped like an option
    for given in (tmp_path / "my data --strict", tmp_path / "v --set a=b", tmp_path / "w --out y"):
        with pytest.raises(UserError, match=rf"^data path does not exist: {re.escape(str(Path(given).absolute()))}$"):
            st.inspect_data(given)
    with pytest.raises(UserError, match=r"^no run folder, backbone file or library checkpoint named 'r --overwrite'"):
        st.probe("r --overwrite")
    with pytest.raises(UserError, match=r"^config: unknown key '--epochs'"):
        st.pretrain({"--epochs": 3}, out=tmp_path / "f")
    assert (
        in_python_terms("continue with: ssl pretrain --resume /x --out y", {"/x --out y"}) == "continue with: pretrain(resume='/x --out y')"
    )


def test_a_too_small_image_size_names_the_config_key_in_python(tmp_path):
    with pytest.raises(UserError, match=r"; digits is 16 px \(data\.image_size=24\)$"):
        st.pretrain({"task": "jigsaw", "data": {"name": "digits", "image_size": 16}}, out=tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_data_fields_without_a_name_go_on_top_of_the_pretraining_data(run, tmp_path):
    result = st.embed(run, {"limit": 20}, tmp_path / "l.npz", split="train")
    assert result["splits"] == {"train": 20} and result["dataset"] == tiny_config("rotation", epochs=1)["data"]["name"]
    probed = st.probe(run, {"mode": "knn"}, data={"limit": 20})  # data= as embed's and report's
    assert (probed["n_train"], probed["dataset"]) == (20, result["dataset"])
    named = st.probe(None, ProbeConfig(mode="knn"), random_init=True, backbone="test_resnet", data="digits")
    again = st.probe(None, {"mode": "knn", "data": {"name": "digits"}}, random_init=True, backbone="test_resnet")
    when = ("seconds", "created")  # the only fields two identical probes may differ in
    assert named["dataset"] == "digits" and {k: v for k, v in named.items() if k not in when} == {
        k: v for k, v in again.items() if k not in when
    }
    with pytest.raises(UserError, match=r"^probe\(\) was given data= and a config with a data section; give the data once$"):
        st.probe(run, {"data": {"name": "digits"}}, data="digits")


def test_a_run_without_the_online_probe_warns_nothing(tmp_path, monkeypatch):
    import warnings

    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(tmp_path / "home"))
    cfg = tiny_config("rotation", epochs=1)
    cfg["trainer"]["online_probe"] = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        st.pretrain(cfg, out=tmp_path / "r")
    assert [str(w.message) for w in caught] == []  # Lightning's "no val_dataloader" used to reach Python callers


def test_paths_are_taken_wherever_a_name_or_folder_is():
    assert DataConfig(name=Path("imgs"), path=Path("/d"), labels=Path("l.csv")).model_dump(include={"name", "path", "labels"}) == {
        "name": "imgs",
        "path": "/d",
        "labels": "l.csv",
    }
    assert PretrainConfig(init_from=Path("runs/a")).init_from == "runs/a"
    from ssl_toolkit.eval.embed import data_config

    assert data_config(Path("imgs"), 16).name == "imgs"


def test_a_yaml_file_is_a_config_and_a_config_object_resumes_with_only_the_fields_it_sets(run, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(run.parent / "home"))
    knn = tmp_path / "knn.yaml"
    knn.write_text(yaml.safe_dump({"mode": "knn", "evaluator_config": {"k": 5}}))
    from_file = st.probe(run, knn)
    from_dict = st.probe(str(run), {"mode": "knn", "evaluator_config": {"k": 5}})
    when = ("seconds", "created")  # the only fields two identical probes may differ in
    assert {k: v for k, v in from_file.items() if k not in when} == {k: v for k, v in from_dict.items() if k not in when}
    assert (from_file["mode"], from_file["k"]) == ("knn", 5)
    again = st.pretrain(PretrainConfig(trainer=TrainerConfig(epochs=1)), resume=run)
    assert again["finished"] is True  # nothing asked beyond the saved epochs: the run is unchanged


def test_the_checkpoint_library_functions_mirror_the_checkpoints_command(run, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(run.parent / "home"))
    (entry,) = st.list_checkpoints(task="rotation")
    shown = st.show_checkpoint(entry["name"])
    assert shown["intact"] is True and shown["name"] == entry["name"] and Path(shown["path"]).is_dir()
    out = tmp_path / "b.safetensors"
    exported = st.export_checkpoint(entry["name"], out)
    assert out.is_file() and exported["path"] == str(out) and "safetensors" in exported["load_code"]
    added = st.import_checkpoint(out, name="copy")
    assert added["name"] == "copy" and {e["name"] for e in st.list_checkpoints()} == {entry["name"], "copy"}
    assert Path(st.remove_checkpoint("copy")).name == "copy"
    assert [e["name"] for e in st.list_checkpoints()] == [entry["name"]]


@pytest.mark.parametrize(("signum", "code"), [(None, 130), ("SIGTERM", 143)])
def test_a_fine_tune_interrupted_by_ctrl_c_or_sigterm_exits_130_or_143_writing_nothing(run, monkeypatch, signum, code):
    import signal

    from ssl_toolkit.errors import Interrupted
    from ssl_toolkit.evaluators.finetune import FinetuneModule

    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(run.parent / "home"))
    real_step = FinetuneModule.training_step

    def interrupted_step(self, batch, batch_idx):
        if batch_idx == 1:
            if signum is None:
                raise KeyboardInterrupt  # what Ctrl-C raises in the training loop
            os.kill(os.getpid(), getattr(signal, signum))  # Lightning's handler stops at the next batch
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(FinetuneModule, "training_step", interrupted_step)
    handler = signal.getsignal(signal.SIGINT)
    probes = sorted((run / "probes").glob("*")) if (run / "probes").is_dir() else []
    with pytest.raises(Interrupted, match=r"^(interrupted|terminated) at step \d+; nothing was written$") as e:
        st.probe(run, {"mode": "finetune", "epochs": 3, "batch_size": 16})
    assert e.value.exit_code == code
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C works again in the calling process
    assert (sorted((run / "probes").glob("*")) if (run / "probes").is_dir() else []) == probes


def test_list_tasks_is_ssl_tasks(cli):
    import json

    code, out, err = cli("tasks", "--json")
    assert (code, err) == (0, "")
    assert st.list_tasks() == json.loads(out)
    rows = {r["name"]: r for r in st.list_tasks()}
    assert rows["rotation"] == {
        "name": "rotation",
        "description": "predict the rotation (0/90/180/270 degrees) of each image",
        "paper": "Gidaris, Singh & Komodakis, Unsupervised Representation Learning by Predicting Image Rotations, ICLR 2018",
        "needs": "any images",
    }
    assert rows["colorization"]["needs"] == "colour"
    with pytest.raises(UserError, match=r"^list_tasks\(\): unexpected keyword argument: task$"):
        st.list_tasks(task="rotation")
