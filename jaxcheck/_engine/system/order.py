"""The user's order of the leaves: dict insertion order, where jax.tree_util sorts dict keys.

jax flattens a dict with its keys sorted, so the engine works in ``W1, W2, b1, b2`` order; the
user wrote ``W1, b1, W2, b2`` (and a layer's ``x, w, b``). Reports list leaves the user's way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import jax

from jaxcheck._engine.system.params import path_to_str

__all__ = ["in_user_order", "user_order"]

T = TypeVar("T")


def _children(node: Any) -> list[tuple[Any, Any]] | None:
    """(key entry, child) pairs of a pytree node in the user's order; None for a leaf."""
    if isinstance(node, Mapping):
        return [(jax.tree_util.DictKey(key), value) for key, value in node.items()]
    try:
        flat, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    except Exception:  # noqa: BLE001 - not a pytree jax can flatten: a leaf here
        return None
    if len(flat) == 1 and not flat[0][0]:
        return None  # a leaf: jax returns it whole, with an empty path
    return [(path[0], child) for path, child in flat]


def user_order(params: Any) -> list[str]:
    """The leaf paths of ``params`` in the order the user wrote them.

    Args:
        params: the user's parameter pytree.

    Returns:
        Paths as the reports name them (``"W1"``, ``"layers/0/b"``), dicts in insertion order,
        sequences by index, any other pytree node in jax's order.
    """
    out: list[str] = []

    def walk(node: Any, prefix: tuple[Any, ...]) -> None:
        children = _children(node)
        if children is None:
            out.append(path_to_str(prefix))
            return
        for key, child in children:
            walk(child, (*prefix, key))

    walk(params, ())
    return out


def in_user_order(leaves: dict[str, T], params: Any) -> dict[str, T]:
    """``leaves`` (path → anything) reordered as the user wrote ``params``.

    Paths that ``params`` does not name keep their place after the ones it does, so nothing is
    ever dropped.
    """
    rank = {path: i for i, path in enumerate(user_order(params))}
    place = {path: i for i, path in enumerate(leaves)}
    paths = sorted(leaves, key=lambda p: (rank.get(p, len(rank)), place[p]))
    return {path: leaves[path] for path in paths}
