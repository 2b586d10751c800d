"""Small checks without compiling: the twin's jaxpr and its gradient's, evaluated with NumPy.

A small model's whole check costs less to evaluate than XLA takes to lower and compile its
program, so for checks up to :data:`MAX_WORK` the traced twin is interpreted directly, one
NumPy call per equation: every perturbed point of a probe group at once along a leading batch
axis (the job ``vmap`` does in the compiled program), and ``jax.grad`` of the twin through the
jaxpr JAX traces for it, cached on the twin's structural key. The same numbers as the compiled
program come back (:class:`~jaxcheck._engine.evaluate.finite_differences.Evaluation`), up to the
last bits of each operation's rounding. A twin using an operation outside :data:`PRIMITIVES`
(convolutions, gathers, loops, random numbers) is compiled as before.
"""

from __future__ import annotations

import collections
import math
import string
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from jaxcheck._engine.system.twin import Twin

__all__ = [
    "MAX_WORK",
    "PRIMITIVES",
    "Unsupported",
    "cost_and_terms",
    "gradient",
    "gradient_jaxpr",
    "interpret",
    "perturbed",
    "supports",
    "work",
]

#: The most array elements a check may touch in all (perturbed points × the sizes of the twin's
#: intermediates) to be interpreted with NumPy rather than compiled. Around this size NumPy
#: takes tens of milliseconds, about what XLA takes to compile the smallest program.
MAX_WORK = 4_000_000


class Unsupported(Exception):
    """An equation the NumPy interpreter does not follow: the caller compiles instead."""


def _integer_division(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    quotient = np.abs(a) // np.maximum(np.abs(b), 1)
    return np.where(b == 0, 0, quotient * np.sign(a) * np.sign(b)).astype(np.result_type(a, b))


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(np.result_type(a, b), np.integer):
        return _integer_division(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(a, b)


def _round(x: np.ndarray, rounding_method: Any = 0) -> np.ndarray:
    if int(rounding_method) == 1:  # to nearest even
        return np.round(x)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)  # away from zero


def _logistic(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _quiet(fn: Callable) -> Callable:
    def call(*args: Any, **params: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **params)

    return call


#: Elementwise primitives: their NumPy function (batched and unbatched operands broadcast).
_ELEMENTWISE: dict[str, Callable] = {
    "add": np.add,
    "add_any": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": _div,
    "rem": _quiet(np.fmod),
    "pow": _quiet(np.power),
    "max": np.maximum,
    "min": np.minimum,
    "neg": np.negative,
    "sign": np.sign,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": _round,
    "is_finite": np.isfinite,
    "exp": _quiet(np.exp),
    "exp2": _quiet(np.exp2),
    "log": _quiet(np.log),
    "log1p": _quiet(np.log1p),
    "expm1": _quiet(np.expm1),
    "tanh": np.tanh,
    "logistic": _logistic,
    "sin": np.sin,
    "cos": np.cos,
    "tan": _quiet(np.tan),
    "asin": _quiet(np.arcsin),
    "acos": _quiet(np.arccos),
    "atan": np.arctan,
    "atan2": np.arctan2,
    "sinh": _quiet(np.sinh),
    "cosh": _quiet(np.cosh),
    "asinh": np.arcsinh,
    "acosh": _quiet(np.arccosh),
    "atanh": _quiet(np.arctanh),
    "sqrt": _quiet(np.sqrt),
    "rsqrt": _quiet(lambda x: 1.0 / np.sqrt(x)),
    "cbrt": np.cbrt,
    "abs": np.abs,
    "square": np.square,
    "integer_pow": _quiet(lambda x, y: x**y),
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "and": np.logical_and,
    "or": np.logical_or,
    "not": np.logical_not,
    "xor": np.logical_xor,
    "copy": np.copy,
    "copy_p": np.copy,
    "stop_gradient": np.asarray,
    "clamp": lambda lo, x, hi: np.minimum(np.maximum(x, lo), hi),
    "nextafter": np.nextafter,
}
#: Parameters of an elementwise primitive passed on to its NumPy function.
_PASSED = {"integer_pow": ("y",), "round": ("rounding_method",)}
_LOGICAL = {"and", "or", "not", "xor"}

#: Primitives whose sub-jaxpr is simply evaluated, and the parameter that holds it.
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
}


def _shift(axes: Sequence[int], batched: bool) -> tuple[int, ...]:
    return tuple(int(a) + batched for a in axes)


def _broadcast_in_dim(
    x: np.ndarray, b: bool, batch: int, *, shape: Any, broadcast_dimensions: Any, **_: Any
) -> np.ndarray:
    shape = tuple(shape)
    dims = tuple(broadcast_dimensions)
    if b:
        shape, dims = (batch, *shape), (0, *_shift(dims, True))
    expanded = [1] * len(shape)
    for source, target in enumerate(dims):
        expanded[target] = x.shape[source]
    return np.broadcast_to(np.reshape(x, expanded), shape)


def _reshape(
    x: np.ndarray, b: bool, batch: int, *, new_sizes: Any, dimensions: Any = None, **_: Any
) -> np.ndarray:
    if dimensions is not None:
        raise Unsupported("reshape with dimensions")
    return np.reshape(x, ((batch,) if b else ()) + tuple(new_sizes))


def _transpose(x: np.ndarray, b: bool, batch: int, *, permutation: Any) -> np.ndarray:
    perm = tuple(permutation)
    return np.transpose(x, (0, *_shift(perm, True)) if b else perm)


def _squeeze(x: np.ndarray, b: bool, batch: int, *, dimensions: Any) -> np.ndarray:
    return np.squeeze(x, axis=_shift(dimensions, b))


def _reduction(fn: Callable) -> Callable:
    def reduce(x: np.ndarray, b: bool, batch: int, *, axes: Any, **_: Any) -> np.ndarray:
        return fn(x, axis=_shift(axes, b))

    return reduce


def _arg_reduction(fn: Callable) -> Callable:
    def reduce(x: np.ndarray, b: bool, batch: int, *, axes: Any, index_dtype: Any) -> np.ndarray:
        (axis,) = _shift(axes, b)
        return fn(x, axis=axis).astype(index_dtype)

    return reduce


def _cumulative(fn: Callable) -> Callable:
    def accumulate(x: np.ndarray, b: bool, batch: int, *, axis: Any, reverse: bool) -> np.ndarray:
        axis = int(axis) + b
        if reverse:
            return np.flip(fn(np.flip(x, axis), axis=axis), axis)
        return fn(x, axis=axis)

    return accumulate


def _slice(
    x: np.ndarray, b: bool, batch: int, *, start_indices: Any, limit_indices: Any, strides: Any
) -> np.ndarray:
    steps = strides or (1,) * len(start_indices)
    index = tuple(slice(s, e, k) for s, e, k in zip(start_indices, limit_indices, steps))
    return x[(slice(None),) * b + index]


#: Single-operand structural primitives: ``fn(x, batched, batch, **params)``.
_UNARY: dict[str, Callable] = {
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "reduce_sum": _reduction(np.sum),
    "reduce_max": _reduction(np.max),
    "reduce_min": _reduction(np.min),
    "reduce_prod": _reduction(np.prod),
    "reduce_and": _reduction(np.all),
    "reduce_or": _reduction(np.any),
    "argmax": _arg_reduction(np.argmax),
    "argmin": _arg_reduction(np.argmin),
    "cumsum": _cumulative(np.cumsum),
    "cumprod": _cumulative(np.cumprod),
    "cummax": _cumulative(np.maximum.accumulate),
    "cummin": _cumulative(np.minimum.accumulate),
    "slice": _slice,
}

_STRUCTURAL = {"dot_general", "convert_element_type", "select_n", "concatenate", "pad", "iota"}
_STRUCTURAL |= {"split", "dynamic_slice", "dynamic_update_slice", "reduce_precision"}
_STRUCTURAL |= {"stack", "unstack"}

#: Every primitive the NumPy interpreter follows.
PRIMITIVES = frozenset(_ELEMENTWISE) | frozenset(_UNARY) | frozenset(_CALLS) | _STRUCTURAL


def _letters(n: int, skip: str = "") -> list[str]:
    return [c for c in string.ascii_letters if c not in skip][:n]


def _dot_general(ins: list[np.ndarray], bats: list[bool], params: dict[str, Any]) -> np.ndarray:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params["dimension_numbers"]
    lhs, rhs = ins
    lb, rb = bats
    nl, nr = lhs.ndim - lb, rhs.ndim - rb
    pool = iter(_letters(nl + nr + 1, "Z"))
    left = [next(pool) for _ in range(nl)]
    right = [next(pool) for _ in range(nr)]
    for a, c in zip(lhs_contract, rhs_contract):
        right[c] = left[a]
    for a, c in zip(lhs_batch, rhs_batch):
        right[c] = left[a]
    shared = {int(a) for a in (*lhs_contract, *lhs_batch)}
    rshared = {int(c) for c in (*rhs_contract, *rhs_batch)}
    out = [left[a] for a in lhs_batch]
    out += [left[i] for i in range(nl) if i not in shared]
    out += [right[i] for i in range(nr) if i not in rshared]
    lead = "Z" if (lb or rb) else ""
    spec = (
        ("Z" if lb else "")
        + "".join(left)
        + ","
        + ("Z" if rb else "")
        + "".join(right)
        + "->"
        + lead
        + "".join(out)
    )
    result = np.einsum(spec, lhs, rhs, optimize=len(out) + len(left) > 3)
    dtype = params.get("preferred_element_type")
    return result if dtype is None else result.astype(dtype)


def _pad(ins: list[np.ndarray], bats: list[bool], params: dict[str, Any]) -> np.ndarray:
    x, value = ins
    if bats[1]:
        raise Unsupported("pad with a batched padding value")
    config = [(0, 0, 0)] * bats[0] + [tuple(c) for c in params["padding_config"]]
    for axis, (low, high, interior) in enumerate(config):
        if interior:
            n = x.shape[axis]
            shape = list(x.shape)
            shape[axis] = n + (n - 1) * interior if n else 0
            spread = np.full(shape, value, dtype=x.dtype)
            index = [slice(None)] * x.ndim
            index[axis] = slice(None, None, interior + 1)
            spread[tuple(index)] = x
            x = spread
        crop = [slice(None)] * x.ndim
        crop[axis] = slice(max(-low, 0), x.shape[axis] - max(-high, 0))
        x = x[tuple(crop)]
        widths = [(0, 0)] * x.ndim
        widths[axis] = (max(low, 0), max(high, 0))
        x = np.pad(x, widths, constant_values=value)
    return x


def _select_n(ins: list[np.ndarray], bats: list[bool], params: dict[str, Any]) -> np.ndarray:
    which, *cases = ins
    if len(cases) == 2:
        return np.where(which, cases[1], cases[0])
    return np.choose(np.asarray(which, np.int64), np.broadcast_arrays(*cases))


def _concatenate(
    ins: list[np.ndarray], bats: list[bool], params: dict[str, Any], batch: int
) -> np.ndarray:
    b = any(bats)
    if b:
        ins = [x if xb else np.broadcast_to(x, (batch, *x.shape)) for x, xb in zip(ins, bats)]
    return np.concatenate(ins, axis=int(params["dimension"]) + b)


def _stack(
    ins: list[np.ndarray], bats: list[bool], params: dict[str, Any], batch: int
) -> np.ndarray:
    b = any(bats)
    if b:
        ins = [x if xb else np.broadcast_to(x, (batch, *x.shape)) for x, xb in zip(ins, bats)]
    return np.stack(ins, axis=int(params["axis"]) + b)


def _dynamic_start(
    x: np.ndarray, starts: list[np.ndarray], sizes: Sequence[int]
) -> tuple[int, ...]:
    # XLA clamps start indices so that the slice stays inside the operand.
    return tuple(
        int(min(max(int(s), 0), dim - size)) for s, dim, size in zip(starts, x.shape, sizes)
    )


def _dynamic_slice(ins: list[np.ndarray], bats: list[bool], params: dict[str, Any]) -> np.ndarray:
    x, *starts = ins
    if any(bats[1:]):
        raise Unsupported("dynamic_slice at batched indices")
    b = bats[0]
    sizes = tuple(params["slice_sizes"])
    begin = _dynamic_start(x[0] if b else x, starts, sizes)
    index = tuple(slice(s, s + n) for s, n in zip(begin, sizes))
    return x[(slice(None),) * b + index]


def _dynamic_update_slice(ins: list[np.ndarray], bats: list[bool], batch: int) -> np.ndarray:
    x, update, *starts = ins
    if any(bats[2:]):
        raise Unsupported("dynamic_update_slice at batched indices")
    b = bats[0] or bats[1]
    if b:
        x = x if bats[0] else np.broadcast_to(x, (batch, *x.shape))
        update = update if bats[1] else np.broadcast_to(update, (batch, *update.shape))
    base = x[0] if b else x
    begin = _dynamic_start(base, starts, update.shape[b:])
    index = tuple(slice(s, s + n) for s, n in zip(begin, update.shape[b:]))
    out = np.array(x, copy=True)
    out[(slice(None),) * b + index] = update
    return out


def _iota(params: dict[str, Any]) -> np.ndarray:
    shape, dimension = tuple(params["shape"]), int(params["dimension"])
    ramp = np.arange(shape[dimension], dtype=params["dtype"])
    expanded = [1] * len(shape)
    expanded[dimension] = shape[dimension]
    return np.broadcast_to(ramp.reshape(expanded), shape)


def _split(ins: list[np.ndarray], bats: list[bool], params: dict[str, Any]) -> list[np.ndarray]:
    edges = np.cumsum(params["sizes"])[:-1]
    return np.split(ins[0], edges, axis=int(params["axis"]) + bats[0])


def _reduce_precision(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    bits = np.finfo(x.dtype)
    if params["exponent_bits"] >= bits.nexp and params["mantissa_bits"] >= bits.nmant:
        return x
    raise Unsupported("reduce_precision to a narrower format")


def _structural(
    name: str, ins: list[np.ndarray], bats: list[bool], params: dict[str, Any], batch: int
) -> Any:
    if name == "dot_general":
        return _dot_general(ins, bats, params)
    if name == "convert_element_type":
        return ins[0].astype(params["new_dtype"])
    if name == "select_n":
        return _select_n(ins, bats, params)
    if name == "concatenate":
        return _concatenate(ins, bats, params, batch)
    if name == "pad":
        return _pad(ins, bats, params)
    if name == "iota":
        return _iota(params)
    if name == "split":
        return _split(ins, bats, params)
    if name == "stack":
        return _stack(ins, bats, params, batch)
    if name == "unstack":
        axis = int(params["axis"]) + bats[0]
        return [np.take(ins[0], i, axis=axis) for i in range(ins[0].shape[axis])]
    if name == "dynamic_slice":
        return _dynamic_slice(ins, bats, params)
    if name == "dynamic_update_slice":
        return _dynamic_update_slice(ins, bats, batch)
    return _reduce_precision(ins[0], params)


def _sub_jaxpr(value: Any) -> tuple[Any, Sequence[Any]]:
    if isinstance(value, ClosedJaxpr):
        return value.jaxpr, value.consts
    if isinstance(value, Jaxpr):
        return value, ()
    raise Unsupported(f"a call whose body is a {type(value).__name__}")


def _aligned(ins: list[np.ndarray], bats: list[bool]) -> list[np.ndarray]:
    """Batched operands of lower rank (a scalar beside an array) get their size-1 axes after
    the batch axis, where NumPy's right-aligned broadcasting would otherwise put the batch."""
    rank = max(x.ndim - f for x, f in zip(ins, bats))
    return [
        x.reshape((x.shape[0],) + (1,) * (rank - x.ndim + 1) + x.shape[1:]) if f else x
        for x, f in zip(ins, bats)
    ]


def _apply(eqn: Any, ins: list[np.ndarray], bats: list[bool], batch: int) -> tuple[list[Any], bool]:
    name, params = eqn.primitive.name, eqn.params
    b = any(bats)
    if name in _ELEMENTWISE:
        passed = {k: params[k] for k in _PASSED.get(name, ())}
        if b:
            ins = _aligned(ins, bats)
        return [_ELEMENTWISE[name](*ins, **passed)], b
    if name in _UNARY:
        return [_UNARY[name](ins[0], bats[0], batch, **params)], bats[0]
    if name in _CALLS:
        jaxpr, consts = _sub_jaxpr(params[_CALLS[name]])
        values = [np.asarray(c) for c in consts] + ins
        flags = [False] * len(consts) + bats
        return _run(jaxpr, values, flags, batch)
    if name in _STRUCTURAL:
        out = _structural(name, ins, bats, params, batch)
        return (list(out) if isinstance(out, list) else [out]), b
    raise Unsupported(f"primitive {name}")


def _run(
    jaxpr: Any,
    values: Sequence[Any],
    flags: Sequence[bool],
    batch: int,
    seen: Callable[[Any, np.ndarray], None] | None = None,
) -> tuple[list[Any], bool]:
    env: dict[Any, tuple[np.ndarray, bool]] = {}

    def read(v: Any) -> tuple[np.ndarray, bool]:
        if isinstance(v, Literal):
            return np.asarray(v.val, dtype=getattr(v.aval, "dtype", None)), False
        return env[v]

    for var, value, flag in zip([*jaxpr.constvars, *jaxpr.invars], values, flags):
        env[var] = (np.asarray(value), bool(flag))
    for eqn in jaxpr.eqns:
        read_in = [read(v) for v in eqn.invars]
        outs, b = _apply(eqn, [x for x, _ in read_in], [f for _, f in read_in], batch)
        for var, out in zip(eqn.outvars, outs):
            env[var] = (_checked(var, out, b, batch), b)
            if seen is not None:
                seen(var, env[var][0])
    results = [read(v) for v in jaxpr.outvars]
    batched = any(f for _, f in results)
    return [_lift(x, f, batched, batch) for x, f in results], batched


def _lift(x: np.ndarray, flag: bool, batched: bool, batch: int) -> np.ndarray:
    return np.broadcast_to(x, (batch, *x.shape)) if batched and not flag else x


def _checked(var: Any, out: Any, batched: bool, batch: int) -> np.ndarray:
    """The result cast to the equation's dtype; a shape that is not the traced one is refused."""
    aval = var.aval
    shape = ((batch,) if batched else ()) + tuple(aval.shape)
    out = np.asarray(out)
    if out.shape != shape:
        raise Unsupported(f"shape {out.shape} where the jaxpr has {shape}")
    return out if out.dtype == aval.dtype else out.astype(aval.dtype)


def interpret(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Any],
    batched: Sequence[bool] | None = None,
    batch: int = 0,
) -> list[np.ndarray]:
    """Evaluates ``jaxpr`` with NumPy; arguments flagged in ``batched`` carry a leading axis.

    Raises:
        Unsupported: an equation the interpreter does not follow (nothing is half-done).
    """
    flags = [False] * len(consts) + list(batched or [False] * len(args))
    with np.errstate(all="ignore"):
        outs, _ = _run(jaxpr, [*consts, *args], flags, batch)
    return outs


def cost_and_terms(twin: Twin, leaves: Sequence[np.ndarray]) -> tuple[float, float]:
    """The twin's cost at ``leaves`` and the largest sum of magnitudes among its intermediates.

    The NumPy counterpart of :func:`jaxcheck._engine.system.twin.cost_and_terms`.
    """
    terms = []

    def seen(var: Any, x: np.ndarray) -> None:
        if np.issubdtype(x.dtype, np.floating):
            terms.append(float(np.sum(np.abs(x.astype(np.float64)))))

    with np.errstate(all="ignore"):
        (out,), _ = _run(
            twin.jaxpr, [*twin.consts, *leaves], [False] * (len(twin.consts) + len(leaves)), 0, seen
        )
    value = float(np.asarray(out, np.float64))
    return value, float(np.max(np.asarray([abs(value), *terms])))


def _primitives(jaxpr: Any, found: set[str]) -> set[str]:
    for eqn in jaxpr.eqns:
        found.add(eqn.primitive.name)
        for value in eqn.params.values():
            if isinstance(value, (ClosedJaxpr, Jaxpr)):
                _primitives(value.jaxpr if isinstance(value, ClosedJaxpr) else value, found)
    return found


def supports(jaxpr: Any) -> bool:
    """Whether every equation of ``jaxpr`` (and of the jaxprs it calls) can be interpreted."""
    return _primitives(jaxpr, set()) <= PRIMITIVES


def work(jaxpr: Any) -> int:
    """Array elements one evaluation of ``jaxpr`` produces (every intermediate, summed)."""
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            total += math.prod(getattr(var.aval, "shape", ())) or 1
    return total


_GRADIENTS: collections.OrderedDict[Any, Any] = collections.OrderedDict()
#: Gradient jaxprs kept, most recently used first.
GRADIENT_CACHE_SIZE = 64


def gradient_jaxpr(twin: Twin, leaves: Sequence[np.ndarray]) -> Any:
    """The jaxpr of ``jax.grad`` of the twin, taking (consts, leaves); cached on the twin's key.

    Call with x64 enabled.
    """
    shapes = tuple((np.shape(v), np.result_type(v).name) for v in leaves)
    key = None if twin.key is None else (twin.key, shapes)
    if key is not None and key in _GRADIENTS:
        _GRADIENTS.move_to_end(key)
        return _GRADIENTS[key]
    n = len(twin.consts)

    def gradient(*args: Any) -> Any:
        consts, ls = args[:n], list(args[n:])
        return jax.grad(lambda xs: twin.cost(consts, xs))(ls)

    specs = [jax.ShapeDtypeStruct(np.shape(c), np.result_type(c)) for c in twin.consts]
    specs += [jax.ShapeDtypeStruct(np.shape(v), np.float64) for v in leaves]
    with jax.disable_jit(False):
        closed = jax.make_jaxpr(gradient)(*specs)
    if key is not None:
        _GRADIENTS[key] = closed
        while len(_GRADIENTS) > GRADIENT_CACHE_SIZE:
            _GRADIENTS.popitem(last=False)
    return closed


def gradient(twin: Twin, leaves: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``jax.grad`` of the twin at ``leaves``, evaluated with NumPy (call with x64 enabled).

    Raises:
        Unsupported: the gradient's jaxpr holds an equation the interpreter does not follow.
    """
    closed = gradient_jaxpr(twin, leaves)
    if not supports(closed.jaxpr):
        raise Unsupported("the gradient uses a primitive outside PRIMITIVES")
    outs = interpret(closed.jaxpr, closed.consts, [*twin.consts, *leaves])
    return [np.asarray(g, np.float64) for g in outs]


def perturbed(
    twin: Twin, leaves: Sequence[np.ndarray], group: tuple[int, ...], displacements: Any
) -> np.ndarray:
    """The twin's cost at θ moved by each displacement of the group's flattened leaves.

    ``displacements`` is ``(coords, steps)`` (each point moves one entry) or a matrix with one
    displacement per row. Returns one cost per point.
    """
    x = np.concatenate([np.reshape(leaves[i], -1) for i in group])
    if isinstance(displacements, tuple):
        coords, steps = displacements
        points = np.broadcast_to(x, (len(coords), x.size)).copy()
        points[np.arange(len(coords)), coords] += steps
    else:
        points = x + displacements
    batch = points.shape[0]
    args, flags = [np.asarray(v) for v in leaves], [False] * len(leaves)
    edges = np.cumsum([0, *(np.size(leaves[i]) for i in group)])
    for i, a, b in zip(group, edges[:-1], edges[1:]):
        args[i] = points[:, a:b].reshape((batch, *np.shape(leaves[i])))
        flags[i] = True
    (out,) = interpret(twin.jaxpr, twin.consts, args, flags, batch)
    return np.asarray(np.broadcast_to(out, (batch,)), np.float64)
