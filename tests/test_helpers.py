"""The one-of-each helpers: sizes, device choice, HTML pages, atomic files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_toolkit.atomic import atomic_file
from ssl_toolkit.devices import choose_device
from ssl_toolkit.html_page import data_uri, render_page
from ssl_toolkit.units import human_size


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB"), (3 * 1024**4, "3.0 TiB")],
)
def test_human_size_binary_units(n, text):
    assert human_size(n) == text


def test_choose_device_honours_cpu_and_finds_cuda_when_there():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_render_page_escapes_values_and_refuses_undefined_names(tmp_path):
    (tmp_path / "p.html").write_text("<p>{{ name }}</p><img src='{{ img }}'>")
    html = render_page(tmp_path, "p.html", {"name": "<script>x</script>", "img": data_uri(b"\x89PNG")})
    assert html == "<p>&lt;script&gt;x&lt;/script&gt;</p><img src='data:image/png;base64,iVBORw=='>"
    with pytest.raises(Exception, match="'img' is undefined"):
        render_page(tmp_path, "p.html", {"name": "a"})
    assert render_page(tmp_path, "p.html", {"name": "a"}, strict=False) == "<p>a</p><img src=''>"


def test_atomic_file_keeps_the_old_file_on_error_and_replaces_it_on_success(tmp_path):
    path = tmp_path / "f.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.pt"]
    with atomic_file(path) as tmp:
        torch.save(torch.arange(3), tmp)
    assert torch.equal(torch.load(path, weights_only=True), torch.arange(3)) and sorted(p.name for p in tmp_path.iterdir()) == ["f.pt"]


def test_a_temp_file_a_killed_writer_left_is_removed_by_the_next_write_to_that_file(tmp_path):
    import os
    import re
    import subprocess
    import sys

    from conftest import REPO

    from ssl_toolkit.atomic import atomic_write_text

    writer = (
        "import sys, time\n"
        "from ssl_toolkit.atomic import atomic_file\n"
        "with atomic_file(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    print(tmp.name, flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path / "f.json")], stdout=subprocess.PIPE, text=True, env=env)
    left = tmp_path / proc.stdout.readline().strip()  # .f.json.HOST-PID-RANDOM.tmp
    proc.kill()
    proc.wait()
    assert left.read_bytes() == b"half" and re.fullmatch(rf"\.f\.json\.[0-9a-f]{{8}}-{proc.pid}-\w{{8}}\.tmp", left.name)
    host = left.name[len(".f.json.") :].split("-")[0]
    kept = [
        f".f.json.{host}-{os.getpid()}-abcdefgh.tmp",  # its writer (this process) still runs
        f".f.json.zzzzzzzz-{proc.pid}-abcdefgh.tmp",  # another host's
        f".g.json.{host}-{proc.pid}-abcdefgh.tmp",  # another file's
    ]
    for name in kept:
        (tmp_path / name).write_text("x")
    atomic_write_text(tmp_path / "f.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "f.json"])


@pytest.mark.parametrize("writer", ["export", "run folder"])
def test_weights_and_their_metadata_are_both_synced_before_either_is_renamed(tmp_path, monkeypatch, writer):
    """The metadata was renamed into place before the weights were synced: a kill in that window
    (as long as the weights take to reach the disk) left new metadata beside old weights."""
    import os

    from ssl_toolkit.backbone_files import write_with_sidecar
    from ssl_toolkit.checkpoints import save_backbone

    calls: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("sync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(f"rename {os.path.basename(b)}"), replace(a, b))[1])
    if writer == "export":
        write_with_sidecar(tmp_path / "b.safetensors", b"weights", {"a": 1})
        names = ["b.safetensors", "b.safetensors.json"]
    else:
        save_backbone(tmp_path, torch.nn.Linear(2, 2), {"a": 1})
        names = ["backbone.safetensors", "meta.json"]
    renames = [i for i, c in enumerate(calls) if c.startswith("rename")]
    assert sorted(calls[i][7:] for i in renames) == names and calls.count("sync") >= 2
    assert renames == [len(calls) - 2, len(calls) - 1], calls  # every sync first, then the two renames back to back
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temp file left


def test_a_failed_second_file_leaves_both_earlier_files(tmp_path):
    from ssl_toolkit.atomic import atomic_write_pair

    (tmp_path / "w").write_bytes(b"old weights")
    (tmp_path / "m").mkdir()  # the metadata's place is taken by a folder: its rename fails
    with pytest.raises(OSError):
        atomic_write_pair(tmp_path / "w", b"new weights", tmp_path / "m", b"{}")
    assert (tmp_path / "w").read_bytes() == b"old weights" and sorted(p.name for p in tmp_path.iterdir()) == ["m", "w"]


@pytest.mark.parametrize("name", ["E" * 251 + ".npz", "é" * 125 + ".html"])
def test_the_longest_names_the_filesystem_takes_are_written_atomically(tmp_path, name):
    from ssl_toolkit.atomic import atomic_write_text

    assert len(name.encode()) == 255
    atomic_write_text(tmp_path / name, "x")
    assert (tmp_path / name).read_text() == "x" and [p.name for p in tmp_path.iterdir()] == [name]


def test_per_class_split_draws_the_asked_count_of_each_class_seeded():
    from ssl_toolkit.sampling import per_class_split

    labels = torch.tensor([2, 0, 0, 1, 0, 1, 2, 2, 2, 0])
    chosen, others = per_class_split(labels, lambda n: n // 2, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [2, 1, 2] and torch.bincount(labels[others]).tolist() == [2, 1, 2]
    assert sorted(chosen.tolist() + others.tolist()) == list(range(10))
    np.testing.assert_array_equal(chosen, per_class_split(labels.numpy(), lambda n: n // 2, seed=0)[0])
    draws = {tuple(per_class_split(labels, lambda n: n // 2, seed=s)[0].tolist()) for s in range(8)}
    assert len(draws) > 1  # the seed matters
    assert per_class_split(labels, lambda n: 0, seed=0)[0].tolist() == []


def test_stratified_split_and_example_picks_are_per_class_draws():
    from ssl_toolkit.sampling import per_class_picks, per_class_split, stratified_split

    labels = np.repeat(np.arange(4), [10, 20, 5, 1])
    train, test = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 4, 1, 0]
    assert sorted(train.tolist() + test.tolist()) == list(range(36))
    np.testing.assert_array_equal(test, per_class_split(labels, lambda n: int(round(n * 0.2)), 3)[0])
    picks = per_class_picks(len(labels), labels, per_class=2, max_total=6, seed=0)
    assert labels[picks].tolist() == [0, 0, 1, 1, 2, 2]  # three classes (6 // 2), grouped by class
    assert len(set(picks.tolist())) == 6
    picks = per_class_picks(len(labels), labels, per_class=3, max_total=20, seed=0)
    assert labels[picks].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]  # a one-image class gives its one
    assert per_class_picks(36, None, 2, 7, seed=0).tolist() == sorted(set(per_class_picks(36, None, 2, 7, seed=0).tolist()))


def test_name_keys_rank_each_name_alone():
    from ssl_toolkit.sampling import name_keys, per_class_lowest

    names = [f"c{i % 2}/{i}.png".encode() for i in range(10)]
    keys = name_keys(names, seed=5, purpose=b"test")
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 10
    np.testing.assert_array_equal(name_keys(names[::-1], 5, b"test"), keys[::-1])  # a name's key ignores the others and their order
    assert not np.array_equal(name_keys(names, 6, b"test"), keys) and not np.array_equal(name_keys(names, 5, b"limit"), keys)
    labels = np.arange(10) % 2
    chosen, others = per_class_lowest(labels, keys, lambda n: 2)
    assert np.bincount(labels[chosen]).tolist() == [2, 2] and sorted([*chosen, *others]) == list(range(10))
    for c in (0, 1):  # each class's two lowest keys
        assert set(chosen[labels[chosen] == c]) == set(np.flatnonzero(labels == c)[np.argsort(keys[labels == c])[:2]])


def test_process_seconds_counts_from_the_process_start():
    import subprocess
    import sys

    code = "import time; t = time.time(); from ssl_toolkit.callbacks import process_seconds; time.sleep(1.0); print(process_seconds(), time.time() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    age, since_first_line = float(out[0]), float(out[1])
    assert since_first_line <= age < since_first_line + 5.0  # the interpreter's own start-up comes first


def test_a_full_disk_names_the_output_it_could_not_write(tmp_path, monkeypatch):
    """ENOSPC from a write names no file: the one line said `No space left on device` alone."""
    import errno
    import os

    from ssl_toolkit.atomic import atomic_write_text
    from ssl_toolkit.outputs import describe_os_error

    (tmp_path / "page.html").write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # where a full disk shows: the data reaching it
    with pytest.raises(OSError) as e:
        atomic_write_text(tmp_path / "page.html", "new")
    assert describe_os_error(e.value) == f"No space left on device ({tmp_path / 'page.html'})"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"] and (tmp_path / "page.html").read_text() == "old"


def test_a_failed_allocation_is_recognised_with_its_size_from_either_device():
    import torch

    from ssl_toolkit.errors import out_of_memory

    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to allocate 204800000000 bytes."
    )
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.3 GiB total capacity)")
    assert (out_of_memory(cpu), out_of_memory(gpu), out_of_memory(MemoryError())) == ("190.7 GiB", "2.00 GiB", "memory")
    assert out_of_memory(RuntimeError("Error(s) in loading state_dict")) is None and out_of_memory(ValueError("out of memory")) is None


def test_an_error_line_keeps_a_quoted_name_as_given_and_escapes_what_would_break_the_line():
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.terminal import terminal_safe

    assert str(UserError("a wrapped\n    message\r\n  continues")) == "a wrapped message continues"  # the toolkit's own line breaks
    assert str(UserError("name 'a\tb  c' and '\x1b[31mred'")) == "name 'a\\tb  c' and '\\x1b[31mred'"  # spaces kept, control escaped
    assert terminal_safe("c1/a\nb.png") == "c1/a\\nb.png" == terminal_safe(terminal_safe("c1/a\nb.png"))  # escaping twice is once
    assert terminal_safe("中文 é") == "中文 é"


def test_the_default_run_folder_name_stays_within_a_file_names_length(monkeypatch):
    from ssl_toolkit.run_folder import DEFAULT_NAME_BYTES, RunFolder

    folder = RunFolder.default("rotation", "auto", "/data/" + "Dé" * 120)
    assert folder.path.parent.name == "runs" and len(folder.path.name.encode()) <= DEFAULT_NAME_BYTES
    assert folder.path.name.startswith("rotation-auto-DéDé")
    assert RunFolder.default("rotation", "auto", "digits").path.name.startswith("rotation-auto-digits-")


def test_a_run_config_writes_names_as_they_are_and_reads_them_back(tmp_path):
    import yaml

    from ssl_toolkit.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    folder.write_config({"data": {"name": "/data/café 中文 😀", "odd": "a\nb\x1b"}})
    text = folder.config.read_text(encoding="utf-8")
    assert "/data/café 中文 😀" in text and "\\e" in text  # readable, a control character still escaped
    assert yaml.safe_load(text) == {"data": {"name": "/data/café 中文 😀", "odd": "a\nb\x1b"}}


def test_terminal_columns_count_wide_characters_twice_and_combining_marks_not_at_all():
    from ssl_toolkit.terminal import display_width, pad

    assert [display_width(t) for t in ("cat", "中文", "e\u0301cole", "😀", "")] == [3, 4, 5, 2, 0]
    assert pad("中文", 6) == "中文  " and pad("cat", 6) == "cat   " and pad("toolong", 3) == "toolong"


def test_a_path_that_reads_ambiguously_is_shown_quoted_and_escaped():
    from ssl_toolkit.terminal import quoted_if_odd

    assert quoted_if_odd("/data/a  b") == "/data/a  b" and quoted_if_odd("/data/a\\tb") == "/data/a\\tb"  # plain: as it is
    assert quoted_if_odd("/data/a\tb") == "'/data/a\\tb'" and quoted_if_odd("/data/x ") == "'/data/x '"
