"""Where an object keeps its arrays: paths into it, every place an array lives, and tied memory.

``check_object`` perturbs a parameter everywhere the object graph holds its memory: the same
array under two names, a layer object holding a reference into ``params``, ``W_dec = W_enc.T``.
:func:`resolve` turns ``"params/W1"`` into steps; :func:`walk` lists every array reachable from
the object; :func:`ties` says how each array sharing memory with a checked one is derived from it
(a view of the perturbed value in NumPy, a gather under JAX); :func:`held_outside` refuses a
parameter that the user's functions also hold outside the object.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.errors import InputError
from jaxcheck.port._user import is_user_class

__all__ = [
    "ATOMS",
    "Place",
    "Tie",
    "attributes_of",
    "get",
    "get_at",
    "held_outside",
    "is_user_object",
    "resolve",
    "set_at",
    "slot_names",
    "text",
    "ties",
    "tuple_index",
    "walk",
    "put",
]

# How deep below the object the walk looks, and how many containers and objects it visits.
MAX_DEPTH = 64
MAX_NODES = 200_000

# A step into a container: ("attr", name) for attributes and slots, ("key", k) for dict
# items, ("index", i) for list and tuple items.
Step = tuple[str, Any]

_LIBRARIES = frozenset({"builtins", "numpy", "jax", "jaxlib", "jaxcheck"})
_USER_PARTS = ("jaxcheck.lesson", "jaxcheck.models", "jaxcheck.demo")  # systems under test
_CODE = (type, types.ModuleType, types.FunctionType, types.MethodType, functools.partial)
_MISSING = object()
ATOMS = (int, float, complex, str, bytes, bool, type(None), np.generic, range, slice)


def text(steps: Sequence[Step]) -> str:
    """A path as the user writes it: ``"layers/0/W"``."""
    return "/".join(str(key) for _, key in steps) or "<the object>"


def is_user_object(node: Any) -> bool:
    """Whether ``node`` is an instance of the user's class (its attributes are walked).

    Libraries' objects (NumPy, JAX, pandas, torch, jaxcheck's own) are not: their insides are
    theirs. ``types.SimpleNamespace`` is, as a plain container people keep arrays in.
    """
    if isinstance(node, _CODE):
        return False
    if not isinstance(getattr(node, "__dict__", None), dict) and not slot_names(type(node)):
        return False
    if isinstance(node, types.SimpleNamespace):
        return True
    module = getattr(type(node), "__module__", "") or ""
    if module.partition(".")[0] in _LIBRARIES and not module.startswith(_USER_PARTS):
        return False
    return is_user_class(type(node))


def slot_names(cls: type) -> tuple[str, ...]:
    """The (mangled) names of the ``__slots__`` of ``cls`` and its bases."""
    try:
        return _slot_names(cls)
    except TypeError:  # a class whose metaclass makes it unhashable
        return _slot_names.__wrapped__(cls)


@functools.lru_cache(maxsize=1024)
def _slot_names(cls: Any) -> tuple[str, ...]:
    names: list[str] = []
    for klass in getattr(cls, "__mro__", ()):
        slots = klass.__dict__.get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"
            if name not in names:
                names.append(name)
    return tuple(names)


def attributes_of(node: Any) -> list[tuple[str, Any]]:
    """An object's instance attributes: its ``__dict__``, then its filled ``__slots__``."""
    state = getattr(node, "__dict__", None)
    items = list(state.items()) if isinstance(state, dict) else []
    for name in slot_names(type(node)):
        try:
            items.append((name, object.__getattribute__(node, name)))
        except AttributeError:  # an empty slot
            pass
    return items


def get(container: Any, step: Step) -> Any:
    kind, key = step
    return getattr(container, key) if kind == "attr" else container[key]


def get_at(obj: Any, place: Place) -> Any:
    node = obj
    for step in place.steps:
        node = get(node, step)
    return node


# --------------------------------------------------------------------------------------------
# Paths given by the user
# --------------------------------------------------------------------------------------------


def resolve(obj: Any, path: str) -> tuple[list[Step], Any]:
    """The steps of ``"params/W1"`` into ``obj`` and the value found there.

    Raises:
        InputError: a step that does not exist, naming what does at that level.
    """
    if not isinstance(path, str) or not path or any(not part for part in path.split("/")):
        raise InputError(
            f"attributes holds {path!r}; expected a path into the object such as 'W', "
            f"'params/gamma' or 'layers/0/W' (attribute names, dict keys and indices joined by /)."
        )
    steps: list[Step] = []
    node = obj
    for part in path.split("/"):
        step = _step(node, part, steps, obj)
        node = get(node, step)
        steps.append(step)
    return steps, node


def _step(node: Any, part: str, steps: list[Step], obj: Any) -> Step:
    here = f"obj.{text(steps)}" if steps else f"the {type(obj).__name__} object"
    if isinstance(node, Mapping):
        for key in (part, _as_int(part)):
            if key is not None and key in node:
                return ("key", key)
        keys = sorted(map(repr, node.keys()))
        raise InputError(f"{here} has no key {part!r}; its keys are [{', '.join(keys)}].")
    if isinstance(node, (list, tuple)):
        index = tuple_index(node, part)
        if index is None or not -len(node) <= index < len(node):
            raise InputError(
                f"{here} is a {type(node).__name__} of length {len(node)}; {part!r} is not an "
                f"index into it (expected 0 to {len(node) - 1})."
            )
        return ("index", index % len(node))
    if isinstance(node, np.ndarray) or isinstance(node, ATOMS):
        raise InputError(
            f"{here} is {_kind(node)}, which holds no {part!r}; the path ends at {here}."
        )
    if _has_attribute(node, part):
        return ("attr", part)
    state = attributes_of(node)
    if not steps:
        holding = sorted(n for n, v in state if _holds_arrays(v))
        raise InputError(
            f"{type(obj).__name__} object has no attribute {part!r}; its attributes holding "
            f"float arrays are {holding}."
        )
    names = sorted(n for n, _ in state if not n.startswith("__"))
    raise InputError(f"{here} has no attribute {part!r}; its attributes are {names}.")


def _has_attribute(node: Any, name: str) -> bool:
    """Stored or computed (a property, ``__getattr__``), without raising on a broken getter."""
    if inspect.getattr_static(node, name, _MISSING) is not _MISSING:
        return True
    try:
        getattr(node, name)
    except Exception:  # noqa: BLE001 - a __getattr__ raising KeyError means "no such attribute"
        return False
    return True


def _holds_arrays(value: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(value) if isinstance(value, (dict, list, tuple)) else [value]
    return bool(leaves) and all(
        isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating) for v in leaves
    )


def tuple_index(node: Sequence[Any], key: Any) -> int | None:
    """The index that ``key`` names in a list or tuple: a number, or a namedtuple's field."""
    fields = getattr(node, "_fields", None)
    if isinstance(fields, tuple) and key in fields:
        return fields.index(key)
    return key if isinstance(key, int) else _as_int(key)


def _as_int(part: str) -> int | None:
    try:
        return int(part)
    except ValueError:
        return None


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------------------------
# Setting a value at a place
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Place:
    """Where an array lives: the steps from the object, and the containers along them."""

    steps: tuple[Step, ...]

    @property
    def path(self) -> str:
        return text(self.steps)

    def anchor(self, obj: Any) -> tuple[Any, Step, list[Any], list[Step]]:
        """The deepest mutable container on the way and the tuples below it (re-read now)."""
        chain = [obj]
        for step in self.steps[:-1]:
            chain.append(get(chain[-1], step))
        k = len(self.steps) - 1
        while k > 0 and isinstance(chain[k], tuple):
            k -= 1
        return chain[k], self.steps[k], chain[k + 1 :], list(self.steps[k + 1 :])

    def computed(self, obj: Any) -> tuple[str, bool] | None:
        """Why the value here is computed, not stored, and whether assigning it still works.

        A property without a setter cannot be assigned; an attribute that only ``__getattr__``
        provides can (the assignment shadows it). None for a stored value.
        """
        container, (kind, key), _, _ = self.anchor(obj)
        if kind != "attr":
            return None
        static = inspect.getattr_static(container, key, _MISSING)
        if static is _MISSING:
            return f"obj.{self.path} is provided by __getattr__", True
        if isinstance(static, property) and static.fset is None:
            return f"obj.{self.path} is a property without a setter", False
        return None


def set_at(obj: Any, place: Place, value: Any) -> tuple[Any, Step, Any]:
    """Puts ``value`` at ``place``; returns (container, step, old value there) to put back."""
    container, step, tuples, below = place.anchor(obj)
    for tup, (_, index) in reversed(list(zip(tuples, below))):
        items = list(tup)
        items[index] = value
        value = type(tup)(*items) if hasattr(tup, "_fields") else type(tup)(items)
    old = get(container, step)
    put(container, step, value, place.path)
    return container, step, old


def put(container: Any, step: Step, value: Any, path: str) -> None:
    kind, key = step
    try:
        if kind == "attr":
            setattr(container, key, value)
        else:
            container[key] = value
    except (AttributeError, TypeError) as err:
        raise InputError(
            f"jaxcheck cannot set obj.{path} ({type(err).__name__}: {err}); check_object puts the "
            f"perturbed parameters where the object keeps them. Name a path that can be assigned "
            f"(the attribute or dict item the property reads), or use jc.check with "
            f"cost(params) and grad(params)."
        ) from err


# --------------------------------------------------------------------------------------------
# Every array reachable from the object
# --------------------------------------------------------------------------------------------


def walk(obj: Any, seen: set[int] | None = None) -> list[tuple[Place, np.ndarray]]:
    """Every NumPy array reachable from ``obj``, once per place, nearest first.

    Follows attributes and ``__slots__`` of the user's objects, dict items, list and tuple items;
    each container and object is entered once (cycles), at most ``MAX_DEPTH`` steps deep.
    ``seen`` (ids of containers not to enter) collects the containers entered.
    """
    found: list[tuple[Place, np.ndarray]] = []
    seen = set() if seen is None else seen
    seen.add(id(obj))
    frontier: list[tuple[Any, tuple[Step, ...]]] = [(obj, ())]
    visited = 0
    while frontier and visited < MAX_NODES:
        following = []
        for node, steps in frontier:
            visited += 1
            for step, child in _children(node):
                here = (*steps, step)
                if isinstance(child, np.ndarray):
                    if not child.dtype.hasobject:
                        found.append((Place(here), child))
                    continue
                if isinstance(child, ATOMS) or len(here) > MAX_DEPTH:
                    continue
                if not isinstance(child, tuple):
                    if id(child) in seen:
                        continue
                    seen.add(id(child))
                following.append((child, here))
        frontier = following
    return found


def _children(node: Any) -> list[tuple[Step, Any]]:
    """The items of a container that can hold arrays (numbers and strings are skipped early:
    a list of a million floats costs one pass, not a million entries)."""
    if isinstance(node, dict):
        return [(("key", k), v) for k, v in list(node.items()) if not isinstance(v, ATOMS)]
    if isinstance(node, (list, tuple)):
        return [(("index", i), v) for i, v in enumerate(list(node)) if not isinstance(v, ATOMS)]
    if is_user_object(node):
        return [(("attr", n), v) for n, v in attributes_of(node)]
    return []


# --------------------------------------------------------------------------------------------
# Memory shared with a checked array
# --------------------------------------------------------------------------------------------


def _addresses(arr: np.ndarray) -> np.ndarray:
    """The byte address of every element of ``arr``, in C order."""
    start = arr.__array_interface__["data"][0]
    offsets = np.zeros(arr.shape, dtype=np.int64)
    for axis, (n, stride) in enumerate(zip(arr.shape, arr.strides)):
        shape = [1] * arr.ndim
        shape[axis] = n
        offsets = offsets + (np.arange(n, dtype=np.int64) * stride).reshape(shape)
    return (start + offsets).reshape(-1)


@dataclasses.dataclass(frozen=True)
class Tie:
    """An array elsewhere in the object whose memory is (partly) a checked parameter's.

    Its value is rebuilt from the checked values on every call: element ``i`` of the array is
    element ``positions[i]`` of checked leaf ``sources[i]`` (-1: not checked, kept as it was).
    Where the array is a strided view of one whole parameter (a transpose, slice or reshape),
    ``strides`` (in elements, with ``offset``) rebuild it in NumPy as a view of the perturbed
    value, so writes through either name are seen by both, as in the user's object.
    """

    place: Place
    leaf: int | None  # the checked leaf it is (the same array object), or None for a view
    shape: tuple[int, ...]
    sources: np.ndarray | None = None
    positions: np.ndarray | None = None
    constant: np.ndarray | None = None
    strides: tuple[int, ...] | None = None
    offset: int = 0
    writeable: bool = True

    def value(self, values: Sequence[Any]) -> Any:
        """The array to put at this place, given the checked leaves (NumPy or JAX)."""
        if self.leaf is not None:
            return values[self.leaf]
        assert self.sources is not None and self.positions is not None
        traced = any(isinstance(v, jax.Array) for v in values)
        if not traced and self.strides is not None:
            view = self._view(values[int(self.sources[0])])
            if view is not None:
                return view
        xp = jnp if traced else np
        out = None if self.constant is None else xp.asarray(self.constant)
        for k in np.unique(self.sources[self.sources >= 0]):
            mine = self.sources == k
            taken = xp.take(xp.reshape(values[int(k)], (-1,)), np.where(mine, self.positions, 0))
            out = taken if out is None else xp.where(mine, taken, out)
        return xp.reshape(out, self.shape)

    def _view(self, base: Any) -> np.ndarray | None:
        if not isinstance(base, np.ndarray) or not base.flags.c_contiguous:
            return None
        assert self.strides is not None
        flat = base.reshape(-1)[self.offset :]
        strides = tuple(s * base.itemsize for s in self.strides)
        return np.lib.stride_tricks.as_strided(
            flat, self.shape, strides, writeable=self.writeable and base.flags.writeable
        )


def _affine(positions: np.ndarray, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int] | None:
    """(strides, offset) in elements when ``positions`` (C order over ``shape``) is affine."""
    if positions.size == 0:
        return None
    grid = positions.reshape(shape)
    offset = int(grid.flat[0])
    strides = []
    for axis, n in enumerate(shape):
        step = [0] * len(shape)
        if n > 1:
            step[axis] = 1
        strides.append(int(grid[tuple(step)]) - offset if n > 1 else 0)
    predicted = np.full(shape, offset, dtype=np.int64)
    for axis, (n, stride) in enumerate(zip(shape, strides)):
        along = [1] * len(shape)
        along[axis] = n
        predicted = predicted + (np.arange(n, dtype=np.int64) * stride).reshape(along)
    if not np.array_equal(predicted, grid):
        return None
    return tuple(strides), offset


def ties(
    checked: Sequence[tuple[str, np.ndarray]], everywhere: Sequence[tuple[Place, np.ndarray]]
) -> list[Tie]:
    """The places outside the checked ones whose arrays share memory with a checked array.

    Args:
        checked: (path, value) of each checked leaf, in leaf order (values that are not NumPy
            arrays, such as Python floats, share no memory).
        everywhere: every (place, array) reachable from the object, checked places included.

    Raises:
        InputError: two checked leaves share memory, or an array overlaps a checked one in a
            way that cannot be mapped element by element (another dtype, a byte offset).
    """
    arrays = [(k, a) for k, (_, a) in enumerate(checked) if isinstance(a, np.ndarray)]
    ids = {id(arr): k for k, arr in arrays}
    _distinct([checked[k] for k, _ in arrays])
    found = []
    for place, arr in everywhere:
        k = ids.get(id(arr))
        if k is not None:
            found.append(Tie(place, k, arr.shape))
            continue
        touching = [(j, c) for j, c in arrays if np.may_share_memory(arr, c)]
        if touching:
            tie = _view_tie(place, arr, touching, checked)
            if tie is not None:
                found.append(tie)
    return found


def _distinct(checked: Sequence[tuple[str, np.ndarray]]) -> None:
    for i, (path_a, a) in enumerate(checked):
        for path_b, b in checked[i + 1 :]:
            if a is b or (np.may_share_memory(a, b) and _overlap(a, b)[0].any()):
                raise InputError(
                    f"the checked parameters {path_a!r} and {path_b!r} share memory (the same "
                    f"array, or one a view of the other): they are one parameter, not two. List "
                    f"only one of them in attributes=; jaxcheck perturbs its other uses with it "
                    f"and checks the sum of the gradients over all of them."
                )


def _overlap(arr: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Which elements of ``arr`` overlap an element of ``c``, which start exactly on one (and
    its C-order position in ``c``), and whether ``c`` repeats its own memory."""
    mine, theirs = _addresses(arr), _addresses(c)
    order = np.argsort(theirs, kind="stable")
    starts = theirs[order]
    # The last element of c starting before the end of each element of arr.
    nearest = np.maximum(np.searchsorted(starts, mine + arr.itemsize) - 1, -1)
    near = starts[np.maximum(nearest, 0)]
    overlaps = (nearest >= 0) & (near + c.itemsize > mine)
    exact = overlaps & (near == mine)
    repeats = bool(np.any(np.diff(starts) < c.itemsize))
    return overlaps, exact, order[np.maximum(nearest, 0)], repeats


def _view_tie(
    place: Place,
    arr: np.ndarray,
    touching: list[tuple[int, np.ndarray]],
    checked: Sequence[tuple[str, np.ndarray]],
) -> Tie | None:
    sources = np.full(arr.size, -1, dtype=np.int64)
    positions = np.zeros(arr.size, dtype=np.int64)
    for j, c in touching:
        overlaps, exact, position, repeats = _overlap(arr, c)
        if not overlaps.any():
            continue
        if arr.dtype != c.dtype or not np.array_equal(exact, overlaps):
            raise InputError(
                f"obj.{place.path} ({_kind(arr)}) shares memory with the checked parameter "
                f"{checked[j][0]!r} ({_kind(c)}) but its elements do not line up with the "
                f"parameter's (a view with another dtype or a byte offset), so jaxcheck cannot "
                f"perturb both as one parameter. Make obj.{place.path} a copy (np.array(...)) "
                f"or derive it from {checked[j][0]!r} inside the loss."
            )
        if repeats:
            raise InputError(
                f"the checked parameter {checked[j][0]!r} repeats its own memory (a broadcast "
                f"or strided view) and obj.{place.path} shares it, so the two cannot be "
                f"perturbed as one parameter; check a plain array (np.array(...))."
            )
        sources[exact] = j
        positions[exact] = position[exact]
    if not (sources >= 0).any():
        return None
    if not (sources >= 0).all():
        constant = np.array(arr, copy=True).reshape(-1)
        return Tie(place, None, arr.shape, sources, positions, constant)
    affine = _affine(positions, arr.shape) if np.unique(sources).size == 1 else None
    if affine is None:
        return Tie(place, None, arr.shape, sources, positions)
    repeats = np.unique(positions).size != positions.size
    return Tie(
        place,
        None,
        arr.shape,
        sources,
        positions,
        strides=affine[0],
        offset=affine[1],
        writeable=bool(arr.flags.writeable) and not repeats,
    )


def held_outside(
    functions: Sequence[tuple[str, Any]],
    checked: Sequence[tuple[str, Any]],
    inside: set[int],
) -> None:
    """Refuses a parameter that the user's functions also hold outside the object.

    ``loss = lambda m: f(m, W_dec)`` with ``W_dec = m.W_enc.T`` made beforehand: jaxcheck
    perturbs the parameter where the object holds it, so that closure would read the old value.
    Containers of the object itself (``inside``) are updated in place and are not counted.

    Raises:
        InputError: naming the function, the variable and the parameter.
    """
    arrays = [(path, a) for path, a in checked if isinstance(a, np.ndarray)]
    for function, fn in functions:
        for label, value in _captured(fn):
            if id(value) in inside or isinstance(value, ATOMS):
                continue
            if isinstance(value, np.ndarray):
                found = [(Place(()), value)]
            else:
                found = walk(value, set(inside))
            for place, arr in found:
                for path, c in arrays:
                    if arr is c or (np.may_share_memory(arr, c) and _overlap(arr, c)[0].any()):
                        where = label + (f"/{place.path}" if place.steps else "")
                        raise InputError(
                            f"{function} holds {where!r}, which shares memory with the checked "
                            f"parameter {path!r}, outside the object: jaxcheck perturbs the "
                            f"parameter where the object keeps it, so {function} would read the "
                            f"old values there. Read it through the object instead (e.g. "
                            f"lambda m: ... m.{path.replace('/', '.')} ...)."
                        )


def _captured(fn: Any) -> list[tuple[str, Any]]:
    """What a function carries with it: closure variables, defaults, a bound ``self``."""
    out: list[tuple[str, Any]] = []
    if isinstance(fn, functools.partial):
        out += [(f"argument {i}", a) for i, a in enumerate(fn.args)]
        out += [(f"argument {k}", v) for k, v in fn.keywords.items()]
        fn = fn.func
    if isinstance(fn, types.MethodType):
        out.append(("self", fn.__self__))
        fn = fn.__func__
    if isinstance(fn, types.FunctionType):
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                out.append((name, cell.cell_contents))
            except ValueError:  # an empty cell
                pass
        names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
        defaults = fn.__defaults__ or ()
        out += list(zip(names[len(names) - len(defaults) :], defaults))
        out += list((fn.__kwdefaults__ or {}).items())
    return out
