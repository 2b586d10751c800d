"""One answer for every door given an option it does not know: its name, and the nearest option.

Python's own ``TypeError`` (``check() got an unexpected keyword argument``) names the function
that happened to receive the keyword, which for a door that passes its options on
(``check_layer`` → ``check``) is not the one the user called. :func:`known_options` checks the
keywords where the user's call arrives.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from jaxcheck.errors import InputError

__all__ = ["known_options", "reject_unknown"]

_F = TypeVar("_F", bound=Callable[..., Any])


def reject_unknown(door: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Raises :class:`InputError` for the first of ``given`` that ``door`` does not take.

    Args:
        door: the function the user called, as they wrote it (``"check_layer"``).
        given: the keyword names of the call.
        known: every keyword the door takes (its own and those it passes on).
    """
    known = sorted(set(known))
    for name in given:
        if name in known:
            continue
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        guess = f"; did you mean {near[0]!r}?" if near else "."
        raise InputError(
            f"{door}() got an unknown option {name!r}{guess}",
            hint=f"{door}() takes the options {', '.join(known)}",
        )


def _keywords(fn: Callable[..., Any]) -> set[str]:
    """The keywords ``fn`` takes by name (those it passes on included, when it says)."""
    taken = set(getattr(fn, "__jaxcheck_options__", ()))
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            taken.add(p.name)
    return taken


def known_options(door: str, *passes_to: Callable[..., Any]) -> Callable[[_F], _F]:
    """Decorates a door: a keyword it does not take (nor those in ``passes_to``) is refused.

    Args:
        door: the door's name in messages.
        *passes_to: the functions the door hands its ``**options`` to (``check``).
    """

    def wrap(fn: _F) -> _F:
        known = _keywords(fn)
        for other in passes_to:
            known |= _keywords(other)

        @functools.wraps(fn)
        def door_fn(*args: Any, **kwargs: Any) -> Any:
            reject_unknown(door, kwargs, known)
            return fn(*args, **kwargs)

        door_fn.__jaxcheck_options__ = frozenset(known)  # type: ignore[attr-defined]
        return door_fn  # type: ignore[return-value]

    return wrap
