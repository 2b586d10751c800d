"""Evaluates the twin at θ ± h·eᵢ incrementally: the first matmul sees a one-entry change.

A perturbed weight W + s·eᵢ enters the network through a matrix product, and
``(W + s·eᵢ) @ X = W @ X + s·(row i of the product with eᵢ)``: the product ``W @ X`` is shared
by every perturbation and computed once, and each perturbation only adds one scaled slice of X.
The result is the cost at the perturbed point, exact up to rounding — the finite differences
stay honest evaluations of the twin — but the most expensive product of each evaluation is
gone. Every other use of the perturbed leaf sees the perturbed array itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

try:  # jax >= 0.4.36
    from jax.extend.core import Literal as _Literal
except ImportError:  # pragma: no cover - older jax
    from jax.core import Literal as _Literal

__all__ = ["perturbed_cost"]

_CALLS = ("pjit", "jit", "closed_call", "core_call")


@dataclasses.dataclass
class _Perturbed:
    """``base`` with ``step`` added at flat position ``index`` (not materialised)."""

    base: jax.Array
    index: jax.Array
    step: jax.Array

    def materialise(self) -> jax.Array:
        flat = self.base.reshape(-1)
        return flat.at[self.index].add(self.step.astype(flat.dtype)).reshape(self.base.shape)


def _bind(primitive: Any, ins: Sequence[Any], params: dict[str, Any]) -> list[Any]:
    bind_params = primitive.get_bind_params(params)
    subfuns: list[Any] = []
    if isinstance(bind_params, tuple):  # jax < 0.8 returns (subfuns, params)
        subfuns, bind_params = bind_params
    result = primitive.bind(*subfuns, *ins, **bind_params)
    return list(result) if primitive.multiple_results else [result]


def _dot_general(lhs: Any, rhs: Any, params: dict[str, Any], primitive: Any) -> jax.Array | None:
    """The product with one perturbed operand, as shared product plus one slice; else None."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    pert_left = isinstance(lhs, _Perturbed)
    pert = lhs if pert_left else rhs
    other = rhs if pert_left else lhs
    if isinstance(other, _Perturbed):
        return None
    (base_out,) = _bind(primitive, (pert.base, other) if pert_left else (other, pert.base), params)
    coords = jnp.unravel_index(pert.index, pert.base.shape)
    p_con, o_con = (lc, rc) if pert_left else (rc, lc)
    p_bat, o_bat = (lb, rb) if pert_left else (rb, lb)
    p_free = [d for d in range(pert.base.ndim) if d not in p_con and d not in p_bat]
    o_free = [d for d in range(other.ndim) if d not in o_con and d not in o_bat]
    # The slice of the other operand that the one changed entry multiplies.
    moved = jnp.transpose(other, (*o_bat, *o_con, *o_free))
    picked = moved[tuple(coords[d] for d in (*p_bat, *p_con))] if (p_bat or p_con) else moved
    picked = picked.astype(base_out.dtype) * pert.step.astype(base_out.dtype)
    # Where it lands: output dims are (batch, lhs free, rhs free).
    index: list[Any] = [coords[d] for d in p_bat]
    if pert_left:
        index += [coords[d] for d in p_free] + [slice(None)] * len(o_free)
    else:
        index += [slice(None)] * len(o_free) + [coords[d] for d in p_free]
    return base_out.at[tuple(index)].add(picked)


def _transpose(value: _Perturbed, params: dict[str, Any]) -> _Perturbed:
    perm = tuple(params["permutation"])
    coords = jnp.unravel_index(value.index, value.base.shape)
    new_shape = tuple(value.base.shape[p] for p in perm)
    new_index = jnp.ravel_multi_index(tuple(coords[p] for p in perm), new_shape, mode="clip")
    return _Perturbed(jnp.transpose(value.base, perm), new_index, value.step)


def _eval(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, _Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        prim, params = eqn.primitive, eqn.params
        outs = None
        if any(isinstance(x, _Perturbed) for x in ins):
            name = prim.name
            if name in _CALLS:
                inner = params.get("jaxpr", params.get("call_jaxpr"))
                if inner is not None and hasattr(inner, "jaxpr"):
                    outs = _eval(inner.jaxpr, inner.consts, ins)
            elif name == "dot_general" and len(ins) == 2:
                out = _dot_general(ins[0], ins[1], params, prim)
                outs = None if out is None else [out]
            elif name == "transpose":
                outs = [_transpose(ins[0], params)]
            elif name == "reshape" and params.get("dimensions") is None:
                (x,) = ins
                shape = tuple(params["new_sizes"])
                outs = [_Perturbed(x.base.reshape(shape), x.index, x.step)]
            elif name == "convert_element_type" and ins[0].base.dtype == params["new_dtype"]:
                outs = [ins[0]]
            if outs is None:
                ins = [x.materialise() if isinstance(x, _Perturbed) else x for x in ins]
        if outs is None:
            outs = _bind(prim, ins, params)
        for v, x in zip(eqn.outvars, outs):
            if type(v).__name__ != "DropVar":
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def perturbed_cost(
    total: Callable[[list[Any]], jax.Array], leaves: Sequence[Any], index: int
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(i, s) -> total(leaves with leaves[index].flat[i] += s)``, evaluated incrementally.

    Args:
        total: the scalar cost as a function of the list of leaves.
        leaves: the leaves at θ (arrays or tracers of the enclosing computation).
        index: which leaf is perturbed.

    Returns:
        A function of the flat position and the step, meant to be vmapped over both.
    """
    shapes = [jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for x in leaves]
    closed = jax.make_jaxpr(lambda *ls: total(list(ls)))(*shapes)

    def cost(i: jax.Array, s: jax.Array) -> jax.Array:
        args = list(leaves)
        args[index] = _Perturbed(jnp.asarray(leaves[index]), i, s)
        (out,) = _eval(closed.jaxpr, closed.consts, args)
        if isinstance(out, _Perturbed):
            out = out.materialise()
        return lax.reshape(out, ())

    return cost
