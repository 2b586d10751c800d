"""Loading what the command line names: the user's functions, and arrays from .npz/.npy files.

Functions come from ``path/to/file.py:function`` or ``package.module:function`` specs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import os
import pkgutil
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from jaxcheck.cli._output import UsageError, under, user_traceback

_module_counter = itertools.count()


# --------------------------------------------------------------------------------------------
# sys.path: the user's directories after the standard library
# --------------------------------------------------------------------------------------------


def _after_stdlib() -> int:
    """The ``sys.path`` index just after the standard library (the end when it is not found)."""
    paths = sysconfig.get_paths()
    stdlib = [os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib") if key in paths]
    found = [
        i
        for i, entry in enumerate(sys.path)
        if "-packages" not in entry and under(entry or os.curdir, stdlib)
    ]
    return found[-1] + 1 if found else len(sys.path)


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """Adds ``directory`` to ``sys.path`` after the standard library, then removes it again.

    After, not first: a user's ``random.py`` or ``copy.py`` must not replace the standard
    module for anything imported while the check runs.
    """
    sys.path.insert(_after_stdlib(), directory)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)


def _stdlib_namesakes(directory: str) -> list[str]:
    names: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    with contextlib.suppress(OSError):
        return sorted(f for f in os.listdir(directory) if f.endswith(".py") and f[:-3] in names)
    return []


# --------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------


def _is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _load_file(path: str, spec_text: str) -> ModuleType:
    if not os.path.exists(path):
        raise UsageError(f"no file {path} (from {spec_text!r})")
    if not os.path.isfile(path):
        raise UsageError(f"{path} is not a file (from {spec_text!r})")
    stem = "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])
    name = f"_jaxcheck_user_{stem}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path} as Python (from {spec_text!r})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        hint = None
        namesakes = _stdlib_namesakes(os.path.dirname(path))
        if isinstance(err, (ImportError, AttributeError)) and namesakes:
            hint = (
                f"{os.path.dirname(path)} holds {', '.join(namesakes)}, named like standard "
                f"modules; jaxcheck keeps the standard library first, so an import of that "
                f"name gets the standard module: rename your file."
            )
        raise UsageError(
            f"importing {path} raised {type(err).__name__}: {err}\n{user_traceback(err)}".rstrip(),
            hint=hint,
        ) from err
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(name: str, spec_text: str) -> ModuleType:
    if not all(part.isidentifier() for part in name.split(".")):
        raise UsageError(
            f"{spec_text!r}: {name!r} is neither a .py file nor a module name; expected "
            f"path/to/file.py:function or package.module:function"
        )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            raise UsageError(
                f"no module {err.name!r} (from {spec_text!r}); is it on PYTHONPATH, or did you "
                f"mean a file, path/to/file.py:function?"
            ) from err
        raise UsageError(f"importing {name} raised ModuleNotFoundError: {err}") from err
    except Exception as err:
        raise UsageError(
            f"importing {name} raised {type(err).__name__}: {err}\n{user_traceback(err)}".rstrip()
        ) from err


def _functions_in(module: ModuleType) -> list[str]:
    """Public functions of ``module``: those defined there, or else every public callable."""
    public = {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and callable(value) and not isinstance(value, (type, ModuleType))
    }
    own = [k for k, v in public.items() if getattr(v, "__module__", None) == module.__name__]
    return sorted(own or public)


def load_function(
    spec_text: str, stack: contextlib.ExitStack, modules: dict[str, ModuleType]
) -> Callable[..., Any]:
    """Resolves ``path/to/file.py:function`` or ``package.module:function`` to the function.

    Each file is executed once per command (``modules`` remembers it), so cost and grad from the
    same file share its module-level data even when that data is random. Directories on
    ``sys.path`` that the module needs (the file's own directory, or the current directory for a
    module name) stay there until ``stack`` closes, so imports the functions make later resolve.
    """
    target, colon, attribute = spec_text.rpartition(":")
    if not colon or not target or not attribute:
        raise UsageError(
            f"{spec_text!r}: expected path/to/file.py:function or package.module:function"
        )
    if _is_file_spec(target):
        path = os.path.abspath(target)
        if path not in modules:
            if os.path.isdir(os.path.dirname(path)) and os.path.dirname(path) not in sys.path:
                stack.enter_context(_on_sys_path(os.path.dirname(path)))
            modules[path] = _load_file(path, spec_text)
        module = modules[path]
        name, where = module.__name__, target
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            stack.enter_context(_on_sys_path(os.getcwd()))
        module = _import_module(target, spec_text)
        name, where = target, f"module {target}"
    try:
        # The module is imported already (a file under a name of its own), so this only follows
        # the attributes; ValueError: the attribute is not a dotted name ("co-st").
        value = pkgutil.resolve_name(f"{name}:{attribute}")
    except (AttributeError, ValueError):
        defined = ", ".join(_functions_in(module)) or "no public functions"
        raise UsageError(f"no function {attribute!r} in {where} (it defines: {defined})") from None
    if not callable(value):
        raise UsageError(
            f"{attribute!r} in {where} is a {type(value).__name__}, not a function "
            f"(from {spec_text!r})"
        )
    return value


def positional_names(fn: Callable[..., Any]) -> list[str] | None:
    """Names of ``fn``'s positional parameters, or ``None`` when it takes ``*args``/is opaque."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in kinds]


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def _load_npz(path: str, what: str, advice: str) -> dict[str, np.ndarray]:
    """Reads the arrays of an ``.npz`` archive into a dict, in the order stored."""
    if not os.path.exists(path):
        raise UsageError(f"no {what} file {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:
        raise UsageError(
            f"cannot read {what} file {path} ({type(err).__name__}: {err}); {advice}"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(f"{what} file {path} holds a single array, not named arrays; {advice}")
    with archive:
        try:
            return {key: archive[key] for key in archive.files}
        except Exception as err:
            raise UsageError(
                f"cannot read {what} file {path} ({type(err).__name__}: {err}); {advice}"
            ) from err


def nest(arrays: dict[str, np.ndarray], where: str) -> Any:
    """Rebuilds nested params from ``/``-separated names: dicts, and lists for numbered levels.

    Names without ``/`` give the flat dict as stored.

    Examples:
        >>> nest({"layers/1/W": 2, "layers/0/W": 0, "layers/0/b": 1}, "p.npz")
        {'layers': [{'W': 0, 'b': 1}, {'W': 2}]}
    """
    if not any("/" in key for key in arrays):
        return arrays
    tree: dict[str, Any] = {}
    for key, value in arrays.items():
        parts = key.split("/")
        if "" in parts:
            raise UsageError(
                f"{where}: the array name {key!r} has an empty level; name nested arrays like "
                f"'layers/0/W'"
            )
        node = tree
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _clash("/".join(parts[: depth + 1]), key, where)
        if parts[-1] in node:
            inner = next(k for k in arrays if k.startswith(key + "/"))
            raise _clash(key, inner, where)
        node[parts[-1]] = value
    return _numbered_to_lists(tree, "", where)


def _clash(array: str, inner: str, where: str) -> UsageError:
    return UsageError(
        f"{where} holds both {array!r} and {inner!r}: {array!r} cannot be an array and a group "
        f"of arrays at once; rename one of them"
    )


def _numbered_to_lists(node: Any, prefix: str, where: str) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _numbered_to_lists(v, f"{prefix}{k}/", where) for k, v in node.items()}
    if not all(key.isdecimal() for key in items):
        return items
    numbers = sorted(int(key) for key in items)
    if numbers != list(range(len(numbers))) or any(str(int(k)) != k for k in items):
        found = ", ".join(f"{prefix}{k}" for k in sorted(items, key=int))
        raise UsageError(
            f"{where}: the numbered names {found} must count 0, 1, 2, ... without gaps or "
            f"leading zeros to form a list"
        )
    return [items[str(i)] for i in numbers]


def load_params(path: str) -> Any:
    """Reads the parameters from an ``.npz`` archive: a dict, nested where names hold ``/``."""
    advice = f"save the parameters by name with np.savez({path!r}, W1=W1, b1=b1, ...)"
    return nest(_load_npz(path, "params", advice), f"params file {path}")


def layer_args(path: str, forward: Callable[..., Any]) -> list[Any]:
    """Reads forward's positional arguments: ``arg0, arg1, ...`` or by parameter name."""
    advice = f'save them with np.savez("{path}", arg0=x, arg1=w, ...) or by parameter name'
    arrays = nest(_load_npz(path, "args", advice), f"args file {path}")
    if not isinstance(arrays, dict) or not arrays:
        raise UsageError(f"args file {path} holds no named arguments; {advice}")
    numbered = {k: v for k, v in arrays.items() if re.fullmatch(r"arg(0|[1-9]\d*)", k)}
    if len(numbered) == len(arrays):
        count = len(numbered)
        missing = [f"arg{i}" for i in range(count) if f"arg{i}" not in numbered]
        if missing:
            raise UsageError(f"args file {path} has {sorted(numbered)} but not {missing}")
        return [numbered[f"arg{i}"] for i in range(count)]
    names = positional_names(forward)
    if names is None:
        raise UsageError(
            f"args file {path} names arguments {list(arrays)}, but forward's parameter names "
            f"are unknown (it takes *args); {advice}"
        )
    unknown = [k for k in arrays if k not in names]
    if unknown:
        raise UsageError(
            f"args file {path} holds {unknown}, which are not parameters of forward "
            f"({', '.join(names)}); name the arrays arg0, arg1, ... or by parameter name"
        )
    count = 1 + max(names.index(k) for k in arrays)
    missing = [name for name in names[:count] if name not in arrays]
    if missing:
        raise UsageError(
            f"args file {path} lacks {missing}: forward's arguments are passed by position, so "
            f"every parameter before {names[count - 1]!r} needs an array"
        )
    return [arrays[name] for name in names[:count]]


def load_dout(path: str) -> np.ndarray:
    """Reads the upstream gradient of ``check-layer --dout``: one array saved with ``np.save``."""
    if not os.path.exists(path):
        raise UsageError(f"no dout file {path}")
    try:
        value = np.load(path, allow_pickle=False)
    except Exception as err:
        raise UsageError(f"cannot read dout file {path} ({type(err).__name__}: {err})") from err
    if not isinstance(value, np.ndarray):
        value.close()
        raise UsageError(
            f"dout file {path} holds named arrays; save the single upstream gradient with "
            f"np.save({path!r}, dout)"
        )
    return value
