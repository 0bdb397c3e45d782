"""The package's rooms import one way, and the light commands stay light.

The import graph is read statically (``ast``) from ``ssl_toolkit/``. An edge ``A -> B``
is an import of ``B`` (or of a name inside ``B``) written in ``A``, plus the packages
above ``B`` that Python runs first, except the packages above ``A`` itself (they are
already being imported when ``A`` runs). Imports inside ``if TYPE_CHECKING:`` are not
edges. Two graphs are checked: module-level imports only (what runs at import time),
and module-level plus function-local imports (deferred ones): a deferred import that
closes a loop still ties two rooms together.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ssl_toolkit"
HEAVY = ("lightning", "pytorch_lightning", "faiss", "umap")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(node: ast.AST, deferred: bool) -> list[str]:
    """Dotted names imported under ``node`` (not descending into functions unless ``deferred``)."""
    out: list[str] = []
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            continue
        if isinstance(child, ast.Import):
            out += [a.name for a in child.names]
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            out += [child.module] + [f"{child.module}.{a.name}" for a in child.names]
        if deferred or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            out += _imported(child, deferred)
    return out


def import_graph(deferred: bool) -> dict[str, set[str]]:
    """``module -> modules it imports`` inside ``ssl_toolkit`` (see the module docstring)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        for target in _imported(ast.parse(path.read_text()), deferred):
            if target not in mods:
                continue
            edges.add(target)
            edges.update(a for a in _ancestors(target) if a in mods and a not in _ancestors(name))
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_known_edges():
    graph = import_graph(deferred=False)
    assert "ssl_toolkit.errors" in graph["ssl_toolkit.registry"]
    assert "ssl_toolkit.pretext.base" in graph["ssl_toolkit.pretext.rotation"]
    assert "ssl_toolkit.library" not in graph["ssl_toolkit.commands.checkpoints"]  # imported inside the command
    assert "ssl_toolkit.library" in import_graph(deferred=True)["ssl_toolkit.commands.checkpoints"]


@pytest.mark.parametrize("deferred", [False, True], ids=["module-level", "with-function-local"])
def test_no_import_cycles(deferred):
    cycle = find_cycle(import_graph(deferred))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# `ssl tasks` imports every task and lightly with them: seconds, so it runs with the slow tests
SLOW_TASKS = pytest.param(["tasks"], marks=pytest.mark.slow)


@pytest.mark.parametrize("args", [["checkpoints", "list"], SLOW_TASKS, ["--help"]])
def test_light_commands_import_no_training_or_analysis_stack(args, tmp_path):
    code = (
        "import json, sys\n"
        f"sys.argv = ['ssl', *{args!r}]\n"
        "from ssl_toolkit.cli import run\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    env = {"SSL_TOOLKIT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
