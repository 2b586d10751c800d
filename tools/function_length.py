"""Fails when a function in the package is longer than the house limit (80 lines).

Usage: ``python tools/function_length.py [--max N] [PATH ...]`` (default: ``jaxcheck``). A
function's length runs from its ``def`` line (decorators excluded) to its last line, comments
and blank lines included, its docstring not: the code a reader has to hold at once. (Docstrings
with examples are documentation, and may be as long as the examples need.)
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

LIMIT = 80


def _length(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the end, less the docstring's."""
    length = (function.end_lineno or function.lineno) - function.lineno + 1
    first = function.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        length -= (first.end_lineno or first.lineno) - first.lineno + 1
    return length


def long_functions(path: Path, limit: int = LIMIT) -> Iterator[tuple[str, int, int]]:
    """(qualified name, first line, length) of each function in ``path`` longer than ``limit``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                length = _length(child)
                if length > limit:
                    yield name, child.lineno, length
                yield from visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(tree, "")


def main(argv: list[str] | None = None) -> int:
    """Prints every function over the limit as ``path:line: name is N lines``; 1 if any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[Path("jaxcheck")], type=Path)
    parser.add_argument("--max", type=int, default=LIMIT, help=f"the limit (default {LIMIT})")
    args = parser.parse_args(argv)
    files = sorted(f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.py")))
    found = 0
    for file in files:
        for name, line, length in long_functions(file, args.max):
            print(f"{file}:{line}: {name} is {length} lines (limit {args.max})")
            found += 1
    if found:
        print(f"{found} function(s) over {args.max} lines", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
