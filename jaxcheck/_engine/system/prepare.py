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
from jaxcheck._engine.system.widen import narrowest, widen
from jaxcheck._engine.verdict.classify import epsilon
from jaxcheck.errors import (
    InputError,
    JaxcheckError,
    NondeterminismError,
    PortError,
    ReimplementationError,
    user_code_error,
)

__all__ = [
    "System",
    "check_twin",
    "prepare",
    "call_user",
    "rerun",
]

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


@dataclasses.dataclass(frozen=True)
class System:
    """The system under test evaluated at θ, validated, and its JAX twin; never changed later.

    What happens to it during a check (the twin's cost mismatch, a fallback to two-way, wider
    re-runs of the gradient) is kept in the run's own record, not here.

    Attributes:
        leaves: the params, flattened (private copies).
        leaves64: float64 copies of the leaves.
        backprop: the user's gradient per leaf, in its own dtype; None for a door whose
            derivative is checked elsewhere (``check_hvp``: the product, not a gradient).
        backprop64: the user's gradient re-run at float64 params, for a low-precision system
            whose code follows its input dtype (else None).
        cost: the NumPy cost at θ.
        cost_fn: the user's cost as ``params -> float`` (for a two-way check).
        twin: the traced JAX twin, or None (two-way check: no twin could be had).
        twin_error: why there is no twin (the port's error), else None.
        dtype: the lowest precision among params and gradient.
        cost64: the user's cost at float64 params, for such a system: the twin must match it
            to float64 precision (else None).
        cost_dtype: the dtype the user's cost returned its value in (a cost written with
            jax.numpy under JAX's default config returns float32 for float64 params).
        grad_fn: the user's gradient function (with ``pair``: ``fn`` returning (loss, grads)),
            to re-run it in a wider dtype.
        pair: whether ``grad_fn`` returns ``(loss, grads)``.
        autodiff: whether ``jax.grad`` of the twin is an independent opinion. False when the
            twin's derivative is the system under test itself (a custom rule checked by
            :func:`jaxcheck.check_rule` without a reference): then the twin only gives finite
            differences, and the check is two-way.
        reference: an autodiff opinion computed outside JAX (float64 leaves) for a system
            without a twin, such as torch autograd of a reference forward
            (:mod:`jaxcheck.torch`); else None.
        computes_in: where a ported cost computes below float64 (``"float32 at mul
            (net.py:12)"``), when it does: the twin is the same formula in float64
            (:mod:`jaxcheck._engine.system.widen`) and ``dtype`` is the cost's own precision,
            at which every leaf is judged. Else None.
        cost_precision: the narrowest dtype the cost computes in there, else None.
    """

    leaves: Leaves
    leaves64: list[np.ndarray]
    backprop: list[np.ndarray] | None
    backprop64: list[np.ndarray] | None
    cost: float
    cost_fn: Callable[[Any], float]
    twin: Twin | None
    twin_error: JaxcheckError | None
    dtype: np.dtype
    cost64: float | None = None
    cost_dtype: np.dtype | None = None
    grad_fn: Callable[[Any], Any] | None = None
    pair: bool = False
    autodiff: bool = True
    reference: list[np.ndarray] | None = None
    computes_in: tuple[str, ...] | None = None
    cost_precision: np.dtype | None = None

    @property
    def twin_kind(self) -> str:
        """``"given"``, ``"ported"``, or ``"none"`` for a two-way check."""
        return "none" if self.twin is None else self.twin.kind

    @property
    def user_gradient(self) -> list[np.ndarray]:
        """``backprop``, for a door that checks a gradient (raises for one that does not)."""
        if self.backprop is None:
            raise ValueError("this system was prepared with gradient=False: it has no backprop")
        return self.backprop


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
    cost: Callable,
    grad: Callable | None,
    params: Any,
    jax_cost: Callable | None,
    options: Options,
    *,
    gradient: bool = True,
    autodiff: bool = True,
    reference: Mapping[str, Any] | None = None,
) -> System:
    """Validates the inputs, runs the system under test at θ and traces the twin.

    With ``grad=None``, ``cost(params)`` returns ``(loss, grads)`` and both come from one call.

    Args:
        cost: the user's NumPy cost.
        grad: the user's gradient, or None when ``cost`` returns ``(loss, grads)``.
        params: the params pytree.
        jax_cost: the JAX twin, or None to port ``cost``.
        options: the check's options.
        gradient: False for a door that checks no gradient (``check_hvp``): ``grad`` must be
            None, ``cost`` returns the loss alone, and ``System.backprop`` is None.
        autodiff: False when ``jax.grad`` of the twin is not an independent opinion.
        reference: an autodiff opinion from outside JAX, keyed by leaf path.

    Raises:
        InputError, UserCodeError, NondeterminismError, ReimplementationError, PortError.
    """
    _require_callables(cost, grad, jax_cost)
    if not gradient and grad is not None:
        raise ValueError("prepare(gradient=False) takes grad=None")
    leaves = flatten_params(params)
    pair = gradient and grad is None
    name = "fn" if pair else "cost"
    calls = [_call(cost, leaves, name, pair) for _ in range(2)]
    if pair:
        _loss_first(*calls[0], name)
    elif grad is not None:
        _not_a_gradient(calls[0][0], grad, leaves)
    value, cost_dtype = _checked_cost([loss for loss, _ in calls], name)
    cost_fn = _loss_of(cost) if pair else cost
    backprop = None
    if pair:
        backprop = _checked_gradient([g for _, g in calls], leaves, name)
    elif grad is not None:
        grads = [call_user(grad, leaves.fresh(), "grad") for _ in range(2)]
        backprop = _checked_gradient(grads, leaves, None)
    dtype = max(
        [np.dtype(v.dtype) for v in leaves.values] + [np.dtype(g.dtype) for g in backprop or []],
        key=epsilon,
    )
    leaves64 = [v.astype(np.float64) for v in leaves.values]
    grad_fn = (cost if pair else grad) if gradient else None
    backprop64 = None if grad_fn is None else _rerun64(grad_fn, pair, leaves, leaves64, dtype)
    cost64 = _cost64(cost_fn, leaves, leaves64, dtype)
    twin, twin_error, narrow = _twin(cost, jax_cost, leaves, leaves64, options)
    computes_in, cost_precision = narrow if narrow is not None else (None, None)
    if cost_precision is not None:
        dtype = max(dtype, cost_precision, key=epsilon)
    # Several processes: all meet here, before any collective, and compare their checks.
    processes.agree(
        twin=twin,
        leaves=leaves.values,
        paths=leaves.paths,
        backprop=backprop if backprop is not None else [],  # check_hvp: no gradient
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
        dtype,
        cost64=cost64,
        cost_dtype=cost_dtype,
        grad_fn=grad_fn,
        pair=pair,
        autodiff=autodiff,
        reference=None
        if reference is None
        else [np.asarray(reference[p], np.float64) for p in leaves.paths],
        computes_in=computes_in,
        cost_precision=cost_precision,
    )


def _require_callables(cost: Any, grad: Any, jax_cost: Any) -> None:
    if not callable(cost):
        raise InputError(f"cost must be callable params -> ..., got {type(cost).__name__}.")
    if grad is not None and not callable(grad):
        raise InputError(f"grad must be callable or None, got {type(grad).__name__}.")
    if jax_cost is not None and not callable(jax_cost):
        raise InputError(f"jax_cost must be callable or None, got {type(jax_cost).__name__}.")


def _call(cost: Callable, leaves: Leaves, name: str, pair: bool) -> tuple[Any, Any]:
    """One call of the user's cost at θ: ``(loss, grads)``, grads None unless ``pair``."""
    out = call_user(cost, leaves.fresh(), name)
    return _split(out, name) if pair else (out, None)


def _checked_cost(losses: list[Any], name: str) -> tuple[float, np.dtype | None]:
    """The cost at θ from two calls (randomness is an error), and the dtype it came in."""
    value = scalar_cost(losses[0], what=f"{name}(params)")
    again = scalar_cost(losses[1], what=f"{name}(params)")
    if not _same(np.array(value), np.array(again)):
        raise NondeterminismError(
            f"{name}(params) returned {value!r} and then {again!r} for the same params. "
            + _FREEZE_ADVICE
        )
    return value, _value_dtype(losses[0])


def _checked_gradient(grads: list[Any], leaves: Leaves, name: str | None) -> list[np.ndarray]:
    """The user's gradient from two calls at θ (randomness is an error), matched to the leaves.

    ``name`` is the function that returned ``(loss, grads)`` together, if it did.
    """
    backprop = _match(grads[0], leaves, name)
    second = match_gradient(grads[1], leaves)
    for path, a, b in zip(leaves.paths, backprop, second):
        if not _same(a, b):
            raise NondeterminismError(
                f"grad(params) returned different values for leaf {path!r} on two calls with "
                f"the same params. " + _FREEZE_ADVICE
            )
    return backprop


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
) -> tuple[Twin | None, JaxcheckError | None, tuple[tuple[str, ...], np.dtype] | None]:
    """The traced twin, or why there is none; and where a ported cost computes below float64.

    A ported cost that casts below float64 where the params flow is widened (the same formula
    in float64); the third item then says where it cast and the narrowest dtype it used.
    """
    if jax_cost is None and options.twin == "none":
        return None, None, None
    if jax_cost is not None:
        fn, kind = jax_cost, "given"
    else:
        from jaxcheck.port import port

        try:
            fn, kind = port(cost), "ported"
        except PortError as err:
            if options.twin == "required":
                raise
            return None, err, None
    try:
        with jax.enable_x64(True):
            twin = trace(fn, leaves.treedef, leaves64, kind)
    except PortError as err:
        if kind == "given" or options.twin == "required":
            raise
        return None, err, None
    except JaxcheckError:
        raise
    except Exception as err:
        if kind == "ported":
            if options.twin == "required":
                raise PortError(
                    f"the port of cost could not be traced by JAX: {type(err).__name__}: {err}",
                    hint="pass jax_cost= (a jax.numpy version of your cost)",
                ) from err
            return None, PortError(f"{type(err).__name__}: {err}"), None
        raise user_code_error(
            err,
            "jax_cost(params)",
            hint=(
                "The JAX twin must take the params pytree (as jax arrays) and return the scalar "
                "cost, written with jax.numpy (no Python control flow on values, no NumPy calls)."
            ),
        ) from err
    out = twin.jaxpr.outvars[0].aval
    narrow = None
    if twin.narrow and kind == "ported":
        wide, precision = widen(twin, leaves.treedef, leaves64), narrowest(twin.jaxpr)
        if wide is not None and precision is not None:
            narrow = (twin.narrow, precision)
            twin = wide
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
    return twin, None, narrow


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


def check_twin(system: System, twin_cost: float, terms: float) -> float:
    """The relative mismatch of the twin's cost and the NumPy cost at θ, checked.

    Raises when it exceeds the cost's own rounding.

    Args:
        system: the prepared system, with a twin.
        twin_cost: the twin's cost at θ.
        terms: the largest sum of magnitudes among the twin's intermediates at θ.

    Returns:
        ``|J_numpy − J_twin| / max(|J_numpy|, |J_twin|)``.

    Raises:
        ReimplementationError: the twin computes another function than the NumPy cost.
    """
    twin, value, dtype = system.twin, system.cost, system.dtype
    if twin is None:
        raise ValueError("check_twin needs a system with a twin")
    if system.cost64 is not None:
        # The cost follows its input's dtype: its float64 value is the one to match, as tightly
        # as a float64 system's.
        value, dtype = system.cost64, np.dtype(np.float64)
    if not np.isfinite(twin_cost):
        raise ReimplementationError(
            f"the JAX twin ({twin.kind}) returned {twin_cost} at params while the NumPy cost is "
            f"{value!r}."
        )
    tiny = float(np.finfo(np.float64).tiny)
    if min(abs(value), abs(twin_cost)) < tiny and value != twin_cost:
        raise ReimplementationError(
            f"the JAX twin ({twin.kind}) returned {twin_cost!r} at params while the NumPy cost "
            f"is {value!r}: the cost is in the subnormal range (below {tiny:.1e}), where XLA "
            f"flushes floats to zero (flush-to-zero on CPU and GPU), so no JAX twin can compute "
            f"it and nothing was judged. Scale the cost and its gradient up (e.g. by 2**600), "
            f"or pass twin='none' for a two-way check in NumPy.",
            hint="scale the cost out of the subnormal range, or pass twin='none'",
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
        ported = twin is not None and twin.kind == "ported"
        fix = _ported_mismatch(twin) if ported else ""
        raise ReimplementationError(
            f"the JAX twin ({twin.kind}) does not compute the NumPy cost: cost(params) = "
            f"{value!r} but jax_cost(params) = {twin_cost!r} in float64 (relative mismatch "
            f"{mismatch:.2e}, tolerated {limit:.1e} for a {dtype} system under test, from its "
            f"precision and the size of the terms the cost sums). Every gradient opinion from "
            f"the twin would be about another function, so nothing was judged."
            f"{_mismatch_cause(twin, mismatch, eps)}{fix}",
            hint=(
                'pass jax_cost= (a jax.numpy version of your cost) or twin="none"'
                if ported
                else "make jax_cost compute the same cost as cost"
            ),
        )
    return mismatch


def _mismatch_cause(twin: Twin, mismatch: float, eps: float) -> str:
    """What a twin/cost mismatch of this size usually means, and what to do."""
    if output_dtype(twin).itemsize < 8 or twin.narrow:
        where = ", ".join(twin.narrow) or str(output_dtype(twin))
        return (
            f" The twin computes below float64 ({where}): jaxcheck runs it under "
            f"jax.enable_x64(True), so write it with jax.numpy without casting to float32 "
            f"(no dtype=jnp.float32, no .astype(np.float32)) and it will match."
        )
    u32 = epsilon(np.dtype(np.float32))
    if eps < u32 and mismatch <= COST_EPS_UNITS * u32:
        return (
            f" The mismatch is the size of float32 rounding (float32's epsilon is {u32:.1e}): "
            f"one of the two computes in float32 (float32 data, an .astype(np.float32), or "
            f"jax.numpy under JAX's default float32 config). Compute both in float64 (cast the "
            f"data with .astype(np.float64)), or let cost return its float32 value (then the "
            f"twin is matched to float32 precision)."
        )
    return ""
