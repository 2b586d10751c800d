"""Leaves the user's objects as a check found them: bindings, ``__slots__``, and array contents.

:func:`left_as_found` snapshots what is reachable from the user's objects and puts it back on
exit, even on error. Arrays over ``LARGE`` bytes are fingerprinted instead of copied.
"""

from __future__ import annotations

import types
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from jaxcheck._engine.system.graph import ATOMS, is_user_object, slot_names

__all__ = ["LARGE", "left_as_found"]

# Arrays larger than this are not copied: a change to them is detected (and warned about),
# not undone. Parameters are copied by the check itself, whatever their size.
LARGE = 16 * 2**20

_EMPTY = object()


def _fingerprint(arr: np.ndarray) -> int:
    """A CRC of an array's bytes, read in place (no copy of the whole array)."""
    if arr.flags.c_contiguous:
        return zlib.crc32(arr.data.cast("B"))
    if arr.flags.f_contiguous:
        return zlib.crc32(arr.T.data.cast("B"))
    crc = 0
    for row in arr:
        crc = zlib.crc32(np.ascontiguousarray(row).data.cast("B"), crc)
    return crc


class _Snapshot:
    """The state reachable from the user's objects: attribute bindings, container items, arrays.

    Restoring puts every binding back (the same objects, not copies), refills or empties
    ``__slots__``, and writes back the contents of arrays that were changed in place.
    """

    def __init__(self, roots: Sequence[Any]) -> None:
        self.objects: list[tuple[Any, dict[str, Any]]] = []
        self.slots: list[tuple[Any, dict[str, Any]]] = []
        self.dicts: list[tuple[dict, dict]] = []
        self.lists: list[tuple[list, list]] = []
        self.arrays: list[tuple[np.ndarray, np.ndarray]] = []
        self.large: list[tuple[np.ndarray, int, str]] = []
        seen: set[int] = set()
        for root in roots:
            self._walk(root, seen)

    def _walk(self, value: Any, seen: set[int]) -> None:
        stack = [(value, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, np.ndarray):
                self._array(node, path)
            elif isinstance(node, dict):
                self.dicts.append((node, dict(node)))
                stack.extend((v, f"{path}/{k}") for k, v in node.items() if not _atom(v))
            elif isinstance(node, list):
                self.lists.append((node, list(node)))
                stack.extend((v, f"{path}/{i}") for i, v in enumerate(node) if not _atom(v))
            elif isinstance(node, tuple):
                stack.extend((v, f"{path}/{i}") for i, v in enumerate(node) if not _atom(v))
            elif isinstance(node, types.MethodType):
                stack.append((node.__self__, path))
            elif is_user_object(node):
                self._object(node, path, stack)

    def _array(self, node: np.ndarray, path: str) -> None:
        if not node.flags.writeable or node.dtype.hasobject:
            return
        if node.nbytes > LARGE:
            self.large.append((node, _fingerprint(node), path.lstrip("/")))
        else:
            self.arrays.append((node, node.copy()))

    def _object(self, node: Any, path: str, stack: list[tuple[Any, str]]) -> None:
        state = getattr(node, "__dict__", None)
        if isinstance(state, dict):
            self.objects.append((node, dict(state)))
            stack.extend((v, f"{path}/{k}") for k, v in state.items())
        slots: dict[str, Any] = {}
        for name in slot_names(type(node)):
            try:
                slots[name] = object.__getattribute__(node, name)
            except AttributeError:
                slots[name] = _EMPTY
        if slots:
            self.slots.append((node, slots))
            stack.extend((v, f"{path}/{k}") for k, v in slots.items() if v is not _EMPTY)

    def restore(self) -> None:
        for obj, state in self.objects:
            current = vars(obj)
            if current.keys() != state.keys() or any(current[k] is not v for k, v in state.items()):
                current.clear()
                current.update(state)
        for obj, slots in self.slots:
            for name, value in slots.items():
                _restore_slot(obj, name, value)
        for d, items in self.dicts:
            if d.keys() != items.keys() or any(d[k] is not v for k, v in items.items()):
                d.clear()
                d.update(items)
        for lst, saved_items in self.lists:
            if len(lst) != len(saved_items) or any(a is not b for a, b in zip(lst, saved_items)):
                lst[:] = saved_items
        for arr, saved in self.arrays:
            if arr.shape == saved.shape and not _same_bytes(arr, saved):
                np.copyto(arr, saved)
        for arr, crc, path in self.large:
            if _fingerprint(arr) != crc:
                warnings.warn(
                    f"the user's code changed an array of shape {arr.shape} ({arr.nbytes:,} "
                    f"bytes, at {path or 'a root'}) in place during the check; jaxcheck does "
                    f"not copy arrays over {LARGE:,} bytes, so it is left as the code left it.",
                    UserWarning,
                    stacklevel=4,
                )


def _atom(value: Any) -> bool:
    return isinstance(value, ATOMS)


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.tobytes() == b.tobytes()  # bitwise: NaN payloads and -0.0 count


def _restore_slot(obj: Any, name: str, value: Any) -> None:
    try:
        current = object.__getattribute__(obj, name)
    except AttributeError:
        current = _EMPTY
    if current is value:
        return
    if value is _EMPTY:
        object.__delattr__(obj, name)
    else:
        object.__setattr__(obj, name, value)


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
