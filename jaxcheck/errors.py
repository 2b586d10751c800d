"""The exceptions jaxcheck raises.

Every error derives from :class:`JaxcheckError`, so ``except jc.JaxcheckError`` catches them all.
"""

from __future__ import annotations


class JaxcheckError(Exception):
    """Base class of every error raised by jaxcheck."""


class InputError(JaxcheckError, ValueError):
    """Bad input: non-float or non-finite params, a malformed gradient or cost, empty params.

    The message names the offending leaf path, what was expected and what was received.
    """


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


class GradientError(JaxcheckError, AssertionError):
    """The hand-written gradient is wrong; the message is the full report.

    It is an ``AssertionError``, so pytest shows it as a test failure.

    Attributes:
        report: the :class:`jaxcheck.Report` that failed.
    """

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report
