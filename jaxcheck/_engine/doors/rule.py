"""Checks a JAX function's own differentiation rule (``jax.custom_vjp`` or ``jax.custom_jvp``).

The rule's vector-Jacobian product is the system under test; finite differences of the function's
primal (which never runs the rule) and ``jax.grad`` of a reference without the rule judge it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck._engine.doors.door import door, passing
from jaxcheck._engine.doors.pipeline import run
from jaxcheck._engine.doors.rule_report import RuleReport
from jaxcheck._engine.keywords import reject_unknown
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.arguments import argument_names
from jaxcheck._engine.system.prepare import prepare
from jaxcheck._engine.verdict.classify import epsilon
from jaxcheck.errors import (
    InputError,
    JaxcheckError,
    ReimplementationError,
    user_code_error,
)

__all__ = [
    "EXPECTATIONS",
    "RuleReport",
    "assert_rule",
    "check_rule",
    "reference_gap",
    "rule_options",
]

#: What the rule is expected to be: the derivative of the function, or a deliberate surrogate.
EXPECTATIONS = ("derivative", "surrogate")
#: A reference may differ from the function by this many epsilons of the output's dtype
#: (relative to the output's largest entry) before it counts as another function.
REFERENCE_EPS_UNITS = 1000
#: ... and never by less than this in float64 (different but equivalent formulas round apart).
REFERENCE_RTOL_FLOAT64 = 1e-9


@door("check_rule", Options)
def check_rule(
    f: Callable,
    *args: Any,
    reference: Callable | None = None,
    expected: str = "derivative",
    seed: int = 0,
    **options: Any,
) -> RuleReport:
    """Checks the custom differentiation rule of a JAX function, leaf by leaf.

    ``f`` carries a ``jax.custom_vjp`` or ``jax.custom_jvp`` rule; the rule is the system under
    test. A seeded random cotangent ``ct`` shaped like ``f``'s output (arrays or a pytree of
    them) turns the check into a scalar one: the checked gradient is ∂(ct·f)/∂args, which is
    ``jax.vjp(f, *args)[1](ct)`` and so runs the rule. Its opinions:

    - **backprop**: the rule's vjp, in the arguments' own dtype (a float32 rule is judged at
      float32 tolerance, and re-run at float64 to tell rounding from a wrong formula);
    - **finite differences** of ``sum(ct * f(*args))`` in float64: ``f``'s primal never runs
      the rule, so they are independent of it;
    - **autodiff**: ``jax.grad`` of ``sum(ct * reference(*args))`` when ``reference=`` (the same
      function without the rule) is given. Without it the check is two-way.

    The verdict is that of :func:`jaxcheck.check`: the leaf, the worst index and the factor of a
    wrong rule, kinks (a custom ReLU at 0) accepted where the rule's value lies between the
    one-sided slopes, and a wrong reference blamed on the reference.

    Args:
        f: a JAX function with a custom rule, ``f(*args) -> array or pytree of arrays``.
        *args: its arguments. Floating-point arrays (NumPy or JAX, any pytree of them) are
            checked; anything else (ints, Python floats and strings, arguments in ``f``'s
            ``nondiff_argnums``) is passed through as it is. Wrap a Python float in
            ``np.array(...)`` to check it.
        reference: ``f`` without its rule (``reference(*args)`` must compute the same values);
            its ``jax.grad`` is the third opinion. ``None``: a two-way check.
        expected: ``"derivative"`` (the rule must be the derivative of ``f``) or
            ``"surrogate"`` (a straight-through estimator or another deliberate surrogate: the
            differences are reported, and the check never fails).
        seed: a non-negative integer seeding the cotangent (and the method's sampling).
        **options: the keyword options of :func:`jaxcheck.check` (``method``, ``samples``,
            ``directions``, ``eps``, ``rtol``, ``batch_size``, ``memory_budget``,
            ``progress``, ``devices``, ``incremental``, ...), with the same meaning.

    Returns:
        A :class:`~jaxcheck.RuleReport` whose leaves are named by ``f``'s parameters (``"x"``,
        ``"beta"``) and, in pytree arguments, their paths (``"params/W"``); ``backprop`` in it
        is the rule's vjp.

    Raises:
        InputError: no floating-point argument, a bad option, or a reference whose output has
            another structure.
        UserCodeError: ``f``, its rule or ``reference`` raised.
        ReimplementationError: ``reference`` computes another function than ``f``.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> @jax.custom_vjp
        ... def softplus(x):
        ...     return jnp.logaddexp(x, 0.0)
        >>> def forward(x):
        ...     return softplus(x), x
        >>> def backward(x, g):
        ...     return (g * jax.nn.sigmoid(x),)
        >>> softplus.defvjp(forward, backward)
        >>> x = np.array([-2.0, 0.5, 3.0])
        >>> jc.check_rule(softplus, x, reference=lambda x: jnp.logaddexp(x, 0.0)).ok
        True
        >>> softplus.defvjp(forward, lambda x, g: (2 * g * jax.nn.sigmoid(x),))
        >>> report = jc.check_rule(softplus, x)
        >>> report.failing, round(report.leaves["x"].factor, 2)
        (['x'], 2.0)
    """
    start = time.perf_counter()
    if not callable(f):
        raise InputError(f"f must be a callable JAX function, got {type(f).__name__}.")
    opts = rule_options("check_rule", reference, expected, seed, options)
    function = _name(f)
    inputs = _Inputs(f, args)
    with jax.enable_x64(True):
        out = _call(f, inputs.args, f"{function}(*args)")
        cotangent = _Cotangent(out, opts.seed)
        if reference is not None:
            _compare_reference(f, reference, inputs, function)
    system = prepare(
        _cost(f, inputs, cotangent, function),
        _rule_vjp(f, inputs, cotangent, function),
        inputs.params,
        _twin(f, reference, inputs, cotangent),
        opts,
        autodiff=reference is not None,  # without one, jax.grad of f runs the rule under test
    )
    report = run(system, opts, start=start, noun="rule")
    return RuleReport.from_report(
        report,
        subject=f"the custom rule of {function}",
        witness="the reference's jax.grad" if reference is not None else None,
        expected=expected,
        seed=opts.seed,
        static=inputs.static,
    )


# --------------------------------------------------------------------------- the arguments


class _Inputs:
    """``f``'s arguments split into the checked float arrays (``params``) and the rest.

    ``params`` is a dict keyed by ``f``'s parameter names holding each argument with its
    non-float leaves removed; :meth:`rebuild` puts them back around new values of the floats.
    """

    def __init__(self, f: Callable, args: Sequence[Any]) -> None:
        names = argument_names(f, len(args))
        nondiff = set(getattr(f, "nondiff_argnums", ()) or ())
        self.args = list(args)
        self.names = names
        self.structure: dict[str, tuple[int, Any, list[Any], list[bool]]] = {}
        self.static: list[str] = []
        params = {}
        for i, (name, arg) in enumerate(zip(names, args)):
            leaves, treedef = jax.tree_util.tree_flatten(arg)
            mask = [i not in nondiff and _is_float_array(leaf, name) for leaf in leaves]
            if not any(mask):
                self.static.append(name)
                continue
            values = [np.array(leaf) if m else None for leaf, m in zip(leaves, mask)]
            params[name] = jax.tree_util.tree_unflatten(treedef, values)
            self.structure[name] = (i, treedef, leaves, mask)
        if not params:
            raise InputError(
                f"none of the {len(args)} arguments of {_name(f)} is a floating-point array, so "
                f"there is no derivative to check. Pass the differentiable inputs as float "
                f"arrays (np.array(2.0), not 2.0); ints and Python scalars are treated as static."
            )
        self.params = params

    def rebuild(self, params: Any) -> list[Any]:
        """``f``'s arguments with the checked leaves taken from ``params`` (arrays or tracers)."""
        out = list(self.args)
        for name, (i, treedef, leaves, mask) in self.structure.items():
            new = iter(jax.tree_util.tree_leaves(params[name]))
            out[i] = jax.tree_util.tree_unflatten(
                treedef, [next(new) if m else leaf for leaf, m in zip(leaves, mask)]
            )
        return out


def _is_float_array(leaf: Any, name: str) -> bool:
    if not isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
        return False
    dtype = np.dtype(leaf.dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(
            f"argument {name!r} is complex ({dtype}); check_rule checks rules of real functions."
        )
    return bool(np.issubdtype(dtype, np.floating))


def _name(f: Callable) -> str:
    for obj in (f, getattr(f, "fun", None), getattr(f, "__wrapped__", None)):
        name = getattr(obj, "__name__", None)
        if name and name != "<lambda>":
            return name
    return "f"


def _call(fn: Callable, args: Sequence[Any], what: str) -> Any:
    try:
        return fn(*args)
    except JaxcheckError:
        raise
    except Exception as err:
        raise user_code_error(err, what) from err


def rule_options(
    door: str, reference: Any, expected: Any, seed: int, options: dict[str, Any]
) -> Options:
    """The engine's options of a rule door, its own arguments checked first.

    Args:
        door: the door's name in errors (``"check_rule"``, ``"jaxcheck.torch.check"``).
        reference: the function without its rule, or None.
        expected: ``"derivative"`` or ``"surrogate"``.
        seed: the cotangent's seed.
        options: the engine's options the door was given.

    Raises:
        InputError: a reference that is not callable, another expectation, ``twin=`` (the
            function itself gives the finite differences) or an unknown option.
    """
    if reference is not None and not callable(reference):
        raise InputError(
            f"reference must be callable (the function without its rule) or None, got "
            f"{type(reference).__name__}."
        )
    if not isinstance(expected, str) or expected not in EXPECTATIONS:
        raise InputError(f"expected={expected!r} is not one of {EXPECTATIONS}.")
    if "twin" in options:
        raise InputError(
            f"twin= does not apply to {door}: finite differences of the function itself are "
            f"the second opinion; pass reference= for the autodiff opinion."
        )
    reject_unknown(door, options, _ENGINE_OPTIONS)
    return Options(seed=seed, twin="required", **options)


#: The engine's options check_rule passes through (its own are reference, expected, seed).
_ENGINE_OPTIONS = tuple(
    f.name for f in dataclasses.fields(Options) if f.name not in ("seed", "twin")
)


@door("assert_rule", check_rule, Options)
def assert_rule(f: Callable, *args: Any, **options: Any) -> RuleReport:
    """Like :func:`check_rule`, but raises :class:`jaxcheck.GradientError` when the rule is wrong.

    Args:
        f: a JAX function with a ``jax.custom_vjp`` or ``jax.custom_jvp`` rule.
        *args: its arguments.
        **options: ``reference``, ``expected``, ``seed`` and the other keyword options of
            :func:`check_rule`.

    Returns:
        The :class:`~jaxcheck.RuleReport` when the rule is correct (or a declared surrogate).

    Raises:
        GradientError: an ``AssertionError`` whose message is the report's text; also for an
            inconclusive check, which verifies nothing.
        InputError: an unknown option (named) or bad input, as for :func:`check_rule`.

    Examples:
        A ``jax.custom_jvp`` rule whose tangent says 2x² where the derivative of x³ is 3x²:

        >>> from jax import custom_jvp
        >>> from numpy import array
        >>> from jaxcheck import assert_rule
        >>> @custom_jvp
        ... def cube(x):
        ...     return x**3
        >>> @cube.defjvp
        ... def cube_jvp(primals, tangents):
        ...     (x,), (t,) = primals, tangents
        ...     return x**3, 2 * x**2 * t
        >>> try:
        ...     assert_rule(cube, array([0.5, -2.0]))
        ... except AssertionError as err:
        ...     print(type(err).__name__, err.report.failing)
        GradientError ['x']
    """
    own = ("reference", "expected", "seed")
    reject_unknown("assert_rule", options, own + _ENGINE_OPTIONS)
    return passing(check_rule(f, *args, **options))


# --------------------------------------------------------------------------- the opinions


class _Cotangent:
    """A seeded standard-normal cotangent shaped like ``f``'s output, exact in its dtype."""

    def __init__(self, out: Any, seed: int) -> None:
        leaves, self.treedef = jax.tree_util.tree_flatten(out)
        rng = np.random.default_rng([seed, 0x7E1])
        self.values: list[np.ndarray | None] = []
        for leaf in leaves:
            dtype = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
            shape = np.shape(leaf)
            if np.issubdtype(dtype, np.floating):
                # Rounded to the output's dtype, so that every opinion uses the same cotangent.
                self.values.append(rng.standard_normal(shape).astype(dtype).astype(np.float64))
            else:
                self.values.append(None)
        if all(v is None for v in self.values):
            raise InputError(
                "f returned no floating-point output, so there is no derivative to check."
            )

    def like(self, out: Any) -> Any:
        """The cotangent in the dtypes of ``out`` (float0 zeros for integer outputs)."""
        leaves = jax.tree_util.tree_leaves(out)
        cts: list[Any] = []
        for ct, leaf in zip(self.values, leaves):
            if ct is None:
                cts.append(np.zeros(np.shape(leaf), dtype=jax.dtypes.float0))
            else:
                cts.append(jnp.asarray(ct, dtype=leaf.dtype))
        return jax.tree_util.tree_unflatten(self.treedef, cts)

    def dot(self, out: Any) -> Any:
        """``sum(ct * out)`` in float64 (traceable)."""
        leaves = jax.tree_util.tree_leaves(out)
        if len(leaves) != len(self.values):
            raise InputError(
                f"f returned {len(leaves)} output arrays at a perturbed point and "
                f"{len(self.values)} at args; its output structure must not depend on values."
            )
        total = jnp.zeros((), jnp.float64)
        for ct, leaf in zip(self.values, leaves):
            if ct is not None:
                total = total + jnp.sum(jnp.asarray(ct) * jnp.asarray(leaf, jnp.float64))
        return total


def _cost(f: Callable, inputs: _Inputs, cotangent: _Cotangent, function: str) -> Callable:
    """The system's primal: ``params -> float(sum(ct * f(*args)))`` in the arguments' dtype."""

    def cost(params: Any) -> float:
        with jax.enable_x64(True):
            out = _call(f, inputs.rebuild(params), f"{function}(*args)")
            return float(cotangent.dot(out))

    return cost


def _rule_vjp(f: Callable, inputs: _Inputs, cotangent: _Cotangent, function: str) -> Callable:
    """The system under test: ``params -> ∂(ct·f)/∂params`` through the rule (jax.vjp)."""

    def vjp(params: Any) -> Any:
        with jax.enable_x64(True):
            try:
                out, pullback = jax.vjp(lambda p: f(*inputs.rebuild(p)), params)
                (grads,) = pullback(cotangent.like(out))
            except JaxcheckError:
                raise
            except Exception as err:
                raise user_code_error(err, f"the rule of {function} (jax.vjp)") from err
            return jax.tree_util.tree_map(np.asarray, grads)

    return vjp


def _twin(
    f: Callable, reference: Callable | None, inputs: _Inputs, cotangent: _Cotangent
) -> Callable:
    """``sum(ct * f(*args))``: its primal for finite differences, its gradient the reference's.

    Without a reference the twin's gradient is the rule itself, and the caller turns the
    autodiff opinion off.
    """

    def total(fn: Callable, params: Any) -> jax.Array:
        return cotangent.dot(fn(*inputs.rebuild(params)))

    if reference is None:
        return lambda params: total(f, params)

    @jax.custom_jvp
    def twin(params: Any) -> jax.Array:
        return total(f, params)

    @twin.defjvp
    def _(primals: Any, tangents: Any) -> tuple[jax.Array, jax.Array]:
        (params,), (dparams,) = primals, tangents
        _, derivative = jax.jvp(lambda p: total(reference, p), (params,), (dparams,))
        return total(f, params), derivative

    return twin


def reference_gap(
    a64: np.ndarray, b64: np.ndarray, u: float
) -> tuple[float, tuple[int, ...] | None]:
    """The tolerance of a reference's values (``u``: the outputs' epsilon) and the index of the
    worst entry beyond it, or None when the reference computes the same values."""
    rtol = max(REFERENCE_RTOL_FLOAT64, REFERENCE_EPS_UNITS * u)
    gap = np.abs(a64 - b64)
    if np.all(gap <= rtol * float(np.max(np.abs(a64), initial=0.0))):
        return rtol, None
    return rtol, tuple(int(i) for i in np.unravel_index(int(np.argmax(gap)), a64.shape))


def _compare_reference(f: Callable, reference: Callable, inputs: _Inputs, function: str) -> None:
    """Raises unless ``reference`` computes ``f``'s values at the float64 arguments."""
    params64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), inputs.params)
    args64 = inputs.rebuild(params64)
    got = jax.tree_util.tree_leaves(_call(f, args64, f"{function}(*args)"))
    want_tree = _call(reference, args64, "reference(*args)")
    want = jax.tree_util.tree_leaves(want_tree)
    if len(got) != len(want) or any(np.shape(a) != np.shape(b) for a, b in zip(got, want)):
        raise InputError(
            f"reference(*args) returns {[np.shape(b) for b in want]} but {function}(*args) "
            f"returns {[np.shape(a) for a in got]}; the reference must be {function} without "
            f"its rule, with the same outputs."
        )
    for k, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a), np.asarray(b)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        u = max(epsilon(a.dtype), epsilon(np.asarray(b).dtype))
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        rtol, at = reference_gap(a64, b64, u)
        if at is not None:
            where = f"output {k}" if len(got) > 1 else "the output"
            raise ReimplementationError(
                f"reference(*args) does not compute {function}(*args): at {where}{list(at)} "
                f"{function} gives {a64[at]!r} and the reference {b64[at]!r} (float64 "
                f"arguments; tolerated {rtol:.0e} of the largest entry). Its jax.grad would be "
                f"the derivative of another function, so nothing was judged.",
                hint="pass as reference the same function written without the custom rule",
            )


# --------------------------------------------------------------------------- the report
