"""Backbone files: safe loading, hash and architecture checks, and exports that plain timm/torch load."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY_BACKBONE
from safetensors.torch import save as st_save

from ssl_toolkit.backbones import BackboneSpec, build_from_spec
from ssl_toolkit.checkpoints import (
    META,
    WEIGHTS,
    check_same_arch,
    describe_arch,
    export_files,
    from_timm_layout,
    load_backbone_files,
    load_snippet,
    save_backbone,
    sha256_bytes,
    to_timm_layout,
)
from ssl_toolkit.errors import UserError
from ssl_toolkit.export import export_checkpoint
from ssl_toolkit.library import library_root, register_run

# a single-conv ResNet stem (resnet18's 7x7 conv1), made small
SINGLE_CONV = ("resnet18", {"channels": [16, 16, 16, 16]})


def make_backbone(
    folder: Path, timm_name: str = TINY_BACKBONE, in_chans: int = 1, small_stem: bool = True, seed: int = 0, **kwargs
) -> tuple[torch.nn.Module, dict]:
    """A randomly initialised backbone saved as a run folder would hold it."""
    spec = BackboneSpec(timm_name, {"num_classes": 0, "in_chans": in_chans, **kwargs}, small_stem)
    torch.manual_seed(seed)
    model = build_from_spec(spec).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval-mode outputs test them too
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    meta = {
        "task": "rotation",
        "task_config": {},
        "backbone": spec.to_dict(),
        "in_chans": in_chans,
        "image_size": 16,
        "mean": [0.5] * in_chans,
        "std": [0.25] * in_chans,
        "dataset": {"name": "synthetic", "channels": in_chans, "n_train": 64},
        "epochs": 1,
        "steps": 2,
        "created": "2026-01-01T00:00:00+00:00",
    }
    meta = save_backbone(folder, model, meta)
    return model, meta


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_round_trip_gives_identical_outputs(tmp_path):
    model, _ = make_backbone(tmp_path / "run")
    loaded, meta = load_backbone_files(tmp_path / "run")
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(features(model, x), features(loaded, x))
    assert not loaded.training
    assert meta["weights_sha256"] == sha256_bytes((tmp_path / "run" / WEIGHTS).read_bytes())


def test_appending_to_meta_keeps_the_hash_valid(tmp_path):
    make_backbone(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / META).read_text())
    meta["probes"] = {"linear-1": {"top1": 0.5}}
    (tmp_path / "run" / META).write_text(json.dumps(meta))
    load_backbone_files(tmp_path / "run")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_weights_are_refused(tmp_path, damage):
    make_backbone(tmp_path / "run")
    w = tmp_path / "run" / WEIGHTS
    data = bytearray(w.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 3]
    w.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"is corrupt \(hash mismatch\)"):
        load_backbone_files(tmp_path / "run", name="mybackbone")


def test_a_runs_training_checkpoint_given_as_a_backbone_names_its_run_folder(tmp_path):
    make_backbone(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text("task: rotation\n")
    (tmp_path / "run" / "last.ckpt").write_bytes(b"a Lightning checkpoint")
    with pytest.raises(
        UserError,
        match=rf"^{tmp_path}/run/last.ckpt is a run's training checkpoint \(for --resume\), not a backbone: give the run folder, {tmp_path}/run$",
    ):
        load_backbone_files(tmp_path / "run" / "last.ckpt")
    assert load_backbone_files(tmp_path / "run") is not None  # the folder itself is the backbone


def test_metadata_without_a_hash_loads_with_a_warning_and_a_malformed_hash_is_refused(tmp_path, capsys, cli):
    make_backbone(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / META).read_text())
    (tmp_path / "run" / META).write_text(json.dumps({**meta, "weights_sha256": "ABC"}))
    with pytest.raises(UserError, match="is not valid backbone metadata: .*weights_sha256"):
        load_backbone_files(tmp_path / "run")
    del meta["weights_sha256"]
    (tmp_path / "run" / META).write_text(json.dumps(meta))
    capsys.readouterr()
    load_backbone_files(tmp_path / "run")
    assert capsys.readouterr().err == f"warning: {tmp_path / 'run' / META} records no weights_sha256; {WEIGHTS} is loaded unverified\n"
    code, out, err = cli("checkpoints", "import", tmp_path / "run", "--name", "nohash")
    assert code == 0, err  # the library records the hash of what it copied
    code, out, err = cli("checkpoints", "show", "nohash")
    assert code == 0 and "# weights: intact" in out
    entry = library_root() / "nohash" / META
    entry.write_text(json.dumps({k: v for k, v in json.loads(entry.read_text()).items() if k != "weights_sha256"}))
    code, out, err = cli("checkpoints", "show", "nohash")
    assert code == 0 and "# weights: CORRUPT (meta.json records no weights_sha256" in out  # as every load says
    code, out, err = cli("probe", "nohash", "--mode", "knn")
    assert code == 2 and err.strip().endswith(f"checkpoint nohash is corrupt (its meta.json records no weights_sha256: {entry.parent})")
    code, out, err = cli("checkpoints", "export", "nohash", "--out", tmp_path / "x.safetensors")
    assert code == 2 and err.strip().endswith(f"checkpoint nohash is corrupt (its meta.json records no weights_sha256: {entry.parent})")
    (entry.parent / WEIGHTS).unlink()
    code, out, err = cli("probe", "nohash", "--mode", "knn")
    assert code == 2 and err.strip().endswith(f"checkpoint nohash is corrupt (no {WEIGHTS}: {entry.parent})")


def test_weights_of_another_architecture_name_both(tmp_path):
    make_backbone(tmp_path / "run", in_chans=1)
    other = build_from_spec(BackboneSpec(TINY_BACKBONE, {"num_classes": 0, "in_chans": 3}, True))
    data = st_save({k: v.contiguous() for k, v in other.state_dict().items()})
    (tmp_path / "run" / WEIGHTS).write_bytes(data)
    meta = json.loads((tmp_path / "run" / META).read_text())
    meta["weights_sha256"] = sha256_bytes(data)
    (tmp_path / "run" / META).write_text(json.dumps(meta))
    with pytest.raises(
        UserError,
        match=r"expected test_resnet \(in_chans=1, small stem\).*conv1.0.weight has shape \(16, 3, 3, 3\), expected \(16, 1, 3, 3\)",
    ):
        load_backbone_files(tmp_path / "run")


class Boom:
    """A pickle that would run code on a plain ``torch.load``/``pickle.load``."""

    def __reduce__(self):
        return (os.mkdir, (os.environ["BOOM_DIR"],))


def test_pickles_are_loaded_weights_only(tmp_path, monkeypatch):
    _, meta = make_backbone(tmp_path / "run")
    boom = tmp_path / "boom"
    monkeypatch.setenv("BOOM_DIR", str(boom))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"conv1.0.weight": Boom()}))
    Path(f"{evil}.json").write_text(json.dumps({**meta, "weights_file": "evil.pt", "weights_sha256": None}))
    with pytest.raises(UserError, match="cannot be read safely"):
        load_backbone_files(evil)
    assert not boom.exists()


def test_timm_layout_pads_a_single_conv_stem_exactly():
    spec = BackboneSpec(SINGLE_CONV[0], {"num_classes": 0, "in_chans": 3, **SINGLE_CONV[1]}, True)
    torch.manual_seed(0)
    ours = build_from_spec(spec).eval()
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    padded = to_timm_layout(state, spec)
    assert padded["conv1.weight"].shape == (64, 3, 7, 7)
    assert torch.equal(from_timm_layout(padded, spec)["conv1.weight"], state["conv1.weight"])
    meta = {"backbone": spec.to_dict(), "in_chans": 3, "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}
    snippet = load_snippet(meta, "unused.safetensors", "timm")
    assert "model.conv1.stride = (1, 1)" in snippet and "model.maxpool = torch.nn.Identity()" in snippet
    plain = timm.create_model(SINGLE_CONV[0], pretrained=False, num_classes=0, in_chans=3, **SINGLE_CONV[1])
    plain.load_state_dict(padded)  # strict: stock timm shapes
    plain.conv1.stride = (1, 1)
    plain.maxpool = torch.nn.Identity()
    x = torch.rand(2, 3, 16, 16)
    assert (features(plain.eval(), x) - features(ours, x)).abs().max() < 1e-5


def test_timm_stem_without_its_max_pool_exports_as_one_line_and_refuses_the_pooled_arch(tmp_path):
    spec = BackboneSpec(SINGLE_CONV[0], {"num_classes": 0, "in_chans": 3, **SINGLE_CONV[1]}, small_stem=False, stem_pool=False)
    torch.manual_seed(0)
    ours = build_from_spec(spec).eval()
    assert isinstance(ours.maxpool, torch.nn.Identity) and ours.conv1.stride == (2, 2)
    state = ours.state_dict()
    assert to_timm_layout(state, spec).keys() == state.keys()  # no weight changes shape
    meta = {"backbone": spec.to_dict(), "in_chans": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    for fmt in ("timm", "safetensors"):
        snippet = load_snippet(meta, "unused.safetensors", fmt)
        assert "# timm's stem without its max-pool, as in training\nmodel.maxpool = torch.nn.Identity()" in snippet
        assert "stride" not in snippet
    plain = timm.create_model(SINGLE_CONV[0], pretrained=False, num_classes=0, in_chans=3, **SINGLE_CONV[1])
    plain.load_state_dict(state)
    plain.maxpool = torch.nn.Identity()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert ours.forward_features(x).shape == (2, 16, 2, 2)  # total stride 16
    assert (features(plain.eval(), x) - features(ours, x)).abs().max() < 1e-6
    pooled = BackboneSpec(spec.timm_name, spec.kwargs)
    assert pooled.stem_pool and describe_arch(spec) == "resnet18 (in_chans=3, channels=[16, 16, 16, 16], no stem max-pool)"
    with pytest.raises(UserError, match="architecture mismatch: expected .*no stem max-pool.*found resnet18"):
        check_same_arch(spec, pooled, "x")
    # metadata from before stem_pool: the max-pool went with the small stem only
    assert BackboneSpec.from_dict({"timm_name": "resnet18", "small_stem": False}).stem_pool
    assert not BackboneSpec.from_dict({"timm_name": "resnet18", "small_stem": True}).stem_pool


@pytest.mark.slow
def test_exports_load_in_a_plain_python_without_ssl_toolkit(tmp_path, toolkit_home):
    """Run the printed snippets literally in ``python -I`` from outside the repository."""
    model, _ = make_backbone(tmp_path / "run")
    name = register_run(tmp_path / "run", "tiny")["library_name"]
    x = torch.rand(4, 1, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    _, timm_snippet = export_checkpoint(name, tmp_path / "exp" / "tiny_timm.safetensors", "timm")
    _, torch_snippet = export_checkpoint(name, tmp_path / "exp" / "tiny.pt", "torch")
    assert "pretrained=True" in timm_snippet and "model.conv1[0].stride = (1, 1)" in timm_snippet
    assert "weights_only=True" in torch_snippet
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\n"
        "outs = []\n"
        + "".join(
            f"exec({s!r})\nassert 'ssl_toolkit' not in sys.modules\nouts.append(model(torch.load({str(tmp_path / 'x.pt')!r})).detach())\n"
            for s in (timm_snippet, torch_snippet)
        )
        + f"torch.save(outs, {str(tmp_path / 'outs.pt')!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Unexpected keys" not in r.stderr and "Missing keys" not in r.stderr
    ref = features(model, x)
    for out in torch.load(tmp_path / "outs.pt"):
        assert (out - ref).abs().max() < 1e-5
    # the torch export is a plain state_dict of tensors for weights_only loading
    state = torch.load(tmp_path / "exp" / "tiny.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def test_exports_come_back_through_load_and_import(tmp_path, cli):
    model, _ = make_backbone(tmp_path / "run", timm_name=SINGLE_CONV[0], in_chans=3, **SINGLE_CONV[1])
    x = torch.rand(2, 3, 16, 16)
    ref = features(model, x)
    for fmt, file in (("timm", "r18.safetensors"), ("safetensors", "r18n.safetensors"), ("torch", "r18.pt")):
        out = tmp_path / file
        _, snippet = export_checkpoint(tmp_path / "run", out, fmt)
        scope: dict = {}
        exec(snippet, scope)  # the printed code, as a user would paste it
        assert (features(scope["model"], x) - ref).abs().max() < 1e-5
        loaded, meta = load_backbone_files(out)  # ssl-toolkit reads its own exports (timm layout included)
        assert meta["export_format"] == fmt
        assert torch.equal(features(loaded, x), ref)
    code, out_text, err = cli("checkpoints", "import", tmp_path / "r18.safetensors", "--name", "r18")
    assert code == 0, err
    from ssl_toolkit import load_backbone

    loaded, meta = load_backbone("r18")
    assert meta["name"] == "r18" and "layout" not in meta
    assert torch.equal(features(loaded, x), ref)


def test_export_refuses_mismatched_file_names(tmp_path):
    make_backbone(tmp_path / "run")
    with pytest.raises(UserError, match="needs a .safetensors"):
        export_checkpoint(tmp_path / "run", tmp_path / "x.bin", "safetensors")
    with pytest.raises(UserError, match="pickled state_dict"):
        export_checkpoint(tmp_path / "run", tmp_path / "x.safetensors", "torch")


def test_export_refuses_any_folder_below_a_run_or_backbone_folder(tmp_path):
    """An export into RUN/probes/ put its .json among the run's probe records; only RUN itself was refused."""
    make_backbone(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text("task: rotation\n")
    for sub in ("probes", "probes/deeper"):
        (tmp_path / "run" / sub).mkdir()
        with pytest.raises(UserError, match=rf"is inside a run or backbone folder \({tmp_path / 'run'}\)"):
            export_checkpoint(tmp_path / "run", tmp_path / "run" / sub / "x.safetensors")
        assert not list((tmp_path / "run" / sub).glob("x.*"))
    (tmp_path / "project" / "exports").mkdir(parents=True)
    (tmp_path / "project" / "config.yaml").write_text("not: a run\n")  # a project's own files do not make a run folder
    (tmp_path / "project" / "meta.json").write_text("{}")
    export_checkpoint(tmp_path / "run", tmp_path / "project" / "exports" / "x.safetensors")
    assert (tmp_path / "project" / "exports" / "x.safetensors.json").is_file()


@pytest.mark.parametrize(
    ("key", "value"),
    [("small_stem", "false"), ("stem_pool", "no"), ("image_size", True), ("weights_bytes", -1), ("dataset.classes", 5)],
)
def test_metadata_values_of_the_wrong_type_are_refused_not_coerced(tmp_path, key, value):
    make_backbone(tmp_path / "run", small_stem=False)  # "false" read as Python would be true: a silently other model
    meta = json.loads((tmp_path / "run" / META).read_text())
    if key.startswith("dataset."):
        meta["dataset"] = {"name": "digits", key.split(".")[1]: value}
    else:
        (meta["backbone"] if key in ("small_stem", "stem_pool") else meta)[key] = value
    (tmp_path / "run" / META).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=f"is not valid backbone metadata: .*{key}"):
        load_backbone_files(tmp_path / "run")


def test_an_export_writes_its_weights_and_metadata_together(tmp_path, cli):
    model, meta = make_backbone(tmp_path / "run")
    out = tmp_path / "exp" / "b.safetensors"
    (tmp_path / "exp" / "b.safetensors.json").mkdir(parents=True)  # the second file cannot be written
    with pytest.raises(OSError):
        export_files(model, meta, out, "safetensors")
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.safetensors.json"]  # no weights without metadata
    code, _, err = cli("checkpoints", "export", tmp_path / "run", "--out", out, "--overwrite")
    assert code == 2 and err.strip().endswith("b.safetensors.json is a folder")


def test_a_meta_json_nested_too_deeply_is_one_unreadable_entry_and_one_line(tmp_path, cli, toolkit_home):
    from test_embed import save_random_backbone

    save_random_backbone(toolkit_home / "checkpoints" / "good", 3, 16, (0.5,) * 3, (0.25,) * 3)
    deep = toolkit_home / "checkpoints" / "deep"
    save_random_backbone(deep, 3, 16, (0.5,) * 3, (0.25,) * 3)
    (deep / "meta.json").write_text('{"a":' * 100_000)  # past the JSON parser's recursion limit
    code, out, err = cli("checkpoints", "list")
    assert code == 0 and "good" in out, err
    assert "unreadable meta.json: invalid JSON" in next(line for line in out.splitlines() if line.startswith("deep "))
    for command in (("checkpoints", "show", "deep"), ("probe", "deep", "--mode", "knn", "--data", "digits")):
        assert cli(*command) == (2, "", f"error: cannot read {deep / 'meta.json'}: JSON nested too deeply\n")


def test_a_plain_timm_user_following_the_printed_notes_gets_the_features_of_ssl_embed(tmp_path, toolkit_home):
    """Colorization's backbone sees the Lab lightness of non-square RGB photos: the notes must say so, and timm's
    data config must describe the centre square resized bilinearly."""
    import numpy as np
    from kornia.color import rgb_to_lab
    from PIL import Image

    import ssl_toolkit as st

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for k in range(n):
            (tmp_path / "imgs" / split / "ab"[k % 2]).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)  # wider than tall: the square is cut from the middle
            Image.fromarray(pixels).save(tmp_path / "imgs" / split / "ab"[k % 2] / f"{k}.png")
    cfg = {
        "task": "colorization",
        "data": {"name": str(tmp_path / "imgs"), "image_size": 16, "workers": 0},
        "backbone": {"name": TINY_BACKBONE},
        "trainer": {"epochs": 1, "batch_size": 8, "max_steps": 1, "progress_bar": False, "accelerator": "cpu"},
    }
    st.pretrain(cfg, out=tmp_path / "run")
    st.embed(tmp_path / "run", out=tmp_path / "emb.npz", split="test")
    with np.load(tmp_path / "emb.npz") as emb:
        ids, reference = [str(i) for i in emb["ids"]], torch.from_numpy(emb["embeddings"])
    exported = st.export_checkpoint(tmp_path / "run", tmp_path / "col.safetensors", "timm")
    code = exported["load_code"]
    assert "kornia.color.rgb_to_lab(rgb)[:, :1] / 100" in code and "box=square, reducing_gap=2.0" in code, code
    scope: dict = {}
    exec(code, scope)  # the printed code, as a user would paste it
    model = scope["model"]
    config = timm.data.resolve_data_config(model=model)
    assert (config["crop_pct"], config["interpolation"], config["input_size"]) == (1.0, "bilinear", (1, 16, 16))
    mean, std = torch.tensor(exported["mean"]).view(1, -1, 1, 1), torch.tensor(exported["std"]).view(1, -1, 1, 1)
    for row, path in enumerate(ids):
        with Image.open(path) as im:
            side = min(im.size)
            square = ((im.width - side) / 2, (im.height - side) / 2, (im.width + side) / 2, (im.height + side) / 2)
            small = im.convert("RGB").resize((16, 16), Image.BILINEAR, box=square, reducing_gap=2.0)
        rgb = torch.from_numpy(np.asarray(small)).permute(2, 0, 1)[None].float() / 255  # (1, 3, 16, 16)
        x = (rgb_to_lab(rgb)[:, :1] / 100 - mean) / std  # (1, 1, 16, 16)
        with torch.no_grad():
            assert (model(x)[0] - reference[row]).abs().max() < 1e-4, path
