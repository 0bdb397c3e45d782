"""Plugins: built-ins found by module, third-party packages by entry point.

The example package in ``tests/plugin_example`` is installed with pip into a folder of
its own (``pip install --target``) that only the test's subprocesses see, so other
processes using this environment never meet its task; nothing needs uninstalling.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from ssl_toolkit.registry import Registry

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "plugin_example"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_registry_imports_its_package_and_entry_points_once(tmp_path, monkeypatch, caplog):
    _write(tmp_path / "demo_things" / "__init__.py", "")
    _write(
        tmp_path / "demo_things" / "registry.py",
        "from ssl_toolkit.registry import Registry\nREG = Registry('thing', package='demo_things', group='demo.things')\n",
    )
    _write(tmp_path / "demo_things" / "one.py", "from demo_things.registry import REG\nREG.register('one')(1)\n")
    _write(tmp_path / "demo_things" / "_private.py", "raise RuntimeError('never imported')\n")
    _write(tmp_path / "demo_ext.py", "from demo_things.registry import REG\nREG.register('two')(2)\n")
    _write(tmp_path / "demo_ext-0.1.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: demo-ext\nVersion: 0.1\n")
    _write(tmp_path / "demo_ext-0.1.dist-info" / "entry_points.txt", "[demo.things]\ntwo = demo_ext\nbroken = demo_no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from demo_things.registry import REG

    assert REG._items == {}  # nothing imported before the first lookup
    with caplog.at_level(logging.WARNING, logger="ssl_toolkit.plugins"):
        assert REG.names() == ["one", "two"]
    assert "plugin 'broken' of demo-ext (demo.things) failed to load: ModuleNotFoundError" in caplog.text
    assert REG.get("two") == 2 and "one" in REG
    from ssl_toolkit.errors import UserError

    with pytest.raises(UserError) as e:  # a name the broken module might have registered: the failure is named with it
        REG.get("three")
    assert str(e.value) == (
        "unknown thing 'three'; valid: one, two; plugin 'broken' did not load, so nothing it registers is here: "
        "demo-ext (demo_no_such_module): ModuleNotFoundError: No module named 'demo_no_such_module'"
    )
    caplog.clear()
    REG.names()
    assert caplog.text == ""  # discovery runs once


def test_the_extra_processes_of_a_ddp_run_keep_plugin_warnings_to_themselves(tmp_path, monkeypatch, caplog):
    _write(tmp_path / "demo_quiet.py", "")
    _write(tmp_path / "demo_quiet-0.1.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: demo-quiet\nVersion: 0.1\n")
    _write(tmp_path / "demo_quiet-0.1.dist-info" / "entry_points.txt", "[demo.quiet]\nbroken = demo_quiet_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from ssl_toolkit.plugins import load_entry_points

    for rank, expected in (("1", 0), ("0", 1)):
        monkeypatch.setenv("LOCAL_RANK", rank)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ssl_toolkit.plugins"):
            failed = load_entry_points("demo.quiet")
        assert list(failed) == ["broken"] and "ModuleNotFoundError" in failed["broken"]
        assert caplog.text.count("plugin 'broken' of demo-quiet (demo.quiet) failed to load") == expected


def test_unknown_name_lists_discovered_ones():
    from ssl_toolkit.errors import UserError

    reg: Registry[int] = Registry("thing")
    reg.register("alpha")(1)
    with pytest.raises(UserError, match=r"unknown thing 'alpah' \(did you mean 'alpha'\?\); valid: alpha"):
        reg.get("alpah")


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose Python sees the example plugin, installed by pip into its own folder."""
    site = tmp_path_factory.mktemp("plugin-site")
    src = tmp_path_factory.mktemp("plugin-src") / "example"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))  # builds write next to the source
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (site / "ssl_example_plugin" / "upside_down.py").is_file()
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])}


SEVERAL = """
import contextlib, io, json, sys
from ssl_toolkit.cli import run
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["ssl", *argv]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def ssl_commands(env: dict[str, str], *commands: list[str]) -> list[tuple[int, str, str]]:
    """Run several ``ssl`` commands in one fresh Python process (one import of the stack); (code, stdout, stderr) each."""
    done = subprocess.run([sys.executable, "-c", SEVERAL, json.dumps(commands)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return [tuple(r) for r in json.loads(done.stdout.strip().splitlines()[-1])]


@pytest.mark.slow
def test_installed_plugin_task_lists_and_pretrains_and_its_evaluator_probes(plugin_env, tmp_path):
    env = {**plugin_env, "SSL_TOOLKIT_HOME": str(tmp_path / "home")}
    run = str(tmp_path / "run")
    small = ["--data", "synthetic", "--set", "data.synthetic_train=64", "--set", "data.synthetic_test=32"]
    tasks, pretrain, probe, bad_metric, foreign_key, training_setting, on_noise = ssl_commands(
        env,
        ["tasks", "--json"],
        [
            "pretrain",
            "--task",
            "upside-down",
            "--backbone",
            "test_resnet",
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--accelerator",
            "cpu",
            "--set",
            "task_config.label_smoothing=0.1",
            "--out",
            run,
            "-q",
            *small,
        ],
        ["probe", run, "--mode", "nearest-mean", "--set", "evaluator_config.metric=euclidean", "--json", *small],
        ["probe", run, "--mode", "nearest-mean", "--set", "evaluator_config.metric=manhattan", *small],
        ["probe", run, "--mode", "nearest-mean", "--k", "5", *small],
        ["probe", run, "--mode", "nearest-mean", "--epochs", "3", *small],
        ["probe", run, "--mode", "nearest-mean", "--data", "noise", "--json"],
    )
    assert tasks[0] == 0, tasks[2]
    rows = {r["name"]: r for r in json.loads(tasks[1])}
    assert rows["upside-down"]["paper"].startswith("Gidaris, Singh & Komodakis") and "rotation" in rows

    assert pretrain[0] == 0, pretrain[2]
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["task"] == "upside-down" and meta["task_config"] == {"label_smoothing": 0.1} and meta["epochs"] == 1

    assert probe[0] == 0, probe[2]
    result = json.loads(probe[1].strip().splitlines()[-1])
    assert (result["mode"], result["similarity"], result["metric"], result["n_train"], result["n_test"]) == (
        "nearest-mean",
        "euclidean",
        "top1",
        64,
        32,
    )

    assert bad_metric[0] == 2 and bad_metric[2].startswith("error: evaluator_config (nearest-mean): metric")
    assert foreign_key[0] == 2 and "evaluator_config.k applies to --mode knn, not nearest-mean" in foreign_key[2]
    assert training_setting[0] == 2 and "epochs applies to --mode finetune or partial, not nearest-mean" in training_setting[2]

    assert on_noise[0] == 0, on_noise[2]  # the plugin's data source, at the run's image size
    noise = json.loads(on_noise[1].strip().splitlines()[-1])
    assert (noise["dataset"], noise["n_train"], noise["n_test"], noise["target_kind"]) == ("noise", 160, 40, "binary")


BAD_PLUGINS = {
    "bad_plugins/__init__.py": "",
    "bad_plugins/plain.py": "from ssl_toolkit.pretext.base import register_task\n\n@register_task('plain-task')\nclass Plain:\n    pass\n",
    "bad_plugins/needs.py": (
        "from ssl_toolkit.pretext.base import TaskConfig, register_task\n"
        "from ssl_toolkit.pretext.rotation import RotationTask\n\n"
        "class NeedsConfig(TaskConfig):\n    width: int\n\n"
        "@register_task('needs-width')\nclass Needs(RotationTask):\n    Config = NeedsConfig\n"
    ),
    "bad_plugins/vector_loss.py": (
        "from ssl_toolkit.pretext.base import register_task\n"
        "from ssl_toolkit.pretext.rotation import RotationTask\n\n"
        "@register_task('vector-loss')\nclass VectorLoss(RotationTask):\n"
        "    def forward(self, backbone, images):\n"
        "        loss, logs = super().forward(backbone, images)\n"
        "        return loss.expand(2), logs  # (2,): not one scalar\n"
    ),
    "bad_plugins/src.py": (
        "import torch\nfrom ssl_toolkit.data.sources import DataSource, Split\n\nNOT_A_TASK = 3\n\n"
        "def as_text(cfg):\n    return 'not a data source'\n\n"
        "def _source(images, labels):\n"
        "    split = Split(images, labels, [str(i) for i in range(len(images))])\n"
        "    return DataSource('own', split, split, ['a', 'b'])\n\n"
        "def floats(cfg):  # pixels in [0, 1], as torchvision gives them\n"
        "    return _source(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.int64))\n\n"
        "def past_classes(cfg):\n"
        "    return _source(torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.arange(8))\n\n"
        "def empty(cfg):\n"
        "    return _source(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))\n"
    ),
    "bad_plugins/exits.py": "raise SystemExit('plugin exits at import')\n",
    "bad_plugins/undecorated.py": ("from ssl_toolkit.pretext.rotation import RotationTask\n\nclass Undecorated(RotationTask):\n    pass\n"),
    "bad_plugins/dict_settings.py": (
        "from ssl_toolkit.evaluators.knn import KNNEvaluator\nfrom ssl_toolkit.evaluators.base import register_evaluator\n\n"
        "@register_evaluator('dict-settings')\nclass DictSettings(KNNEvaluator):\n    Config = dict\n"
    ),
    "bad_plugins-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: bad-plugins\nVersion: 0.1\n",
    "bad_plugins-0.1.dist-info/entry_points.txt": (
        "[ssl_toolkit.tasks]\nplain-task = bad_plugins.plain\nneeds-width = bad_plugins.needs\nvector-loss = bad_plugins.vector_loss\n"
        "objtask = bad_plugins.src:NOT_A_TASK\nundecorated = bad_plugins.undecorated:Undecorated\nnothing = bad_plugins.undecorated\nexits = bad_plugins.exits\n"
        "[ssl_toolkit.sources]\nbrokensrc = bad_plugins_no_such_module\ntextsrc = bad_plugins.src:as_text\ndigits = bad_plugins.src:as_text\n"
        "floatsrc = bad_plugins.src:floats\nlabelsrc = bad_plugins.src:past_classes\nemptysrc = bad_plugins.src:empty\n"
        "[ssl_toolkit.evaluators]\ndict-settings = bad_plugins.dict_settings\n"
    ),
}


def test_broken_plugins_are_one_warning_each_and_their_names_say_why_while_built_ins_keep_working(tmp_path):
    site = tmp_path / "site"
    for rel, text in BAD_PLUGINS.items():
        _write(site / rel, text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "SSL_TOOLKIT_HOME": str(tmp_path / "home")}
    tiny = ["--backbone", "test_resnet", "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--accelerator", "cpu", "-q"]
    synthetic = ["--data", "synthetic", "--set", "data.synthetic_train=32", "--set", "data.synthetic_test=16"]
    tasks, probe_help, plain, broken_src, text_src, objtask, float_src, label_src, empty_src, vector, built_in = ssl_commands(
        env,
        ["tasks", "--json"],
        ["probe", "--help"],
        ["pretrain", "--task", "plain-task", *synthetic, *tiny, "--out", str(tmp_path / "plain")],
        ["pretrain", "--task", "rotation", "--data", "brokensrc", *tiny, "--out", str(tmp_path / "b")],
        ["pretrain", "--task", "rotation", "--data", "textsrc", *tiny, "--out", str(tmp_path / "t")],
        ["pretrain", "--task", "objtask", *synthetic, *tiny, "--out", str(tmp_path / "o")],
        *(["pretrain", "--data", src, *tiny, "--out", str(tmp_path / src)] for src in ("floatsrc", "labelsrc", "emptysrc")),
        ["pretrain", "--task", "vector-loss", *synthetic, *tiny, "--out", str(tmp_path / "vector")],
        ["pretrain", "--task", "rotation", "--data", "digits", "--set", "data.limit=64", *tiny, "--out", str(tmp_path / "ok")],
    )
    assert tasks[0] == 0, tasks[2]
    rows = {r["name"]: r for r in json.loads(tasks[1])}
    assert "plain-task" not in rows and rows["needs-width"]["needs"] == "settings width" and "rotation" in rows
    assert (
        "\nwarning: plugin 'plain-task' of bad-plugins (ssl_toolkit.tasks) failed to load: UserError: register_task('plain-task') needs"
        in ("\n" + tasks[2])
    )
    assert probe_help[0] == 0 and "knn: k, temperature" in " ".join(probe_help[1].split())  # help reads every evaluator's settings
    assert (
        "plugin 'dict-settings' of bad-plugins (ssl_toolkit.evaluators) failed to load: UserError: probe mode 'dict-settings': "
        "bad_plugins.dict_settings.DictSettings.Config must be a subclass of ssl_toolkit.evaluators.base.EvaluatorConfig, not <class 'dict'>"
    ) in probe_help[2]
    assert plain[0] == 2 and plain[2].startswith("error: task plugin 'plain-task' did not load: bad-plugins (bad_plugins.plain): UserError")
    assert broken_src[0] == 2 and "error: dataset plugin 'brokensrc' did not load: bad-plugins" in broken_src[2]
    assert "ModuleNotFoundError" in broken_src[2]
    assert text_src[0] == 2 and text_src[2].strip().endswith("error: data source 'textsrc' gave a str, not a DataSource")
    for name, what in (
        ("objtask", "3"),
        ("undecorated", "<class 'bad_plugins.undecorated.Undecorated'>"),
        ("nothing", "module bad_plugins.undecorated"),
    ):
        assert (  # an entry point that registers nothing was ignored without a word
            f"plugin '{name}' of bad-plugins (ssl_toolkit.tasks) failed to load: TypeError: {what} registers nothing "
            "(a class needs its registering decorator, @register_task)" in tasks[2]
        ), tasks[2]
    assert "plugin 'exits' of bad-plugins (ssl_toolkit.tasks) failed to load: SystemExit: plugin exits at import" in tasks[2]
    assert (
        objtask[0] == 2 and "error: task plugin 'objtask' did not load: bad-plugins (bad_plugins.src:NOT_A_TASK): TypeError" in objtask[2]
    )
    assert float_src[0] == 2 and float_src[2].strip().endswith(
        "error: data source 'own': train images must be uint8 (N, C, S, S) with C 1 or 3 (square images), not float32 (8, 1, 8, 8)"
    )
    assert label_src[0] == 2 and label_src[2].strip().endswith(
        "error: data source 'own': train labels run from 0 to 7; the 2 classes take 0 to 1"
    )
    assert empty_src[0] == 2 and empty_src[2].strip().endswith(
        "error: no training images in own (0 test image(s)); the data source gave none"
    )
    assert not any((tmp_path / src).exists() for src in ("o", "floatsrc", "labelsrc", "emptysrc"))
    assert vector[0] == 2, vector[2]
    assert (
        vector[2].strip().splitlines()[-1]
        == "error: task 'vector-loss' returned a loss of shape (2,); a task returns one floating-point scalar loss"
    )
    assert not (tmp_path / "vector").exists()  # nothing to resume from: the folder it made is gone
    assert built_in[0] == 0, built_in[2]  # the plugin named 'digits' did not replace the built-in
    warned = "".join(r[2] for r in (plain, broken_src, text_src))  # once, in the first command that looks a source up
    assert (
        "plugin 'digits' of bad-plugins (ssl_toolkit.sources) is not loaded: the name is taken by ssl_toolkit.data.digits.digits" in warned
    )
    assert json.loads((tmp_path / "ok" / "meta.json").read_text())["dataset"]["name"] == "digits"


def test_a_name_registered_twice_names_both_and_a_failed_plugin_says_why(tmp_path, monkeypatch):
    from ssl_toolkit.errors import UserError

    _write(tmp_path / "clash_things" / "__init__.py", "")
    _write(
        tmp_path / "clash_things" / "registry.py",
        "from ssl_toolkit.registry import Registry\nREG = Registry('thing', package='clash_things')\n",
    )
    _write(
        tmp_path / "clash_things" / "builtin.py", "from clash_things.registry import REG\n\n@REG.register('one')\nclass One:\n    pass\n"
    )
    _write(tmp_path / "clash_plugin.py", "from clash_things.registry import REG\n\n@REG.register('one')\nclass Other:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import clash_plugin  # noqa: F401  (a plugin imported before the first lookup takes the built-in's name)
    from clash_things.registry import REG

    with pytest.raises(UserError, match=r"^thing 'one' is registered twice: by clash_plugin.Other and by clash_things.builtin.One$"):
        REG.get("one")  # discovery runs first: the clash is found, not the plugin silently used
    with pytest.raises(UserError, match=r"^thing 'one' is registered twice"):
        REG.get("one")  # and again: the second lookup returned the plugin's class
    _write(tmp_path / "gone_plugin.py", "raise ImportError('needs h5py')\n")
    _write(tmp_path / "gone-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: gone-ext\nVersion: 0.1\n")
    _write(tmp_path / "gone-0.1.dist-info/entry_points.txt", "[gone.things]\ngone = gone_plugin\n")
    reg: Registry[int] = Registry("thing", group="gone.things")
    assert reg.failure("gone") == "gone-ext (gone_plugin): ImportError: needs h5py" and reg.failure("other") is None
    with pytest.raises(UserError, match=r"^thing plugin 'gone' did not load: gone-ext \(gone_plugin\): ImportError: needs h5py$"):
        reg.get("gone")
    _write(
        tmp_path / "half_things.py",
        "from ssl_toolkit.registry import Registry\nREG = Registry('thing', group='half.things')\nSIDE = Registry('side', group='half.things')\n",
    )
    _write(  # registers a name in each registry of its group, then fails: it registers none of its names
        tmp_path / "half_plugin.py",
        "from half_things import REG, SIDE\n\n@REG.register('fine')\nclass Fine:\n    pass\n\n@SIDE.register('aside')\ndef aside():\n    pass\n\n"
        "raise RuntimeError('broken after one')\n",
    )
    _write(tmp_path / "half-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: half-ext\nVersion: 0.1\n")
    _write(tmp_path / "half-0.1.dist-info/entry_points.txt", "[half.things]\nhalf = half_plugin\n")
    from half_things import REG as HALF
    from half_things import SIDE

    assert "fine" not in HALF.names() and HALF.failure("half") == "half-ext (half_plugin): RuntimeError: broken after one"
    assert "aside" not in SIDE.names()


def test_an_evaluators_scores_and_facts_are_checked_before_anything_is_recorded():
    import torch

    from ssl_toolkit.errors import UserError
    from ssl_toolkit.eval.probe import check_scores

    check_scores("m", torch.zeros(4, 3), 4, 3)
    for scores, message in [
        (torch.zeros(5, 3), r"scores of shape \(5, 3\); it needs one row per test image \(4\)"),
        (torch.zeros(4, 2), r"scores of shape \(4, 2\); it needs \(4, 3\)"),
        (torch.full((4, 3), float("nan")), "scores that are not finite"),
        ([0, 1, 2, 0], r"scores of type list; it needs a torch.Tensor with one row per test image \(4\)$"),
        (np.zeros((4, 3)), r"scores of type numpy.ndarray; it needs a torch.Tensor with one row per test image \(4\)$"),
    ]:
        with pytest.raises(UserError, match=rf"^evaluator 'm' returned {message}"):
            check_scores("m", scores, 4, 3)


def test_an_evaluators_output_must_be_a_pair_and_its_facts_standard_json():
    import torch

    from ssl_toolkit.errors import UserError
    from ssl_toolkit.eval.probe import check_facts, evaluation_output

    def refusal(check, *args) -> str:
        with pytest.raises(UserError) as e:
            check("m", *args)
        return str(e.value)

    scores = torch.zeros(4, 3)
    assert evaluation_output("m", (scores, {})) == (scores, {})
    pair = "; evaluate() returns a pair (scores, facts): the test scores and a dict of facts"
    assert refusal(evaluation_output, scores) == f"evaluator 'm' returned a torch.Tensor{pair}"
    assert refusal(evaluation_output, torch.zeros(2, 3)) == f"evaluator 'm' returned a torch.Tensor{pair}"  # not two rows unpacked
    assert refusal(evaluation_output, None) == f"evaluator 'm' returned None{pair}"
    assert refusal(evaluation_output, (scores, {}, {})) == f"evaluator 'm' returned a 3-item tuple{pair}"
    facts_kind = "; the facts are a dict with string keys (may be empty)"
    assert refusal(evaluation_output, (scores, None)) == f"evaluator 'm' returned facts as None{facts_kind}"
    assert (
        refusal(evaluation_output, (scores, {1: 2})) == f"evaluator 'm' returned facts as a dict with keys that are not strings{facts_kind}"
    )

    check_facts(
        "m", {"s": "x", "n": None, "b": True, "i": 3, "f": 0.5, "l": [1, (2.5, "y")], "d": {"a": {"b": [None]}}, "np": np.float64(2)}
    )
    loop: list = []
    loop.append(loop)
    kinds = "; facts are recorded as JSON: finite numbers, strings, booleans, None, and lists or string-keyed dicts of those"
    for facts, what in [
        ({"obj": object()}, "fact 'obj' of type object"),
        ({"x": float("nan")}, "fact 'x' = nan (not finite)"),
        ({"h": {"a": [1, float("-inf")]}}, """fact 'h["a"][1]' = -inf (not finite)"""),
        ({"t": torch.tensor(1.0)}, "fact 't' of type torch.Tensor"),
        ({"i": np.int64(1)}, "fact 'i' of type numpy.int64"),
        ({"d": {2: "two"}}, "fact 'd[2]' has a key of type int, not a string"),
        ({"loop": loop}, "fact 'loop[0]' contains itself"),
    ]:
        assert refusal(check_facts, facts) == f"evaluator 'm' returned {what}{kinds}"


def test_a_task_or_evaluator_whose_config_is_not_its_bases_settings_model_is_refused_when_registered():
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.evaluators.base import EVALUATORS, Evaluator, register_evaluator
    from ssl_toolkit.pretext.base import TASKS, TaskConfig, register_task
    from ssl_toolkit.pretext.rotation import RotationTask

    class DictConfig(RotationTask):
        Config = dict

    class PlainConfig(Evaluator):
        Config = object

        def evaluate(self, ctx):
            raise AssertionError("never called")

    before = (TASKS.names(), EVALUATORS.names())
    with pytest.raises(
        UserError,
        match=r"^task 'dict-config': .*DictConfig\.Config must be a subclass of ssl_toolkit\.pretext\.base\.TaskConfig, not <class 'dict'>$",
    ):
        register_task("dict-config")(DictConfig)
    with pytest.raises(
        UserError,
        match=r"^probe mode 'plain-config': .*PlainConfig\.Config must be a subclass of ssl_toolkit\.evaluators\.base\.EvaluatorConfig, not <class 'object'>$",
    ):
        register_evaluator("plain-config")(PlainConfig)
    assert (TASKS.names(), EVALUATORS.names()) == before

    class OwnSettings(TaskConfig):
        width: int = 2

    class Wider(RotationTask):  # a task built on another brings settings of its own
        Config = OwnSettings

    reg: Registry[type] = Registry("task")
    assert reg.register("wider")(Wider) is Wider and reg.register("n")(3) == 3


def test_registries_sharing_an_entry_point_group_load_it_and_warn_once(tmp_path, monkeypatch, caplog):
    _write(tmp_path / "demo_shared.py", "import demo_shared_missing_dependency\n")
    _write(tmp_path / "demo_shared-0.1.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: demo-shared\nVersion: 0.1\n")
    _write(tmp_path / "demo_shared-0.1.dist-info" / "entry_points.txt", "[demo.shared]\nbroken = demo_shared\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks: Registry[int] = Registry("thing", group="demo.shared")
    transforms: Registry[int] = Registry("transform", group="demo.shared")  # as INPUT_TRANSFORMS shares ssl_toolkit.tasks
    with caplog.at_level(logging.WARNING, logger="ssl_toolkit.plugins"):
        assert tasks.names() == [] and transforms.names() == []
    assert caplog.text.count("plugin 'broken' of demo-shared (demo.shared) failed to load: ModuleNotFoundError") == 1
    why = "demo-shared (demo_shared): ModuleNotFoundError: No module named 'demo_shared_missing_dependency'"
    assert tasks.failure("broken") == why and transforms.failure("broken") == why


def test_a_task_or_evaluator_that_leaves_an_abstract_method_unimplemented_is_refused_when_registered():
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.evaluators.base import EVALUATORS, Evaluator, register_evaluator
    from ssl_toolkit.pretext.base import TASKS, PretextTask, register_task

    class NoEvaluate(Evaluator):
        description = "forgets evaluate()"

    class NoForward(PretextTask):
        pass

    before = (TASKS.names(), EVALUATORS.names())
    with pytest.raises(UserError, match=r"^probe mode 'no-evaluate': .*NoEvaluate does not implement evaluate$"):
        register_evaluator("no-evaluate")(NoEvaluate)
    with pytest.raises(UserError, match=r"^task 'no-forward': .*NoForward does not implement forward$"):
        register_task("no-forward")(NoForward)
    assert (TASKS.names(), EVALUATORS.names()) == before


def test_a_task_whose_forward_returns_no_pair_or_whose_init_takes_other_arguments_is_one_line(tmp_path, cli, own_registries):
    from ssl_toolkit.engine import check_task_output
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.pretext.base import check_task_signature, register_task
    from ssl_toolkit.pretext.rotation import RotationTask

    @register_task("returns-none")
    class ReturnsNone(RotationTask):
        def forward(self, backbone, images):
            super().forward(backbone, images)  # forgets to return

    @register_task("badsig")
    class BadSignature(RotationTask):
        def __init__(self, feature_dim):
            raise AssertionError("never called")

    pair = "; forward() returns a pair (loss, logs): one scalar loss and a dict of scalars to log"
    loss = torch.zeros((), requires_grad=True)
    for output, what in [(None, "None"), (loss, "a Tensor"), ((loss,), "a 1-item tuple"), ((loss, None), "logs of type NoneType")]:
        with pytest.raises(UserError) as e:
            check_task_output("t", output, None)
        assert str(e.value) == f"task 't' returned {what}{pair}"
    check_task_output("t", (loss, {"pretext_acc": torch.ones(()), "features": torch.zeros(2, 3)}), 2)
    check_task_signature("rotation", RotationTask)

    args = ["--backbone", "test_resnet", "--data", "synthetic", "--image-size", "16", "--epochs", "1", "--batch-size", "16", "-q"]
    args += ["--set", "data.synthetic_train=32", "--set", "data.synthetic_test=16", "--accelerator", "cpu"]
    code, _, err = cli("pretrain", "--task", "badsig", *args, "--out", tmp_path / "badsig")
    assert (code, err) == (
        2,
        "error: task 'badsig' cannot be built: TypeError: too many positional arguments; "
        "the toolkit calls BadSignature(feature_dim, config, data), and its __init__ takes (feature_dim)\n",
    )
    assert not (tmp_path / "badsig").exists()
    code, _, err = cli("pretrain", "--task", "returns-none", *args, "--out", tmp_path / "none")
    assert code == 2 and err.strip().splitlines()[-1] == f"error: task 'returns-none' returned None{pair}"
    assert "Traceback" not in err and not (tmp_path / "none").exists()


def test_a_settings_model_whose_own_default_fails_its_check_is_refused_when_registered():
    """Pydantic validates only the values given: a default outside its field's range reached the run (and broke its resume)."""
    from pydantic import Field

    from ssl_toolkit.errors import UserError
    from ssl_toolkit.evaluators.base import Evaluator, EvaluatorConfig
    from ssl_toolkit.pretext.base import PretextTask, TaskConfig
    from ssl_toolkit.registry import check_settings_model

    class Metric(Evaluator):
        class Config(EvaluatorConfig):
            metric: Literal["cosine", "euclidean"] = "manhattan"  # type: ignore[assignment]

    class Smooth(PretextTask):
        class Config(TaskConfig):
            must: int  # required: the user's to give, not refused here
            label_smoothing: float = Field(default=5.0, ge=0.0, lt=1.0)

    with pytest.raises(
        UserError, match=r"^probe mode 'm': .*Metric.Config's default metric='manhattan' fails its own check: Input should be"
    ):
        check_settings_model("probe mode", "m", Metric)
    with pytest.raises(
        UserError, match=r"^task 's': .*Smooth.Config's default label_smoothing=5.0 fails its own check: Input should be less than 1$"
    ):
        check_settings_model("task", "s", Smooth)
