"""Finds a function's code in its file compiled again with the rewrites of :mod:`._rewrite`.

The whole file is compiled, so closures, methods and lambdas get exactly the scopes they had.
"""

from __future__ import annotations
import __future__

import ast
import functools
import linecache
import operator
import types
import warnings
from collections.abc import Iterator
from typing import Any

from jaxcheck.port._rewrite import Rewriter

# nested_scopes shares its flag with CO_NESTED, which is no future import.
FUTURE_FLAGS = functools.reduce(
    operator.or_,
    (
        getattr(__future__, name).compiler_flag
        for name in __future__.all_feature_names
        if name not in ("nested_scopes", "generators")
    ),
    0,
)


# filename -> (the linecache lines it was compiled from, future flags, plain, rewritten, tree)
_FILES: dict[
    str, tuple[list[str], int, types.CodeType | None, types.CodeType | None, ast.Module | None]
] = {}
# id(original code) -> (the original code, kept alive so that the id stays its own; rewritten)
_CODES: dict[int, tuple[types.CodeType, types.CodeType | None]] = {}


def rewritten_code(fn: types.FunctionType) -> types.CodeType | None:
    """``fn``'s code compiled again from its file, rewritten; None when that cannot be trusted.

    The whole file is compiled, so closures, methods and lambdas get exactly the scopes they had;
    the function is found by its name, first line and bytecode, so a file edited since it was
    imported (or code changed by an import hook, like pytest's assertion rewriting) gives None.
    """
    code = fn.__code__
    hit = _CODES.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    found = _find(code, fn.__globals__)
    _CODES[id(code)] = (code, found)
    return found


def _find(code: types.CodeType, module_globals: dict[str, Any]) -> types.CodeType | None:
    compiled = _compile_file(code.co_filename, code.co_flags & FUTURE_FLAGS, module_globals)
    if compiled is None:
        return None
    plain, rewritten, _ = compiled
    # pytest rewrites the asserts of test modules: there the bytecode cannot agree, so a
    # function is recognised by its signature, variables and the names it uses instead.
    same = _same_but_asserts if "@pytest_ar" in module_globals else _same
    for path, candidate in _walk_code(plain, ()):
        if candidate.co_name != code.co_name or candidate.co_firstlineno != code.co_firstlineno:
            continue
        if same(candidate, code):
            found = _follow(rewritten, path)
            if (
                found is not None
                and found.co_name == code.co_name
                and found.co_freevars == code.co_freevars
            ):
                return found
    return None


def _same(candidate: types.CodeType, code: types.CodeType) -> bool:
    return _code_key(candidate) == _code_key(code)


def _same_but_asserts(candidate: types.CodeType, code: types.CodeType) -> bool:
    def key(c: types.CodeType) -> tuple[Any, ...]:
        variables = tuple(v for v in c.co_varnames if not v.startswith("@"))
        counts = (c.co_argcount, c.co_posonlyargcount, c.co_kwonlyargcount)
        return (*counts, c.co_freevars, variables)

    return key(candidate) == key(code) and set(candidate.co_names) <= set(code.co_names)


def source_tree(filename: str, module_globals: dict[str, Any] | None = None) -> ast.Module | None:
    """The parsed source of ``filename`` as it was compiled for the port (for error messages)."""
    cached = _FILES.get(filename)
    if cached is not None and cached[4] is not None:
        return cached[4]
    lines = linecache.getlines(filename, module_globals)
    try:
        return ast.parse("".join(lines), filename) if lines else None
    except (SyntaxError, ValueError):
        return None


def _compile_file(
    filename: str, flags: int, module_globals: dict[str, Any]
) -> tuple[types.CodeType, types.CodeType, ast.Module] | None:
    lines = linecache.getlines(filename, module_globals)
    if not lines:
        return None
    cached = _FILES.get(filename)
    if cached is None or cached[0] is not lines or cached[1] != flags:
        plain = rewritten = tree = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the user's SyntaxWarnings were shown at import
                source = "".join(lines)
                tree = ast.parse(source, filename)
                plain = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
                new_tree = ast.fix_missing_locations(
                    Rewriter(filename).visit(ast.parse(source, filename))
                )
                rewritten = compile(new_tree, filename, "exec", flags=flags, dont_inherit=True)
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            plain = rewritten = None
        cached = _FILES[filename] = (lines, flags, plain, rewritten, tree)
    _, _, plain, rewritten, tree = cached
    if plain is None or rewritten is None or tree is None:  # a tree is parsed before compiling
        return None
    return plain, rewritten, tree


def _walk_code(
    code: types.CodeType, path: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], types.CodeType]]:
    yield path, code
    nested = [c for c in code.co_consts if isinstance(c, types.CodeType)]
    for i, const in enumerate(nested):
        yield from _walk_code(const, (*path, i))


def _follow(code: types.CodeType, path: tuple[int, ...]) -> types.CodeType | None:
    for i in path:
        nested = [c for c in code.co_consts if isinstance(c, types.CodeType)]
        if i >= len(nested):
            return None
        code = nested[i]
    return code


def _code_key(code: types.CodeType) -> tuple[Any, ...]:
    """What must agree between two compilations of one function (line numbers aside)."""
    consts = tuple(
        _code_key(c) if isinstance(c, types.CodeType) else (type(c), repr(c))
        for c in code.co_consts
    )
    return (
        code.co_code,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        consts,
    )
