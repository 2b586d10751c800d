"""The system under test at θ: the user's cost and gradient called safely, and the JAX twin.

Calls into the user's code are counted and kept to what the check needs: the cost twice and the
gradient twice (to catch randomness), the gradient once more in float64 for a low-precision
system, and the twin traced once. Nothing of the user's data is modified.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxcheck._engine.evaluate import processes
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.params import Leaves, flatten_params, match_gradient, scalar_cost
from jaxcheck._engine.system.twin import Twin, output_dtype, trace
from jaxcheck._engine.verdict.classify import epsilon
from jaxcheck.errors import (
    InputError,
    JaxcheckError,
    NondeterminismError,
    PortError,
    ReimplementationError,
    user_code_error,
)

__all__ = ["System", "check_twin", "prepare"]

#: Relative difference of the cost between two identical NumPy calls that counts as randomness.
NONDETERMINISM_RTOL = 1e-12
#: Twin vs NumPy cost: at least this relative mismatch is tolerated for float64 ...
COST_RTOL_FLOAT64 = 1e-9
#: ... this many epsilons of a narrower system's dtype (at most 1e-2) ...
COST_EPS_UNITS = 1000
#: ... and this many epsilons of the largest intermediate sum the twin forms (rounding there).
COST_ROUNDING_UNITS = 64

_FREEZE_ADVICE = (
    "A gradient check needs cost and grad to be pure functions of params. If the forward pass "
    "draws random numbers (dropout, noise, sampling), draw them once outside the cost and close "
    "over them, e.g. masks = [rng.random(A.shape) < keep_prob ...]; cost = lambda p: "
    "forward(X, Y, p, masks), grad = lambda p: backward(X, Y, p, masks). With frozen masks the "
    "check is valid; switch dropout back on for training."
)


@dataclasses.dataclass
class System:
    """The system under test evaluated at θ, validated, and its JAX twin.

    Attributes:
        leaves: the params, flattened (private copies).
        leaves64: float64 copies of the leaves.
        backprop: the user's gradient per leaf, in its own dtype.
        backprop64: the user's gradient re-run at float64 params, for a low-precision system
            whose code follows its input dtype (else None).
        cost64: the user's cost at float64 params, for such a system: the twin must match it
            to float64 precision (else None).
        cost_dtype: the dtype the user's cost returned its value in (a cost written with
            jax.numpy under JAX's default config returns float32 for float64 params).
        grad_fn: the user's gradient function (with ``pair``: ``fn`` returning (loss, grads)),
            to re-run it in a wider dtype.
        longdouble: a float64 system's gradient re-run at ``np.longdouble`` θ, once a leaf
            failed (``longdouble_tried`` says whether it was attempted).
        cost: the NumPy cost at θ.
        cost_fn: the user's cost as ``params -> float`` (for a two-way check).
        twin: the traced JAX twin, or None (two-way check: no twin could be had).
        twin_error: why there is no twin (the port's error), else None.
        cost_mismatch: relative |J_numpy − J_twin| at θ.
        dtype: the lowest precision among params and gradient.
        autodiff: whether ``jax.grad`` of the twin is an independent opinion. False when the
            twin's derivative is the system under test itself (a custom rule checked by
            :func:`jaxcheck.check_rule` without a reference): then the twin only gives finite
            differences, and the check is two-way.
        reference: an autodiff opinion computed outside JAX (float64 leaves) for a system
            without a twin, such as torch autograd of a reference forward
            (:mod:`jaxcheck.torch`); else None.
    """

    leaves: Leaves
    leaves64: list[np.ndarray]
    backprop: list[np.ndarray]
    backprop64: list[np.ndarray] | None
    cost: float
    cost_fn: Callable[[Any], float]
    twin: Twin | None
    twin_error: JaxcheckError | None
    cost_mismatch: float
    dtype: np.dtype
    cost64: float | None = None
    cost_dtype: np.dtype | None = None
    grad_fn: Callable[[Any], Any] | None = None
    pair: bool = False
    longdouble: list[np.ndarray] | None = None
    longdouble_tried: bool = False
    autodiff: bool = True
    reference: list[np.ndarray] | None = None

    @property
    def twin_kind(self) -> str:
        """``"given"``, ``"ported"``, or ``"none"`` for a two-way check."""
        return "none" if self.twin is None else self.twin.kind


def call_user(fn: Callable, params: Any, name: str) -> Any:
    """Calls the user's ``fn(params)``; an exception in it becomes a ``UserCodeError``."""
    try:
        return fn(params)
    except JaxcheckError:
        raise
    except SystemExit as err:
        raise InputError(
            f"{name}(params) called sys.exit({err.code!r}); a cost or gradient must return a "
            f"value, not end the process."
        ) from err
    except Exception as err:
        hint = None
        text = str(err)
        if isinstance(err, TypeError) and "positional argument" in text:
            hint = (
                f"jaxcheck calls {name} with params alone; wrap the data in a closure, e.g. "
                f"lambda p: {name}(X, Y, p)."
            )
        elif isinstance(err, KeyError) and isinstance(params, dict):
            hint = (
                f"params has the keys {sorted(map(str, params))}; {name} looked up "
                f"{err.args[0]!r}, which it does not hold."
            )
        raise user_code_error(err, f"{name}(params)", hint=hint) from err


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.abs(a - b) <= NONDETERMINISM_RTOL * np.maximum(np.abs(a), np.abs(b))
    return bool(np.all(close | both_nan | (a == b)))


def _split(result: Any, name: str) -> tuple[Any, Any]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise InputError(
            f"with grad=None, {name}(params) must return (loss, grads); it returned "
            f"{type(result).__name__}{'' if not hasattr(result, '__len__') else ' of length ' + str(len(result))}. "  # noqa: E501
            f"Pass grad= separately if {name} returns the loss alone."
        )
    return result[0], result[1]


def _is_scalar(x: Any) -> bool:
    if isinstance(x, (Mapping, list, tuple, str, bytes)):
        return False
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001 - not an array at all
        return False
    return arr.size == 1 and arr.dtype != object


def _tree_text(x: Any) -> str:
    if isinstance(x, Mapping):
        return f"dict with keys {sorted(map(str, x))[:6]}"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of {len(x)} items"
    return f"{type(x).__name__} of shape {np.shape(x)}"


def _covers(tree: Any, leaves: Leaves) -> bool:
    """Whether ``tree`` holds arrays of every shape params have (as a gradient would)."""
    try:
        have = Counter(np.shape(x) for x in jax.tree_util.tree_leaves(tree))
    except Exception:  # noqa: BLE001 - not a pytree
        return False
    need = Counter(v.shape for v in leaves.values)
    return all(have[shape] >= n for shape, n in need.items())


def _loss_first(loss: Any, grads: Any, name: str) -> None:
    """With ``grad=None``: a pytree where the loss should be is named, as is ``(grads, loss)``."""
    if _is_scalar(loss) or not (isinstance(loss, (Mapping, list, tuple)) or np.size(loss) > 1):
        return
    swapped = _is_scalar(grads)
    raise InputError(
        f"with grad=None, {name}(params) must return (loss, grads), but item 0 of what it "
        f"returned is a {_tree_text(loss)}, a pytree where the scalar loss should be"
        + (
            "; item 1 is a scalar: it returned (grads, loss). Return (loss, grads) instead."
            if swapped
            else "."
        ),
        hint="return (loss, grads): the scalar loss first",
    )


def _not_a_gradient(value: Any, grad: Callable, leaves: Leaves) -> None:
    """Refuses a cost that returns what looks like the gradient, saying when the two swapped."""
    if isinstance(value, (list, tuple)) and value and _is_scalar(value[0]):
        return  # (loss, extra): the first item is the loss
    if not isinstance(value, (Mapping, list, tuple)) or not (
        isinstance(value, Mapping) or _covers(value, leaves)
    ):
        return
    try:
        swapped = _is_scalar(grad(leaves.fresh()))
    except Exception:  # noqa: BLE001 - grad's own errors are reported when it is called
        swapped = False
    if swapped:
        raise InputError(
            f"cost and grad are swapped: cost(params) returned a {_tree_text(value)} (like a "
            f"gradient) and grad(params) a scalar. Pass the loss function first: "
            f"jc.check(cost, grad, params).",
            hint="swap the first two arguments of the check",
        )
    raise InputError(
        f"cost(params) returned a {_tree_text(value)}, a pytree where the scalar loss should "
        f"be; cost must return the loss (a float, or a tuple whose first item is the float).",
        hint="return the scalar loss from cost; the gradient comes from grad",
    )


def _match(grads: Any, leaves: Leaves, name: str | None) -> list[np.ndarray]:
    """:func:`match_gradient`; with ``grad=None`` (``name``) a cache is told from gradients."""
    try:
        return match_gradient(grads, leaves)
    except InputError as err:
        if name is None or not isinstance(grads, (Mapping, list, tuple)):
            raise
        if _covers(grads, leaves):
            raise
        raise InputError(
            f"with grad=None, {name}(params) must return (loss, grads), but item 1 of what it "
            f"returned (a {_tree_text(grads)}) does not hold arrays shaped like params "
            f"({[tuple(v.shape) for v in leaves.values][:6]}): it looks like a cache (values "
            f"of the forward pass), not gradients. Pass grad= a function returning the "
            f"gradients, e.g. grad=lambda p: backward(p, {name}(p)[1]).",
            hint="pass grad= a function that returns the gradients",
        ) from err


def prepare(
    cost: Callable, grad: Callable | None, params: Any, jax_cost: Callable | None, options: Options
) -> System:
    """Validates the inputs, runs the system under test at θ and traces the twin.

    With ``grad=None``, ``cost(params)`` returns ``(loss, grads)`` and both come from one call.

    Raises:
        InputError, UserCodeError, NondeterminismError, ReimplementationError, PortError.
    """
    if not callable(cost):
        raise InputError(f"cost must be callable params -> ..., got {type(cost).__name__}.")
    if grad is not None and not callable(grad):
        raise InputError(f"grad must be callable or None, got {type(grad).__name__}.")
    if jax_cost is not None and not callable(jax_cost):
        raise InputError(f"jax_cost must be callable or None, got {type(jax_cost).__name__}.")
    leaves = flatten_params(params)
    name = "cost" if grad is not None else "fn"
    if grad is None:
        loss_a, grads_a = _split(call_user(cost, leaves.fresh(), name), name)
        _loss_first(loss_a, grads_a, name)
        loss_b, grads_b = _split(call_user(cost, leaves.fresh(), name), name)
        cost_fn = _loss_of(cost)
    else:
        loss_a = call_user(cost, leaves.fresh(), name)
        _not_a_gradient(loss_a, grad, leaves)
        loss_b = call_user(cost, leaves.fresh(), name)
        cost_fn = cost
    value = scalar_cost(loss_a, what=f"{name}(params)")
    again = scalar_cost(loss_b, what=f"{name}(params)")
    cost_dtype = _value_dtype(loss_a)
    if not _same(np.array(value), np.array(again)):
        raise NondeterminismError(
            f"{name}(params) returned {value!r} and then {again!r} for the same params. "
            + _FREEZE_ADVICE
        )
    if grad is not None:
        grads_a = call_user(grad, leaves.fresh(), "grad")
        grads_b = call_user(grad, leaves.fresh(), "grad")
    backprop = _match(grads_a, leaves, name if grad is None else None)
    second = match_gradient(grads_b, leaves)
    for path, a, b in zip(leaves.paths, backprop, second):
        if not _same(a, b):
            raise NondeterminismError(
                f"grad(params) returned different values for leaf {path!r} on two calls with "
                f"the same params. " + _FREEZE_ADVICE
            )
    dtype = max(
        [np.dtype(v.dtype) for v in leaves.values] + [np.dtype(g.dtype) for g in backprop],
        key=epsilon,
    )
    leaves64 = [v.astype(np.float64) for v in leaves.values]
    backprop64 = _rerun64(cost if grad is None else grad, grad is None, leaves, leaves64, dtype)
    cost64 = _cost64(cost_fn, leaves, leaves64, dtype)
    twin, twin_error = _twin(cost, jax_cost, leaves, leaves64, options)
    # Several processes: all meet here, before any collective, and compare their checks.
    processes.agree(
        twin=twin,
        leaves=leaves.values,
        paths=leaves.paths,
        backprop=backprop,
        options=options,
        cost=value,
    )
    return System(
        leaves,
        leaves64,
        backprop,
        backprop64,
        value,
        cost_fn,
        twin,
        twin_error,
        0.0,
        dtype,
        cost64=cost64,
        cost_dtype=cost_dtype,
        grad_fn=cost if grad is None else grad,
        pair=grad is None,
    )


def _value_dtype(value: Any) -> np.dtype | None:
    raw = value[0] if isinstance(value, (tuple, list)) and value else value
    dtype = getattr(raw, "dtype", None)
    if dtype is None or not np.issubdtype(np.dtype(dtype), np.floating):
        return None
    return np.dtype(dtype)


def _cost64(
    cost: Callable, leaves: Leaves, leaves64: list[np.ndarray], dtype: np.dtype
) -> float | None:
    """The user's cost at float64 copies of θ, for a narrower system whose cost follows it."""
    if epsilon(dtype) <= epsilon(np.dtype(np.float64)):
        return None
    try:
        out = cost(leaves.unflatten([v.copy() for v in leaves64]))
        raw = out[0] if isinstance(out, (tuple, list)) else out
        if np.asarray(raw).dtype != np.float64:
            return None
        return scalar_cost(raw)
    except Exception:  # noqa: BLE001 - a cost that cannot run in float64 has no re-run
        return None


def _loss_of(fn: Callable) -> Callable:
    def loss(params: Any) -> Any:
        return _split(fn(params), "fn")[0]

    return loss


def _rerun64(
    fn: Callable, pair: bool, leaves: Leaves, leaves64: list[np.ndarray], dtype: np.dtype
) -> list[np.ndarray] | None:
    """The user's gradient at float64 copies of θ, when the system is narrower and follows it."""
    if epsilon(dtype) <= epsilon(np.dtype(np.float64)):
        return None
    return rerun(fn, pair, leaves, leaves64)


def rerun(
    fn: Callable, pair: bool, leaves: Leaves, values: list[np.ndarray]
) -> list[np.ndarray] | None:
    """The user's gradient at copies of ``values`` (θ in a wider dtype), or None if it fails."""
    try:
        out = fn(leaves.unflatten([v.copy() for v in values]))
        grads = match_gradient(_split(out, "fn")[1] if pair else out, leaves)
    except Exception:  # noqa: BLE001 - code that cannot run in float64 just has no re-run
        return None
    # Kept even when the result is cast back to a narrow dtype at the end (training code often
    # ends in .astype(np.float32)): the cast rounds once, which the check allows for.
    return grads


def _twin(
    cost: Callable,
    jax_cost: Callable | None,
    leaves: Leaves,
    leaves64: list[np.ndarray],
    options: Options,
) -> tuple[Twin | None, JaxcheckError | None]:
    if jax_cost is None and options.twin == "none":
        return None, None
    if jax_cost is not None:
        fn, kind = jax_cost, "given"
    else:
        from jaxcheck.port import port

        try:
            fn, kind = port(cost), "ported"
        except PortError as err:
            if options.twin == "required":
                raise
            return None, err
    try:
        with jax.enable_x64(True):
            twin = trace(fn, leaves.treedef, leaves64, kind)
    except PortError as err:
        if kind == "given" or options.twin == "required":
            raise
        return None, err
    except JaxcheckError:
        raise
    except Exception as err:
        if kind == "ported":
            if options.twin == "required":
                raise PortError(
                    f"the port of cost could not be traced by JAX: {type(err).__name__}: {err}",
                    hint="pass jax_cost= (a jax.numpy version of your cost)",
                ) from err
            return None, PortError(f"{type(err).__name__}: {err}")
        raise user_code_error(
            err,
            "jax_cost(params)",
            hint=(
                "The JAX twin must take the params pytree (as jax arrays) and return the scalar "
                "cost, written with jax.numpy (no Python control flow on values, no NumPy calls)."
            ),
        ) from err
    out = twin.jaxpr.outvars[0].aval
    if twin.narrow:
        where = ", ".join(twin.narrow)
        fix = (
            "write jax_cost with jax.numpy and no casts to a narrower dtype (no "
            "dtype=jnp.float32, no .astype(jnp.float32)): jaxcheck runs it under "
            "jax.enable_x64(True)"
            if kind == "given"
            else "remove the cast from your cost (cast the data before the cost instead), or "
            "pass jax_cost= (a jax.numpy version of your cost without the cast)"
        )
        raise ReimplementationError(
            f"the JAX twin ({kind}) computes in float32 or narrower where the parameters flow "
            f"({where}); finite differences of such a twin are float32 differences, too "
            f"imprecise to judge any gradient, so nothing was judged. To fix it, {fix}.",
            hint=fix,
        )
    if not np.issubdtype(np.dtype(out.dtype), np.floating):
        raise InputError(
            f"jax_cost returned dtype {out.dtype}; expected a real floating-point scalar cost"
            + (
                " (a complex cost has no gradient to check)."
                if "complex" in str(out.dtype)
                else "."
            )
        )
    return twin, None


def _ported_mismatch(twin: Twin) -> str:
    """What to do when the port of the cost computes another cost than the NumPy one."""
    if twin.view_writes:
        lines = "\n  ".join(twin.view_writes)
        cause = (
            f" Your cost writes into a view of another array:\n  {lines}\nIn NumPy that "
            f"changes the array it views as well (`top = h[0]; top *= 2` changes `h`); the "
            f"port, on JAX values, changes only the view. Write into the array itself "
            f"(`h[0] *= 2`), or copy the view first (`top = h[0].copy()`) if the other array "
            f"was not meant to change."
        )
    else:
        cause = (
            " The port re-ran your cost on jax.numpy and got another value: something in it "
            "behaves differently on JAX values (a write through a view or an alias, `b = a; "
            "b += 1`, changes `a` only in NumPy)."
        )
    return (
        f"{cause} Otherwise pass jax_cost= (a jax.numpy version of your cost) for the third "
        f'opinion, or twin="none" for a two-way check of backprop against finite differences.'
    )


def check_twin(system: System, twin_cost: float, terms: float) -> None:
    """Sets ``system.cost_mismatch``; raises when it exceeds the cost's own rounding.

    Args:
        system: the prepared system, with a twin.
        twin_cost: the twin's cost at θ.
        terms: the largest sum of magnitudes among the twin's intermediates at θ.

    Raises:
        ReimplementationError: the twin computes another function than the NumPy cost.
    """
    twin, value, dtype = system.twin, system.cost, system.dtype
    if system.cost64 is not None:
        # The cost follows its input's dtype: its float64 value is the one to match, as tightly
        # as a float64 system's.
        value, dtype = system.cost64, np.dtype(np.float64)
    if not np.isfinite(twin_cost):
        raise ReimplementationError(
            f"the JAX twin ({twin.kind}) returned {twin_cost} at params while the NumPy cost is "
            f"{value!r}."
        )
    denom = max(abs(value), abs(twin_cost))
    mismatch = 0.0 if denom == 0 else abs(value - twin_cost) / denom
    eps = epsilon(dtype)
    if system.cost64 is None and system.cost_dtype is not None:
        # The cost's own value is only as precise as the dtype it was computed in.
        eps = max(eps, epsilon(system.cost_dtype))
    base = (
        COST_RTOL_FLOAT64
        if eps <= epsilon(np.dtype(np.float64))
        else min(1e-2, COST_EPS_UNITS * eps)
    )
    rounding = COST_ROUNDING_UNITS * eps * terms / denom if denom > 0 else 0.0
    limit = max(base, rounding)
    if not mismatch <= limit:
        narrow = ""
        if output_dtype(twin).itemsize < 8 or twin.narrow:
            where = ", ".join(twin.narrow) or str(output_dtype(twin))
            narrow = (
                f" The twin computes below float64 ({where}): jaxcheck runs it under "
                f"jax.enable_x64(True), so write it with jax.numpy without casting to float32 "
                f"(no dtype=jnp.float32, no .astype(np.float32)) and it will match."
            )
        ported = twin is not None and twin.kind == "ported"
        fix = _ported_mismatch(twin) if twin is not None and ported else ""
        raise ReimplementationError(
            f"the JAX twin ({twin.kind}) does not compute the NumPy cost: cost(params) = "
            f"{value!r} but jax_cost(params) = {twin_cost!r} in float64 (relative mismatch "
            f"{mismatch:.2e}, tolerated {limit:.1e} for a {dtype} system under test, from its "
            f"precision and the size of the terms the cost sums). Every gradient opinion from "
            f"the twin would be about another function, so nothing was judged.{narrow}{fix}",
            hint=(
                'pass jax_cost= (a jax.numpy version of your cost) or twin="none"'
                if ported
                else "make jax_cost compute the same cost as cost"
            ),
        )
    system.cost_mismatch = mismatch
