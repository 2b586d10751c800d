"""A pytest plugin: the ``gradcheck`` fixture checks a hand-written gradient inside a test.

Installed with jaxcheck (entry point ``pytest11``); jaxcheck itself is imported on first use only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .report import Report

__all__ = ["gradcheck"]


@pytest.fixture
def gradcheck() -> Callable[..., Report]:
    """A function ``gradcheck(cost, grad, params, **options) -> Report`` that fails the test.

    It runs :func:`jaxcheck.check` with the same arguments and options, and raises
    :class:`jaxcheck.GradientError` (an ``AssertionError``, so pytest reports a failure) whose
    message is the report's table when the backprop is wrong; otherwise it returns the
    :class:`~jaxcheck.Report`. Errors in the inputs (:class:`jaxcheck.InputError` and the other
    :class:`jaxcheck.JaxcheckError`) propagate as they are.

    Examples:
        In a test module (no import or ``conftest.py`` needed once jaxcheck is installed)::

            import numpy as np
            import pytest

            def test_cubic(gradcheck):
                params = {"w": np.array([1.0, 2.0])}
                cost = lambda p: float(np.sum(p["w"] ** 3))
                grad = lambda p: {"w": 3 * p["w"] ** 2}
                report = gradcheck(cost, grad, params, jax_cost=lambda p: (p["w"] ** 3).sum())
                assert report.leaves["w"].ratio == pytest.approx(1.0)
    """

    def run(cost: Callable, grad: Callable, params: Any, **options: Any) -> Report:
        __tracebackhide__ = True  # the failure points at the test's call, not at jaxcheck
        from .check import check
        from .errors import GradientError

        report = check(cost, grad, params, **options)
        if not report.ok:
            raise GradientError(str(report), report)
        return report

    return run
