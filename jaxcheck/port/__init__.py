"""Re-executes a NumPy function's own code so that JAX can trace it.

:func:`port` gives ``jc.check`` a JAX twin of a NumPy cost when no ``jax_cost=`` is passed.
"""

from __future__ import annotations

import functools
import inspect
import os
import types
import weakref
from collections.abc import Callable
from typing import Any

import jax

from jaxcheck.errors import PortError
from jaxcheck.port import _isolate as isolate
from jaxcheck.port._errors import advising as advising
from jaxcheck.port._errors import describe, innermost_ported_frame, not_python_message, port_error
from jaxcheck.port._errors import runtime_message as _runtime_message
from jaxcheck.port._runtime import call as _call
from jaxcheck.port._runtime import ported as _ported
from jaxcheck.port._user import is_user_function as is_user_function

__all__ = ["port", "view_writes"]

try:  # JAX's source information (and tracebacks) then point at the user's lines, not ours
    from jax._src import source_info_util as _source_info

    _source_info.register_exclusion(os.path.dirname(__file__))
except Exception:  # noqa: BLE001 - a private API: without it only JAX's notes are less precise
    pass

try:
    from jax.core import Tracer as _TRACER
except ImportError:  # pragma: no cover - a jax that no longer exports it
    from jax._src.core import Tracer as _TRACER

_ENTRIES: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


def port(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Returns ``fn`` re-executed so that JAX can trace it: NumPy calls run on jax.numpy.

    Your code runs again, rewritten so that it behaves exactly as NumPy on NumPy values and
    also works on the values JAX traces:

    - each NumPy call runs the real NumPy function unless a JAX value is among its arguments
      (in lists and dicts too), and then its jax.numpy counterpart: shapes, indices, dtypes and
      seeded random masks (``np.random.seed(0); np.random.rand(*x.shape) < p``) come out as in
      NumPy; ``math.exp`` and friends work on traced numbers too;
    - assignment into arrays (``out[n, f, i, j] = ...``, ``dx[mask] = 0``, ``a[i] += v``,
      ``np.add.at``) happens in place on NumPy arrays, and becomes a functional update
      (``x.at[i].set(v)``) that rebinds the target when a JAX value is involved;
    - your functions, methods (``self.forward(x)``, ``self.layers[i].backward``), classes and
      callable objects are ported as they are called; NumPy, JAX, the standard library and
      installed packages are left alone;
    - ``float(x)`` and ``x.item()`` of a JAX value give a 0-d JAX array, so a cost that ends in
      ``float(np.squeeze(cost))`` stays differentiable;
    - an ``if``/``elif``/``else`` on a value JAX traces whose branches only assign variables
      (``if margin > 0: loss += margin``) runs both branches and merges them with ``where``,
      each branch's inputs cut from the gradient where it is not taken (a ``log`` valid on one
      side only cannot poison it); ``assert`` on such a value is left to your NumPy run;
    - ``x[mask]`` with a traced mask stays in ``x``'s shape: elementwise functions of it, an
      assignment with the same mask (``z[m] = np.exp(-x[m])``) and its sum, mean, max, min and
      prod follow it.

    Globals and closures are read live, so changed data (``X += 1``, ``X = new``) is always
    seen, and each call of ``port`` gives a new function. Your world is left as found: slots of
    your objects and containers that the ported run changed (``self.cache = (x, w)``,
    ``CACHE["A1"] = A1``) are put back after it, as are NumPy's and Python's random states.

    Args:
        fn: the NumPy function: a function, lambda, closure, ``functools.partial``, bound
            method (``net.loss``) or callable object, e.g. a cost taking a dict of parameters.

    Returns:
        A function with the signature of ``fn``, usable under ``jax.jit``, ``jax.grad``,
        ``jax.vmap`` and ``jax.make_jaxpr``. On NumPy inputs it computes what ``fn`` computes.
        It calls ``fn``'s code once per call, like ``fn``; ``port`` itself calls nothing.

    Raises:
        PortError: ``fn`` is not a Python function (a builtin, a NumPy ufunc, a class). The
            returned function also raises it, with the file, line and source of the offending
            line and the value that caused it, when the code cannot run on traced values:
            Python ``while``, or an ``if`` whose branches do more than assign, on a value
            computed from the parameters (under ``jit``/``vmap``/``make_jaxpr``), such a value
            used as an integer, a selection ``x[mask]`` used otherwise than above, or such a
            value passed to a library that needs real NumPy arrays (scipy, compiled code). The
            original error is chained as ``__cause__``.

    Warns:
        PortWarning: a loop body ran 10,000 times while JAX traced it (slow to trace).

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> def cost(w):
        ...     out = np.zeros(2)
        ...     for i in range(2):
        ...         out[i] = np.tanh(w[i]) ** 2
        ...     return float(np.sum(out))
        >>> w = np.array([0.5, -1.0])
        >>> jax_cost = port(cost)
        >>> bool(np.isclose(jax_cost(w), cost(w)))
        True
        >>> [round(float(g), 4) for g in jax.grad(jax_cost)(w)]
        [0.7269, -0.6397]
    """
    if _is_entry(fn):
        return fn
    root = _root(fn)
    if root is None:
        raise port_error(not_python_message(fn))
    return _entry(fn, root)


def view_writes(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The lines where the last traced run of a ported ``fn`` wrote into a view.

    In NumPy, ``top = h[0]; top *= 2`` changes ``h`` as well; on JAX values the port changes
    ``top`` only. Each entry is ``'file, line N: `source`'``; empty when there were none (or
    ``fn`` is not a port).
    """
    return tuple(getattr(fn, "view_writes", ())) if _is_entry(fn) else ()


def _is_entry(obj: Any) -> bool:
    try:
        return obj in _ENTRIES
    except TypeError:
        return False


def _root(obj: Any) -> types.FunctionType | None:
    """The Python function whose code a port of ``obj`` runs first."""
    if isinstance(obj, types.FunctionType):
        return obj
    if isinstance(obj, functools.partial):
        return _root(obj.func)
    if isinstance(obj, types.MethodType):
        return _root(obj.__func__)
    if isinstance(obj, type):
        return None
    call = inspect.getattr_static(type(obj), "__call__", None)
    return call if isinstance(call, types.FunctionType) else None


def _entry(target: Any, root: types.FunctionType) -> Callable[..., Any]:
    """The function :func:`port` returns: runs ``target`` ported, in a session, errors named.

    ``root`` is :func:`_root` of ``target``, the function whose code runs first.
    """
    target_name = describe(target)

    def ported(*args: Any, **kwargs: Any) -> Any:
        if isolate.current() is not None:  # called from ported code: part of that run
            return _run(target, root, args, kwargs)
        traced = any(isinstance(leaf, _TRACER) for leaf in jax.tree.leaves((args, kwargs)))
        with isolate.Session(traced) as session:
            _add_roots(session, target)
            try:
                result = _run(target, root, args, kwargs)
                if traced:
                    ported.view_writes = tuple(session.view_writes)  # type: ignore[attr-defined]
                return result
            except Exception as err:
                if isinstance(err, (Warning, PortError)):  # warnings turned into errors stay so
                    raise
                where = innermost_ported_frame(err.__traceback__)
                if where is None:  # raised before any ported code ran, e.g. wrong arguments
                    raise
                raise port_error(_runtime_message(err, *where, target_name)) from err

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        value = getattr(target, attr, None)
        if isinstance(value, str):
            setattr(ported, attr, value)
    ported.__wrapped__ = target  # type: ignore[attr-defined] # JAX names the user's function
    ported.view_writes = ()  # type: ignore[attr-defined] # see view_writes()
    try:
        ported.__signature__ = inspect.signature(target)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        pass
    _ENTRIES.add(ported)
    return ported


def _run(target: Any, root: types.FunctionType, args: Any, kwargs: Any) -> Any:
    if not is_user_function(root) and target is root:
        # A library function passed to port explicitly is still ported itself.
        return _ported(root)(*args, **kwargs)
    return _call(target, *args, **kwargs)


def _add_roots(session: isolate.Session, target: Any) -> None:
    """Snapshots what ``target`` can reach before it runs (its helpers add theirs as they run)."""
    if isinstance(target, functools.partial):
        for value in (*target.args, *target.keywords.values()):
            session.add_object(value)
        _add_roots(session, target.func)
    elif isinstance(target, types.MethodType):
        session.add_object(target.__self__)
        _add_roots(session, target.__func__)
    elif isinstance(target, types.FunctionType):
        session.add_function(target)
    else:
        session.add_object(target)


# `jaxcheck/__init__.py` binds the name `jaxcheck.port` to this function, shadowing the package;
# this keeps `jaxcheck.port.port(fn)` working either way.
port.port = port  # type: ignore[attr-defined]
