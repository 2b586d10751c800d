"""Meetings of the processes of one check, through ``jax.distributed``'s key-value store.

Every public door runs under :func:`together`: with several processes each call is one numbered
check, and processes meet (:func:`meet`) at fixed points before every collective. At a meeting
each process publishes its status and a payload (digests of its check) and reads everyone's;
a process whose door raised before a meeting publishes the error instead, so the others raise
it too within a moment rather than wait in a collective until JAX's coordination service
aborts them. With one process (no ``jax.distributed``) nothing here does anything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import jax
import numpy as np

from jaxcheck import errors as _errors
from jaxcheck.errors import JaxcheckError

__all__ = ["WAIT_SECONDS", "client", "meet", "noted", "shared", "together", "value_text"]

#: Seconds a process waits for the others at a meeting point (``$JAXCHECK_PROCESS_TIMEOUT``).
WAIT_SECONDS = 600.0

_F = TypeVar("_F", bound=Callable[..., Any])
_OWN_OPTIONS = ("progress", "cache", "devices")  # may differ: they change no number
_local = threading.local()
_counter = {"checks": 0, "loose": 0}


class _Check:
    """One check run by every process: where its meetings are kept in the key-value store."""

    def __init__(self, index: str, door: str) -> None:
        self.index, self.door, self.meetings = index, door, 0
        self.options: dict[str, str] = {}


def noted() -> tuple[str, dict[str, str]]:
    """The door of the check running now and the keyword options noted for it."""
    stack = _stack()
    return (stack[0].door, dict(stack[0].options)) if stack else ("check", {})


def client() -> Any:
    """``jax.distributed``'s key-value client, or None without one (a single process)."""
    try:
        from jax._src.distributed import global_state
    except ImportError:  # pragma: no cover - another jax layout
        return None
    return getattr(global_state, "client", None)


def _stack() -> list[_Check]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def value_text(value: Any) -> str:
    """A short text that is the same for the same option value in every process."""
    if isinstance(value, (np.ndarray, jax.Array, np.generic)):
        arr = np.ascontiguousarray(np.asarray(value))
        head = f"{arr.shape}{arr.dtype.str}".encode()
        return hashlib.sha256(head + arr.tobytes()).hexdigest()[:32]
    text = repr(value)
    if " at 0x" in text or callable(value):
        return type(value).__name__  # a function or object: no address-free identity
    return text if len(text) <= 200 else hashlib.sha256(text.encode()).hexdigest()[:32]


def together(door: str) -> Callable[[_F], _F]:
    """Decorates a door so that, across processes, its check runs together or fails together.

    With ``jax.distributed`` running, every call is one numbered check; its keyword options are
    noted (compared at :func:`agree`), and an exception that ends the check on this process
    before the others met it is published, so that the others raise it too instead of waiting
    in a collective. With one process the door runs as it is.
    """

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def door_fn(*args: Any, **kwargs: Any) -> Any:
            if client() is None:
                return fn(*args, **kwargs)
            with _one_check(door, kwargs):
                return fn(*args, **kwargs)

        return door_fn  # type: ignore[return-value]

    return wrap


@contextmanager
def _one_check(door: str, kwargs: Mapping[str, Any]) -> Iterator[None]:
    stack = _stack()
    outer = not stack
    if outer:
        _counter["checks"] += 1
        stack.append(_Check(str(_counter["checks"]), door))
    else:
        stack.append(stack[0])
    check = stack[0]
    for name, value in kwargs.items():
        if name not in _OWN_OPTIONS:
            check.options[f"{door}(): {name}"] = value_text(value)
    try:
        yield
    except BaseException as err:
        if outer and not getattr(err, "_jaxcheck_shared", False):
            _publish_error(check, err)
        raise
    finally:
        stack.pop()


def _key(check: _Check, meeting: int) -> str:
    return f"jaxcheck/check{check.index}/meeting{meeting}/"


def _publish_error(check: _Check, err: BaseException) -> None:
    """Tells the other processes, waiting at this check's next meeting, why this one stopped."""
    store = client()
    text = json.dumps({"ok": False, "error": type(err).__name__, "message": str(err)[:4000]})
    try:
        store.key_value_set(_key(check, check.meetings) + str(jax.process_index()), text)
    except Exception:  # noqa: BLE001 - the coordinator is gone: nobody is left to tell
        pass


def _wait_seconds() -> float:
    try:
        return float(os.environ.get("JAXCHECK_PROCESS_TIMEOUT", WAIT_SECONDS))
    except ValueError:
        return WAIT_SECONDS


def shared(err: JaxcheckError) -> JaxcheckError:
    """Marks ``err`` as raised by every process alike (no process publishes it again)."""
    err._jaxcheck_shared = True  # type: ignore[attr-defined]
    return err


def meet(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Publishes this process's status and ``payload``; returns every process's, in order.

    Raises the error another process published (as the same jaxcheck error class), or a
    :class:`JaxcheckError` when some process does not arrive within :data:`WAIT_SECONDS`.
    """
    store = client()
    stack = _stack()
    if stack:
        check = stack[0]
    else:  # a door that does not meet: each meeting is a check of its own
        _counter["loose"] += 1
        check = _Check(f"-{_counter['loose']}", "check")
    key = _key(check, check.meetings)
    check.meetings += 1
    me, count = jax.process_index(), jax.process_count()
    store.key_value_set(key + str(me), json.dumps({"ok": True, **payload}))
    wait = _wait_seconds()
    deadline = time.monotonic() + wait
    while True:
        seen = {}
        for name, text in store.key_value_dir_get(key):
            entry = json.loads(text)
            process = int(name.rsplit("/", 1)[-1])
            if not entry["ok"]:
                raise shared(_their_error(check, process, count, entry))
            seen[process] = entry
        if len(seen) == count:
            return [seen[p] for p in range(count)]
        if time.monotonic() > deadline:
            missing = sorted(set(range(count)) - set(seen))
            raise shared(
                JaxcheckError(
                    f"processes {missing} did not reach {check.door}() within {wait:g} s of "
                    f"process {me}; every process must run the same checks in the same order.",
                    hint="set JAXCHECK_PROCESS_TIMEOUT (seconds) if a process is merely slow",
                )
            )
        time.sleep(0.02)


def _their_error(check: _Check, process: int, count: int, entry: dict) -> JaxcheckError:
    name, message = entry["error"], entry["message"]
    text = (
        f"process {process} of {count} stopped {check.door}() (so every process stops: the "
        f"check runs in all of them or in none); there it raised {name}: {message}"
    )
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, JaxcheckError):
        try:
            return cls(text)
        except TypeError:  # an error class that needs more than its message
            pass
    return JaxcheckError(text, hint=f"the traceback is in process {process}'s output")
