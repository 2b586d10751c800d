"""Parameter pytrees: leaf paths, input validation and matching the user's gradient to params.

Everything here runs on the host in NumPy; nothing of the user's data is modified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.errors import InputError

__all__ = [
    "MAX_DEPTH",
    "Leaves",
    "check_depth",
    "flatten_params",
    "match_gradient",
    "path_to_str",
    "scalar_cost",
]

#: How deep a pytree of params, gradients or cost outputs may nest (far beyond any network's).
MAX_DEPTH = 200


def path_to_str(path: Sequence[Any]) -> str:
    """Joins a jax key path into jaxcheck's leaf path: ``"layers/0/W"``."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/") or "<root>"


def _raw_key(key: Any) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return key


@dataclasses.dataclass(frozen=True)
class Leaves:
    """The parameters, flattened: one entry per leaf, in ``jax.tree_util`` order.

    Attributes:
        paths: the leaf paths (``"W1"``, ``"layers/0/b"``).
        keys: the raw key sequence of each leaf, used to look the leaf up in a gradient dict.
        values: private float copies of the leaves (never the user's arrays).
        treedef: the structure, to rebuild a pytree.
    """

    paths: tuple[str, ...]
    keys: tuple[tuple[Any, ...], ...]
    values: tuple[np.ndarray, ...]
    treedef: Any

    def unflatten(self, leaves: Sequence[Any]) -> Any:
        """Rebuilds a pytree shaped like params from a list of leaves."""
        return jax.tree_util.tree_unflatten(self.treedef, list(leaves))

    def fresh(self) -> Any:
        """A fresh copy of params for one call into the user's code."""
        return self.unflatten([v.copy() for v in self.values])

    @property
    def size(self) -> int:
        """Total number of scalar parameters."""
        return int(sum(v.size for v in self.values))


def _is_float(dtype: np.dtype) -> bool:
    """NumPy's floating dtypes and ml_dtypes' (bfloat16) alike."""
    return bool(jnp.issubdtype(dtype, jnp.floating))


def check_depth(tree: Any, what: str) -> str | None:
    """Walks ``tree`` without recursion: refuses one nested deeper than :data:`MAX_DEPTH`.

    A tree thousands of levels deep is refused by name instead of exhausting Python's stack
    further on.

    Returns:
        The path at which a container holds itself (a cycle), if any; else None.

    Raises:
        InputError: containers nest more than :data:`MAX_DEPTH` levels deep.
    """
    todo: list[tuple[Any, int, tuple[str, ...], bool]] = [(tree, 0, (), False)]
    active: set[int] = set()
    visits = 0
    while todo and visits < 1_000_000:
        node, depth, trail, leaving = todo.pop()
        if leaving:
            active.discard(id(node))
            continue
        if isinstance(node, Mapping):
            children = [(str(k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            children = [(str(i), v) for i, v in enumerate(node)]
        else:
            continue
        visits += 1
        if id(node) in active:
            return "/".join(trail) or "<root>"
        if depth >= MAX_DEPTH:
            raise InputError(
                f"{what} nests containers more than {MAX_DEPTH} levels deep (under "
                f"{'/'.join(trail[:3])!r}/...); jaxcheck needs a tree of arrays of sensible depth "
                f"(dicts, lists, tuples of arrays, as a network's parameters are).",
                hint="flatten the nesting: e.g. a dict or list of the layers' arrays",
            )
        active.add(id(node))
        todo.append((node, depth, trail, True))
        todo.extend((child, depth + 1, (*trail, key), False) for key, child in children)
    return None


def _flatten(params: Any, what: str) -> tuple[list[Any], Any]:
    cycle = check_depth(params, what)
    if cycle is not None:
        raise InputError(
            f"{what} contains itself at {cycle!r} (a cyclic container); jaxcheck needs a tree of "
            f"arrays (dicts, lists, tuples) with no cycles."
        )
    try:
        return jax.tree_util.tree_flatten_with_path(params)
    except (ValueError, TypeError) as err:
        text = str(err)
        if "sort" in text or "'<'" in text:
            raise InputError(
                f"{what} is a dict whose keys cannot be sorted ({text.rstrip('.')}); jax orders "
                f"dict keys, so use keys of one type (all strings, e.g. 'W1', 'b1')."
            ) from err
        raise InputError(f"{what} could not be flattened as a pytree: {text}") from err


def flatten_params(params: Any) -> Leaves:
    """Validates params and flattens them into private float copies.

    Args:
        params: a pytree (dicts, lists, tuples, dataclass-like registered nodes) whose leaves
            are floating-point NumPy arrays or Python floats.

    Returns:
        The flattened :class:`Leaves`.

    Raises:
        InputError: if params is empty, or a leaf is not a finite floating-point array.
    """
    flat, treedef = _flatten(params, "params")
    if not flat:
        raise InputError(
            "params is empty: jaxcheck needs at least one floating-point array to check, e.g. "
            "{'W1': W1, 'b1': b1}."
        )
    paths, keys, values = [], [], []
    for key_path, leaf in flat:
        path = path_to_str(key_path)
        if isinstance(leaf, (bool, np.bool_)) or leaf is None:
            raise InputError(f"params leaf {path!r} is {leaf!r}; expected a float array.")
        if isinstance(leaf, int):
            raise InputError(
                f"params leaf {path!r} is the Python int {leaf!r}; gradients are checked for "
                f"floating-point parameters: write {float(leaf)!r} or drop it from params."
            )
        try:
            arr = np.array(leaf, copy=True)
        except Exception as err:  # noqa: BLE001 - anything unconvertible is bad input
            raise InputError(
                f"params leaf {path!r} of type {type(leaf).__name__} could not be read as a "
                f"NumPy array ({err}); expected a float array."
            ) from err
        if not _is_float(arr.dtype):
            hint = (
                " Convert it with .astype(np.float64) if it is a parameter, or move it out of "
                "params (into the closure of cost and grad) if it is data."
                if np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
                else ""
            )
            raise InputError(
                f"params leaf {path!r} has dtype {arr.dtype}; expected a floating-point array "
                f"(float64, float32, float16, bfloat16).{hint}"
            )
        if not np.all(np.isfinite(arr)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise InputError(
                f"params leaf {path!r} holds a non-finite value ({arr[bad]!r} at index {bad}); "
                f"gradients can only be checked at a point where every parameter is finite."
            )
        paths.append(path)
        keys.append(tuple(_raw_key(k) for k in key_path))
        values.append(arr)
    if len(set(paths)) != len(paths):
        dup = sorted({p for p in paths if paths.count(p) > 1})
        raise InputError(f"params has several leaves with the same path {dup}; rename the keys.")
    return Leaves(tuple(paths), tuple(keys), tuple(values), treedef)


def scalar_cost(value: Any, *, what: str = "cost(params)") -> float:
    """Reads the scalar cost out of what a cost function returned.

    Args:
        value: a scalar, a size-1 array, or a tuple/list whose first item is one.
        what: how to name the function in error messages.

    Returns:
        The cost as a Python float.

    Raises:
        InputError: if the value is not a finite real scalar.
    """
    if isinstance(value, (tuple, list, Mapping)):
        check_depth(value, what)
    if isinstance(value, (tuple, list)):
        if not value:
            raise InputError(f"{what} returned an empty {type(value).__name__}; expected a scalar.")
        value = value[0]
        what = f"{what}[0]"
    try:
        arr = np.asarray(value)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{what} returned {type(value).__name__}; expected a scalar.") from err
    if arr.size != 1:
        raise InputError(
            f"{what} returned an array of shape {arr.shape}; expected a scalar cost (a float, or a "
            f"tuple whose first item is the float). Reduce it, e.g. with np.mean or np.sum."
        )
    if not (_is_float(arr.dtype) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{what} returned dtype {arr.dtype}; expected a real scalar.")
    out = float(arr.reshape(()))
    if not np.isfinite(out):
        raise InputError(
            f"{what} is {out} at the given params; the cost must be finite where the gradient is "
            f"checked (look for log(0), division by zero or overflow in the forward pass)."
        )
    return out


def _lookup(tree: Any, keys: tuple[Any, ...], path: str, what: str) -> Any:
    node = tree
    for depth, key in enumerate(keys):
        here = "/".join(str(k) for k in keys[:depth]) or "the top level"
        if isinstance(node, Mapping):
            if key in node and isinstance(key, str) and "d" + key in node:
                raise InputError(
                    f"{what} holds both {key!r} and {'d' + key!r} for leaf {path!r}; "
                    f"it is ambiguous which is the gradient. Return only one of them."
                )
            if key in node:
                node = node[key]
            elif isinstance(key, str) and "d" + key in node:
                node = node["d" + key]
            else:
                avail = sorted(str(k) for k in node.keys())
                raise InputError(
                    f"{what} has no entry for leaf {path!r}: looked for {key!r} and "
                    f"{'d' + str(key)!r} at {here} and found only {avail}. Return a gradient "
                    f"for every parameter, keyed like params or as 'd' + name."
                )
        elif isinstance(node, Sequence) and not isinstance(node, (str, bytes, np.ndarray)):
            if not isinstance(key, int):
                raise InputError(
                    f"grad(params) has no entry for leaf {path!r}: at {here} it returned a "
                    f"{type(node).__name__} of {len(node)} items where params have a dict; "
                    f"return a dict keyed like params (with {key!r}), not a "
                    f"{type(node).__name__}: jaxcheck does not guess which item is which key.",
                    hint="return a dict keyed like params, e.g. {'W1': dW1, 'b1': db1}",
                )
            if key >= len(node):
                raise InputError(
                    f"{what} has no entry for leaf {path!r}: {here} is a sequence of "
                    f"length {len(node)}, expected index {key!r}."
                )
            node = node[key]
        elif hasattr(node, str(key)) and isinstance(key, str):
            node = getattr(node, key)
        else:
            raise InputError(
                f"{what} has no entry for leaf {path!r}: expected a container at {here}, "
                f"got {type(node).__name__}."
            )
    return node


def match_gradient(grads: Any, leaves: Leaves, *, what: str = "grad(params)") -> list[np.ndarray]:
    """Lines the user's gradient up with params, leaf by leaf.

    The gradient may have exactly the structure of params, or be a dict keyed like params or
    by ``"d" + name`` (the classic lesson's convention); extra keys (``dZ1``, ``dA1``) are ignored.
    For params with a single leaf, a bare array is that leaf's gradient.

    Args:
        grads: what ``grad(params)`` returned.
        leaves: the flattened params.
        what: the call that returned ``grads``, for messages (``"hvp(params, v)"``).

    Returns:
        One float array per leaf, in leaf order (NaN and inf are kept: they are failures to
        report, not bad input).

    Raises:
        InputError: if a leaf is missing, has the wrong shape, or is not numeric.
    """
    cycle = check_depth(grads, "grad(params)")
    if cycle is not None:
        raise InputError(
            f"grad(params) contains itself at {cycle!r} (a cyclic container); return a tree of "
            f"arrays shaped like params."
        )
    params_is_tuple = isinstance(leaves.unflatten([None] * len(leaves.paths)), tuple)
    if isinstance(grads, tuple) and len(grads) == 2 and not params_is_tuple:
        # Allow (grads, cache)-style returns only when params itself is not a 2-tuple.
        first = grads[0]
        if isinstance(first, (Mapping, list)):
            grads = first
    if len(leaves.values) == 1 and isinstance(grads, (np.ndarray, np.generic)):
        # One parameter: its gradient may come back bare, as `svm_loss(x, y) -> (loss, dx)`.
        flat, same_structure = [grads], True
    else:
        try:
            flat, treedef = jax.tree_util.tree_flatten(grads)
            same_structure = treedef == leaves.treedef
        except Exception:  # noqa: BLE001 - unflattenable objects fall through to the lookup
            same_structure = False
    if not same_structure:
        flat = [_lookup(grads, keys, path, what) for keys, path in zip(leaves.keys, leaves.paths)]
    out = []
    for g, path, value in zip(flat, leaves.paths, leaves.values):
        try:
            arr = np.array(g, copy=True)
        except Exception as err:  # noqa: BLE001
            raise InputError(
                f"{what} for leaf {path!r} is a {type(g).__name__} that could not be read "
                f"as an array; expected a float array of shape {value.shape}."
            ) from err
        if arr.dtype == np.bool_ or not (
            np.issubdtype(arr.dtype, np.number) or _is_float(arr.dtype)
        ):
            raise InputError(
                f"{what} for leaf {path!r} has dtype {arr.dtype}; expected a float array "
                f"of shape {value.shape}."
            )
        if np.iscomplexobj(arr):
            raise InputError(
                f"{what} for leaf {path!r} is complex; jaxcheck checks real gradients."
            )
        if arr.shape != value.shape:
            raise InputError(
                f"{what} for leaf {path!r} has shape {arr.shape}; expected {value.shape}, "
                f"the shape of the parameter itself."
            )
        if not _is_float(arr.dtype):
            arr = arr.astype(np.float64)
        out.append(arr)
    return out
