"""The library's shape, read from its source: imports never form a circle (function-local imports included), the
layers import one way, files stay small, and only the stage runner sorts rows by length."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "platform" / "causal2vec"
MAX_LINES = 360  # the project's rule is "about 350"
RUNNER = "causal2vec.model.inference"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every causal2vec module `path` imports, anywhere in the file (a lazy import still makes a circle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target, path + [target])):
                return found
        state[name] = 2
        return None

    for name in MODULES:
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_the_import_walk_sees_lazy_imports():
    """The control for the cycle test: function-local imports are edges too."""
    assert "causal2vec.model.causal2vec" in GRAPH["causal2vec"]  # the root's lazy __getattr__
    assert "causal2vec.store.sink" in GRAPH["causal2vec.embed.job"]  # imported inside embed_corpus


def test_no_import_cycle_inside_the_package():
    assert _cycle() is None, " -> ".join(_cycle())


def _reaches(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


@pytest.mark.parametrize("layer, forbidden", [
    ("causal2vec.model", ("causal2vec.store", "causal2vec.embed", "causal2vec.serve", "causal2vec.train",
                          "causal2vec.eval", "causal2vec.tools", "causal2vec.cli")),
    ("causal2vec.store", ("causal2vec.embed", "causal2vec.serve", "causal2vec.train", "causal2vec.tools")),
    ("causal2vec.serve", ("causal2vec.embed", "causal2vec.train", "causal2vec.tools")),
    ("causal2vec.embed", ("causal2vec.serve", "causal2vec.train", "causal2vec.tools")),
    ("causal2vec.train", ("causal2vec.embed", "causal2vec.serve", "causal2vec.tools")),
])
def test_layers_import_one_way(layer, forbidden):
    for name in [m for m in MODULES if m == layer or m.startswith(layer + ".")]:
        wrong = sorted(t for t in _reaches(name) if t.startswith(forbidden))
        assert not wrong, f"{name} reaches {wrong}"


def test_only_the_cli_reaches_the_tools():
    """tools/ (demo, bench runner, local heads) sits outside the library core."""
    users = sorted(m for m in MODULES if not m.startswith("causal2vec.tools") and m != "causal2vec.cli"
                   and any(t.startswith("causal2vec.tools") for t in GRAPH[m]))
    assert not users, users


def test_library_files_stay_small():
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in MODULES.values()}
    long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def _length_sorts(path: Path) -> list[int]:
    """Lines of `sorted` / `.sort` / `argsort` calls keyed on a length, and every argsort (order restoring)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        keyed = any(k.arg == "key" and "len" in ast.unparse(k.value) for k in node.keywords)
        if name == "argsort" or (name in ("sorted", "sort") and keyed):
            lines.append(node.lineno)
    return lines


def test_only_the_runner_sorts_rows_by_length():
    assert _length_sorts(MODULES[RUNNER]), "the control: the runner's own sort is found"
    elsewhere = {name: lines for name, path in MODULES.items() if name != RUNNER and (lines := _length_sorts(path))}
    assert not elsewhere, f"rows sorted by length outside {RUNNER}: {elsewhere}"
