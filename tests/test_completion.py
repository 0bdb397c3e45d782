"""Shell completion of option values and arguments (click's machinery, in-process)."""

from __future__ import annotations

import pytest
from click.shell_completion import BashComplete

from ssl_toolkit.cli import _register_commands, main
from ssl_toolkit.completion import BUILTIN_DATA, BUILTIN_MODES, BUILTIN_TASKS


def _complete(args: list[str], incomplete: str) -> list[tuple[str, str]]:
    _register_commands()
    return [(c.type, c.value) for c in BashComplete(main, {}, "ssl", "_SSL_COMPLETE").get_completions(args, incomplete)]


def test_the_names_completion_lists_are_the_registries_built_in_names():
    from ssl_toolkit.data.sources import BUILTIN_NAMES
    from ssl_toolkit.evaluators import EVALUATORS
    from ssl_toolkit.pretext import TASKS

    assert set(BUILTIN_TASKS) == set(TASKS.names()) and set(BUILTIN_MODES) == set(EVALUATORS.names())
    assert BUILTIN_DATA == BUILTIN_NAMES


@pytest.mark.parametrize(
    ("args", "incomplete", "expected"),
    [
        (["pretrain", "--task"], "r", [("plain", "relative-position"), ("plain", "rotation")]),
        (["pretrain", "--precision"], "bf", [("plain", "bf16-mixed")]),
        (["probe", "--mode"], "", [("plain", m) for m in ("finetune", "knn", "linear", "partial")]),
        (["pretrain", "--data"], "d", [("dir", "d"), ("plain", "digits")]),  # a name, or the shell's folders
        (["inspect"], "./im", [("dir", "./im")]),
    ],
)
def test_option_values_complete_to_names_and_paths(args, incomplete, expected):
    assert _complete(args, incomplete) == expected


def test_backbone_arguments_complete_to_library_names_then_files(toolkit_home):
    for name in ("simclr-a", "simclr-b", "rotation-a", ".tmp-x"):
        (toolkit_home / "checkpoints" / name).mkdir(parents=True)
    assert _complete(["probe"], "sim") == [("file", "sim"), ("plain", "simclr-a"), ("plain", "simclr-b")]
    assert _complete(["checkpoints", "show"], "") == [("plain", "rotation-a"), ("plain", "simclr-a"), ("plain", "simclr-b")]
    assert _complete(["pretrain", "--init-from"], "rot") == [("file", "rot"), ("plain", "rotation-a")]


def test_pretrain_help_lists_the_task_and_data_names_without_importing_torch():
    import subprocess
    import sys

    from conftest import REPO

    code = (
        "import sys\nfrom ssl_toolkit.cli import run\nsys.argv = ['ssl', 'pretrain', '--help']\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    help_text = " ".join(done.stdout.split())
    assert "Pretext task: byol, colorization, inpainting, jigsaw, moco, relative-position, rotation, simclr (see `ssl tasks`)" in help_text
    assert "Dataset name (digits, fashion-mnist, synthetic) or image folder" in help_text
    assert done.stdout.split()[-1] == "False", done.stderr  # a help that answers at once
