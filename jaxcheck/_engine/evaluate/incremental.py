"""Evaluates the twin at θ ± h·eᵢ incrementally, carrying only what the perturbation changes.

Perturbing one entry of a leaf changes one slice of it (a row of a weight matrix). As the
perturbed value flows through the twin, an elementwise op changes that slice only, a matrix
product over a free axis changes one slice of its output, and a matrix product over the
contracting axis changes its output by one outer product. So each perturbed evaluation carries a
*slab* — the shared, unperturbed value plus the one slice that differs — and pays for that slice
alone; everything the perturbation does not touch is computed once for the whole batch. What
the slab rules cannot follow sees the perturbed array itself, materialised.

Slices are replaced, never added: an elementwise op on a slab computes ``f(new slice)``, so the
result is the twin's value at the perturbed point up to the rounding of the outer-product
updates. The finite differences stay honest evaluations of the twin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Literal as _Literal

__all__ = [
    "bind",
    "perturbed_cost",
]

_CALLS = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call")

_ELEMENTWISE = frozenset(
    """
    abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type copy
    copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite
    le lgamma log log1p logistic lt max min mul ne neg nextafter not or pow real
    reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan
    tanh xor digamma
    """.split()
)


@dataclasses.dataclass
class _Slab:
    """``base`` with its slice at ``index`` along ``axis`` replaced by ``row``, unmaterialised."""

    base: jax.Array
    axis: int
    index: jax.Array
    row: jax.Array

    def materialise(self) -> jax.Array:
        row = jnp.expand_dims(self.row, self.axis).astype(self.base.dtype)
        return lax.dynamic_update_index_in_dim(self.base, row, self.index, self.axis)

    def base_row(self) -> jax.Array:
        return lax.dynamic_index_in_dim(self.base, self.index, self.axis, keepdims=False)


def bind(primitive: Any, ins: Sequence[Any], params: dict[str, Any]) -> list[Any]:
    """Applies a jaxpr equation's primitive to ``ins``: a list of its outputs."""
    result = primitive.bind(*ins, **primitive.get_bind_params(params))
    return list(result) if primitive.multiple_results else [result]


def _plain(x: Any) -> Any:
    return x.materialise() if isinstance(x, _Slab) else x


def _take(x: Any, axis: int, index: jax.Array) -> Any:
    """The slice of a plain operand that lines up with a slab's row (size-1 axes broadcast)."""
    if np.ndim(x) == 0:
        return x
    x = jnp.asarray(x)
    if x.shape[axis] == 1:
        return lax.index_in_dim(x, 0, axis, keepdims=False)
    return lax.dynamic_index_in_dim(x, index, axis, keepdims=False)


def _elementwise(primitive: Any, ins: list[Any], params: dict[str, Any]) -> Any:
    slabs = [x for x in ins if isinstance(x, _Slab)]
    first = slabs[0]
    same = all(s.axis == first.axis and s.index is first.index for s in slabs)
    (out_base,) = bind(primitive, [x.base if isinstance(x, _Slab) else x for x in ins], params)
    if (
        not same
        or out_base.ndim != first.base.ndim
        or any(s.base.shape[s.axis] != out_base.shape[first.axis] for s in slabs)
        or any(not isinstance(x, _Slab) and 0 < np.ndim(x) != out_base.ndim for x in ins)
    ):
        return None
    rows = [x.row if isinstance(x, _Slab) else _take(x, first.axis, first.index) for x in ins]
    (out_row,) = bind(primitive, rows, params)
    return _Slab(out_base, first.axis, first.index, out_row)


def _drop(dims: Sequence[int], axis: int) -> tuple[int, ...]:
    return tuple(d - (d > axis) for d in dims)


def _dot_general(lhs: Any, rhs: Any, params: dict[str, Any], primitive: Any) -> Any:
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    if isinstance(lhs, _Slab) and isinstance(rhs, _Slab):
        return None
    left = isinstance(lhs, _Slab)
    slab, other = (lhs, rhs) if left else (rhs, lhs)
    s_con, o_con = (lc, rc) if left else (rc, lc)
    s_bat, o_bat = (lb, rb) if left else (rb, lb)
    (out_base,) = bind(primitive, (slab.base, other) if left else (other, slab.base), params)
    a = slab.axis

    def numbers(s_con2, o_con2, s_bat2, o_bat2):
        con = (s_con2, o_con2) if left else (o_con2, s_con2)
        bat = (s_bat2, o_bat2) if left else (o_bat2, s_bat2)
        return dict(params, dimension_numbers=(con, bat))

    if a in s_con:  # contracting axis: the output changes by one outer product
        k = list(s_con).index(a)
        other_k = lax.dynamic_index_in_dim(other, slab.index, o_con[k], keepdims=False)
        delta = slab.row - slab.base_row()
        p = numbers(
            _drop([d for d in s_con if d != a], a),
            _drop([d for d in o_con if d != o_con[k]], o_con[k]),
            _drop(s_bat, a),
            _drop(o_bat, o_con[k]),
        )
        (change,) = bind(primitive, (delta, other_k) if left else (other_k, delta), p)
        return out_base + change.astype(out_base.dtype)
    if a in s_bat:  # batch axis: one output slice, from the matching slice of the other
        k = list(s_bat).index(a)
        other_k = lax.dynamic_index_in_dim(other, slab.index, o_bat[k], keepdims=False)
        p = numbers(
            _drop(s_con, a),
            _drop(o_con, o_bat[k]),
            _drop([d for d in s_bat if d != a], a),
            _drop([d for d in o_bat if d != o_bat[k]], o_bat[k]),
        )
        (row,) = bind(primitive, (slab.row, other_k) if left else (other_k, slab.row), p)
        return _Slab(out_base, k, slab.index, row)
    # free axis: one output slice, the product of the new slice
    s_free = [d for d in range(slab.base.ndim) if d not in s_con and d not in s_bat]
    o_free = [d for d in range(np.ndim(other)) if d not in o_con and d not in o_bat]
    position = len(s_bat) + (s_free.index(a) if left else len(o_free) + s_free.index(a))
    p = numbers(_drop(s_con, a), o_con, _drop(s_bat, a), o_bat)
    (row,) = bind(primitive, (slab.row, other) if left else (other, slab.row), p)
    return _Slab(out_base, position, slab.index, row)


def _reduce(x: _Slab, primitive: Any, params: dict[str, Any]) -> Any:
    axes = tuple(params["axes"])
    (out_base,) = bind(primitive, [x.base], params)
    if x.axis in axes:
        if primitive.name != "reduce_sum":
            return None
        rest = _drop([d for d in axes if d != x.axis], x.axis)
        (change,) = bind(primitive, [x.row - x.base_row()], dict(params, axes=rest))
        return out_base + change
    (row,) = bind(primitive, [x.row], dict(params, axes=_drop(axes, x.axis)))
    return _Slab(out_base, x.axis - sum(d < x.axis for d in axes), x.index, row)


def _structural(x: _Slab, primitive: Any, params: dict[str, Any]) -> Any:
    name = primitive.name
    (out_base,) = bind(primitive, [x.base], params)
    if name == "transpose":
        perm = tuple(params["permutation"])
        axis = perm.index(x.axis)
        row_perm = _drop([d for d in perm if d != x.axis], x.axis)
        return _Slab(out_base, axis, x.index, jnp.transpose(x.row, row_perm))
    if name == "broadcast_in_dim":
        dims = tuple(params["broadcast_dimensions"])
        axis = dims[x.axis]
        if x.base.shape[x.axis] != out_base.shape[axis]:
            return None
        shape = tuple(s for d, s in enumerate(out_base.shape) if d != axis)
        row_dims = _drop([d for i, d in enumerate(dims) if i != x.axis], axis)
        return _Slab(out_base, axis, x.index, lax.broadcast_in_dim(x.row, shape, row_dims))
    if name == "reshape" and params.get("dimensions") is None:
        keep = x.axis + 1
        if tuple(out_base.shape[:keep]) != tuple(x.base.shape[:keep]):
            return None
        return _Slab(out_base, x.axis, x.index, x.row.reshape(out_base.shape[keep:]))
    if name == "squeeze":
        dims = tuple(params["dimensions"])
        if x.axis in dims:
            return None
        axis = x.axis - sum(d < x.axis for d in dims)
        return _Slab(out_base, axis, x.index, lax.squeeze(x.row, _drop(dims, x.axis)))
    return None


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
        if any(isinstance(x, _Slab) for x in ins):
            name = prim.name
            out = None
            if name in _CALLS:
                inner = params.get("jaxpr", params.get("call_jaxpr"))
                if hasattr(inner, "jaxpr") and len(inner.jaxpr.invars) == len(ins):
                    outs = _eval(inner.jaxpr, inner.consts, ins)
            elif name in _ELEMENTWISE:
                out = _elementwise(prim, ins, params)
            elif name == "dot_general" and len(ins) == 2:
                out = _dot_general(ins[0], ins[1], params, prim)
            elif name in ("reduce_sum", "reduce_max", "reduce_min") and len(ins) == 1:
                out = _reduce(ins[0], prim, params)
            elif len(ins) == 1 and name in ("transpose", "broadcast_in_dim", "reshape", "squeeze"):
                out = _structural(ins[0], prim, params)
            if out is not None:
                outs = [out]
            if outs is None:
                ins = [_plain(x) for x in ins]
        if outs is None:
            outs = bind(prim, ins, params)
        for v, x in zip(eqn.outvars, outs):
            if type(v).__name__ != "DropVar":
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _leaf_slab(base: jax.Array, i: jax.Array, s: jax.Array) -> Any:
    """The leaf with ``s`` added at flat position ``i``: a slab along its first axis."""
    if base.ndim == 0:
        return base + s.astype(base.dtype)
    rest = int(np.prod(base.shape[1:], dtype=np.int64))
    first, within = i // rest, i % rest
    row = lax.dynamic_index_in_dim(base, first, 0, keepdims=False).reshape(-1)
    row = row.at[within].add(s.astype(base.dtype)).reshape(base.shape[1:])
    return _Slab(base, 0, first, row)


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
        args[index] = _leaf_slab(jnp.asarray(leaves[index]), i, s)
        (out,) = _eval(closed.jaxpr, closed.consts, args)
        return lax.reshape(_plain(out), ())

    return cost
