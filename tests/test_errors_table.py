"""Walk every row of docs/errors.md through the real CLI: one line on stderr, the message, exit 2."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import timm
import yaml
from PIL import Image

from ssl_toolkit.backbones import BackboneSpec, apply_small_stem
from ssl_toolkit.checkpoints import save_backbone
from ssl_toolkit.config import PretrainConfig

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(?P<env>(?:[A-Z_]+=\S+ )*)ssl (?P<args>[^`]*)` \| (?P<what>[^|]+) \| `(?P<message>[^`]+)` \| (?P<code>\d+) \|$")


def table_rows() -> list[tuple[str, str, int]]:
    rows = []
    for line in (REPO / "docs" / "errors.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows.append((m["env"] + m["args"], m["message"], int(m["code"])))
    return rows


def _run_folder(path: Path, spec: BackboneSpec, in_chans: int = 1) -> Path:
    model = timm.create_model(spec.timm_name, **spec.kwargs)
    if spec.small_stem:
        apply_small_stem(model)
    meta = {"task": "rotation", "backbone": spec.to_dict(), "in_chans": in_chans, "image_size": 16, "mean": [0.3], "std": [0.4]}
    save_backbone(path, model, meta)
    return path


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("errors")
    (root / "empty").mkdir()
    (root / "unreadable").mkdir()
    (root / "unreadable" / "a.png").write_text("not an image")
    for name in ("mixed", "unlabelled"):
        (root / name).mkdir()
        for i in range(6):
            Image.new("RGB", (16, 16), (40 * i, 10, 10)).save(root / name / f"{i}.png")
    (root / "mixed" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "nested" / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "nested" / "a" / "b" / "x.png")
    badname = os.fsdecode(os.fsencode(root) + b"/d\xff")  # a name that is not UTF-8 (held with a lone surrogate)
    os.mkdir(badname)
    Image.new("RGB", (16, 16)).save(os.path.join(badname, "x.png"))
    (root / "nonempty").mkdir()
    (root / "nonempty" / "keep.txt").write_text("x")
    (root / "nockpt").mkdir()
    (root / "nockpt" / "config.yaml").write_text("task: rotation\n")
    spec = BackboneSpec("test_resnet", {"num_classes": 0, "in_chans": 1}, small_stem=True)
    run = _run_folder(root / "run", spec)
    corrupt = _run_folder(root / "corrupt", spec)
    data = bytearray((corrupt / "backbone.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (corrupt / "backbone.safetensors").write_bytes(bytes(data))
    mismatch = _run_folder(root / "mismatch", spec)
    meta = (mismatch / "meta.json").read_text().replace('"small_stem": true', '"small_stem": false').replace('"test_resnet"', '"resnet18"')
    (mismatch / "meta.json").write_text(meta)
    (root / "afile.txt").write_text("a regular file")
    (root / "exported.safetensors").write_text("an earlier export")
    resumable = root / "resumable"
    resumable.mkdir()
    (resumable / "config.yaml").write_text(yaml.safe_dump(PretrainConfig(backbone={"name": "test_resnet"}).model_dump(mode="json")))
    (resumable / "last.ckpt").write_bytes(b"")
    (root / "dup.yaml").write_text("task: rotation\ntask: simclr\n")
    (root / "binary.yaml").write_bytes(b"\x00\xff\xfe\x80")
    emptyconfig = root / "emptyconfig"
    emptyconfig.mkdir()
    (emptyconfig / "config.yaml").write_text("")
    (emptyconfig / "last.ckpt").write_bytes(b"")
    badmeta = _run_folder(root / "badmeta", spec)  # a finished run whose meta.json was cut short
    (badmeta / "config.yaml").write_text((resumable / "config.yaml").read_text())
    (badmeta / "last.ckpt").write_bytes(b"")
    (badmeta / "meta.json").write_text('{"task": ')
    pyconfig = root / "pyconfig"
    pyconfig.mkdir()
    (pyconfig / "config.yaml").write_text("task: !!python/object/apply:os.system ['echo pwned']\n")
    (pyconfig / "last.ckpt").write_bytes(b"")
    badhome = root / "badhome"
    for entry, change in (
        ("bad-probes", {"probes": ["linear"]}),
        ("bad-size", {"image_size": "abc"}),
        ("bad-kwargs", {"backbone": {"timm_name": "test_resnet", "kwargs": "x"}}),
        ("bad-name", {"backbone": {"timm_name": 18}}),
        ("bad-processing", {"processing": {"foo": 1}}),
        ("huge-size", {"image_size": 100000}),
    ):
        folder = badhome / "checkpoints" / entry
        _run_folder(folder, spec)
        meta = json.loads((folder / "meta.json").read_text())
        meta.update(change)
        (folder / "meta.json").write_text(json.dumps(meta))
    return {
        "file": str(root / "afile.txt"),
        "exported": str(root / "exported.safetensors"),
        "resumable": str(resumable),
        "pyconfig": str(pyconfig),
        "dupconfig": str(root / "dup.yaml"),
        "binconfig": str(root / "binary.yaml"),
        "emptyconfig": str(emptyconfig),
        "badmeta": str(badmeta),
        "badhome": str(badhome),
        "missing": str(root / "does-not-exist"),
        "empty": str(root / "empty"),
        "unreadable": str(root / "unreadable"),
        "nested": str(root / "nested"),
        "badname": badname,
        "mixed": str(root / "mixed"),
        "unlabelled": str(root / "unlabelled"),
        "nonempty": str(root / "nonempty"),
        "nockpt": str(root / "nockpt"),
        "run": str(run),
        "corrupt": str(corrupt),
        "mismatch": str(mismatch),
    }


def test_the_table_covers_every_command_that_takes_user_input():
    rows = table_rows()
    assert len(rows) >= 25
    assert {args.split()[0] for args, _, _ in rows} >= {"pretrain", "probe"}


@pytest.mark.parametrize("args, message, code", table_rows(), ids=[r[0][:60] for r in table_rows()])
def test_error_row(cli, places, args, message, code, monkeypatch):
    argv = shlex.split(args.format(**places))
    while "=" in argv[0] and argv[0].split("=")[0].isupper():  # VAR=value before the command
        var, value = argv.pop(0).split("=", 1)
        monkeypatch.setenv(var, value)
    if argv[0] == "pretrain":
        argv += ["--backbone", "test_resnet"] if "--backbone" not in argv else []
        argv += ["--out", places["missing"] + "-out"] if "--out" not in argv and "--resume" not in argv else []
    rc, out, err = cli(*argv)
    assert rc == code, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message.format(**places) in lines[0]
    assert "Traceback" not in err + out
    assert not Path(places["missing"] + "-out").exists()  # nothing written before the error


@pytest.mark.slow
def test_a_user_error_in_a_real_process_has_no_traceback(run_ssl, tmp_path):
    done = run_ssl("probe", tmp_path / "nothing-here")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no run folder, backbone file or library checkpoint named '{tmp_path / 'nothing-here'}'"
    ]


def test_list_marks_bad_metadata_unreadable_and_lists_the_rest(cli, places, monkeypatch):
    monkeypatch.setenv("SSL_TOOLKIT_HOME", places["badhome"])
    _run_folder(
        Path(places["badhome"]) / "checkpoints" / "good", BackboneSpec("test_resnet", {"num_classes": 0, "in_chans": 1}, small_stem=True)
    )
    rc, out, err = cli("checkpoints", "list")
    assert rc == 0 and err == "", err
    rows = {line.split()[0]: line for line in out.strip().splitlines()[1:]}
    assert sorted(rows) == ["bad-kwargs", "bad-name", "bad-probes", "bad-processing", "bad-size", "good", "huge-size"]
    assert "rotation" in rows["good"] and "unreadable meta.json" not in rows["good"]
    for name, field in (
        ("bad-probes", "probes"),
        ("bad-size", "image_size"),
        ("bad-kwargs", "backbone.kwargs"),
        ("bad-name", "backbone.timm_name"),
        ("bad-processing", "processing.foo"),
        ("huge-size", "image_size"),
    ):
        assert f"unreadable meta.json: {field}:" in rows[name], rows[name]


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KB tmpfs (root only; skipped where mounting is not allowed)."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize(
    "command",
    [
        ("checkpoints", "export", "{run}", "--out", "{disk}/b.safetensors"),
        ("checkpoints", "export", "{run}", "--format", "onnx", "--out", "{disk}/b.onnx"),  # written by torch.onnx, then moved
        ("embed", "{run}", "--data", "digits", "--out", "{disk}/e.npz"),  # written through a memory map: reserved first
        ("embed", "{run}", "--data", "digits", "--out", "{disk}/e.npy"),
    ],
)
def test_a_full_disk_is_one_line_and_leaves_nothing_behind(cli, places, full_disk, command):
    rc, out, err = cli(*(a.format(run=places["run"], disk=full_disk) for a in command))
    assert rc == 2 and err.strip().splitlines() == [err.strip()] and err.startswith("error: No space left on device"), err
    assert f"({full_disk}/" in err  # the output is named
    assert list(full_disk.iterdir()) == []


def test_a_full_feature_cache_is_one_warning_and_the_embeddings_are_written(cli, places, full_disk, toolkit_home, tmp_path):
    """torch.save reports a full disk as a RuntimeError: the cache is optional, so the command goes on without it."""
    import numpy as np

    (toolkit_home / "cache").mkdir(parents=True, exist_ok=True)
    (toolkit_home / "cache" / "features").symlink_to(full_disk)
    rc, out, err = cli("embed", places["run"], "--data", "digits", "--out", tmp_path / "e.npz")
    assert rc == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning: features are not cached: ")]
    cache = toolkit_home / "cache" / "features"
    assert len(warning) == 1 and f"bytes into {cache} failed (no space left on the device: 0 B free)" in warning[0], err
    assert np.load(tmp_path / "e.npz")["embeddings"].shape[0] == 1797 and list(full_disk.iterdir()) == []


def test_a_probe_result_that_cannot_be_recorded_is_said_in_the_error(cli, places, full_disk, tmp_path):
    import contextlib
    import re
    import shutil

    run = tmp_path / "run"
    shutil.copytree(places["run"], run)
    shutil.rmtree(run / "probes", ignore_errors=True)
    (run / "probes").symlink_to(full_disk)
    with contextlib.suppress(OSError), open(full_disk / "filler", "wb") as f:  # the disk is full: not a byte more fits
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    meta = (run / "meta.json").read_bytes()
    rc, out, err = cli("probe", run, "--data", "digits", "--mode", "knn", "--k", "5")
    assert rc == 2 and err.strip().splitlines() == [err.strip()], err
    pattern = r"error: the result \(top-1 \d+\.\d\d% \(knn, \d+ test images\)\) could not be recorded: No space left on device \(.*digits-knn-1\.json\)"
    assert re.fullmatch(pattern, err.strip()), err
    assert (run / "meta.json").read_bytes() == meta and [p.name for p in full_disk.iterdir()] == ["filler"]


def test_a_full_disk_under_the_first_of_a_pair_names_that_file(tmp_path, monkeypatch):
    """Weights and metadata are written together: the one that did not fit is the one named."""
    import errno

    from ssl_toolkit import atomic

    (tmp_path / "w.safetensors").write_bytes(b"old weights")
    (tmp_path / "w.safetensors.json").write_text("{}")
    real = atomic._write_synced

    def full_for_big(f, data):
        if len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(atomic, "_write_synced", full_for_big)
    with pytest.raises(OSError) as e:
        atomic.atomic_write_pair(tmp_path / "w.safetensors", b"x" * 1000, tmp_path / "w.safetensors.json", b"{}")
    assert e.value.filename == str(tmp_path / "w.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors", "w.safetensors.json"]
    assert (tmp_path / "w.safetensors").read_bytes() == b"old weights"


def test_control_characters_in_class_names_are_escaped_in_the_terminal(cli, tmp_path):
    for name in ("bad\nname\x1b[31m", "plain"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (30 * i, 90 if name == "plain" else 10, 0)).save(tmp_path / "data" / name / f"{i}.png")
    code, out, err = cli("inspect", tmp_path / "data", "-q")
    assert code == 0, err
    assert "\x1b" not in out and "bad\\nname\\x1b[31m" in out
    row = next(line for line in out.splitlines() if "bad\\nname" in line)
    assert row.split() == ["bad\\nname\\x1b[31m", "3", "1"]  # one row: the name, train and test counts


def test_a_ctrl_c_in_any_command_is_one_line_and_exit_130(cli, monkeypatch):
    """click turns a KeyboardInterrupt into its Abort; the line still says what happened."""
    from ssl_toolkit import library

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(library, "list_checkpoints", ctrl_c)
    code, out, err = cli("checkpoints", "list")
    assert (code, out, err.strip()) == (130, "", "interrupted")
