"""The core's structure, drawn from its imports: no import circle, no file over 500 lines, no class over 200."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core" / "advbayes"


def module_name(path: Path) -> str:
    """advbayes.x.y for core/advbayes/x/y.py (a package's __init__ is the package)."""
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The core modules a file imports when it runs (at the top or inside functions; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            named = {f"{base}.{alias.name}" for alias in node.names} & modules  # `from pkg import submodule`
            found.update(named or ({base} & modules))
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    """Each core module and the core modules it imports (shims that only forward a moved module left out)."""
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    modules = set(files)
    return {
        name: runtime_imports(path, modules) for name, path in files.items() if "forward_to(" not in path.read_text()
    }


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start)):
            return circle
    return None


def test_the_circle_finder_finds_a_circle_and_only_one():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_and_submodule_imports_are_resolved(tmp_path):
    modules = {"advbayes", "advbayes.tracking", "advbayes.tracking.store", "advbayes.errors"}
    source = CORE / "tracking" / "hooks.py"
    imports = runtime_imports(source, modules)
    assert "advbayes.tracking.store" in imports and "advbayes.errors" in imports
    assert "advbayes.tracking" not in imports  # `from advbayes.tracking.store import x` is not the package


def test_the_core_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the core
    assert find_circle(graph) is None, " -> ".join(find_circle(graph) or [])


def test_no_core_file_over_500_lines_and_no_class_over_200():
    too_long = []
    for path in CORE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 500:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno and node.end_lineno - node.lineno >= 200:
                too_long.append(f"{path.name}: class {node.name} {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long
