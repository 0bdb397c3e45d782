"""The checkpoint library: registration (also concurrent), list/show/export/import/remove, probing by name."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_BACKBONE, tiny_config
from safetensors.torch import load_file, save_file
from test_checkpoints import features, make_backbone

import ssl_toolkit as st
from ssl_toolkit.checkpoints import META, WEIGHTS
from ssl_toolkit.errors import UserError
from ssl_toolkit.library import library_root, record_probe_summary, register, register_run
from ssl_toolkit.pretext import TASKS
from ssl_toolkit.pretraining import pretrain


def test_register_list_load_round_trip(tmp_path, toolkit_home):
    model, _ = make_backbone(tmp_path / "run")
    meta = register_run(tmp_path / "run")
    name = meta["library_name"]
    assert name.startswith(f"rotation-{TINY_BACKBONE}-synthetic-")
    entry = toolkit_home / "checkpoints" / name
    assert sorted(p.name for p in entry.iterdir()) == [WEIGHTS, META]
    assert json.loads((tmp_path / "run" / META).read_text())["library_name"] == name
    [row] = st.list_checkpoints()
    assert (row["name"], row["task"], row["backbone"], row["dataset"], row["epochs"]) == (name, "rotation", TINY_BACKBONE, "synthetic", 1)
    assert row["size_bytes"] == (entry / WEIGHTS).stat().st_size and row["damaged"] is None
    loaded, lmeta = st.load_backbone(name)
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(features(model, x), features(loaded, x))
    size = (entry / WEIGHTS).stat().st_size
    with open(entry / WEIGHTS, "r+b") as f:
        f.truncate(1000)  # a copy cut short: list says so from the size, without reading the weights
    [row] = st.list_checkpoints()
    assert row["damaged"] == f"weights file is 1,000 bytes, not {size:,}"
    assert lmeta["name"] == name and lmeta["run_dir"] == str((tmp_path / "run").resolve())
    # the same default name again gets a suffix; an explicit name that is taken is refused
    assert register_run(tmp_path / "run")["library_name"] == f"{name}-2"
    with pytest.raises(UserError, match="already exists"):
        register((entry / WEIGHTS).read_bytes(), lmeta, name, unique=False)


def _register_in_process(args: tuple[str, str, str]) -> str:
    home, weights, meta = args
    import os

    os.environ["SSL_TOOLKIT_HOME"] = home
    from ssl_toolkit.library import register as reg

    return reg(Path(weights).read_bytes(), json.loads(Path(meta).read_text()), "same-name")["name"]


def test_two_concurrent_registrations_both_land(tmp_path, toolkit_home):
    make_backbone(tmp_path / "run")
    args = (str(toolkit_home), str(tmp_path / "run" / WEIGHTS), str(tmp_path / "run" / META))
    with mp.get_context("fork").Pool(4) as pool:
        names = pool.map(_register_in_process, [args] * 4)
    assert sorted(names) == ["same-name", "same-name-2", "same-name-3", "same-name-4"]
    assert sorted(r["name"] for r in st.list_checkpoints()) == sorted(names)
    for n in names:
        st.load_backbone(n)  # complete and intact
    assert not [p for p in library_root().iterdir() if p.name.startswith(".")]  # no temp folders left


def test_probe_results_reach_both_copies(tmp_path, toolkit_home):
    make_backbone(tmp_path / "run")
    name = register_run(tmp_path / "run")["library_name"]
    record_probe_summary(tmp_path / "run", "linear-1", {"top1": 0.5})
    record_probe_summary(library_root() / name, "knn-0.1", {"top1": 0.75})
    for folder in (tmp_path / "run", library_root() / name):
        assert set(json.loads((folder / META).read_text())["probes"]) == {"linear-1", "knn-0.1"}
    [row] = st.list_checkpoints()
    assert (row["best_probe"], row["best_top1"]) == ("knn-0.1", 0.75)
    st.load_backbone(name)  # appended metadata leaves the weights hash valid


def test_list_ranks_each_kind_by_its_own_metric(tmp_path, toolkit_home, cli):
    """Multi-label results (no top-1) and two-class results (top-1 is plain accuracy) show their headline metric."""
    make_backbone(tmp_path / "run")
    name = register_run(tmp_path / "run")["library_name"]
    entry = library_root() / name
    record_probe_summary(entry, "tags-linear-1", {"top1": None, "metric": "mAP", "score": 0.8123})
    record_probe_summary(entry, "tags-knn-1", {"top1": None, "metric": "mAP", "score": 0.7})
    [row] = st.list_checkpoints()
    assert (row["best_top1"], row["headline_probe"], row["headline_metric"], row["headline_score"]) == (
        None,
        "tags-linear-1",
        "mAP",
        0.8123,
    )
    code, out, _ = cli("checkpoints", "list")
    assert code == 0 and "mAP 0.8123 (tags-linear-1)" in out
    record_probe_summary(entry, "pair-linear-1", {"top1": 0.95, "metric": "roc_auc", "score": 0.61})
    record_probe_summary(entry, "pair-knn-1", {"top1": 0.9, "metric": "roc_auc", "score": 0.72})
    [row] = st.list_checkpoints()
    assert (row["best_probe"], row["best_top1"]) == ("pair-linear-1", 0.95)  # the highest top-1, as before
    assert (row["headline_probe"], row["headline_metric"], row["headline_score"]) == ("pair-knn-1", "roc_auc", 0.72)
    assert "ROC-AUC 0.7200 (pair-knn-1)" in cli("checkpoints", "list")[1]
    record_probe_summary(entry, "digits-linear-0.1", {"top1": 0.5})
    assert "top-1 50.00% (digits-linear-0.1)" in cli("checkpoints", "list")[1]  # classes rank first


def test_cli_list_show_import_remove_and_errors(tmp_path, cli):
    make_backbone(tmp_path / "run")
    code, out, err = cli("checkpoints", "list")
    assert code == 0 and "no checkpoints" in out
    code, out, err = cli("checkpoints", "import", tmp_path / "run", "--name", "mine")
    assert code == 0, err
    code, out, err = cli("checkpoints", "import", tmp_path / "run", "--name", "mine")
    assert code == 2 and "already exists" in err
    code, out, err = cli("checkpoints", "list", "--task", "rotation")
    assert code == 0 and "mine" in out and "BEST PROBE" in out
    code, out, err = cli("checkpoints", "list", "--json", "--backbone", "resnet50")
    assert code == 0 and json.loads(out) == []
    code, out, err = cli("checkpoints", "list", "--task", "jigsaw", "--backbone", "vit_small_patch16_224")
    assert (code, out) == (
        0,
        f"no checkpoints in {library_root()} matching the filters (tasks in it: rotation; backbones in it: test_resnet)\n",
    )
    code, out, err = cli("checkpoints", "list", "--backbone", "resnet18")  # a real model the library does not hold
    assert (code, out) == (0, f"no checkpoints in {library_root()} matching the filters (backbones in it: test_resnet)\n")
    code, out, err = cli("checkpoints", "list", "--task", "Rotatoin")  # no such task: a typo, not an empty list
    assert (code, out, err) == (
        2,
        "",
        "error: unknown task 'Rotatoin' (did you mean 'rotation'?); tasks: " + ", ".join(TASKS.names()) + "\n",
    )
    code, out, err = cli("checkpoints", "list", "--json", "--backbone", "test_resnt")
    assert (code, out, err) == (2, "", "error: 'test_resnt' is not a timm model name (did you mean 'test_resnet'?)\n")
    code, out, err = cli("checkpoints", "show", "mine")
    assert code == 0 and "intact" in out and "weights_sha256:" in out and "timm_name: test_resnet" in out
    code, out, err = cli("checkpoints", "show", "mien")
    assert code == 2 and "did you mean 'mine'" in err
    code, out, err = cli("checkpoints", "show", "mine", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["intact"] is True and shown["path"] == str(library_root() / "mine")
    assert shown["backbone"]["timm_name"] == "test_resnet"
    # a damaged weights file: refused on load, reported by show
    w = library_root() / "mine" / WEIGHTS
    w.write_bytes(w.read_bytes()[:-100])
    code, out, err = cli("checkpoints", "export", "mine", "--out", tmp_path / "x.safetensors")
    assert code == 2 and err.strip() == "error: checkpoint mine is corrupt (hash mismatch)"
    assert not (tmp_path / "x.safetensors").exists()
    code, out, err = cli("checkpoints", "show", "mine")
    assert "# weights: CORRUPT (hash mismatch)" in out
    code, out, err = cli("checkpoints", "show", "mine", "--json")
    assert code == 0 and json.loads(out)["intact"] is False
    w.unlink()
    code, out, err = cli("checkpoints", "show", "mine")
    assert "# weights: MISSING (no weights file)" in out
    code, out, err = cli("checkpoints", "remove", "mine")
    assert code == 0 and not (library_root() / "mine").exists()
    code, out, err = cli("checkpoints", "remove", "mine")
    assert code == 2 and "no checkpoint named 'mine'" in err
    code, out, err = cli("checkpoints", "import", tmp_path / "run", "--name", "../escape")
    assert code == 2 and "invalid checkpoint name" in err
    code, out, err = cli("checkpoints", "import", tmp_path / "run", "--name", "")  # not taken as "the default name"
    assert code == 2 and err.startswith("error: invalid checkpoint name ''") and st.list_checkpoints() == []
    lone = tmp_path / "lone" / "w.safetensors"
    lone.parent.mkdir()
    lone.write_bytes(b"weights")
    code, out, err = cli("checkpoints", "import", lone)
    assert (code, err) == (
        2,
        f"error: {lone} has no metadata next to it (looked for w.safetensors.json, w.json, meta.json in {lone.parent}): "
        "a backbone needs it to be rebuilt; for weights from elsewhere write w.safetensors.json with backbone.timm_name, "
        "backbone.kwargs, in_chans, image_size, mean and std (docs/checkpoints.md, 'Weights from elsewhere')\n",
    )


def test_weights_from_plain_timm_with_the_documented_metadata_are_probed_and_imported(tmp_path, cli):
    import timm

    doc = (Path(__file__).parents[1] / "docs" / "checkpoints.md").read_text()
    example = json.loads(doc.split("### Weights from elsewhere")[1].split("```json")[1].split("```")[0])
    example.update(image_size=8, mean=[0.5], std=[0.25])  # digits' size
    model = timm.create_model(example["backbone"]["timm_name"], **example["backbone"]["kwargs"])
    save_file(model.state_dict(), tmp_path / "r18.safetensors")
    (tmp_path / "r18.safetensors.json").write_text(json.dumps(example))
    code, out, err = cli("probe", tmp_path / "r18.safetensors", "--data", "digits", "--mode", "knn", "--json")
    assert code == 0 and "is loaded unverified" in err and 0.1 < json.loads(out.splitlines()[-1])["top1"] <= 1
    code, out, err = cli("checkpoints", "import", tmp_path / "r18.safetensors", "--name", "r18")
    assert code == 0, err
    entry = st.show_checkpoint("r18")
    assert entry["intact"] and entry["backbone"]["timm_name"] == "resnet18" and entry["in_chans"] == 1


def test_a_folder_put_in_the_library_by_hand_under_no_valid_name_is_listed_as_such_and_never_suggested(
    tmp_path, toolkit_home, cli, monkeypatch
):
    import shutil

    make_backbone(tmp_path / "run")
    name = register_run(tmp_path / "run", "rot-a")["library_name"]
    shutil.copytree(toolkit_home / "checkpoints" / name, toolkit_home / "checkpoints" / "rot a")
    rows = {r["name"]: r for r in st.list_checkpoints()}
    assert (
        rows["rot a"]["error"] == "not a checkpoint name (letters, digits, '._+-'): rename or delete the folder"
        and rows["rot a"]["task"] is None
    )
    assert rows["rot-a"]["task"] == "rotation" and "error" not in rows["rot-a"]
    code, out, _ = cli("checkpoints", "list")
    assert code == 0 and "rot a  " in out and "rename or delete the folder" in out
    with pytest.raises(UserError, match=r"^no run folder, backbone file or library checkpoint named 'rot b' \(did you mean 'rot-a'\?\)$"):
        st.load_backbone("rot b")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rot-a").mkdir()  # a folder in the working folder with an entry's name: the path is read, and the entry named
    code, _, err = cli("probe", "rot-a", "--mode", "knn")
    lib = toolkit_home / "checkpoints" / "rot-a"
    assert code == 2 and err.endswith(
        f"(a library checkpoint is also named rot-a; a path comes first: give {lib} to use the checkpoint)\n"
    ), err


def test_the_name_asked_is_kept_in_config_yaml_until_the_run_registers_and_a_resume_may_change_it(tmp_path, toolkit_home):
    from ssl_toolkit.api import command_line

    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, online_probe=False)
    run = tmp_path / "run"
    assert pretrain(cfg, out=run, name="first")["library_name"] == "first"
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "first"
    # a run stopped before it registered (Ctrl-C, a kill) holds no backbone yet: its resume registers under the name asked
    cut = tmp_path / "cut"
    assert pretrain({**cfg, "name": "second"}, out=cut)["library_name"] == "second"
    st.remove_checkpoint("second")
    (cut / META).unlink()
    (cut / WEIGHTS).unlink()
    assert pretrain(None, resume=cut)["library_name"] == "second" and sorted(r["name"] for r in st.list_checkpoints()) == [
        "first",
        "second",
    ]
    # trained further, a finished run's backbone gets a name of its own unless one is given, which is recorded
    assert pretrain({"trainer": {"epochs": 2}}, resume=run)["library_name"].startswith(f"rotation-{TINY_BACKBONE}-synthetic-")
    assert pretrain({"trainer": {"epochs": 3}}, resume=run, name="third")["library_name"] == "third"
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "third"
    with pytest.raises(UserError, match=r"^checkpoint 'first' already exists in the library; choose another name$"):
        pretrain({"trainer": {"epochs": 4}}, resume=run, name="first")
    with pytest.raises(UserError, match=r"^the library name is given twice, as b by name= and as a by the config; give it once$"):
        pretrain({**cfg, "name": "a"}, out=tmp_path / "x", name="b")
    with (
        command_line(),
        pytest.raises(UserError, match=r"^invalid checkpoint name '_x': use ASCII letters, digits, .* starting with a letter or digit"),
    ):
        pretrain({**cfg, "name": "_x"}, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (run / META).unlink()  # unfinished again: a resume may not ask for fewer epochs than its checkpoint holds
    with (
        command_line(),
        pytest.raises(UserError, match=rf"^{run} has trained 3 epochs already, more than --epochs 2 asks; give 3 or more$"),
    ):
        pretrain({"trainer": {"epochs": 2}}, resume=run)


def test_a_checkpoint_saved_mid_epoch_counts_the_epochs_done_and_the_part_of_the_next(tmp_path):
    from ssl_toolkit.run_folder import RunFolder

    def saved(processed: int, batches: int, last: bool) -> tuple[int, bool]:  # counters as Lightning saves them
        epochs = {"completed": 4, "processed": processed}
        progress = {"epoch_progress": {"total": epochs, "current": epochs}}
        progress["epoch_loop.batch_progress"] = {"current": {"completed": batches}, "is_last_batch": last}
        torch.save({"global_step": 45, "epoch": 4, "loops": {"fit_loop": progress}}, tmp_path / "last.ckpt")
        return RunFolder(tmp_path).check_checkpoint()[:2]

    assert saved(4, 5, False) == (4, True)  # a Ctrl-C in the fifth epoch
    assert saved(5, 10, True) == (5, False)  # saved at an epoch's end: the epoch is processed, not yet completed
    assert saved(4, 10, True) == (5, False)  # a Ctrl-C after an epoch's last step: the resume finishes that epoch
    assert saved(5, 6, False) == (4, True)  # an epoch cut by max_steps or the time budget: the resume goes on inside it
    assert saved(4, 0, False) == (4, False)  # at an epoch's start


@pytest.mark.slow
def test_two_pretrains_then_list_probe_by_name_and_continue(tmp_path, cli, monkeypatch):
    """The new-user flow: pretrain twice, list, probe by name, continue pretraining, refuse a mismatch."""

    def small(**extra) -> dict:
        cfg = tiny_config("rotation", epochs=1, **extra)
        cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
        cfg["trainer"].update(batch_size=32, online_probe=False)
        return cfg

    pretrain(small(), out=tmp_path / "a", name="rot-a")
    code, out, err = cli(
        "probe",
        "rot-a",
        "--data",
        "synthetic",
        "--set",
        "data.synthetic_train=64",
        "--set",
        "data.synthetic_test=32",
        "--seed",
        "3",
        "--json",
    )
    assert code == 0, err
    probed = json.loads(out.strip().splitlines()[-1])
    meta_b = pretrain(small(init_from="rot-a"), out=tmp_path / "b")
    assert meta_b["init_from"]["name"] == "rot-a" and meta_b["library_name"].startswith("rotation-test_resnet-synthetic-")
    assert meta_b["init_from"]["target"] == "rot-a"  # a library name, as given
    rows = {r["name"]: r for r in st.list_checkpoints()}
    assert set(rows) == {"rot-a", meta_b["library_name"]}
    assert rows["rot-a"]["best_probe"] == "synthetic-linear-1" and rows["rot-a"]["best_top1"] == probed["top1"]
    assert "synthetic-linear-1" in json.loads((tmp_path / "a" / META).read_text())["probes"]  # the run folder has it too
    assert not (library_root() / "rot-a" / "probes").exists()
    summary = json.loads((library_root() / "rot-a" / META).read_text())["probes"]["synthetic-linear-1"]
    details = ("seed", "settings")  # what the report of a library entry shows besides the scores
    assert {k: summary[k] for k in details} == {k: probed[k] for k in details} and summary["seed"] == 3
    code, out, err = cli("checkpoints", "list")
    assert "rot-a" in out and meta_b["library_name"] in out
    with pytest.raises(UserError, match="already exists"):
        pretrain(small(), out=tmp_path / "c", name="rot-a")
    with pytest.raises(
        UserError,
        match=r"architecture mismatch: expected test_resnet \(in_chans=3, no stem max-pool\), found test_resnet \(in_chans=3, small stem\)",
    ):
        pretrain(small(init_from="rot-a", backbone={"small_stem": False}), out=tmp_path / "d")
    monkeypatch.chdir(tmp_path)  # a run folder given by a relative path is recorded by its absolute one
    meta_e = pretrain(small(init_from="a"), out=tmp_path / "e")
    assert meta_e["init_from"]["target"] == str(tmp_path / "a") and meta_e["init_from"]["name"] == "rot-a"


@pytest.mark.slow
def test_probe_results_are_kept_per_dataset_and_one_class_data_is_warned(tmp_path, cli, monkeypatch):
    from PIL import Image

    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, online_probe=False)
    pretrain(cfg, out=tmp_path / "run", name="rot")
    one = tmp_path / "one-class" / "only"
    one.mkdir(parents=True)
    for i in range(10):
        Image.new("RGB", (16, 16), (20 * i, 0, 0)).save(one / f"{i}.png")
    code, out, err = cli(
        "probe", "rot", "--data", "synthetic", "--mode", "knn", "--set", "data.synthetic_train=64", "--set", "data.synthetic_test=32"
    )
    assert code == 0, err
    code, out, err = cli("probe", "rot", "--data", str(tmp_path / "one-class"), "--mode", "knn")
    assert code == 0 and "has a single class" in err, err
    probes = json.loads((tmp_path / "run" / META).read_text())["probes"]
    folder_key = next(k for k in probes if k.startswith("one-class."))
    assert folder_key.endswith("-knn-1") and "synthetic-knn-1" in probes
    assert probes["synthetic-knn-1"]["dataset"] == "synthetic" and probes[folder_key]["top1"] == 1.0
    # one folder has one key however its path is typed; another folder of the same name has its own
    monkeypatch.chdir(tmp_path)
    assert cli("probe", "rot", "--data", "one-class", "--mode", "knn")[0] == 0
    assert cli("probe", "rot", "--data", "./one-class/", "--mode", "knn")[0] == 0
    other = tmp_path / "elsewhere" / "one-class" / "only"
    other.mkdir(parents=True)
    for i in range(10):
        Image.new("RGB", (16, 16), (0, 20 * i, 0)).save(other / f"{i}.png")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli("probe", "rot", "--data", "one-class", "--mode", "knn")[0] == 0
    probes = json.loads((tmp_path / "run" / META).read_text())["probes"]
    assert len(probes) == 3 and folder_key in probes and sum(k.startswith("one-class.") for k in probes) == 2


def test_continued_pretraining_keeps_the_source_stem_pool_unless_set(tmp_path, toolkit_home):
    """A backbone trained with timm's stem and its max-pool at 28 px (before the max-pool rule, or by choice)
    is continued as it was built; an explicit stem_pool that differs is refused."""
    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=28, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, max_steps=2, online_probe=False)
    pretrain({**cfg, "backbone": {"name": TINY_BACKBONE, "stem_pool": True}}, out=tmp_path / "pooled", name="pooled")
    meta = pretrain({**cfg, "init_from": "pooled"}, out=tmp_path / "continued")
    assert meta["backbone"]["stem_pool"] is True and meta["init_from"]["name"] == "pooled"
    assert yaml.safe_load((tmp_path / "continued" / "config.yaml").read_text())["backbone"]["stem_pool"] is True
    fresh = pretrain(cfg, out=tmp_path / "fresh")  # without --init-from the rule applies at 28 px
    assert fresh["backbone"]["stem_pool"] is False
    with pytest.raises(
        UserError, match=r"architecture mismatch: expected test_resnet \(in_chans=3, no stem max-pool\), found test_resnet \(in_chans=3\)"
    ):
        pretrain({**cfg, "init_from": "pooled", "backbone": {"name": TINY_BACKBONE, "stem_pool": False}}, out=tmp_path / "refused")
    assert not (tmp_path / "refused" / "backbone.safetensors").exists()


def test_an_entry_whose_metadata_names_another_weights_file_is_still_hash_checked(tmp_path, cli):
    make_backbone(tmp_path / "run")
    register_run(tmp_path / "run", "mine")
    entry = library_root() / "mine"
    meta = json.loads((entry / META).read_text())
    (entry / META).write_text(json.dumps({**meta, "weights_file": "elsewhere.bin"}))
    state = load_file(entry / WEIGHTS)
    state["conv1.0.weight"] += 1  # still a valid safetensors file, with other weights
    save_file(state, entry / WEIGHTS)
    with pytest.raises(UserError, match=r"checkpoint mine is corrupt \(hash mismatch\)"):
        st.load_backbone("mine")
    code, out, err = cli("checkpoints", "show", "mine")
    assert code == 0 and "# weights: CORRUPT (hash mismatch)" in out


def test_a_suffixed_name_stays_a_valid_name(tmp_path, toolkit_home):
    make_backbone(tmp_path / "run")
    weights, meta = (tmp_path / "run" / WEIGHTS).read_bytes(), json.loads((tmp_path / "run" / META).read_text())
    longest = "a" * 128
    names = [register(weights, meta, longest)["name"] for _ in range(2)]
    assert names == [longest, "a" * 126 + "-2"]
    st.load_backbone(names[1])
    st.remove_checkpoint(names[1])


def test_names_that_differ_only_in_case_are_one_name(tmp_path, toolkit_home, cli):
    """They would be one folder on a case-insensitive filesystem (macOS, Windows); both were kept."""
    make_backbone(tmp_path / "run")
    weights, meta = (tmp_path / "run" / WEIGHTS).read_bytes(), json.loads((tmp_path / "run" / META).read_text())
    assert register(weights, meta, "Rot")["name"] == "Rot"
    assert register(weights, meta, "rot")["name"] == "rot-2"  # unique: the next free name
    code, _, err = cli("checkpoints", "import", tmp_path / "run", "--name", "ROT")
    assert (code, err.strip()) == (2, "error: checkpoint 'Rot' already exists; choose another --name or `ssl checkpoints remove Rot` first")
    with pytest.raises(UserError, match=r"^checkpoint 'Rot' already exists; choose another name or remove_checkpoint\('Rot'\) first$"):
        st.import_checkpoint(tmp_path / "run", name="ROT")  # worded for Python
    with pytest.raises(UserError, match=r"^no checkpoint named 'nope' in the library; see list_checkpoints\(\)$"):
        st.remove_checkpoint("nope")
    code, _, err = cli("pretrain", "--data", "digits", "--name", "rOT", "--out", tmp_path / "new")
    assert (code, err.strip()) == (2, "error: checkpoint 'Rot' already exists in the library; choose another --name")
    assert sorted(p.name for p in library_root().iterdir()) == ["Rot", "rot-2"] and not (tmp_path / "new").exists()
    code, _, err = cli("checkpoints", "import", tmp_path / "run", "--name", "röt")
    assert code == 2 and "use ASCII letters" in err


def test_list_gives_the_steps_of_a_run_cut_inside_its_first_epoch(tmp_path, toolkit_home, cli):
    make_backbone(tmp_path / "run")
    weights, meta = (tmp_path / "run" / WEIGHTS).read_bytes(), json.loads((tmp_path / "run" / META).read_text())
    register(weights, {**meta, "epochs": 0, "steps": 5}, "cut")
    register(weights, {**meta, "epochs": 1, "steps": 2}, "whole")
    code, out, _ = cli("checkpoints", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 0 and " 0 (5 steps) " in rows["cut"] and " 1 " in rows["whole"] and "steps" not in rows["whole"]


def test_list_says_when_an_entry_has_no_metadata(tmp_path, toolkit_home):
    make_backbone(tmp_path / "run")
    (library_root() / "bare").mkdir(parents=True)
    (library_root() / "bare" / WEIGHTS).write_bytes((tmp_path / "run" / WEIGHTS).read_bytes())
    [row] = st.list_checkpoints()
    assert row["error"] == f"unreadable {META}: missing"


def test_an_empty_name_and_a_home_that_is_a_file_are_one_line_each(tmp_path, cli, monkeypatch):
    make_backbone(tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run")  # an empty path must not mean this folder
    for args in (("checkpoints", "import", ""), ("probe", "", "--mode", "knn"), ("embed", "")):
        code, _, err = cli(*args)
        assert (code, err.strip()) == (2, "error: no run folder, backbone file or checkpoint given (the name is empty)"), args
    code, _, err = cli("pretrain", "--init-from", " ", "--out", tmp_path / "new")
    assert code == 2 and "error: --init-from: should name a library checkpoint, run folder or weights file, not be empty" in err
    assert not (tmp_path / "new").exists() and not (tmp_path / "run" / "probes").exists()
    (tmp_path / "home").write_text("a file")
    monkeypatch.setenv("SSL_TOOLKIT_HOME", str(tmp_path / "home"))
    code, out, err = cli("checkpoints", "list")
    home = tmp_path / "home"
    assert code == 2 and err.strip() == f"error: checkpoint library {home / 'checkpoints'}: {home} is not a folder (SSL_TOOLKIT_HOME)"


def test_a_remove_that_loses_a_race_is_one_line(tmp_path, toolkit_home, monkeypatch):
    """A second remover that found the entry, then lost it to the first, gets a UserError, not FileNotFoundError."""
    import ssl_toolkit.library as lib

    make_backbone(tmp_path / "run")
    register_run(tmp_path / "run", name="mine")
    found = lib._existing_entry

    def found_then_removed_by_another(name):
        folder = found(name)
        monkeypatch.setattr(lib, "_existing_entry", found)
        lib.remove_checkpoint(name)  # the other process wins between the check and the rename
        return folder

    monkeypatch.setattr(lib, "_existing_entry", found_then_removed_by_another)
    with pytest.raises(UserError, match="no checkpoint named 'mine' in the library \\(it was removed meanwhile\\)"):
        lib.remove_checkpoint("mine")
    assert list(library_root().iterdir()) == []  # neither remover left a temp folder


def test_a_probe_reaches_only_the_twin_that_names_it_back_and_the_run_gets_its_full_record(tmp_path, cli):
    from ssl_toolkit.eval.probe import record_probe

    make_backbone(tmp_path / "run")
    name = register_run(tmp_path / "run")["library_name"]
    code, _, err = cli("checkpoints", "import", library_root() / name, "--name", "copy")  # keeps the entry's run_dir
    assert code == 0, err
    result = {"dataset": "digits", "mode": "knn", "label_fraction": 0.2, "top1": 0.5, "top5": 0.9, "n_train": 9, "n_test": 3}
    assert json.loads((library_root() / "copy" / META).read_text())["run_dir"] == str((tmp_path / "run").resolve())
    record_probe(library_root() / "copy", {**result, "created": "now"})
    probes = {f: set(json.loads((f / META).read_text()).get("probes", {})) for f in (tmp_path / "run", library_root() / name)}
    assert probes == {tmp_path / "run": set(), library_root() / name: set()}  # before: the run's record was rewritten by its copy's
    record_probe(library_root() / name, {**result, "label_fraction": 0.3, "created": "now"})
    assert set(json.loads((tmp_path / "run" / META).read_text())["probes"]) == {"digits-knn-0.3"}
    assert json.loads((tmp_path / "run" / "probes" / "digits-knn-0.3.json").read_text())["top1"] == 0.5  # what the report reads
    assert not (library_root() / name / "probes").exists()


def test_a_result_for_an_entry_removed_while_it_was_probed_is_said_not_lost_in_silence(tmp_path):
    from ssl_toolkit.eval.probe import record_probe

    make_backbone(tmp_path / "run")
    name = register_run(tmp_path / "run")["library_name"]
    st.remove_checkpoint(name)  # as `ssl checkpoints remove` in another terminal, after the probe loaded the weights
    result = {"dataset": "digits", "mode": "knn", "label_fraction": 1.0, "top1": 0.8125, "n_train": 9, "n_test": 16}
    with pytest.raises(
        UserError,
        match=rf"^the result \(top-1 81\.25% \(knn, 16 test images\)\) could not be recorded: the library entry {name} was removed",
    ):
        record_probe(library_root() / name, {**result, "created": "now"})
    assert not (library_root() / name).exists()


def test_a_name_taken_while_the_run_trained_is_said_with_the_name_it_got(tmp_path, toolkit_home, monkeypatch, capsys):
    """The name is checked free when the run starts; another run finishing first takes it, and this one gets NAME-2."""
    import ssl_toolkit.library as library

    cfg = tiny_config("rotation", epochs=1)
    cfg["data"].update(image_size=16, synthetic_train=64, synthetic_test=32)
    cfg["trainer"].update(batch_size=32, online_probe=False)
    make_backbone(tmp_path / "other")
    real = library.register_run

    def another_run_finishes_first(folder, name=None):
        real(tmp_path / "other", "mine")
        return real(folder, name)

    monkeypatch.setattr(library, "register_run", another_run_finishes_first)
    assert pretrain(cfg, out=tmp_path / "run", name="mine")["library_name"] == "mine-2"
    assert (
        "warning: checkpoint name 'mine' was taken by another run while this one trained; this backbone is 'mine-2' (`ssl probe mine-2`)"
    ) in capsys.readouterr().err.splitlines()


def test_plain_timm_weights_whose_metadata_does_not_say_their_input_are_refused_in_one_line(tmp_path, cli, toolkit_home):
    """Such an import was accepted, then export, probe and embed stopped with a KeyError traceback."""
    import timm

    weights = tmp_path / "r.safetensors"
    save_file(timm.create_model(TINY_BACKBONE, num_classes=0).state_dict(), weights)
    sidecar = tmp_path / "r.safetensors.json"
    sidecar.write_text(json.dumps({"backbone": {"timm_name": TINY_BACKBONE, "kwargs": {"num_classes": 0, "in_chans": 3}}}))
    code, out, err = cli("checkpoints", "import", weights, "--name", "bare")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert (
        err
        == f"error: checkpoint {weights}: {sidecar} does not say in_chans, image_size, mean, std (the input the backbone expects); add them to it\n"
    )
    assert not (library_root() / "bare").exists()
    sidecar.write_text(
        json.dumps({**json.loads(sidecar.read_text()), "in_chans": 3, "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3})
    )
    assert cli("checkpoints", "import", weights, "--name", "bare")[0] == 0
    code, out, err = cli("checkpoints", "export", "bare", "--out", tmp_path / "x.pt", "--format", "torch")
    assert code == 0, err
