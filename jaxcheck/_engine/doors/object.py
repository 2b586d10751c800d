"""Checks for networks whose parameters live in an object's attributes (``net.weights``).

:func:`check_object` checks them, perturbing a parameter everywhere the object holds its memory
(tied weights); :func:`left_as_found` puts back what the user's code changed on their objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxcheck._engine.doors.door import door, passing
from jaxcheck._engine.doors.gradient import check
from jaxcheck._engine.system.object import ObjectParameters, describe, is_float_array
from jaxcheck._engine.system.params import scalar_cost
from jaxcheck._engine.system.snapshot import left_as_found
from jaxcheck.errors import (
    InputError,
    JaxcheckError,
    NondeterminismError,
    user_code_error,
)
from jaxcheck.report import Report

__all__ = [
    "assert_object",
    "check_object",
    "describe",
    "is_float_array",
    "left_as_found",
]


@door("check_object", check)
def check_object(
    obj: Any,
    loss: Callable[[Any], Any],
    grad: Callable[[Any], Any] | None = None,
    *,
    attributes: str | Sequence[str],
    before: Callable[[Any], Any] | None = None,
    **options: Any,
) -> Report:
    """Checks the backprop of a network object whose parameters live in its attributes.

    For the common class styles: lists ``net.weights``/``net.biases`` with
    ``net.backprop(x, y) -> (nabla_b, nabla_w)``, a dict ``model.params`` with
    ``model.loss(X, y) -> (loss, grads)``, layer objects in a list. For each call jaxcheck puts
    copies of the parameters where the object keeps them, calls your ``loss`` and ``grad`` with
    the object, and checks with :func:`jaxcheck.check`; the JAX twin is the port of ``loss``
    (methods through ``self`` included), so no JAX needs to be written.

    Tied weights: every array reachable from the object (attributes, ``__slots__``, dicts,
    lists, tuples, nested objects) that shares memory with a checked parameter is perturbed with
    it, as one parameter: the same array under another name (a layer holding
    ``params["W2"]``), a view (``self.W_dec = self.W_enc.T``, a slice of a flat vector). Its
    gradient is the sum over all its uses, and that total is what ``grad`` must return.

    The object is left exactly as found, even on error: its attributes and slots (and those of
    the user objects, dicts and lists it holds) are put back, and arrays written in place are
    restored (arrays over 16 MiB are not copied: a change to one is warned about).

    Gradients that only reach an optimizer (``self.optimizer.update(self.W, dW)``): in ``grad``,
    give the object an optimizer stand-in whose ``update(w, g)`` keeps ``g`` by ``id(w)``, run
    the backward pass, and return the kept gradients of ``obj.W``, ``obj.b`` (the stand-in is
    put back with the other attributes afterwards).

    Args:
        obj: the network object.
        loss: ``obj -> float``, e.g. ``lambda net: net.cost(x, y)``; with ``grad=None``,
            ``obj -> (loss, grads)``, e.g. ``lambda model: model.loss(X, y)``.
        grad: ``obj -> gradients``: with several attributes, a tuple in the order of
            ``attributes`` (``lambda net: net.backprop(x, y)`` with
            ``attributes=("biases", "weights")``) or a dict keyed by path or by its last part
            (``{"gamma": ...}`` for ``"params/gamma"``); with one, a pytree shaped like it
            (for a dict, keyed like it or by ``"d" + name``).
        attributes: paths into the object of the parameters, attribute names, dict keys and
            indices joined by ``/``: ``"params"``, ``("biases", "weights")``,
            ``("params/gamma", "params/beta")`` (a dict that also holds running statistics,
            checked key by key), ``"layers/0/W"``. The leaves of a single dict are named by its
            keys (``"W1"``); otherwise by path (``"weights/0"``, ``"params/gamma"``), in the
            order given.
        before: ``obj -> None``, run on the object before every call of ``loss`` and ``grad``,
            e.g. ``lambda m: m.flush_gradients()`` for layers that accumulate with ``+=``.
        **options: the keyword options of :func:`jaxcheck.check` (``jax_cost`` takes the same
            params pytree: the dict, or ``{path: value}`` for several paths).

    Returns:
        The :class:`~jaxcheck.Report`; ``report.ok`` is the verdict.

    Raises:
        InputError: a path that does not exist (the message lists what does), non-float
            parameters, a gradient that does not line up with the attributes, a property
            without a setter whose memory nothing else holds, two checked parameters sharing
            memory, an array sharing memory with a parameter in a way that cannot be mapped
            element by element (another dtype, a byte offset: both places are named), or a loss
            that does not read the parameters at all (layer objects holding copies).
        UserCodeError, NondeterminismError, ReimplementationError, PortError: as in
            :func:`jaxcheck.check`; ``before`` raising is a UserCodeError too.

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> class Linear:
        ...     def __init__(self):
        ...         self.params = {"W": np.array([[0.5, -1.0]]), "b": np.array([0.1])}
        ...     def loss(self, X, y):
        ...         err = X @ self.params["W"].T + self.params["b"] - y
        ...         grads = {"W": err.T @ X / len(X), "b": err.sum(axis=0) / len(X)}
        ...         return 0.5 * float(np.mean(err**2)), grads
        >>> X, y = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0], [0.0]])
        >>> model = Linear()
        >>> jc.check_object(model, lambda m: m.loss(X, y), attributes="params").ok
        True
    """
    if not callable(loss):
        raise InputError(f"loss must be callable obj -> ..., got {type(loss).__name__}.")
    if grad is not None and not callable(grad):
        raise InputError(f"grad must be callable obj -> gradients or None, got {grad!r}.")
    if before is not None and not callable(before):
        raise InputError(f"before must be callable obj -> None, got {before!r}.")
    functions = [("loss", loss), ("grad", grad), ("before", before)]
    system = ObjectParameters(obj, attributes, before, [(n, f) for n, f in functions if f])

    def cost(p: Any) -> Any:
        saved = system.put(p)
        try:
            out = loss(obj)
        finally:
            system.take_back(saved)
        if grad is None:
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise InputError(
                    f"with grad=None, loss(obj) must return (loss, grads); it returned "
                    f"{describe(out)}. Pass grad= if loss returns the loss alone."
                )
            return out[0], system.lineup(out[1], "loss(obj)[1]")
        return out

    def gradient(p: Any) -> Any:
        assert grad is not None  # only passed to check when given
        saved = system.put(p)
        try:
            g = grad(obj)
        finally:
            system.take_back(saved)
        return system.lineup(g, "grad(obj)")

    # Port errors name the function they were porting: name it for what it computes.
    cost.__qualname__ = f"check_object.<loss({type(obj).__name__} object)>"
    with left_as_found(obj, loss, grad, before):
        _reads_attributes(cost, system)
        try:
            return check(cost, None if grad is None else gradient, system.params, **options)
        except NondeterminismError as err:
            if before is not None or not str(err).startswith("grad("):
                raise
            raise NondeterminismError(f"{err}\n{_ACCUMULATES}", hint=_ACCUMULATES) from err


_ACCUMULATES = (
    "For an object, the usual cause is layers that accumulate gradients (self.dW += ...): "
    "reset them before every call with before=, e.g. before=lambda m: m.zero_grad()."
)


@door("assert_object", check_object)
def assert_object(
    obj: Any, loss: Callable[[Any], Any], grad: Callable[[Any], Any] | None = None, **options: Any
) -> Report:
    """Like :func:`check_object`, but raises :class:`jaxcheck.GradientError` when backprop is wrong.

    Args:
        obj: the network object.
        loss: ``obj -> float``, or ``obj -> (loss, grads)`` with ``grad=None``.
        grad: ``obj -> gradients``, or None.
        **options: ``attributes`` and the options of :func:`jaxcheck.check`.

    Returns:
        The :class:`~jaxcheck.Report` when the gradient of every checked attribute is correct.

    Raises:
        GradientError: an ``AssertionError`` whose message is the report's table.
        InputError: an attribute that is not a floating-point array, or that cannot be set
            (named), or a loss that does not read the attributes.
        NondeterminismError: two calls of ``grad`` at the same arrays disagree (layers that
            accumulate gradients: reset them with ``before=``).

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> class Scale:
        ...     def __init__(self):
        ...         self.w = np.array([0.5, -2.0])
        >>> net = Scale()
        >>> loss = lambda n: float(np.sum(n.w**3))
        >>> jc.assert_object(net, loss, lambda n: 3 * n.w**2, attributes="w").ok
        True
    """
    return passing(check_object(obj, loss, grad, **options))


def _reads_attributes(cost: Callable[[Any], Any], system: ObjectParameters) -> None:
    """Raises when the loss ignores the attributes (the object reads its arrays elsewhere)."""
    leaves = system.leaves
    try:
        base = cost(leaves.fresh())
        moved = leaves.unflatten([v + 0.01 * (1 + np.abs(v)) for v in leaves.values])
        other = cost(moved)
    except JaxcheckError:
        raise
    except Exception as err:
        raise user_code_error(err, "loss(obj)") from err
    a = scalar_cost(base, what="loss(obj)")
    b = scalar_cost(other, what="loss(obj)")
    if a == b:
        where = ", ".join(f"obj.{n}" for n in system.names)
        raise InputError(
            f"loss(obj) returned {a!r} both at the parameters and after jaxcheck replaced "
            f"{where} (and every array sharing their memory) with other values: the loss does "
            f"not read its parameters from {where}. If {type(system.obj).__name__} keeps copies "
            f"of the arrays elsewhere (layer objects holding W.copy()), write cost(params) and "
            f"grad(params) that put params where the object reads them, and use jc.check."
        )
