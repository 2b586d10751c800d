"""The JAX twin, traced once: a jaxpr whose closed-over data are arguments, and a structural key.

Compiled programs are cached on the key, which holds the code's structure, shapes and dtypes and
every scalar constant by value, but not the arrays the cost closes over: those are passed to the
programs as arguments. A new closure of the same code with other data reuses the compiled
program, and changed data (``X += 1``, ``X = new``) can never be answered from a stale cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr as _ClosedJaxpr
from jax.extend.core import Jaxpr as _Jaxpr
from jax.extend.core import Literal as _Literal

__all__ = [
    "Twin",
    "cost_and_terms",
    "output_dtype",
    "scalar_of",
    "trace",
]


def scalar_of(value: Any) -> jax.Array:
    """The scalar cost out of what a JAX twin returned (a scalar or a tuple led by one)."""
    if isinstance(value, (tuple, list)):
        value = value[0]
    value = jnp.asarray(value)
    if value.size != 1:
        from jaxcheck.errors import InputError

        raise InputError(
            f"jax_cost(params) returned an array of shape {value.shape}; expected the scalar "
            f"cost (a 0-d array, or a tuple whose first item is one). Reduce it as the NumPy "
            f"cost does, e.g. with jnp.sum or jnp.mean."
        )
    return value.reshape(())


@dataclasses.dataclass(frozen=True, eq=False)
class Twin:
    """A JAX twin of the cost, traced once at float64 shapes of the params.

    Attributes:
        jaxpr: the traced cost; its constvars are the arrays it closes over.
        consts: those arrays, passed to every compiled program as arguments.
        key: the structure of ``jaxpr`` (hashable), or None when it cannot be keyed safely
            (then nothing compiled for it is reused).
        kind: ``"given"`` (``jax_cost=``) or ``"ported"`` (``jc.port(cost)``).
        narrow: where the twin computes below float64 (``"float32 at mul"``), if anywhere.
        view_writes: for a ported twin, the lines that write into a view (see
            :func:`jaxcheck.port.view_writes`), which the port cannot follow.
    """

    jaxpr: Any
    consts: tuple[Any, ...]
    key: Hashable | None
    kind: str
    narrow: tuple[str, ...] = ()
    view_writes: tuple[str, ...] = ()

    def cost(self, consts: Sequence[Any], leaves: Sequence[Any]) -> jax.Array:
        """The cost at ``leaves`` with the closed-over data ``consts`` (traceable)."""
        return _interpret(self.jaxpr, consts, leaves)


def _interpret(
    jaxpr: Any,
    consts: Sequence[Any],
    leaves: Sequence[Any],
    seen: Callable[[Any, Any], None] | None = None,
) -> Any:
    """Evaluates ``jaxpr`` equation by equation; ``seen(var, value)`` watches each result."""
    from jaxcheck._engine.evaluate.incremental import bind

    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, _Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, leaves))
    for eqn in jaxpr.eqns:
        outs = bind(eqn.primitive, [read(v) for v in eqn.invars], eqn.params)
        for v, x in zip(eqn.outvars, outs):
            env[v] = x
            if seen is not None:
                seen(v, x)
    (out,) = [read(v) for v in jaxpr.outvars]
    return out


def trace(fn: Callable[[Any], Any], treedef: Any, leaves: Sequence[np.ndarray], kind: str) -> Twin:
    """Traces ``fn(params)`` once at the shapes of ``leaves`` (float64; call under x64).

    Raises whatever tracing the user's function raises; the caller wraps it.
    """
    shapes = [jax.ShapeDtypeStruct(np.shape(v), np.float64) for v in leaves]

    def total(*ls: Any) -> jax.Array:
        return scalar_of(fn(jax.tree_util.tree_unflatten(treedef, list(ls))))

    with jax.disable_jit(False):
        closed = jax.make_jaxpr(total)(*shapes)
    jaxpr = closed.jaxpr
    consts = tuple(closed.consts)
    try:
        key: Hashable | None = (_jaxpr_key(jaxpr), _consts_key(consts))
    except _Unkeyable:
        key = None
    writes: tuple[str, ...] = ()
    if kind == "ported":
        from jaxcheck.port import view_writes

        writes = view_writes(fn)
    return Twin(jaxpr, consts, key, kind, _narrow(jaxpr), writes)


def output_dtype(twin: Twin) -> np.dtype:
    """The dtype of the twin's cost."""
    return np.dtype(twin.jaxpr.outvars[0].aval.dtype)


class _Unkeyable(Exception):
    """A jaxpr parameter that cannot be keyed without risking a stale program."""


def _consts_key(consts: Sequence[Any]) -> tuple[Any, ...]:
    return tuple((tuple(np.shape(c)), str(np.result_type(c))) for c in consts)


def _array_key(value: Any) -> tuple[Any, ...]:
    arr = np.asarray(value)
    digest = hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).hexdigest()
    return ("array", arr.shape, str(arr.dtype), digest)


def _jaxpr_key(jaxpr: Any) -> tuple[Any, ...]:
    names: dict[Any, int] = {}

    def var(v: Any) -> Any:
        if isinstance(v, _Literal):
            return ("literal", _array_key(v.val))
        if v not in names:
            names[v] = len(names)
        return names[v]

    def aval(v: Any) -> str:
        return str(getattr(v, "aval", ""))

    head = (
        tuple((var(v), aval(v)) for v in jaxpr.constvars),
        tuple((var(v), aval(v)) for v in jaxpr.invars),
    )
    body = []
    for eqn in jaxpr.eqns:
        params = tuple(sorted((k, _value_key(p)) for k, p in eqn.params.items()))
        ins = tuple(var(v) for v in eqn.invars)
        outs = tuple((var(v), aval(v)) for v in eqn.outvars)
        body.append((eqn.primitive.name, ins, outs, params))
    return (head, tuple(body), tuple(var(v) for v in jaxpr.outvars))


def _value_key(value: Any) -> Any:
    if isinstance(value, _ClosedJaxpr):
        return (
            "closed",
            _jaxpr_key(value.jaxpr),
            tuple(_array_key(c) for c in value.consts),
        )
    if isinstance(value, _Jaxpr):
        return ("jaxpr", _jaxpr_key(value))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_value_key(v) for v in value))
    if isinstance(value, (np.ndarray, jax.Array, np.generic)):
        return _array_key(value)
    if isinstance(value, (str, int, float, bool, complex, type(None), np.dtype)):
        return (type(value).__name__, value)
    if callable(value) and not isinstance(value, type):
        # A custom rule's function: the same object is the same rule, another one recompiles.
        # The cached program holds this jaxpr, so the object (and its id) outlives the entry.
        return ("object", id(value))
    try:
        hash(value)
    except TypeError:
        raise _Unkeyable(type(value).__name__) from None
    if " at 0x" in repr(value):  # no readable identity: the object itself is the key
        return ("object", id(value))
    return (type(value).__qualname__, value)


def _narrow(jaxpr: Any) -> tuple[str, ...]:
    """Where the traced twin computes a value that depends on the params below float64.

    Data closed over in float32 is fine (it is data); a parameter cast to float32 makes the
    twin's finite differences float32 differences, which are not to be trusted.
    """
    dependent = set(map(id, jaxpr.invars))
    found: list[str] = []
    for eqn in jaxpr.eqns:
        if not any(id(v) in dependent for v in eqn.invars if not isinstance(v, _Literal)):
            continue
        for v in eqn.outvars:
            dtype = getattr(getattr(v, "aval", None), "dtype", None)
            if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
                continue  # a comparison or an index carries no derivative of the params
            dependent.add(id(v))
            if np.dtype(dtype).itemsize < 8 and len(found) < 3:
                where = _source_line(eqn)
                found.append(f"{np.dtype(dtype)} at {eqn.primitive.name}{where}")
    return tuple(found)


def _source_line(eqn: Any) -> str:
    """`` (file.py:12)`` for the user's frame that made the equation, when JAX recorded it."""
    try:
        from jax._src import source_info_util

        frame = source_info_util.user_frame(eqn.source_info.traceback)
    except Exception:  # noqa: BLE001 - best effort: jax internals move
        return ""
    if frame is None:
        return ""
    return f" ({frame.file_name}:{frame.start_line})"


def cost_and_terms(twin: Twin, consts: Sequence[Any], leaves: Sequence[Any]) -> tuple[Any, Any]:
    """The twin's cost and the largest sum of magnitudes among its intermediates (traceable).

    The second number bounds the terms the cost adds up (``Σ|xᵢ|`` of every intermediate array),
    so ``u`` times it estimates the cost's own rounding error: far more than ``u·|J|`` when large
    terms cancel.
    """
    terms = []

    def seen(v: Any, x: Any) -> None:
        dtype = getattr(v.aval, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            terms.append(jnp.sum(jnp.abs(jnp.asarray(x, jnp.float64))))

    out = jnp.asarray(_interpret(twin.jaxpr, consts, leaves, seen), jnp.float64)
    total = jnp.max(jnp.stack([jnp.abs(out), *terms])) if terms else jnp.abs(out)
    return out, total
