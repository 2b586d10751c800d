"""The exceptions jaxcheck raises.

Every error derives from :class:`JaxcheckError`, so ``except jc.JaxcheckError`` catches them all.
Each carries its message and, where there is one, a ``hint``: what to do next, as its own field
(the command line prints it with the flag spelling instead of the keyword).
"""

from __future__ import annotations

import linecache
import traceback
import types

__all__ = [
    "GradientError",
    "InputError",
    "JaxcheckError",
    "MissingDependencyError",
    "NondeterminismError",
    "PortError",
    "PortWarning",
    "ReimplementationError",
    "UserCodeError",
    "user_code_error",
]


class JaxcheckError(Exception):
    """Base class of every error raised by jaxcheck.

    Attributes:
        hint: what to do next, when the message has advice of its own (else None).
    """

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class InputError(JaxcheckError, ValueError):
    """Bad input: non-float or non-finite params, a malformed gradient or cost, a bad option.

    The message names the offending leaf path or option, what was expected and what was received.
    """


class UserCodeError(JaxcheckError):
    """The user's own function (cost, grad, jax_cost, forward, backward) raised an exception.

    The message names the function, the file and line in the user's code where it was raised,
    and the original exception, which is chained as ``__cause__``.

    Attributes:
        function: which of the user's functions raised (``"grad"``).
        filename, lineno: where in the user's code (None when no frame of theirs was found).
    """

    def __init__(
        self,
        message: str,
        *,
        function: str = "",
        filename: str | None = None,
        lineno: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.function = function
        self.filename = filename
        self.lineno = lineno


class NondeterminismError(JaxcheckError):
    """The NumPy cost (or gradient) gave different values for the same parameters.

    Usually randomness inside the forward pass, such as dropout drawing a fresh mask on every
    call. Freeze the randomness (draw the masks once, outside the cost) and check again.
    """


class ReimplementationError(JaxcheckError):
    """The JAX twin of the cost does not compute the same value as the NumPy cost at θ.

    When the twin and the system under test disagree on the cost itself, no verdict about the
    gradient can be trusted, so the check stops instead of judging.
    """


class PortError(JaxcheckError):
    """A NumPy function could not be re-executed on ``jax.numpy``.

    The message names the function and the line; pass ``jax_cost=`` to ``jc.check`` instead.
    """


class MissingDependencyError(JaxcheckError, ImportError):
    """An optional dependency (matplotlib for plots, torch for ``jaxcheck.torch``) is missing.

    It is an ``ImportError`` too, so ``except ImportError`` catches it.
    """


class GradientError(JaxcheckError, AssertionError):
    """The hand-written gradient is wrong; the message is the full report.

    It is an ``AssertionError``, so pytest shows it as a test failure.

    Attributes:
        report: the :class:`jaxcheck.Report` that failed.
    """

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


def user_code_error(err: BaseException, function: str, *, hint: str | None = None) -> UserCodeError:
    """A :class:`UserCodeError` for ``err`` raised inside the user's ``function``.

    Points at the innermost frame of the traceback outside jaxcheck, NumPy and JAX: the line of
    the user's own code that raised (or called the library that raised).
    """
    frame = _user_frame(err.__traceback__)
    text = str(err).strip() or type(err).__name__
    if frame is None:
        where, filename, lineno = "", None, None
    else:
        filename, lineno, name = frame
        source = linecache.getline(filename, lineno).strip()
        where = f'\n  File "{filename}", line {lineno}, in {name}' + (
            f"\n    {source}" if source else ""
        )
    message = (
        f"{function} raised {type(err).__name__}: {text}{where}\n"
        f"The error is in {function} itself, not in its input; the original traceback is chained "
        f"above."
    )
    if hint:
        message += f" {hint}"
    return UserCodeError(message, function=function, filename=filename, lineno=lineno, hint=hint)


_LIBRARY_PARTS = ("/jaxcheck/", "/jax/", "/jaxlib/", "/numpy/", "/site-packages/", "/lib/python")


def _user_frame(tb: types.TracebackType | None) -> tuple[str, int, str] | None:
    found = None
    for frame, lineno in traceback.walk_tb(tb):
        filename = frame.f_code.co_filename.replace("\\", "/")
        if any(part in filename for part in _LIBRARY_PARTS) and "/tests/" not in filename:
            continue
        found = (frame.f_code.co_filename, lineno, frame.f_code.co_name)
    return found


class PortWarning(UserWarning):
    """The port of a NumPy function runs, but in a way that deserves attention.

    For example a loop whose body runs so many times while JAX traces it that tracing and
    compiling take long: check on a smaller input, or with ``method="sample"``.
    """
