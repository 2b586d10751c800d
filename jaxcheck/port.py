"""Re-executes a NumPy function's own code with ``numpy`` replaced by ``jax.numpy``.

:func:`port` gives ``jc.check`` a JAX twin of a NumPy cost when no ``jax_cost=`` is passed.
"""

from __future__ import annotations
import __future__

import ast
import functools
import inspect
import linecache
import operator
import os
import re
import site
import sys
import sysconfig
import traceback
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .errors import PortError

# Names the ported code sees in its globals besides the user's own.
_ITEM = "__jaxcheck_item__"
_FLOAT = "__jaxcheck_float__"
_MARK = "__jaxcheck_port__"

_MISSING = object()
_ADVICE = (
    "Pass `jax_cost=` to `jc.check` (a JAX version of your cost, written with jax.numpy) "
    "instead of relying on the automatic port."
)
# Top-level packages whose functions are never ported, wherever they are installed.
_LIBRARY_ROOTS = frozenset(
    {"numpy", "jax", "jaxlib", "scipy", "ml_dtypes", "opt_einsum", "pytest", "_pytest", "pluggy"}
)
# Containers (dicts, lists, tuples) in globals are searched for functions to port up to this size.
_CONTAINER_LIMIT = 1000
# nested_scopes shares its flag with CO_NESTED, which is no future import.
_FUTURE_FLAGS = functools.reduce(
    operator.or_,
    (
        getattr(__future__, name).compiler_flag
        for name in __future__.all_feature_names
        if name not in ("nested_scopes", "generators")
    ),
    0,
)


@dataclass(eq=False)
class _Record:
    """What a ported function was made from, to tell when the original has changed since."""

    code: types.CodeType
    defaults: tuple[Any, ...] | None
    kwdefaults: dict[str, Any] | None
    used: dict[str, Any]
    cells: tuple[Any, ...]
    module: str
    qualname: str
    name: str
    ported: types.FunctionType | None = None
    deps: list[tuple[types.FunctionType, _Record]] = field(default_factory=list)


# original function -> record of its port; the ported functions and port() results themselves.
_RAW: weakref.WeakKeyDictionary[types.FunctionType, _Record] = weakref.WeakKeyDictionary()
_PORTED: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()
_ENTRIES: weakref.WeakKeyDictionary[Any, tuple[Callable[..., Any], Any, Any]] = (
    weakref.WeakKeyDictionary()
)
_PROXIES: weakref.WeakKeyDictionary[types.ModuleType, types.ModuleType] = (
    weakref.WeakKeyDictionary()
)
# filename -> (the linecache lines it was compiled from, future flags, plain code, rewritten code)
_FILES: dict[str, tuple[list[str], int, types.CodeType | None, types.CodeType | None]] = {}


def port(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Returns ``fn`` re-executed on ``jax.numpy``, so that JAX can trace it.

    The function's own code runs again with every ``numpy`` it uses (the module, its submodules
    such as ``numpy.linalg``, and names imported from it) replaced by the ``jax.numpy``
    counterpart. Helpers it calls from your own code (module-level functions, closures, functions
    in other modules of yours) are ported the same way, only when the code refers to them;
    functions of NumPy, JAX, the standard library and installed packages are left alone.
    ``float(x)`` and ``x.item()`` of a JAX array give a 0-d JAX array instead of a Python
    number, so a cost that ends in ``float(np.squeeze(cost))`` stays differentiable. Nothing of
    yours is modified: the port gets its own copy of the module globals.

    Plain functions, lambdas, closures, ``functools.partial`` objects, bound methods and callable
    objects can be ported; porting the same function again gives the same object, until the
    function or a global it uses is redefined.

    Args:
        fn: the NumPy function, e.g. a cost taking a dict of parameters.

    Returns:
        A function with the signature of ``fn``, usable under ``jax.jit``, ``jax.grad`` and
        ``jax.vmap``. On NumPy inputs it computes what ``fn`` computes, in the precision JAX is
        configured for (float64 inside ``jax.enable_x64(True)``).

    Raises:
        PortError: ``fn`` is not a Python function (a builtin, a NumPy ufunc, a class). The
            returned function also raises it, with the file, line and source of the offending
            line, when the code cannot run on jax.numpy: assignment into an array
            (``A[A < 0] = 0``), Python ``if`` on array values under ``jit``/``vmap``, calls into
            libraries that need real NumPy arrays, or NumPy names jax.numpy lacks
            (``np.random``). The original error is chained as ``__cause__``.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> def cost(w):
        ...     return float(np.sum(np.tanh(w) ** 2))
        >>> w = np.array([0.5, -1.0])
        >>> jax_cost = port(cost)
        >>> bool(np.isclose(jax_cost(w), cost(w)))
        True
        >>> [round(float(g), 4) for g in jax.grad(jax_cost)(w)]
        [0.7269, -0.6397]
    """
    if _is_ported(fn):
        return fn
    cached = _cached_entry(fn)
    if cached is not None:
        return cached
    raw = _port_top(fn)
    entry = _make_entry(raw, fn)
    _PORTED.add(entry)
    root = _root(fn)
    try:
        _ENTRIES[fn] = (entry, root, _RAW.get(root) if root is not None else None)
    except TypeError:  # not hashable or not weakly referenceable: just do not cache
        pass
    return entry


# ------------------------------------------------------------------------------------------
# Which callables are ported, and the cache of ports
# ------------------------------------------------------------------------------------------


def _is_ported(obj: Any) -> bool:
    try:
        return obj in _PORTED
    except TypeError:
        return False


def _root(obj: Any) -> types.FunctionType | None:
    """The Python function whose code a port of ``obj`` runs."""
    if isinstance(obj, types.FunctionType):
        return obj
    if isinstance(obj, functools.partial):
        return _root(obj.func)
    if isinstance(obj, types.MethodType):
        return _root(obj.__func__)
    call = inspect.getattr_static(type(obj), "__call__", None)
    return call if isinstance(call, types.FunctionType) else None


def _cached_entry(obj: Any) -> Callable[..., Any] | None:
    try:
        hit = _ENTRIES.get(obj)
    except TypeError:
        return None
    if hit is None:
        return None
    entry, root, record = hit
    if root is not _root(obj):
        return None
    if root is not None and (_RAW.get(root) is not record or not _fresh(root, set())):
        return None
    return entry


def _fresh(fn: types.FunctionType, seen: set[int]) -> bool:
    """Whether the port of ``fn`` still matches ``fn``, its globals, closure and helpers."""
    record = _RAW.get(fn)
    if record is None:
        return False
    if id(fn) in seen:
        return True
    seen.add(id(fn))
    if (
        fn.__code__ is not record.code
        or fn.__defaults__ is not record.defaults
        or fn.__kwdefaults__ is not record.kwdefaults
    ):
        return False
    namespace = fn.__globals__
    if any(namespace.get(name, _MISSING) is not value for name, value in record.used.items()):
        return False
    cells = tuple(_cell_contents(cell) for cell in fn.__closure__ or ())
    if len(cells) != len(record.cells) or any(a is not b for a, b in zip(cells, record.cells)):
        return False
    return all(_RAW.get(dep) is rec and _fresh(dep, seen) for dep, rec in record.deps)


def _cell_contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell: the variable is not assigned yet
        return _MISSING


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs.update(getattr(site, "getsitepackages", list)())
    dirs.add(site.getusersitepackages())
    return tuple(sorted({os.path.realpath(d) for d in dirs if d}))


@functools.cache
def _is_user_code(module: str, filename: str | None) -> bool:
    """Whether code of ``module`` in ``filename`` is the user's (ported) or a library's."""
    top = module.partition(".")[0]
    if top == "jaxcheck":  # jaxcheck.lesson, jaxcheck.models.*: NumPy systems under test
        return module != __name__
    if top in _LIBRARY_ROOTS:
        return False
    if not filename or filename.startswith("<"):  # <frozen os>, <string>, <stdin>, <doctest>
        return top not in sys.stdlib_module_names and top not in sys.builtin_module_names
    parts = filename.replace("\\", "/").split("/")
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    real = os.path.realpath(filename)
    return not any(real.startswith(d + os.sep) for d in _library_dirs())


def _is_user_function(fn: types.FunctionType) -> bool:
    return _is_user_code(fn.__module__ or "", fn.__code__.co_filename)


def _is_user_module(module: types.ModuleType) -> bool:
    name = getattr(module, "__name__", None)
    if not isinstance(name, str):
        return False
    return _is_user_code(name, getattr(module, "__file__", None))


# ------------------------------------------------------------------------------------------
# Replacing values: numpy by jax.numpy, user functions by their ports
# ------------------------------------------------------------------------------------------


@functools.cache
def _numpy_counterparts() -> dict[int, tuple[Any, Any]]:
    """id(NumPy callable) -> (the callable, its jax.numpy counterpart)."""
    table: dict[int, tuple[Any, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated names warn when touched
        for np_module, jnp_module in ((np, jnp), (np.linalg, jnp.linalg), (np.fft, jnp.fft)):
            # vars(), not dir(): looking names up could import numpy's lazy submodules.
            for name, original in list(vars(np_module).items()):
                if name.startswith("_"):
                    continue
                try:
                    counterpart = getattr(jnp_module, name)
                except Exception:  # noqa: BLE001 - a name jax.numpy lacks, or a broken one
                    continue
                if callable(original) and not isinstance(original, types.ModuleType):
                    table.setdefault(id(original), (original, counterpart))
    return table


def _numpy_counterpart(value: Any) -> Any:
    hit = _numpy_counterparts().get(id(value))
    return hit[1] if hit is not None and hit[0] is value else value


def _module_counterpart(module: types.ModuleType) -> types.ModuleType:
    name = getattr(module, "__name__", None)
    if not isinstance(name, str):
        return module
    if name == "numpy" or name.startswith("numpy."):
        target: Any = jnp
        for part in name.split(".")[1:]:
            target = getattr(target, part, None)
        return target if isinstance(target, types.ModuleType) else module
    if _is_user_module(module):
        proxy = _PROXIES.get(module)
        if proxy is None:
            proxy = _PROXIES[module] = _ModuleProxy(module)
        return proxy
    return module


class _ModuleProxy(types.ModuleType):
    """A module of the user's whose functions are ported as the ported code looks them up."""

    def __init__(self, module: types.ModuleType) -> None:
        super().__init__(module.__name__, module.__doc__)
        self._jaxcheck_module = module

    def __getattr__(self, name: str) -> Any:
        return _translate(getattr(self.__dict__["_jaxcheck_module"], name), [])


_Deps = list[tuple[types.FunctionType, _Record]]


def _translate(value: Any, deps: _Deps, depth: int = 0) -> Any:
    """What the ported code sees in place of ``value``; ``deps`` collects the user functions."""
    if isinstance(value, types.ModuleType):
        return _module_counterpart(value)
    if isinstance(value, types.FunctionType):
        if value in _PORTED or not _is_user_function(value):
            return _numpy_counterpart(value)
        ported = _port_function(value)
        deps.append((value, _RAW[value]))
        return ported
    if isinstance(value, functools.partial):
        func = _translate(value.func, deps, depth)
        args = tuple(_translate(a, deps, depth + 1) for a in value.args)
        keywords = {k: _translate(v, deps, depth + 1) for k, v in value.keywords.items()}
        if (
            func is value.func
            and all(a is b for a, b in zip(args, value.args))
            and all(keywords[k] is v for k, v in value.keywords.items())
        ):
            return value
        return functools.partial(func, *args, **keywords)
    if isinstance(value, types.MethodType):
        func = _translate(value.__func__, deps, depth)
        return value if func is value.__func__ else types.MethodType(func, value.__self__)
    if type(value) in (dict, list, tuple) and depth < 2 and len(value) <= _CONTAINER_LIMIT:
        return _translate_container(value, deps, depth + 1)
    return _numpy_counterpart(value)


def _translate_container(value: Any, deps: _Deps, depth: int) -> Any:
    if type(value) is dict:
        items = {k: _translate(v, deps, depth) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    elements = [_translate(v, deps, depth) for v in value]
    if all(a is b for a, b in zip(elements, value)):
        return value
    return type(value)(elements)


# ------------------------------------------------------------------------------------------
# Porting one function
# ------------------------------------------------------------------------------------------


def _port_top(obj: Any) -> Callable[..., Any]:
    """The port of what the user passed to :func:`port`, without the error-reporting wrapper."""
    if isinstance(obj, types.FunctionType):
        return obj if obj in _PORTED else _port_function(obj)
    if isinstance(obj, functools.partial):
        args = tuple(_translate(a, [], 1) for a in obj.args)
        keywords = {k: _translate(v, [], 1) for k, v in obj.keywords.items()}
        return functools.partial(_port_top(obj.func), *args, **keywords)
    if isinstance(obj, types.MethodType):
        return types.MethodType(_port_top(obj.__func__), obj.__self__)
    call = inspect.getattr_static(type(obj), "__call__", None)
    if not isinstance(obj, type) and isinstance(call, types.FunctionType):
        return types.MethodType(_port_top(call), obj)
    raise PortError(_not_python_message(obj))


def _port_function(fn: types.FunctionType) -> types.FunctionType:
    """The port of a Python function, from the cache when it is still up to date."""
    record = _RAW.get(fn)
    if record is not None and record.ported is not None and _fresh(fn, set()):
        return record.ported
    original = fn.__code__
    names = sorted(_global_names(original))
    record = _Record(
        code=original,
        defaults=fn.__defaults__,
        kwdefaults=fn.__kwdefaults__,
        used={name: fn.__globals__.get(name, _MISSING) for name in names},
        cells=tuple(_cell_contents(cell) for cell in fn.__closure__ or ()),
        module=fn.__module__ if isinstance(fn.__module__, str) else "",
        qualname=fn.__qualname__,
        name=fn.__name__,
    )
    namespace = dict(fn.__globals__)
    namespace.update({_ITEM: _item, _FLOAT: _float, _MARK: record})
    cells = tuple(types.CellType() for _ in record.cells)
    code = _rewritten_code(fn)
    if code is None:
        code = original
        if "float" in names and "float" not in fn.__globals__:
            # Without source to rewrite, the builtin can still be shadowed for this function.
            namespace["float"] = _float
    ported = types.FunctionType(code, namespace, fn.__name__, None, cells or None)
    ported.__qualname__ = fn.__qualname__
    ported.__doc__ = fn.__doc__
    record.ported = ported
    # Registered before the helpers are ported, so that recursion finds it instead of looping.
    _RAW[fn] = record
    _PORTED.add(ported)
    try:
        for name, value in record.used.items():
            if value is not _MISSING:
                namespace[name] = _translate(value, record.deps)
        for cell, value in zip(cells, record.cells):
            if value is not _MISSING:
                cell.cell_contents = _translate(value, record.deps)
        if fn.__defaults__ is not None:
            ported.__defaults__ = tuple(_translate(v, record.deps, 1) for v in fn.__defaults__)
        if fn.__kwdefaults__ is not None:
            ported.__kwdefaults__ = {
                k: _translate(v, record.deps, 1) for k, v in fn.__kwdefaults__.items()
            }
    except BaseException:
        if _RAW.get(fn) is record:
            del _RAW[fn]
        raise
    return ported


def _global_names(code: types.CodeType) -> set[str]:
    """Every name the code (nested functions and comprehensions included) may look up."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


# ------------------------------------------------------------------------------------------
# Recompiling the user's source with `x.item()` and `float(x)` made traceable
# ------------------------------------------------------------------------------------------


class _Rewriter(ast.NodeTransformer):
    """Makes ``x.item()`` and ``float(x)`` calls of helpers that keep a traced value traced."""

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "item":
            if not node.args and not node.keywords:
                helper = ast.copy_location(ast.Name(_ITEM, ast.Load()), func)
                return ast.copy_location(ast.Call(helper, [func.value], []), node)
        elif isinstance(func, ast.Name) and func.id == "float":
            if len(node.args) == 1 and not node.keywords:
                if not isinstance(node.args[0], ast.Starred):
                    node.func = ast.copy_location(ast.Name(_FLOAT, ast.Load()), func)
        return node


def _item(value: Any) -> Any:
    if isinstance(value, jax.Array):
        return _scalar(value, as_float=False)
    return value.item()


def _float(value: Any) -> Any:
    if isinstance(value, jax.Array):
        return _scalar(value, as_float=True)
    return float(value)


def _scalar(value: jax.Array, *, as_float: bool) -> jax.Array:
    """A 0-d array where NumPy gives a Python scalar: a traced value must stay traced."""
    if value.size != 1:
        raise TypeError(
            f"only arrays of one element can be converted to a scalar, got shape {value.shape}"
        )
    value = jnp.reshape(value, ())
    if as_float and not jnp.issubdtype(value.dtype, jnp.inexact):
        value = value.astype(float)
    return value


def _rewritten_code(fn: types.FunctionType) -> types.CodeType | None:
    """``fn``'s code compiled again from its file, rewritten; None when that cannot be trusted.

    The whole file is compiled, so closures, methods and lambdas get exactly the scopes they had;
    the function is found by its name, first line and bytecode, so a file edited since it was
    imported (or code rewritten by an import hook) falls back to the original code.
    """
    code = fn.__code__
    compiled = _compile_file(code.co_filename, code.co_flags & _FUTURE_FLAGS, fn.__globals__)
    if compiled is None:
        return None
    plain, rewritten = compiled
    key = None
    for path, candidate in _walk_code(plain, ()):
        if candidate.co_name != code.co_name or candidate.co_firstlineno != code.co_firstlineno:
            continue
        key = key or _code_key(code)
        if _code_key(candidate) == key:
            found = _follow(rewritten, path)
            if (
                found is not None
                and found.co_name == code.co_name
                and found.co_freevars == code.co_freevars
            ):
                return found
    return None


def _compile_file(
    filename: str, flags: int, module_globals: dict[str, Any]
) -> tuple[types.CodeType, types.CodeType] | None:
    lines = linecache.getlines(filename, module_globals)
    if not lines:
        return None
    cached = _FILES.get(filename)
    if cached is None or cached[0] is not lines or cached[1] != flags:
        plain = rewritten = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the user's SyntaxWarnings were shown at import
                tree = ast.parse("".join(lines), filename)
                plain = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
                tree = ast.fix_missing_locations(_Rewriter().visit(tree))
                rewritten = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            plain = rewritten = None
        cached = _FILES[filename] = (lines, flags, plain, rewritten)
    if cached[2] is None or cached[3] is None:
        return None
    return cached[2], cached[3]


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


# ------------------------------------------------------------------------------------------
# Errors: name the function, file, line and source, say why, and what to do instead
# ------------------------------------------------------------------------------------------


def _make_entry(raw: Callable[..., Any], target: Any) -> Callable[..., Any]:
    """Wraps a port so that a failure inside it becomes a :class:`PortError` naming the line."""
    target_name = _describe(target)

    def ported(*args: Any, **kwargs: Any) -> Any:
        try:
            return raw(*args, **kwargs)
        except PortError:
            raise
        except Exception as err:
            where = _innermost_ported_frame(err.__traceback__)
            if where is None:  # raised before any ported code ran, e.g. wrong arguments
                raise
            raise PortError(_runtime_message(err, *where, target_name)) from err

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        value = getattr(target, attr, None)
        if isinstance(value, str):
            setattr(ported, attr, value)
    try:
        ported.__signature__ = inspect.signature(target)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        pass
    return ported


def _innermost_ported_frame(tb: types.TracebackType | None) -> tuple[Any, int] | None:
    found = None
    for frame, lineno in traceback.walk_tb(tb):
        if isinstance(frame.f_globals.get(_MARK), _Record) and lineno is not None:
            found = (frame, lineno)
    return found


def _runtime_message(err: Exception, frame: types.FrameType, lineno: int, target: str) -> str:
    record: _Record = frame.f_globals[_MARK]
    code = frame.f_code
    qualname = getattr(code, "co_qualname", None)
    if qualname is None:  # Python 3.10
        qualname = record.qualname
        if code.co_name != record.name:
            qualname = f"{qualname}.<locals>.{code.co_name}"
    where = f"{record.module}.{qualname}" if record.module else qualname
    source = linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
    header = f"jaxcheck could not run `{where}` on jax.numpy"
    if target != where:
        header += f" (called by the port of `{target}`)"
    lines = [f"{header}:", f'  File "{code.co_filename}", line {lineno}, in {qualname}']
    if source:
        lines.append(f"    {source}")
    lines.append(_explain(err, source))
    lines.append(f"JAX raised {type(err).__name__}: {_first_line(err)}")
    lines.append(_ADVICE)
    return "\n".join(lines)


def _explain(err: Exception, source: str) -> str:
    """Why the line cannot run on jax.numpy, in plain words."""
    if _is_inplace(err, source):
        return (
            "It assigns into an array in place (`x[...] = ...` or `x[...] += ...`). JAX arrays "
            "are immutable, so this cannot run on jax.numpy; compute a new array instead, "
            "e.g. `np.maximum(A, 0)` or `np.where(A < 0, 0, A)`."
        )
    if isinstance(err, jax.errors.TracerBoolConversionError):
        return (
            "Python control flow (`if`, `while`, `and`, `or`) depends on the values in an array. "
            "Under jax.jit and jax.vmap those values are not known while JAX traces the function, "
            "so Python cannot choose a branch; compute both and choose with `np.where`."
        )
    if isinstance(err, jax.errors.TracerIntegerConversionError):
        return (
            "An array value is used as a Python integer (an index, a `range`, a shape), which is "
            "not known while JAX traces the function."
        )
    scalar_error = type(err) is TypeError and "scalar" in str(err)
    if isinstance(err, jax.errors.ConcretizationTypeError) or scalar_error:
        return (
            "A plain-Python function (`math.exp`, `float`, `int`, ...) needs a concrete number "
            "here, but it gets an array that JAX is tracing; use the NumPy function (`np.exp`), "
            "which jaxcheck can replace by its jax.numpy counterpart."
        )
    if isinstance(err, jax.errors.TracerArrayConversionError):
        return (
            "An array that JAX is tracing is passed to code that needs a real NumPy array: a "
            "compiled extension, another library (scipy, math, ...), or library code that uses "
            "NumPy itself. jaxcheck replaces `numpy` by `jax.numpy` only in your own code."
        )
    if isinstance(err, AttributeError):
        return _explain_attribute(err)
    return (
        "Running it on jax.numpy failed: it may use a NumPy feature that jax.numpy lacks or "
        "treats differently, or your NumPy code would fail the same way on these inputs."
    )


def _is_inplace(err: Exception, source: str) -> bool:
    if isinstance(err, TypeError) and "immutable" in str(err):
        return True
    if not (type(err) is TypeError or isinstance(err, jax.errors.TracerArrayConversionError)):
        return False
    try:
        statement = ast.parse(source).body[0]
    except (SyntaxError, IndexError, ValueError):
        return False
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
        targets = [statement.target]
    else:
        return False
    return any(isinstance(t, ast.Subscript) for t in targets)


def _explain_attribute(err: AttributeError) -> str:
    name = getattr(err, "name", None)
    owner = getattr(err, "obj", None)
    match = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", str(err))
    module_name = owner.__name__ if isinstance(owner, types.ModuleType) else None
    if match is not None:
        module_name, name = module_name or match.group(1), name or match.group(2)
    if module_name is not None and module_name.startswith("jax.numpy"):
        numpy_name = "numpy" + module_name[len("jax.numpy") :] + f".{name}"
        text = f"jax.numpy has no counterpart of `{numpy_name}`, so it cannot run on JAX."
        if name == "random":
            text += (
                " Randomness inside a cost also makes it impure: draw the random numbers "
                "(e.g. dropout masks) once, outside the cost, and close over them."
            )
        return text
    if isinstance(owner, jax.Array):
        return f"JAX arrays have no `.{name}` (NumPy arrays do), so it cannot run on JAX."
    return "An attribute lookup failed when the code ran on jax.numpy."


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= 300 else text[:297] + "..."


def _describe(obj: Any) -> str:
    if isinstance(obj, functools.partial):
        return f"functools.partial({_describe(obj.func)}, ...)"
    if isinstance(obj, types.MethodType):
        return _describe(obj.__func__)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(name, str):
        return f"{type(obj).__module__}.{type(obj).__qualname__} object"
    module = getattr(obj, "__module__", None)
    return f"{module}.{name}" if isinstance(module, str) else name


def _not_python_message(obj: Any) -> str:
    kind = "a class" if isinstance(obj, type) else f"a {type(obj).__module__}.{type(obj).__name__}"
    text = (
        f"jaxcheck cannot port `{_describe(obj)}`: it is not a Python function (it is {kind}), "
        f"so there is no Python code of yours to run again on jax.numpy."
    )
    counterpart = _numpy_counterpart(obj)
    if counterpart is not obj:
        text += f" Its JAX counterpart is `{_describe(counterpart)}`."
    return f"{text} {_ADVICE}"
