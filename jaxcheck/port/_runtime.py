"""What the rewritten code calls: every call, subscript and assignment into one goes through here.

Each helper does exactly what NumPy would when no JAX value is involved (in place, views and
all), and the functional JAX equivalent when one is; user functions reached at run time (module
helpers, methods through ``self``, objects in lists) are ported as they are called.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import linecache
import sys
import types
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.errors import PortWarning
from jaxcheck.port import _branches as branches
from jaxcheck.port import _dispatch as dispatch
from jaxcheck.port import _isolate as isolate
from jaxcheck.port import _rewrite as rewrite
from jaxcheck.port import _source as source
from jaxcheck.port._masked import Masked, expand
from jaxcheck.port._user import is_user_class, is_user_function, is_user_module

CALLEE = "__jaxcheck_callee__"  # set on an exception raised by a library function given JAX values


# ------------------------------------------------------------------------------------------
# Calls
# ------------------------------------------------------------------------------------------


def call(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with NumPy dispatched on the arguments and user code ported."""
    entry = dispatch.numpy_entry(fn)
    if entry is not None:
        return dispatch.call_numpy(entry, args, kwargs)
    kind = type(fn)
    if kind is types.FunctionType:
        if isinstance(fn.__globals__, Overlay):  # rewritten already: a closure of ported code
            return fn(*args, **kwargs)
        if is_user_function(fn):
            return ported(fn)(*args, **kwargs)
    elif kind is types.MethodType:
        func, owner = fn.__func__, fn.__self__
        if type(func) is types.FunctionType:
            if isinstance(func.__globals__, Overlay):
                return fn(*args, **kwargs)
            if is_user_function(func):
                session = isolate.current()
                if session is not None:
                    session.add_object(owner)
                return ported(func)(owner, *args, **kwargs)
    elif kind is types.BuiltinMethodType and dispatch.is_numpy_method(fn):
        return dispatch.call_array_method(fn, args, kwargs)
    elif kind is functools.partial:
        return call(fn.func, *fn.args, *args, **{**fn.keywords, **kwargs})
    elif fn is float and len(args) == 1 and not kwargs and isinstance(args[0], jax.Array):
        return dispatch.scalar(args[0], as_float=True)
    elif fn is isinstance and len(args) == 2 and isinstance(args[0], jax.Array):
        # A traced array stands for a NumPy array: `isinstance(x, np.ndarray)` stays True.
        kinds = args[1] if isinstance(args[1], tuple) else (args[1],)
        if np.ndarray in kinds:
            return True
    elif (fn is max or fn is min) and args and not kwargs and dispatch.has_jax(args):
        return dispatch.extreme(jnp.maximum if fn is max else jnp.minimum, args)
    elif isinstance(fn, type):
        if is_user_class(fn):
            return _construct(fn, args, kwargs)
    else:
        method = inspect.getattr_static(kind, "__call__", None)
        if type(method) is types.FunctionType and is_user_function(method):
            return call(types.MethodType(method, fn), *args, **kwargs)
    return _call_library(fn, args, kwargs)


def _call_library(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A library function, given ported versions of the functions passed to it.

    ``map(sigmoid, zs)``, ``functools.reduce(np.dot, mats)``: the user's functions are ported
    and NumPy's dispatch, as they would in a call of their own.
    """
    if any(_needs_routing(a) for a in args):
        args = tuple(_routed(a) if _needs_routing(a) else a for a in args)
    if kwargs and any(_needs_routing(v) for v in kwargs.values()):
        kwargs = {k: _routed(v) if _needs_routing(v) else v for k, v in kwargs.items()}
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        if not hasattr(err, CALLEE) and dispatch.any_jax(args, kwargs):
            try:
                setattr(err, CALLEE, fn)
            except Exception:  # noqa: BLE001, S110 - an exception type without a __dict__
                pass
        raise


def _needs_routing(value: Any) -> bool:
    kind = type(value)
    if kind is types.MethodType:
        value = value.__func__
        kind = type(value)
    if kind is types.FunctionType:
        return not isinstance(value.__globals__, Overlay) and is_user_function(value)
    return dispatch.numpy_entry(value) is not None and not isinstance(value, type)


def _routed(fn: Any) -> Any:
    def routed(*args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, **kwargs)

    try:
        functools.update_wrapper(routed, fn)
    except (AttributeError, TypeError):  # pragma: no cover - an exotic callable
        pass
    return routed


def _construct(cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``cls(*args)`` for a user class, with its ``__init__`` ported.

    Done the way ``type.__call__`` does it, unless a metaclass changes how instances are made.
    """
    init = cls.__init__
    if (
        type(cls).__call__ is type.__call__
        and type(init) is types.FunctionType
        and is_user_function(init)
    ):
        new = cls.__new__
        obj = object.__new__(cls) if new is object.__new__ else new(cls, *args, **kwargs)
        if isinstance(obj, cls):
            call(init, obj, *args, **kwargs)
        return obj
    return cls(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# Ported functions and their globals
# ------------------------------------------------------------------------------------------


class Overlay(dict[str, Any]):
    """The globals of ported code: jaxcheck's helpers, then the user's module globals, live.

    Reads fall through to the user's module (``__missing__``), so a rebound global is seen at
    once; ``global`` assignments stay here and are forgotten when the ported run ends.
    """

    def __init__(self, user: dict[str, Any], translate: bool) -> None:
        super().__init__(HELPERS)
        self["__builtins__"] = user.get("__builtins__", builtins)
        self.user = user
        self.translate = translate
        self.reserved = frozenset(self)

    def __missing__(self, name: str) -> Any:
        try:
            value = self.user[name]
        except KeyError:
            if self.translate and name == "float":
                return dispatch.to_float
            raise
        return translate_value(value) if self.translate else value

    def __repr__(self) -> str:
        return f"<jaxcheck port globals of {self.user.get('__name__')!r}>"


_OVERLAYS: dict[tuple[int, bool], Overlay] = {}


def overlay_for(user: dict[str, Any], translate: bool) -> Overlay:
    found = _OVERLAYS.get((id(user), translate))
    if found is None or found.user is not user:
        found = _OVERLAYS[(id(user), translate)] = Overlay(user, translate)
    return found


def ported(fn: types.FunctionType) -> types.FunctionType:
    """``fn`` with its rewritten code, the overlay globals and copies of its closure cells.

    Made afresh at each call from ``fn`` as it is then (its code, defaults and closure), so that
    nothing stale is ever reused; copying the cells keeps the run's ``nonlocal`` writes its own.
    Code that cannot be rewritten (no source) runs as it is, with ``numpy`` and the user's
    functions translated where its globals and closure are looked up.
    """
    code = source.rewritten_code(fn)
    translate = code is None
    overlay = overlay_for(fn.__globals__, translate)
    session = isolate.current()
    if session is not None:
        session.add_function(fn, overlay)
    cells = None
    if fn.__closure__:
        cells = tuple(_copy_cell(cell, translate) for cell in fn.__closure__)
    new = types.FunctionType(code or fn.__code__, overlay, fn.__name__, fn.__defaults__, cells)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    if code is not None:
        QUALNAMES[id(code)] = (code, fn.__qualname__)
    return new


#: id(rewritten code) -> (the code, the qualified name of the function it was ported from)
QUALNAMES: dict[int, tuple[types.CodeType, str]] = {}


def _copy_cell(cell: types.CellType, translate: bool) -> types.CellType:
    try:
        contents = cell.cell_contents
    except ValueError:  # not assigned yet
        return types.CellType()
    return types.CellType(translate_value(contents) if translate else contents)


class _UserModule(types.ModuleType):
    """A module of the user's seen from code without source: its functions come out ported."""

    def __init__(self, module: types.ModuleType) -> None:
        super().__init__(module.__name__, module.__doc__)
        self.__dict__["_jaxcheck_module"] = module

    def __getattr__(self, name: str) -> Any:
        return translate_value(getattr(self.__dict__["_jaxcheck_module"], name))


def translate_value(value: Any) -> Any:
    """What unrewritten code sees for a value: NumPy dispatching, user functions ported."""
    if isinstance(value, types.ModuleType):
        name = value.__name__
        if name == "numpy" or name in ("numpy.linalg", "numpy.fft"):
            return dispatch.NumpyProxy(value)
        if is_user_module(value):
            return _UserModule(value)
        return value
    if _needs_routing(value):
        entry = dispatch.numpy_entry(value)
        return _routed(value) if entry is None else dispatch.Dispatching(entry)
    return value


# ------------------------------------------------------------------------------------------
# Subscripts and assignments into them
# ------------------------------------------------------------------------------------------


def getitem(container: Any, index: Any) -> Any:
    """``container[index]``; NumPy-style list and range indices work on JAX arrays too."""
    if isinstance(container, np.ndarray):
        if dispatch.has_jax(index):
            return _select(jnp.asarray(container), index)
        return container[index]
    if isinstance(container, jax.Array):
        return _select(container, index)
    return container[index]


def _select(array: jax.Array, index: Any) -> Any:
    index = dispatch.jax_index(index)
    try:
        selected = array[index]
    except jax.errors.NonConcreteBooleanIndexError:
        mask = _boolean_mask(array, index)
        if mask is None:
            raise
        return Masked.select(array, mask)  # x[mask], the mask traced: kept in x's shape
    if _is_basic(index):
        _note_view(selected, array)
    return selected


def _is_basic(index: Any) -> bool:
    """Whether NumPy's ``x[index]`` is a view of ``x`` (integers and slices only)."""
    parts = index if type(index) is tuple else (index,)
    return all(
        p is None or p is Ellipsis or type(p) in (int, slice) or isinstance(p, np.integer)
        for p in parts
    )


def _note_view(view: Any, base: Any) -> None:
    session = isolate.current()
    if session is not None and session.traced and isinstance(view, jax.Array):
        session.views[id(view)] = (view, base)


def _note_write(target: Any) -> None:
    """Remembers the line of a write into what NumPy would hold as a view of another array."""
    session = isolate.current()
    if session is None or not session.views:
        return
    noted = session.views.get(id(target))
    if noted is None or noted[0] is not target:
        return
    frame = sys._getframe(2)
    filename, line = frame.f_code.co_filename, frame.f_lineno
    text = linecache.getline(filename, line).strip()
    where = f"{filename}, line {line}: `{text}`"
    if where not in session.view_writes:
        session.view_writes.append(where)


def setitem(container: Any, index: Any, value: Any) -> Any:
    """``container[index] = value``; returns the container, or a new one to rebind it to.

    In place when neither the container nor the value (nor the index) is a JAX value, exactly
    as NumPy does it; otherwise a functional update of the array, which the caller rebinds.
    """
    if isinstance(container, np.ndarray):
        if not (dispatch.has_jax(value) or dispatch.has_jax(index)):
            container[index] = value
            return container
        return _update(jnp.asarray(container), index, value, None)
    if isinstance(container, jax.Array):
        _note_write(container)
        return _update(container, index, value, None)
    container[index] = value
    return container


def augitem(container: Any, index: Any, op: str, value: Any) -> Any:
    """``container[index] <op>= value``; returns the container, or a new one to rebind it to."""
    if isinstance(container, jax.Array) or (
        isinstance(container, np.ndarray) and (dispatch.has_jax(value) or dispatch.has_jax(index))
    ):
        _note_write(container)
        return _update(jnp.asarray(container), index, value, op)
    current = getitem(container, index)
    container[index] = inplace(current, op, value)
    return container


def inplace(target: Any, op: str, value: Any) -> Any:
    """``target <op>= value`` for a name or attribute: in place on NumPy, a new array on JAX."""
    if isinstance(target, np.ndarray) and dispatch.has_jax(value):
        return dispatch.BINARY[op](jnp.asarray(target), value)
    if isinstance(target, jax.Array):
        _note_write(target)
    return dispatch.INPLACE[op](target, value)


def ufunc_at(method: Any, target: Any, index: Any, *args: Any, **kwargs: Any) -> Any:
    """``np.add.at(target, index, value)``: unbuffered, in place on NumPy; functional on JAX."""
    owner = getattr(method, "__self__", None)
    if isinstance(owner, np.ufunc) and (
        dispatch.has_jax(target) or dispatch.any_jax((index, *args), kwargs)
    ):
        counterpart = getattr(jnp, owner.__name__, None)
        if counterpart is not None and hasattr(counterpart, "at"):
            array = jnp.asarray(target)
            return counterpart.at(array, dispatch.jax_index(index), *args, inplace=False, **kwargs)
    call(method, target, index, *args, **kwargs)
    return target


def _update(array: jax.Array, index: Any, value: Any, op: str | None) -> jax.Array:
    index = dispatch.jax_index(index)
    mask = _boolean_mask(array, index)
    if mask is not None and isinstance(value, Masked):
        # z[m] = f(x[m]): where(m, f(x), z), the mask the one the selection was made with.
        full = Masked(array, mask).operand(value)
        if op is not None:
            full = dispatch.BINARY[op](array, full)
        full = jnp.broadcast_to(jnp.asarray(full, dtype=array.dtype), array.shape)
        return jnp.where(expand(mask, array), full, array)
    if mask is not None and jnp.ndim(value) == 0:
        # x[mask] = 0 with a mask JAX may be tracing: same values, no data-dependent shape.
        full = value if op is None else dispatch.BINARY[op](array, value)
        mask = jnp.reshape(mask, mask.shape + (1,) * (array.ndim - mask.ndim))
        return jnp.where(mask, jnp.asarray(full, dtype=array.dtype), array)
    if op is not None:
        value = dispatch.BINARY[op](array[index], value)
    # NumPy casts what is assigned to the array's dtype, silently; so does the port.
    return array.at[index].set(jnp.asarray(value, dtype=array.dtype))


def _boolean_mask(array: jax.Array, index: Any) -> Any:
    if type(index) is tuple and len(index) == 1:
        index = index[0]
    if not isinstance(index, (np.ndarray, jax.Array)) or index.dtype != np.bool_:
        return None
    if index.ndim > array.ndim or index.shape != array.shape[: index.ndim]:
        return None
    return index


# ------------------------------------------------------------------------------------------
# Loops
# ------------------------------------------------------------------------------------------


def tick(site: int) -> None:
    """Counts one pass through a loop body; warns once when a traced loop runs very often."""
    session = isolate.current()
    if session is None or not session.traced:
        return
    count = session.ticks[site] = session.ticks.get(site, 0) + 1
    if count == isolate.LOOP_WARNING:
        filename, line = rewrite.SITES[site]
        warnings.warn(
            f"jaxcheck's port has run the loop at {filename}:{line} {count:,} times while JAX "
            f"traces your function: every pass adds operations to the traced program, so "
            f"tracing and compiling take long. Check on a smaller input (fewer examples, a "
            f'smaller image), or use method="sample" in jc.check.',
            PortWarning,
            stacklevel=2,
        )


def holds(value: Any, op: str | None, other: Any = None) -> bool | None:
    """The truth of an ``assert``'s test: True, False, or None when JAX is tracing the value.

    ``op`` None gives ``bool(value)``; "not", "and" and "or" combine truths already found.
    The user's own NumPy function runs at θ as well, and there its asserts are checked.
    """
    if op == "not":
        return None if value is None else not value
    if op == "and":
        return False if False in (value, other) else None if None in (value, other) else True
    if op == "or":
        return True if True in (value, other) else None if None in (value, other) else False
    try:
        return bool(value)
    except jax.errors.ConcretizationTypeError:
        return None


HELPERS: dict[str, Any] = {
    rewrite.CALL: call,
    rewrite.GETITEM: getitem,
    rewrite.SETITEM: setitem,
    rewrite.AUGITEM: augitem,
    rewrite.INPLACE: inplace,
    rewrite.UFUNC_AT: ufunc_at,
    rewrite.TICK: tick,
    rewrite.SLICE: slice,
    rewrite.ITEM: dispatch.item,
    rewrite.HOLDS: holds,
    rewrite.CONDITION: branches.condition,
    rewrite.BRANCHES: branches.Branches,
}
