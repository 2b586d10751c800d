"""Checks for backprop written as layers: ``forward(*args)`` and ``backward(dout, cache)``.

:func:`check_layer` checks the cost ``sum(dout * out)`` with :func:`jaxcheck.check`; leaves are
named by forward's parameter names and the JAX twin is the port of forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from jaxcheck._engine.doors.door import door, passing
from jaxcheck._engine.doors.gradient import check
from jaxcheck._engine.doors.object import left_as_found
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.layer import JAX_FORWARD_HINT, Layer, require_callable
from jaxcheck.errors import (
    InputError,
)
from jaxcheck.report import Report

__all__ = ["assert_layer", "check_layer"]


@door("check_layer", check)
def check_layer(
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    *args: Any,
    dout: Any = None,
    wrt: Sequence[str | int] | str | int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    jax_forward: Callable[..., Any] | None = None,
    **options: Any,
) -> Report:
    """Checks the hand-written backward pass of one layer, argument by argument.

    The convention of course layer files: ``forward(*args)`` returns ``out`` or
    ``(out, cache)``, and ``backward(dout, cache)`` returns the gradients of the floating-point
    arguments in order (``dx, dw, db``), or the one array ``dx`` for a layer with one. jaxcheck
    checks the scalar cost ``sum(dout * out)``, whose gradient is exactly what ``backward``
    returns, with :func:`jaxcheck.check`: leaves are named by forward's parameter names (``"x"``,
    ``"w"``, ``"b"``; ``"arg0"``, ... where it has none) and the JAX twin is the port of forward
    (:func:`jaxcheck.port`), so no JAX needs to be written.

    - Every floating-point NumPy array among ``args`` is checked (or those chosen by ``wrt``);
      anything else (a ``conv_param`` dict, integer labels ``y``, a Python float) is passed to
      forward as it is, never checked, and never changed: each call gets a copy.
    - forward is called again for every gradient evaluation, so ``backward`` always gets a fresh
      cache, also when forward keeps it on ``self``.
    - A forward with several outputs returns ``(out1, out2, cache)``; then backward is called as
      ``backward(dout1, dout2, cache)``, and ``dout`` is a tuple. A forward that returns ``out``
      alone keeps its cache itself (a layer object): then ``backward(dout)`` is called.
    - The objects behind bound methods (``layer.forward``), the arguments and NumPy's global
      random state are left as found.

    Args:
        forward: ``forward(*args, **forward_kwargs) -> out | (out, cache)``, in NumPy.
        backward: ``backward(dout, cache) -> (dx, dw, ...)``, or ``-> dx`` for one argument; a
            dict keyed by argument name (or ``"d" + name``) is accepted too.
        *args: forward's positional arguments, in order.
        dout: the upstream gradient, shaped like ``out`` (a tuple for several outputs); ``None``
            draws one from a standard normal distribution seeded by ``seed``.
        wrt: the arguments to check, by name (``["x", "w"]``) or position (``[0, 1]``); ``None``
            checks every floating-point array. backward still returns the gradients of all of
            them, or of exactly these.
        forward_kwargs: keyword arguments for forward (passed through, never checked).
        jax_forward: a ``jax.numpy`` version of forward with the same arguments and outputs, for
            a forward that cannot be ported; ``None`` ports forward.
        **options: the keyword options of :func:`jaxcheck.check` (``method``, ``eps``, ``rtol``,
            ``seed``, ``twin``, ...); ``jax_cost`` is ``jax_forward`` here.

    Returns:
        The :class:`~jaxcheck.Report`; ``report.ok`` is the verdict.

    Raises:
        InputError: bad arguments, ``wrt``, ``dout``, or a backward that returns the wrong
            number or shapes of gradients (the message names what came back and what was
            expected).
        UserCodeError: forward or backward raised (the message names the line).
        NondeterminismError: forward gives different outputs for the same arguments (dropout
            without a seed).
        ReimplementationError, PortError: as in :func:`jaxcheck.check`.

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> def affine_forward(x, w, b):
        ...     return x @ w + b, (x, w)
        >>> def affine_backward(dout, cache):
        ...     x, w = cache
        ...     return dout @ w.T, x.T @ dout, dout.sum(axis=0)
        >>> rng = np.random.default_rng(0)
        >>> x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
        >>> jc.check_layer(affine_forward, affine_backward, x, w, b).ok
        True
        >>> def buggy_backward(dout, cache):
        ...     x, w = cache
        ...     return dout @ w.T, x.T @ dout, dout.mean(axis=0)  # mean, not sum
        >>> jc.check_layer(affine_forward, buggy_backward, x, w, b).failing
        ['b']
    """
    if "jax_cost" in options:
        raise InputError(
            "check_layer builds the cost sum(dout * out) itself and ports forward for the JAX "
            "twin; pass jax_forward= (a jax.numpy version of forward, same arguments) instead of "
            "jax_cost=.",
            hint=JAX_FORWARD_HINT,
        )
    require_callable("forward", forward)
    require_callable("backward", backward)
    if jax_forward is not None:
        require_callable("jax_forward", jax_forward)
    _no_jax_arrays(forward, args, forward_kwargs)
    seed = Options(seed=options.get("seed", 0)).seed
    layer = Layer(forward, backward, args, wrt, forward_kwargs)
    with left_as_found(forward, backward, jax_forward):
        layer.probe(dout, seed)
        jax_cost = None if jax_forward is None else layer.jax_cost(jax_forward)
        from jaxcheck.port._errors import advising  # the port loads when first needed

        with advising(_LAYER_ADVICE):
            return check(layer.cost(), layer.grad, layer.params, jax_cost=jax_cost, **options)


_LAYER_ADVICE = (
    "For check_layer, that JAX version is jax_forward=: pass `jax_forward=` to "
    "`jc.check_layer` (forward written with jax.numpy, taking the same arguments and returning "
    "the same outputs) instead of relying on the automatic port."
)


def _no_jax_arrays(
    forward: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any] | None
) -> None:
    """Refuses JAX arrays among forward's arguments, by name: check_layer checks NumPy layers."""
    from jaxcheck._engine.doors.rule import argument_names

    names = argument_names(forward, len(args))
    given = list(zip(names, args))
    if isinstance(kwargs, Mapping):
        given += list(kwargs.items())
    for name, value in given:
        try:
            leaves = jax.tree_util.tree_leaves(value)
        except Exception:  # noqa: BLE001 - not a pytree: passed to forward as it is
            continue
        if any(isinstance(leaf, jax.Array) for leaf in leaves):
            raise InputError(
                f"check_layer got a JAX array for forward's argument {name!r}; check_layer "
                f"checks NumPy layers, so pass NumPy arrays (np.asarray({name})). For a layer "
                f"written in JAX, jax.grad is the derivative: jc.check_rule checks a custom rule.",
                hint=f"pass np.asarray({name}) instead of the JAX array",
            )


@door("assert_layer", check_layer)
def assert_layer(
    forward: Callable[..., Any], backward: Callable[..., Any], *args: Any, **options: Any
) -> Report:
    """Like :func:`check_layer`, but raises :class:`jaxcheck.GradientError` when backward is wrong.

    Args:
        forward: ``forward(*args) -> out | (out, cache)``, in NumPy.
        backward: ``backward(dout, cache) -> (dx, dw, ...)``.
        *args: forward's positional arguments.
        **options: ``dout``, ``wrt``, ``forward_kwargs``, ``jax_forward`` and the options of
            :func:`jaxcheck.check`.

    Returns:
        The :class:`~jaxcheck.Report` when every checked argument's gradient is correct, its
        leaves named by forward's parameters.

    Raises:
        GradientError: an ``AssertionError`` whose message is the report's table.
        InputError: backward returns another number of gradients than forward takes arrays,
            or one of another shape (named), or a bad option.

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> def relu_forward(x):
        ...     return np.maximum(0, x), x
        >>> def relu_backward(dout, x):
        ...     return dout * (x > 0)
        >>> x = np.array([[1.5, -0.5], [-2.0, 0.5]])
        >>> jc.assert_layer(relu_forward, relu_backward, x).ok
        True
    """
    return passing(check_layer(forward, backward, *args, **options))
