"""The house rules of the package, checked on its source: true ``__all__``, no import cycle."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import jaxcheck

PACKAGE = Path(jaxcheck.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if path.name != "__main__.py" and "__pycache__" not in path.parts
}


def _defined(tree: ast.Module) -> set[str]:
    """Public functions and classes defined at the top of a module."""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {n.name for n in tree.body if isinstance(n, kinds) and not n.name.startswith("_")}


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_all_is_true(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    defined = _defined(ast.parse(MODULES[name].read_text()))
    if exported is None:
        # Only modules private by name (port/_x, cli/_x) may go without a list.
        private = any(part.startswith("_") and part != "__init__" for part in name.split(".")[1:])
        assert private or not defined, f"{name} defines {sorted(defined)} but has no __all__"
        return
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names {missing}, which the module does not have"
    unlisted = sorted(defined - set(exported))
    assert not unlisted, f"{name} defines public {unlisted} that its __all__ does not list"


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The package's modules that ``name`` imports when it is imported (module level only)."""
    found = set()
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            targets = submodules or [base]  # `from pkg import module` needs the module only
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target != "jaxcheck":
                found.add(target)
    return found


def test_no_import_cycle() -> None:
    graph = {name: _imports(name, ast.parse(path.read_text())) for name, path in MODULES.items()}
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        trail.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        trail.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
