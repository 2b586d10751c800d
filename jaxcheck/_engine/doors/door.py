"""What every public door does on entry, in one decorator: :func:`door`.

- A keyword the door does not take is refused by name, with the nearest option
  (:mod:`jaxcheck._engine.keywords`);
- JAX's numpy settings that change what jaxcheck's own code computes or allows (rank
  promotion, dtype promotion, NaN and inf checks) are scoped to the defaults for the check,
  so that ``jax.config.update("jax_numpy_rank_promotion", "raise")`` in the user's program
  neither breaks the check nor gets blamed on the user's twin; the global config is left as
  found;
- with several processes, the check runs in all of them or fails in all of them
  (:func:`jaxcheck._engine.evaluate.meetings.together`).

And what every ``assert_`` door does on exit: :func:`passing`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import jax

from jaxcheck._engine.evaluate.meetings import together
from jaxcheck._engine.keywords import known_options
from jaxcheck.errors import GradientError

if TYPE_CHECKING:
    from jaxcheck.report import Report

__all__ = ["door", "own_config", "passing"]

_F = TypeVar("_F", bound=Callable[..., Any])
_R = TypeVar("_R", bound="Report")


@contextmanager
def own_config() -> Iterator[None]:
    """JAX's numpy settings at their defaults for jaxcheck's work, restored on exit."""
    with ExitStack() as stack:
        stack.enter_context(jax.numpy_rank_promotion("allow"))
        stack.enter_context(jax.numpy_dtype_promotion("standard"))
        stack.enter_context(jax.debug_nans(False))
        stack.enter_context(jax.debug_infs(False))
        yield


def door(name: str, *passes_to: Callable[..., Any]) -> Callable[[_F], _F]:
    """Decorates a public door (``check``, ``check_layer``, ``check_hvp``, ...).

    Args:
        name: the door's name as the user calls it, for messages (``"check_layer"``).
        *passes_to: the functions the door hands its ``**options`` on to (their keywords are
            the door's too).
    """

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def scoped(*args: Any, **kwargs: Any) -> Any:
            with own_config():
                return fn(*args, **kwargs)

        return together(name)(known_options(name, *passes_to)(scoped))  # type: ignore[return-value]

    return wrap


def passing(report: _R) -> _R:
    """The report of an ``assert_`` door: returned where it is ok, raised otherwise.

    Raises:
        GradientError: an ``AssertionError`` whose message is the report's text; also for an
            inconclusive check, which verifies nothing.
    """
    if not report.ok:
        raise GradientError(str(report), report)
    return report
