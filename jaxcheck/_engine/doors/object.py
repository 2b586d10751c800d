"""Checks for networks whose parameters live in an object's attributes (``net.weights``).

:func:`check_object` checks them; :func:`left_as_found` puts back what the user's code changed on
their objects during a check.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import jax
import numpy as np

from jaxcheck._engine.doors.door import door
from jaxcheck._engine.doors.gradient import check
from jaxcheck._engine.system.params import flatten_params, scalar_cost
from jaxcheck.errors import GradientError, InputError, JaxcheckError, user_code_error
from jaxcheck.report import Report

__all__ = ["assert_object", "check_object"]


@door("check_object", check)
def check_object(
    obj: Any,
    loss: Callable[[Any], Any],
    grad: Callable[[Any], Any] | None = None,
    *,
    attributes: str | Sequence[str],
    **options: Any,
) -> Report:
    """Checks the backprop of a network object whose parameters live in its attributes.

    For the two common class styles: lists ``net.weights``/``net.biases`` with
    ``net.backprop(x, y) -> (nabla_b, nabla_w)``, and a dict ``model.params`` with
    ``model.loss(X, y) -> (loss, grads)``. jaxcheck puts copies of the parameters into the
    object's attributes for each call (rebinding ``obj.weights``, ``obj.params``), calls your
    ``loss`` and ``grad`` with the object, and checks with :func:`jaxcheck.check`; the JAX twin
    is the port of ``loss`` (methods through ``self`` included), so no JAX needs to be written.
    The object is left exactly as found, even on error: its attributes (and those of the user
    objects, dicts and lists it holds) are put back, and arrays written in place are restored.

    Args:
        obj: the network object.
        loss: ``obj -> float``, e.g. ``lambda net: net.cost(x, y)``; with ``grad=None``,
            ``obj -> (loss, grads)``, e.g. ``lambda model: model.loss(X, y)``.
        grad: ``obj -> gradients``: with several attributes, a tuple in the order of
            ``attributes`` (``lambda net: net.backprop(x, y)`` with
            ``attributes=("biases", "weights")``) or a dict keyed by attribute; with one, a
            pytree shaped like it (for a dict, keyed like it or by ``"d" + name``).
        attributes: the names of the attributes holding the parameters: one name (``"params"``)
            or several (``("biases", "weights")``). The leaves of a single dict attribute are
            named by its keys (``"W1"``); otherwise by attribute and index (``"weights/0"``).
        **options: the keyword options of :func:`jaxcheck.check` (``jax_cost`` takes the same
            params pytree: the dict, or ``{name: value}`` for several attributes).

    Returns:
        The :class:`~jaxcheck.Report`; ``report.ok`` is the verdict.

    Raises:
        InputError: a missing attribute, non-float parameters, a gradient that does not line up
            with the attributes, or a loss that does not read the attributes at all (an object
            that keeps other references to its arrays, such as layer objects holding W).
        UserCodeError, NondeterminismError, ReimplementationError, PortError: as in
            :func:`jaxcheck.check`.

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
    names = _attribute_names(obj, attributes)
    whole = len(names) == 1 and isinstance(getattr(obj, names[0]), Mapping)
    params = getattr(obj, names[0]) if whole else {n: getattr(obj, n) for n in names}
    if not callable(loss):
        raise InputError(f"loss must be callable obj -> ..., got {type(loss).__name__}.")
    if grad is not None and not callable(grad):
        raise InputError(f"grad must be callable obj -> gradients or None, got {grad!r}.")
    leaves = flatten_params(params)
    listed = ", ".join(repr(n) for n in names)
    shapes = {n: _shapes(getattr(obj, n)) for n in names}

    def put(p: Any) -> dict[str, Any]:
        saved = {n: getattr(obj, n) for n in names}
        if whole:
            setattr(obj, names[0], p)
        else:
            for n in names:
                setattr(obj, n, p[n])
        return saved

    def take_back(saved: dict[str, Any]) -> None:
        for n, value in saved.items():
            setattr(obj, n, value)

    def by_attribute(g: Any, what: str) -> Any:
        if whole:
            return g
        if len(names) == 1:
            return {names[0]: g}
        if isinstance(g, Mapping):
            return g
        if isinstance(g, (tuple, list)) and len(g) == len(names):
            for k, (n, item) in enumerate(zip(names, g)):
                if _shapes(item) != shapes[n]:
                    raise InputError(
                        f"{what} returned a {type(g).__name__} whose item {k}, the gradient of "
                        f"obj.{n} by the order of attributes=({listed}), has shapes "
                        f"{_shapes(item)} where obj.{n} has {shapes[n]}: list the attributes "
                        f"in the order {what} returns their gradients."
                    )
            return dict(zip(names, g))
        raise InputError(
            f"{what} returned {describe(g)}; expected the gradients of the attributes "
            f"({listed}) as a tuple in that order, or a dict keyed by attribute."
        )

    def cost(p: Any) -> Any:
        saved = put(p)
        try:
            out = loss(obj)
        finally:
            take_back(saved)
        if grad is None:
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise InputError(
                    f"with grad=None, loss(obj) must return (loss, grads); it returned "
                    f"{describe(out)}. Pass grad= if loss returns the loss alone."
                )
            return out[0], by_attribute(out[1], "loss(obj)[1]")
        return out

    def gradient(p: Any) -> Any:
        saved = put(p)
        try:
            g = grad(obj)
        finally:
            take_back(saved)
        return by_attribute(g, "grad(obj)")

    # Port errors name the function they were porting: name it for what it computes.
    cost.__qualname__ = f"check_object.<loss({type(obj).__name__} object)>"
    with left_as_found(obj, loss, grad):
        _reads_attributes(cost, leaves, names, obj)
        return check(cost, None if grad is None else gradient, params, **options)


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
        The :class:`~jaxcheck.Report` when the gradients are correct.

    Raises:
        GradientError: an ``AssertionError`` whose message is the report's table.

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
    report = check_object(obj, loss, grad, **options)
    if not report.ok:
        raise GradientError(str(report), report)
    return report


def _attribute_names(obj: Any, attributes: Any) -> list[str]:
    items = [attributes] if isinstance(attributes, str) else attributes
    try:
        names = list(items)
    except TypeError:
        names = [None]
    if not names or any(not isinstance(n, str) for n in names):
        raise InputError(
            f"attributes={attributes!r}: expected an attribute name or a sequence of names, e.g. "
            f"attributes='params' or attributes=('biases', 'weights')."
        )
    if len(set(names)) != len(names):
        raise InputError(f"attributes={attributes!r} names an attribute twice.")
    for n in names:
        if not hasattr(obj, n):
            holding = sorted(k for k, v in getattr(obj, "__dict__", {}).items() if _holds_arrays(v))
            raise InputError(
                f"{type(obj).__name__} object has no attribute {n!r}; its attributes holding "
                f"float arrays are {holding}."
            )
    return names


def _shapes(tree: Any) -> list[tuple[int, ...]]:
    return [tuple(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]


def _holds_arrays(value: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(value) if isinstance(value, (dict, list, tuple)) else [value]
    return bool(leaves) and all(is_float_array(v) for v in leaves)


def _reads_attributes(cost: Callable[[Any], Any], leaves: Any, names: list[str], obj: Any) -> None:
    """Raises when the loss ignores the attributes (the object reads its arrays elsewhere)."""
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
        where = ", ".join(f"obj.{n}" for n in names)
        raise InputError(
            f"loss(obj) returned {a!r} both at the parameters and after jaxcheck replaced "
            f"{where} with other values: the loss does not read its parameters from {where}. "
            f"If {type(obj).__name__} keeps other references to the arrays (layer objects "
            f"holding W and b), write cost(params) and grad(params) that put params where the "
            f"object reads them, and use jc.check."
        )


def is_float_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)


def describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"a {type(value).__name__}"


# Objects whose state is never snapshotted: libraries' own objects, and code.
_LIBRARIES = frozenset({"builtins", "numpy", "jax", "jaxlib", "jaxcheck"})
_CODE = (type, types.ModuleType, types.FunctionType, types.MethodType, functools.partial)


class _Snapshot:
    """The state reachable from the user's objects: attribute bindings, container items, arrays.

    Restoring puts every binding back (the same objects, not copies) and writes back the
    contents of arrays that were changed in place.
    """

    def __init__(self, roots: Sequence[Any]) -> None:
        self.objects: list[tuple[Any, dict[str, Any]]] = []
        self.dicts: list[tuple[dict, dict]] = []
        self.lists: list[tuple[list, list]] = []
        self.arrays: list[tuple[np.ndarray, np.ndarray]] = []
        seen: set[int] = set()
        for root in roots:
            self._walk(root, seen)

    def _walk(self, value: Any, seen: set[int]) -> None:
        stack = [value]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, np.ndarray):
                if node.flags.writeable and not node.dtype.hasobject:
                    self.arrays.append((node, node.copy()))
            elif isinstance(node, dict):
                self.dicts.append((node, dict(node)))
                stack.extend(node.values())
            elif isinstance(node, list):
                self.lists.append((node, list(node)))
                stack.extend(node)
            elif isinstance(node, tuple):
                stack.extend(node)
            elif isinstance(node, types.MethodType):
                stack.append(node.__self__)
            elif _is_user_object(node):
                state = vars(node)
                self.objects.append((node, dict(state)))
                stack.extend(state.values())

    def restore(self) -> None:
        for obj, state in self.objects:
            current = vars(obj)
            if current.keys() != state.keys() or any(current[k] is not v for k, v in state.items()):
                current.clear()
                current.update(state)
        for d, items in self.dicts:
            if d.keys() != items.keys() or any(d[k] is not v for k, v in items.items()):
                d.clear()
                d.update(items)
        for lst, items in self.lists:
            if len(lst) != len(items) or any(a is not b for a, b in zip(lst, items)):
                lst[:] = items
        for arr, saved in self.arrays:
            if arr.shape == saved.shape and arr.tobytes() != saved.tobytes():
                np.copyto(arr, saved)


def _is_user_object(node: Any) -> bool:
    if isinstance(node, _CODE) or not isinstance(getattr(node, "__dict__", None), dict):
        return False
    module = getattr(type(node), "__module__", "") or ""
    return module.partition(".")[0] not in _LIBRARIES


@contextmanager
def left_as_found(*roots: Any) -> Iterator[None]:
    """Restores the user's objects behind ``roots`` and NumPy's global random state on exit."""
    snapshot = _Snapshot([r for r in roots if r is not None])
    random_state = np.random.get_state()
    try:
        yield
    finally:
        snapshot.restore()
        np.random.set_state(random_state)
