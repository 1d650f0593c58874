"""The package's layout: no import cycle among textvae modules, short functions, a thin CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "textvae"
MAX_LINES = 80  # any function in textvae/
MAX_CLI_LINES = 30  # a function in textvae/cli.py


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.glob("*.py"))}


def _textvae_imports(tree: ast.Module) -> set[str]:
    """Every textvae module a file imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "textvae":
                found.update(a.name for a in node.names)
            elif node.module.startswith("textvae."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("textvae."))
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle():
    """The premise of the next test: it could fail."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_among_textvae_modules():
    modules = _modules()
    graph = {name: {m for m in _textvae_imports(tree) if m in modules and m != name}
             for name, tree in modules.items()}
    graph.pop("__init__", None)  # the package's lazy attribute access, not a module dependency
    for deps in graph.values():
        deps.discard("__init__")
    assert _cycle(graph) == []


def _long_functions(tree: ast.Module, limit: int) -> list[str]:
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGE.glob("*.py")))
def test_no_long_function(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    assert _long_functions(tree, MAX_CLI_LINES if name == "cli" else MAX_LINES) == []


def test_the_cli_holds_no_library_code():
    """cli.py reads no files and writes none itself: it calls the library."""
    source = (PACKAGE / "cli.py").read_text(encoding="utf-8")
    for needle in ("open(", "read_bytes", "read_text", "write_text", "os.replace", "np.save", "pq.write_table"):
        assert needle not in source, needle


def test_scripts_use_public_names_only():
    for script in sorted((REPO_ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("textvae"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{script.name} imports {private} from {node.module}"
