"""Which code is the user's (ported, and its state restored) and which is a library's (left alone).

NumPy, JAX, the standard library and installed packages are libraries; everything else (the
user's files and notebooks) is the user's. Of jaxcheck itself, only what stands in the user's
place is: the NumPy systems under test it ships (``jaxcheck.lesson``, ``jaxcheck.models``, the
demo) and the adapters that make a layer's or an object's code one cost (``_engine.system``,
``_engine.doors``), whose code sits between the port and the user's.
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
import types
from typing import Any

#: jaxcheck's modules (and their submodules) that are ported like the user's code.
_JAXCHECK_PORTED = (
    "jaxcheck.lesson",
    "jaxcheck.models",
    "jaxcheck.demo",
    "jaxcheck._engine.system",
    "jaxcheck._engine.doors",
)
# Top-level packages whose code is never ported, wherever they are installed.
_LIBRARY_ROOTS = frozenset(
    {"numpy", "jax", "jaxlib", "scipy", "ml_dtypes", "opt_einsum", "pytest", "_pytest", "pluggy"}
)


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs.update(getattr(site, "getsitepackages", list)())
    dirs.add(site.getusersitepackages())
    return tuple(sorted({os.path.realpath(d) for d in dirs if d}))


@functools.cache
def is_user_code(module: str, filename: str | None) -> bool:
    """Whether code of ``module`` in ``filename`` is the user's (ported) or a library's."""
    top = module.partition(".")[0]
    if top == "jaxcheck":
        return any(module == m or module.startswith(m + ".") for m in _JAXCHECK_PORTED)
    if top in _LIBRARY_ROOTS:
        return False
    if not filename or filename.startswith("<"):  # <frozen os>, <string>, <stdin>, <doctest>
        return top not in sys.stdlib_module_names and top not in sys.builtin_module_names
    parts = filename.replace("\\", "/").split("/")
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    real = os.path.realpath(filename)
    return not any(real.startswith(d + os.sep) for d in _library_dirs())


def is_user_function(fn: types.FunctionType) -> bool:
    """Whether a Python function is the user's own code.

    Examples:
        >>> import json
        >>> is_user_function(json.dumps)
        False
    """
    module = fn.__module__ if isinstance(fn.__module__, str) else ""
    return is_user_code(module, fn.__code__.co_filename)


def is_user_module(module: Any) -> bool:
    name = getattr(module, "__name__", None)
    if not isinstance(module, types.ModuleType) or not isinstance(name, str):
        return False
    return is_user_code(name, getattr(module, "__file__", None))


def is_user_class(cls: type) -> bool:
    """Whether instances of ``cls`` are the user's objects (layers, networks), by its module.

    Examples:
        >>> is_user_class(dict)
        False
    """
    try:
        return _is_user_class(cls)
    except TypeError:  # a class whose metaclass makes it unhashable
        return False


@functools.lru_cache(maxsize=4096)
def _is_user_class(cls: type) -> bool:
    module = sys.modules.get(getattr(cls, "__module__", None) or "")
    if module is None:  # a class made in a notebook cell or by exec() keeps a module name only
        name = getattr(cls, "__module__", None)
        return isinstance(name, str) and is_user_code(name, None)
    return is_user_module(module)
