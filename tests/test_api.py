"""The public surface: listed once, sorted, importable, documented; x64 left alone."""

from __future__ import annotations

import importlib
import inspect

import jax
import numpy as np
import pytest

import jaxcheck as jc


@pytest.mark.parametrize("module", ["jaxcheck", "jaxcheck.lesson", "jaxcheck.models"])
def test_all_is_sorted_and_every_name_imports_with_a_docstring(module):
    mod = importlib.import_module(module)
    assert mod.__all__ == sorted(mod.__all__)
    for name in mod.__all__:
        obj = getattr(mod, name)
        assert inspect.getdoc(obj), f"{module}.{name} has no docstring"


def test_every_error_derives_from_jaxcheck_error():
    for name in (
        "InputError",
        "NondeterminismError",
        "ReimplementationError",
        "PortError",
        "GradientError",
    ):
        assert issubclass(getattr(jc, name), jc.JaxcheckError)
    assert issubclass(jc.InputError, ValueError)
    assert issubclass(jc.GradientError, AssertionError)


def test_check_signature_keeps_data_positional_and_options_keyword_only():
    params = inspect.signature(jc.check).parameters
    assert [p for p, v in params.items() if v.kind is v.POSITIONAL_OR_KEYWORD] == [
        "cost",
        "grad",
        "params",
    ]
    for name in (
        "jax_cost",
        "method",
        "samples",
        "directions",
        "eps",
        "rtol",
        "batch_size",
        "seed",
    ):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_importing_jaxcheck_does_not_enable_x64(fresh_import):
    assert fresh_import["x64"] is False


@pytest.mark.parametrize("x64", [False, True], ids=["x32", "x64"])
def test_global_x64_setting_is_restored(x64):
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", x64)
    try:
        p = {"w": np.array([0.5, -0.25])}
        report = jc.check(lambda q: float(np.sum(q["w"] ** 4)), lambda q: {"w": 4 * q["w"] ** 3}, p)
        assert report.ok
        assert jax.config.jax_enable_x64 == x64
    finally:
        jax.config.update("jax_enable_x64", before)


def test_step_sweep_is_v_shaped_and_reuses_one_program():
    from jaxcheck import lesson

    X, Y, params = lesson.gradient_check_n_test_case()
    cost = lambda p: lesson.forward_propagation_n(X, Y, p)  # noqa: E731

    def grad(p):
        return lesson.backward_propagation_n(X, Y, lesson.forward_propagation_n(X, Y, p)[1])

    sweep = jc.step_sweep(
        cost,
        grad,
        params,
        jax_cost=lambda p: lesson.forward_propagation_n_jax(X, Y, p),
        steps=[1e-11, 1e-7, 1e-5, 1e-1],
    )
    d = sweep.difference_fd
    assert d[1] == pytest.approx(1.19e-7, rel=0.05)  # the lesson's number at its own step
    assert d[2] < d[1] < d[0]  # rounding error grows as the step shrinks
    assert d[3] > d[2]  # truncation error grows with the step
    assert sweep.best_step == 1e-5
    assert "best step" in str(sweep)
    with pytest.raises(jc.InputError, match="steps must be"):
        jc.step_sweep(cost, grad, params, steps=[0.0])
    with pytest.raises(jc.InputError, match="method='full' or 'sample'"):
        jc.step_sweep(cost, grad, params, method="directional")
