"""A pytest plugin: ``gradcheck`` and ``gradcheck_layer`` fail a test whose backprop is wrong.

Installed with jaxcheck (entry point ``pytest11``); jaxcheck itself is imported on first use only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from jaxcheck.report import Report

__all__ = ["gradcheck", "gradcheck_layer"]


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
        from jaxcheck._engine.doors.gradient import check
        from jaxcheck.errors import GradientError

        report = check(cost, grad, params, **options)
        if not report.ok:
            raise GradientError(str(report), report)
        return report

    return run


@pytest.fixture
def gradcheck_layer() -> Callable[..., Report]:
    """A function ``gradcheck_layer(forward, backward, *args, **options)`` that fails the test.

    It runs :func:`jaxcheck.check_layer` with the same arguments and options (``dout``,
    ``wrt``, ``forward_kwargs``, ``jax_forward`` and those of :func:`jaxcheck.check`): forward
    returns ``out`` or ``(out, cache)``, and backward returns the gradients of forward's
    floating-point arguments in order. When a gradient is wrong it raises
    :class:`jaxcheck.GradientError` (an ``AssertionError``) whose message is the report's
    table; otherwise it returns the :class:`~jaxcheck.Report`. Errors in the inputs propagate as
    they are. (A separate fixture rather than a second form of ``gradcheck``: ``gradcheck(cost,
    grad, params)`` and ``gradcheck_layer(forward, backward, x, w, b)`` cannot be told apart by
    their arguments.) For networks kept in objects, call :func:`jaxcheck.assert_object`.

    Examples:
        In a test module::

            import numpy as np

            def affine_forward(x, w, b):
                return x @ w + b, (x, w)

            def affine_backward(dout, cache):
                x, w = cache
                return dout @ w.T, x.T @ dout, dout.sum(axis=0)

            def test_affine(gradcheck_layer):
                rng = np.random.default_rng(0)
                x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
                gradcheck_layer(affine_forward, affine_backward, x, w, b)
    """

    def run(forward: Callable, backward: Callable, *args: Any, **options: Any) -> Report:
        __tracebackhide__ = True  # the failure points at the test's call, not at jaxcheck
        from jaxcheck._engine.doors.layer import check_layer
        from jaxcheck.errors import GradientError

        report = check_layer(forward, backward, *args, **options)
        if not report.ok:
            raise GradientError(str(report), report)
        return report

    return run
