"""Runs each NumPy call on NumPy or on jax.numpy, whichever its arguments call for.

A call with no JAX value among its arguments runs the real NumPy function, so that shapes,
indices, dtypes and seeded random masks come out exactly as in the user's code; a call with one
runs the jax.numpy counterpart, so that JAX can trace it.
"""

from __future__ import annotations

import functools
import math
import operator
import types
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.port import _masked as masked

# Types that never hold a JAX value: the common case, answered without isinstance(jax.Array).
_PLAIN = frozenset(
    {int, float, bool, complex, str, bytes, type(None), slice, range, type(Ellipsis)}
    | {np.ndarray, np.float64, np.float32, np.int64, np.int32, np.bool_, np.dtype}
)
# NumPy names jax.numpy spells differently.
_ALIASES = {
    "asanyarray": "asarray",
    "ascontiguousarray": "asarray",
    "asfortranarray": "asarray",
    "asarray_chkfinite": "asarray",
    "row_stack": "vstack",
    "fix": "trunc",
}
# jax.numpy functions that take lists of arrays themselves; the others get `jnp.asarray(list)`.
_TAKES_SEQUENCES = frozenset(
    {
        "array",
        "asarray",
        "stack",
        "concatenate",
        "vstack",
        "hstack",
        "dstack",
        "column_stack",
        "block",
        "select",
        "choose",
        "piecewise",
        "einsum",
        "meshgrid",
        "broadcast_arrays",
        "ix_",
        "multi_dot",
    }
)
# Of those, the ones that want each item of the list to be an array already.
_STACKING = frozenset({"stack", "concatenate", "vstack", "hstack", "dstack", "column_stack"})
# Keyword arguments NumPy still accepts that jax.numpy renamed.
_KEYWORDS = {"clip": {"a_min": "min", "a_max": "max"}}


def _math_log(x: Any, base: Any = None) -> Any:
    return jnp.log(x) if base is None else jnp.log(x) / jnp.log(base)


# `math` functions of one number, and their jax.numpy counterparts for a traced number.
_MATH = {
    "exp": jnp.exp,
    "expm1": jnp.expm1,
    "log": _math_log,
    "log10": jnp.log10,
    "log2": jnp.log2,
    "log1p": jnp.log1p,
    "sqrt": jnp.sqrt,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "tan": jnp.tan,
    "asin": jnp.arcsin,
    "acos": jnp.arccos,
    "atan": jnp.arctan,
    "atan2": jnp.arctan2,
    "sinh": jnp.sinh,
    "cosh": jnp.cosh,
    "tanh": jnp.tanh,
    "fabs": jnp.abs,
    "pow": jnp.power,
    "hypot": jnp.hypot,
    "isnan": jnp.isnan,
    "isinf": jnp.isinf,
    "isfinite": jnp.isfinite,
}

BINARY = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "matmul": operator.matmul,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
}
INPLACE = {name: getattr(operator, f"i{name}") for name in BINARY}


def has_jax(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is a JAX array or tracer, or a list, tuple or dict holding one.

    Examples:
        >>> has_jax([np.ones(2), (1.0, {"w": jnp.ones(2)})])
        True
        >>> has_jax({"w": np.ones(2)})
        False
    """
    kind = type(value)
    if kind in _PLAIN:
        return False
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        return depth < 4 and any(has_jax(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return depth < 4 and any(has_jax(item, depth + 1) for item in value.values())
    return isinstance(value, (jax.Array, masked.Masked))


def any_jax(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return has_jax(args) or (bool(kwargs) and has_jax(kwargs))


@functools.cache
def counterparts() -> dict[int, tuple[Any, Any, str]]:
    """id(NumPy or `math` callable) -> (the callable, its jax.numpy counterpart, its name)."""
    table: dict[int, tuple[Any, Any, str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated names warn when touched
        for np_module, jnp_module in ((np, jnp), (np.linalg, jnp.linalg), (np.fft, jnp.fft)):
            # vars(), not dir(): looking names up could import numpy's lazy submodules.
            names = vars(np_module)
            for name, original in list(names.items()):
                if name.startswith("_") or isinstance(original, types.ModuleType):
                    continue
                if not callable(original):
                    continue
                # An alias (np.concat for np.concatenate, np.pow) goes by its own name, which
                # the tables here (sequences, keywords) and jax.numpy know it by.
                own = getattr(original, "__name__", None)
                if isinstance(own, str) and own != name and names.get(own) is original:
                    name = own
                try:
                    counterpart = getattr(jnp_module, _ALIASES.get(name, name))
                except Exception:  # noqa: BLE001 - a name jax.numpy lacks, or a broken one
                    continue
                table.setdefault(id(original), (original, counterpart, name))
    for name, counterpart in _MATH.items():
        original = getattr(math, name)
        table[id(original)] = (original, counterpart, name)
    return table


def numpy_entry(fn: Any) -> tuple[Any, Any, str] | None:
    """The counterpart entry of a NumPy (or `math`) callable; None for anything else."""
    hit = counterparts().get(id(fn))
    return hit if hit is not None and hit[0] is fn else None


def call_numpy(entry: tuple[Any, Any, str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Calls NumPy's function on NumPy values, its jax.numpy counterpart when JAX values come."""
    original, counterpart, name = entry
    if not any_jax(args, kwargs):
        return original(*args, **kwargs)
    if masked.has_masked(args, kwargs):
        return masked.call(entry, args, kwargs)
    if name not in _TAKES_SEQUENCES:
        # np.sum([a, b]) turns the list into one array; jax.numpy wants that done first.
        args = tuple(
            jnp.asarray(a) if isinstance(a, (list, tuple)) and has_jax(a) else a for a in args
        )
    elif name in _STACKING and args and isinstance(args[0], (list, tuple)):
        items = [jnp.asarray(a) if isinstance(a, (list, tuple)) else a for a in args[0]]
        args = (items, *args[1:])
    if "out" in kwargs:
        # JAX computes a new array; a statement `np.f(..., out=x)` rebinds x to it.
        kwargs = {k: v for k, v in kwargs.items() if k != "out"}
    renames = _KEYWORDS.get(name)
    if renames and kwargs:
        kwargs = {renames.get(k, k): v for k, v in kwargs.items()}
    try:
        return counterpart(*args, **kwargs)
    except Exception as err:
        _tag(err, (*entry, _numpy_accepts(original, args, kwargs)))
        raise


#: Set on an exception raised by the jax.numpy counterpart of a NumPy call: the entry, and
#: whether NumPy's function accepts arguments of the same shapes and dtypes.
NUMPY_CALL = "__jaxcheck_numpy_call__"


def _numpy_accepts(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``original`` runs on NumPy arrays of ones shaped like the JAX values given."""

    def plain(value: Any) -> Any:
        if isinstance(value, jax.Array):
            return np.ones(value.shape, dtype=value.dtype)
        if type(value) in (list, tuple):
            return type(value)(plain(v) for v in value)
        if type(value) is dict:
            return {k: plain(v) for k, v in value.items()}
        return value

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            original(*plain(args), **plain(kwargs))
    except Exception:  # noqa: BLE001 - any failure means NumPy rejects them too
        return False
    return True


def _tag(err: Exception, entry: tuple[Any, ...]) -> None:
    if not hasattr(err, NUMPY_CALL):
        try:
            setattr(err, NUMPY_CALL, entry)
        except Exception:  # noqa: BLE001, S110 - an exception type without a __dict__
            pass


def call_array_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``x.dot(w)`` with ``x`` a NumPy array and ``w`` a JAX value runs ``jnp.asarray(x).dot(w)``.

    The same for methods of NumPy scalars and of ufuncs (``np.add.outer``, ``np.maximum.reduce``).
    """
    owner = method.__self__
    if not any_jax(args, kwargs):
        return method(*args, **kwargs)
    if isinstance(owner, np.ufunc):
        counterpart = getattr(jnp, owner.__name__, None)
        if counterpart is not None and hasattr(counterpart, method.__name__):
            return getattr(counterpart, method.__name__)(*args, **kwargs)
        return method(*args, **kwargs)
    return getattr(jnp.asarray(owner), method.__name__)(*args, **kwargs)


def is_numpy_method(fn: Any) -> bool:
    """Whether ``fn`` is a method of a NumPy array, NumPy scalar or ufunc (a C method)."""
    return type(fn) is types.BuiltinMethodType and isinstance(
        getattr(fn, "__self__", None), (np.ndarray, np.generic, np.ufunc)
    )


def scalar(value: jax.Array, *, as_float: bool) -> jax.Array:
    """A 0-d array where NumPy gives a Python scalar: a traced value must stay traced."""
    if value.size != 1:
        raise TypeError(
            f"only arrays of one element can be converted to a scalar, got shape {value.shape}"
        )
    value = jnp.reshape(value, ())
    if as_float and not jnp.issubdtype(value.dtype, jnp.inexact):
        value = value.astype(float)
    return value


def to_float(value: Any) -> Any:
    """``float(x)``: a 0-d array for a JAX value, so that the cost stays differentiable."""
    return scalar(value, as_float=True) if isinstance(value, jax.Array) else float(value)


def item(value: Any) -> Any:
    """``x.item()``: a 0-d array for a JAX value, so that the cost stays differentiable."""
    return scalar(value, as_float=False) if isinstance(value, jax.Array) else value.item()


def extreme(pick: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``max(a, b)`` / ``min(a, b)`` of traced numbers, elementwise like Python's on scalars."""
    items = args[0] if len(args) == 1 else args
    return functools.reduce(pick, list(items))


def jax_index(index: Any) -> Any:
    """An index NumPy accepts made acceptable to JAX: lists and ranges become arrays."""
    kind = type(index)
    if kind is list or kind is range:
        return jnp.asarray(index) if has_jax(index) else np.asarray(index)
    if kind is tuple:
        return tuple(jax_index(part) for part in index)
    return index


class NumpyProxy(types.ModuleType):
    """Stands for ``numpy`` in code jaxcheck could not rewrite: its functions dispatch per call."""

    def __init__(self, module: types.ModuleType) -> None:
        super().__init__(module.__name__, module.__doc__)
        self.__dict__["_jaxcheck_module"] = module

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.__dict__["_jaxcheck_module"], name)
        if isinstance(value, types.ModuleType) and value.__name__ in ("numpy.linalg", "numpy.fft"):
            value = NumpyProxy(value)
        elif not isinstance(value, type):
            entry = numpy_entry(value)
            if entry is not None:
                value = Dispatching(entry)
        self.__dict__[name] = value
        return value


class Dispatching:
    """A NumPy function that runs on jax.numpy when its arguments hold JAX values."""

    def __init__(self, entry: tuple[Any, Any, str]) -> None:
        self.entry = entry
        functools.update_wrapper(self, entry[0])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return call_numpy(self.entry, args, kwargs)
