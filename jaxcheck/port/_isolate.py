"""Leaves the user's world as the ported run found it.

NumPy course code keeps intermediates in objects and module-level containers (``self.cache =
(x, w)``, ``CACHE["A1"] = A1``). A ported run traced by JAX would leave tracers there, and the
user's own NumPy backward would then fail. A :class:`Session` snapshots the containers the ported
code can reach (the module globals, closures and defaults of the functions it runs, the ``self``
of the methods it calls, a few levels deep) and puts every changed slot back afterwards; it also
restores NumPy's and Python's global random state, and forgets the run's ``global`` assignments.
"""

from __future__ import annotations

import functools
import random
import threading
import types
from typing import Any

import jax
import numpy as np

from jaxcheck.port._user import is_user_class

# How deep below a root containers are snapshotted, and how many at most in one run.
MAX_DEPTH = 3
MAX_CONTAINERS = 20_000
# Containers larger than this (a data set held as a list) are not snapshotted.
MAX_SIZE = 200_000
# A loop body that runs this many times while JAX traces gets a warning.
LOOP_WARNING = 10_000

_DICT, _LIST, _OBJECT = range(3)
_ATOMS = frozenset({int, float, bool, complex, str, bytes, type(None), np.ndarray, range, slice})
_SKIP = (types.ModuleType, type, types.FunctionType, types.MethodType, jax.Array, np.generic)

_local = threading.local()


def current() -> Session | None:
    """The session of the ported run in progress on this thread, if any."""
    return getattr(_local, "session", None)


class Session:
    """One run of a ported function: what to put back when it ends, and its loop counts."""

    def __init__(self, traced: bool) -> None:
        self.traced = traced
        self.ticks: dict[int, int] = {}
        # Views NumPy would make (`top = h[0]`) of arrays JAX traces: id(view) -> (view, base),
        # and the lines that write into one (in NumPy that changes the base too; here it does
        # not), for the message when the port's cost differs from the NumPy cost.
        self.views: dict[int, tuple[Any, Any]] = {}
        self.view_writes: list[str] = []
        self._seen: set[int] = set()
        self._records: list[tuple[Any, int, Any]] = []
        self._overlays: dict[int, dict[str, Any]] = {}
        self._numpy_random = np.random.get_state()
        self._python_random = random.getstate()

    def __enter__(self) -> Session:
        _local.session = self
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _local.session = None
        self.restore()

    # ---- what the run can reach --------------------------------------------------------------

    def add_function(self, fn: types.FunctionType, overlay: dict[str, Any] | None = None) -> None:
        """Snapshots what a function about to run can reach: globals, closure, defaults."""
        if overlay is not None:
            self._overlays[id(overlay)] = overlay
        namespace = fn.__globals__
        if id(namespace) not in self._seen:
            self._seen.add(id(namespace))
            # The module dict itself is safe (the port's `global` writes go to its overlay);
            # the containers in it are not.
            for value in list(namespace.values()):
                self._record(value, 1)
        for cell in fn.__closure__ or ():
            try:
                self._record(cell.cell_contents, 0)
            except ValueError:  # an empty cell
                pass
        for value in fn.__defaults__ or ():
            self._record(value, 0)
        for value in (fn.__kwdefaults__ or {}).values():
            self._record(value, 0)

    def add_object(self, obj: Any) -> None:
        """Snapshots an object whose method is about to run (its ``self``)."""
        if id(obj) not in self._seen:
            self._record(obj, 0)

    def _record(self, obj: Any, depth: int) -> None:
        kind = type(obj)
        snapshot: dict[Any, Any] | list[Any]
        if kind in _ATOMS or depth > MAX_DEPTH or isinstance(obj, _SKIP):
            return
        if id(obj) in self._seen or len(self._records) >= MAX_CONTAINERS:
            return
        if kind is tuple:
            self._seen.add(id(obj))
            children: Any = obj if len(obj) <= MAX_SIZE else ()
        elif isinstance(obj, dict):
            self._seen.add(id(obj))
            if len(obj) > MAX_SIZE:
                return
            snapshot = dict(obj)
            self._records.append((obj, _DICT, snapshot))
            children = snapshot.values()
        elif isinstance(obj, list):
            self._seen.add(id(obj))
            if len(obj) > MAX_SIZE:
                return
            snapshot = list(obj)
            self._records.append((obj, _LIST, snapshot))
            children = snapshot
        elif _is_user_object(obj):
            self._seen.add(id(obj))
            snapshot = dict(obj.__dict__)
            self._records.append((obj, _OBJECT, snapshot))
            children = snapshot.values()
        else:
            return
        for child in list(children):
            self._record(child, depth + 1)

    # ---- putting it back ---------------------------------------------------------------------

    def restore(self) -> None:
        """Puts back every snapshotted slot the run changed, and the global random state."""
        for obj, kind, snapshot in reversed(self._records):
            try:
                if kind == _LIST:
                    if len(obj) != len(snapshot) or any(a is not b for a, b in zip(obj, snapshot)):
                        obj[:] = snapshot
                else:
                    _restore_dict(obj.__dict__ if kind == _OBJECT else obj, snapshot)
            except Exception:  # noqa: BLE001, S112 - an exotic container; leave it as it is
                continue
        for overlay in self._overlays.values():
            reserved = overlay.reserved  # type: ignore[attr-defined]
            for name in [k for k in overlay if k not in reserved]:
                del overlay[name]
        np.random.set_state(self._numpy_random)
        random.setstate(self._python_random)


def _restore_dict(current: dict[Any, Any], snapshot: dict[Any, Any]) -> None:
    for key in [k for k in current if k not in snapshot]:
        del current[key]
    for key, value in snapshot.items():
        if current.get(key, _restore_dict) is not value:
            current[key] = value


@functools.lru_cache(maxsize=1024)
def _has_instance_dict(cls: type) -> bool:
    return "__dict__" in dir(cls) and not issubclass(cls, _SKIP) and is_user_class(cls)


def _is_user_object(obj: Any) -> bool:
    try:
        cls: type = type(obj)
        return _has_instance_dict(cls) and isinstance(getattr(obj, "__dict__", None), dict)
    except TypeError:  # an unhashable class
        return False
