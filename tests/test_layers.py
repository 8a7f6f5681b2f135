"""The layers import downward only: the engine (what runs on every rank) imports nothing of the
commands, executors or benchmark above it, lazily inside a function included."""

from __future__ import annotations

import ast

from conftest import REPO

ABOVE_THE_ENGINE = ("launcher.bench", "launcher.executors", "launcher.cli", "launcher.commands",
                    "launcher.sweep", "launcher.jobs", "launcher.trained")


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from launcher import bench` imports launcher.bench
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_engine_imports_nothing_above_it():
    found = {}
    for path in sorted((REPO / "launcher" / "engine").glob("*.py")):
        bad = sorted(n for n in _imports(path)
                     if any(n == top or n.startswith(top + ".") for top in ABOVE_THE_ENGINE))
        if bad:
            found[path.name] = bad
    assert found == {}


def test_the_check_sees_a_back_edge(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from launcher import bench\n    import launcher.cli\n")
    assert {"launcher.bench", "launcher.cli"} <= _imports(probe)
