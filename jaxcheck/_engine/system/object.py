"""The system under test of :func:`jaxcheck.check_object`: parameters that live in an object.

:class:`ObjectParameters` resolves ``attributes=`` paths, puts perturbed values everywhere the
object holds their memory (tied weights included), and lines the user's gradient up with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxcheck._engine.system import graph
from jaxcheck._engine.system.graph import Place, Step, Tie
from jaxcheck._engine.system.params import flatten_params
from jaxcheck.errors import InputError, JaxcheckError, user_code_error

__all__ = ["ObjectParameters", "Ordered", "describe", "is_float_array"]


class Ordered(dict):
    """A dict whose leaves jax lists in insertion order: the order of ``attributes=``."""


jax.tree_util.register_pytree_with_keys(
    Ordered,
    lambda d: ([(jax.tree_util.DictKey(k), v) for k, v in d.items()], tuple(d)),
    lambda keys, values: Ordered(zip(keys, values)),
    lambda d: (list(d.values()), tuple(d)),
)


class ObjectParameters:
    """The checked parameters of one object and every place that holds their memory.

    Attributes:
        params: the pytree handed to :func:`jaxcheck.check`: the dict itself for one dict
            attribute (leaves named by its keys), otherwise ``{path: value}`` in the order given.
        names: the paths given in ``attributes``.
        bindings: what is set on every call: each checked place, then each place tied to one.
    """

    def __init__(
        self,
        obj: Any,
        attributes: Any,
        before: Callable[[Any], Any] | None,
        functions: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.obj, self.before, self.functions = obj, before, functions
        self.names = _paths(attributes)
        resolved = [graph.resolve(obj, name) for name in self.names]
        self.whole = len(self.names) == 1 and isinstance(resolved[0][1], Mapping)
        if self.whole:
            self.params: Any = resolved[0][1]
        else:
            self.params = Ordered((n, value) for n, (_, value) in zip(self.names, resolved))
        self.leaves = flatten_params(self.params)
        self.shapes = {n: _shapes(value) for n, (_, value) in zip(self.names, resolved)}
        places = [self._place(keys, resolved) for keys in self.leaves.keys]
        self.bindings = self._bind(places)

    def _place(self, keys: tuple[Any, ...], resolved: list[tuple[list[Step], Any]]) -> Place:
        if self.whole:
            steps, node = list(resolved[0][0]), resolved[0][1]
        else:
            steps, node = resolved[self.names.index(keys[0])]
            steps, keys = list(steps), keys[1:]
        for key in keys:
            if isinstance(node, Mapping):
                step: Step = ("key", key)
            elif isinstance(node, (list, tuple)):
                step = ("index", graph.tuple_index(node, key))
            else:
                step = ("attr", key)
            steps.append(step)
            node = graph.get(node, step)
        return Place(tuple(steps))

    def _bind(self, places: list[Place]) -> list[Tie]:
        arrays = [graph.get_at(self.obj, p) for p in places]
        checked = list(zip(self.leaves.paths, arrays))
        inside: set[int] = set()
        tied = graph.ties(checked, graph.walk(self.obj, inside))
        graph.held_outside(self.functions, checked, inside)
        own = {p.steps for p in places}
        others = [t for t in tied if t.place.steps not in own]
        bindings = []
        for k, place in enumerate(places):
            computed = place.computed(self.obj)
            fed = any(_feeds(t, k) for t in others)
            if computed is None or (computed[1] and not fed):
                bindings.append(Tie(place, k, np.shape(arrays[k])))
            elif not fed:
                raise InputError(
                    f"{computed[0]}, and nothing else in the object holds its memory, so "
                    f"jaxcheck cannot put the perturbed parameter where the loss reads it. Name "
                    f"the attribute the property reads (e.g. attributes='_{place.steps[-1][1]}') "
                    f"or add a setter."
                )
            # Otherwise the getter reads the tied places, which are set.
        return bindings + others

    # ---- calls into the user's code ------------------------------------------------------------

    def put(self, p: Any) -> list[tuple[Any, Step, Any]]:
        """Puts params ``p`` (NumPy or traced) everywhere; returns what to put back."""
        values = jax.tree_util.tree_leaves(p)
        saved = []
        try:
            for tie in self.bindings:
                saved.append(graph.set_at(self.obj, tie.place, tie.value(values)))
            if self.before is not None:
                self._run_before()
        except BaseException:
            self.take_back(saved)
            raise
        return saved

    def _run_before(self) -> None:
        try:
            self.before(self.obj)  # type: ignore[misc]
        except JaxcheckError:
            raise
        except Exception as err:
            raise user_code_error(err, "before(obj)") from err

    def take_back(self, saved: list[tuple[Any, Step, Any]]) -> None:
        for container, (kind, key), old in reversed(saved):
            if kind == "attr":
                setattr(container, key, old)
            else:
                container[key] = old

    # ---- the user's gradient -------------------------------------------------------------------

    def lineup(self, g: Any, what: str) -> Any:
        """The user's gradient, shaped so that :func:`jaxcheck.check` can match it to params."""
        if self.whole:
            return g
        if isinstance(g, Mapping):
            self._unambiguous(g, what)
            return {n: self._pick(g, n, what) for n in self.names}
        if len(self.names) == 1:
            return {self.names[0]: g}
        if isinstance(g, (tuple, list)) and len(g) == len(self.names):
            listed = ", ".join(repr(n) for n in self.names)
            for k, (n, item) in enumerate(zip(self.names, g)):
                if _shapes(item) != self.shapes[n]:
                    raise InputError(
                        f"{what} returned a {type(g).__name__} whose item {k}, the gradient of "
                        f"obj.{n} by the order of attributes=({listed}), has shapes "
                        f"{_shapes(item)} where obj.{n} has {self.shapes[n]}: list the "
                        f"attributes in the order {what} returns their gradients."
                    )
            return dict(zip(self.names, g))
        raise InputError(
            f"{what} returned {describe(g)}; expected the gradients of the attributes "
            f"({', '.join(repr(n) for n in self.names)}) as a tuple in that order, or a dict "
            f"keyed by attribute."
        )

    def _unambiguous(self, g: Mapping, what: str) -> None:
        found: dict[tuple[Any, ...], str] = {}
        for n in self.names:
            where = _find(g, n)
            if where is None:
                continue
            if where in found:
                raise InputError(
                    f"{what} returned a dict in which {found[where]!r} and {n!r} both find "
                    f"the entry {'/'.join(map(str, where))!r}; key the gradients by the full "
                    f"paths given in attributes=."
                )
            found[where] = n

    def _pick(self, g: Mapping, name: str, what: str) -> Any:
        where = _find(g, name)
        if where is None:
            if len(self.names) == 1:
                return g
            parts = name.split("/")
            tried = [*("/".join(parts[i:]) for i in range(len(parts))), "d" + parts[-1]]
            raise InputError(
                f"{what} returned a dict with keys {sorted(map(str, g))} and none for {name!r} "
                f"(looked for {', '.join(map(repr, tried))}). Return a gradient for every path "
                f"in attributes=, keyed by the path or by its last part."
            )
        node: Any = g
        for key in where:
            node = node[key]
        return node


def _find(g: Mapping, name: str) -> tuple[Any, ...] | None:
    """Where the gradient of ``name`` sits in ``g``: the path, or its tail, or ``"d" + last``."""
    parts = name.split("/")
    for i in range(len(parts)):
        tail = parts[i:]
        for last in (tail[-1], "d" + tail[-1]):
            for keys in (["/".join([*tail[:-1], last])], [*tail[:-1], last]):
                found = _walk_keys(g, keys)
                if found is not None:
                    return found
    return None


def _walk_keys(node: Any, parts: Sequence[str]) -> tuple[Any, ...] | None:
    keys: list[Any] = []
    for part in parts:
        if isinstance(node, Mapping):
            key = part if part in node else _int_key(part, node)
            if key is None:
                return None
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            key = int(part)
        else:
            return None
        keys.append(key)
        node = node[key]
    return tuple(keys)


def _int_key(part: str, node: Mapping) -> int | None:
    try:
        key = int(part)
    except ValueError:
        return None
    return key if key in node else None


def _feeds(tie: Tie, k: int) -> bool:
    if tie.leaf is not None:
        return tie.leaf == k
    return tie.sources is not None and bool((tie.sources == k).any())


def _paths(attributes: Any) -> list[str]:
    items = [attributes] if isinstance(attributes, str) else attributes
    try:
        names = list(items)
    except TypeError:
        names = [None]
    if not names or any(not isinstance(n, str) for n in names):
        raise InputError(
            f"attributes={attributes!r}: expected an attribute name or a sequence of names, e.g. "
            f"attributes='params', attributes=('biases', 'weights') or paths into the object "
            f"such as ('params/W1', 'layers/0/W')."
        )
    if len(set(names)) != len(names):
        raise InputError(f"attributes={attributes!r} names an attribute twice.")
    for a in names:
        for b in names:
            if a != b and b.startswith(a + "/"):
                raise InputError(
                    f"attributes={attributes!r} names {b!r}, which lies inside {a!r}; name each "
                    f"parameter once."
                )
    return names


def _shapes(tree: Any) -> list[tuple[int, ...]]:
    return [tuple(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]


def is_float_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)


def describe(value: Any) -> str:
    """A value as error messages name it: ``a float64 array of shape (3, 2)``."""
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"a {type(value).__name__}"
