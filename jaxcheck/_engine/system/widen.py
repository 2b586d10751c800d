"""A ported twin whose cost casts below float64, re-traced with the casts removed.

A NumPy cost that computes in float32 inside (float64 params, a ``.astype(np.float32)`` in the
middle, or a loss cast to float32 at the end) ports to a twin whose finite differences would be
float32 differences, too imprecise to judge anything. The same formula computed in float64 is a
precise twin of it: every cast below float64 on a value that depends on the params is dropped,
and narrower operands meeting a float64 one are promoted. The check is then judged at the
cost's own precision (the narrowest dtype it computed in), and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from jaxcheck._engine.evaluate.incremental import bind
from jaxcheck._engine.system.twin import Twin, trace

__all__ = ["narrowest", "widen"]

#: Primitives that call a sub-jaxpr: widened by interpreting it inline.
_CALLS = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call")


def _is_narrow_float(dtype: Any) -> bool:
    return (
        dtype is not None and jnp.issubdtype(dtype, jnp.floating) and np.dtype(dtype).itemsize < 8
    )


def narrowest(jaxpr: Any) -> np.dtype | None:
    """The narrowest floating dtype of a value that depends on the params, if below float64."""
    dependent = set(map(id, jaxpr.invars))
    found: list[np.dtype] = []
    for eqn in jaxpr.eqns:
        if not any(id(v) in dependent for v in eqn.invars if hasattr(v, "aval") and not _lit(v)):
            continue
        for v in eqn.outvars:
            dependent.add(id(v))
            dtype = getattr(getattr(v, "aval", None), "dtype", None)
            if _is_narrow_float(dtype):
                found.append(np.dtype(dtype))
    return min(found, key=lambda d: d.itemsize) if found else None


def _lit(v: Any) -> bool:
    return isinstance(v, Literal)


def widen(twin: Twin, treedef: Any, leaves64: Sequence[np.ndarray]) -> Twin | None:
    """``twin`` traced again with its casts below float64 removed; None where that fails.

    Returns None when the widened twin still computes below float64 (a loop or branch whose
    body is typed narrow) or cannot be traced: the caller then refuses as before.
    """

    def fn(params: Any) -> Any:
        (out,) = _run(twin.jaxpr, twin.consts, jax.tree_util.tree_leaves(params))
        return out

    try:
        with jax.enable_x64(True):
            wide = trace(fn, treedef, leaves64, twin.kind)
    except Exception:  # noqa: BLE001 - an op the widening cannot follow: refuse as before
        return None
    return None if wide.narrow else wide


def _run(jaxpr: Any, consts: Sequence[Any], ins: Sequence[Any]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if _lit(v) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, ins))
    for eqn in jaxpr.eqns:
        outs = _equation(eqn, [read(v) for v in eqn.invars])
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _wide(x: Any) -> bool:
    return jnp.asarray(x).dtype == jnp.float64


def _equation(eqn: Any, ins: list[Any]) -> list[Any]:
    """One equation in float64 where a float64 operand meets it."""
    name, params = eqn.primitive.name, dict(eqn.params)
    if name in ("convert_element_type", "reduce_precision") and ins and _wide(ins[0]):
        if name == "reduce_precision" or _is_narrow_float(params.get("new_dtype")):
            return [ins[0]]  # the cast below float64 is what is removed
    inner = params.get("jaxpr", params.get("call_jaxpr"))
    if name in _CALLS and inner is not None:
        return _run(getattr(inner, "jaxpr", inner), getattr(inner, "consts", ()), ins)
    if any(_wide(x) for x in ins if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)):
        ins = [
            jnp.asarray(x, jnp.float64) if _is_narrow_float(jnp.asarray(x).dtype) else x
            for x in ins
        ]
        if _is_narrow_float(params.get("preferred_element_type")):
            params["preferred_element_type"] = np.dtype(np.float64)
    return bind(eqn.primitive, ins, params)
