"""Verdict integrity, precision: precision is not a bug, and a bug is not precision
(float32, float16, bfloat16, longdouble).
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxcheck as jc
from integrity.course import METHODS, logistic, not_passing, sigmoid, statuses
from jaxcheck import models


def offset_regression(offset=1e4, noise=1e-2, seed=0, m=64):
    """float32 linear regression on features near ``offset``, fitted to within ``noise``.

    The residual W·x + b − y is a small difference of numbers near 1e4: float32 loses most of
    its digits there, the formula is right.
    """
    rng = np.random.default_rng(seed)
    X = (offset + rng.normal(size=(3, m))).astype(np.float32)
    W = np.array([[0.5, -0.2, 0.3]], np.float32)
    Y = W.astype(np.float64) @ X.astype(np.float64) + 1.0 + noise * rng.normal(size=(1, m))
    Y = Y.astype(np.float32)
    params = {"W": W, "b": np.array([[1.0]], np.float32)}

    def cost(p):
        r = p["W"] @ X + p["b"] - Y
        return np.mean(r**2) / 2

    def grad(p):
        r = p["W"] @ X + p["b"] - Y
        return {"dW": r @ X.T / m, "db": np.sum(r, axis=1, keepdims=True) / m}

    return cost, grad, params


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("offset, noise", [(1e4, 1e-2), (1e4, 1e-1), (1e3, 1e-3)])
def test_float32_cancellation_is_rounding_not_a_bug(method, options, offset, noise):
    cost, grad, params = offset_regression(offset, noise)
    report = jc.check(cost, grad, params, method=method, **options)
    assert report.ok, str(report)
    for path in ("W", "b"):
        leaf = report.leaves[path]
        assert leaf.status == "rounding"
        assert leaf.message.startswith(f"{path}: correct formula; float32 rounding")
        assert leaf.rounding_difference is not None and leaf.rounding_difference > leaf.rtol


def test_float32_cancellation_does_not_excuse_a_real_bug():
    cost, grad, params = offset_regression()

    def scaled(p):
        g = grad(p)
        return {"dW": g["dW"] * np.float32(1.03), "db": g["db"]}

    def flipped(p):
        g = grad(p)
        return {"dW": g["dW"], "db": -g["db"]}

    report = jc.check(cost, scaled, params)
    assert report.failing == ["W"]
    assert statuses(report) == {"W": "backprop", "b": "rounding"}
    report = jc.check(cost, flipped, params)
    assert report.failing == ["b"]
    assert statuses(report) == {"W": "rounding", "b": "backprop"}


def test_float32_cancellation_with_a_grad_that_casts_its_result_to_float32():
    # Training code often ends with .astype(np.float32); the formula is still right, and the
    # difference is float32 rounding: it must not be called a backprop bug.
    cost, grad, params = offset_regression()

    def grad32(p):
        return {k: v.astype(np.float32) for k, v in grad(p).items()}

    report = jc.check(cost, grad32, params)
    for path in ("W", "b"):
        assert report.leaves[path].status != "backprop", str(report)
    assert report.ok, str(report)


@pytest.mark.parametrize("factor", [1 + 1e-6, 1 - 2e-6])
def test_two_way_check_holds_float64_rtol(factor):
    # No twin (Python floats in the cost): finite differences of the NumPy cost are the only
    # witness, with an estimated error ~4e-8 of the gradient. A gradient 10x rtol off is
    # resolved by them and must not pass as correct.
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(3, 16)), (rng.random(16) > 0.5).astype(float)
    params = {"w": 0.5 * rng.normal(size=3)}

    def cost(p):
        z = (p["w"] @ X).tolist()
        return sum(np.logaddexp(0, zi) - yi * zi for zi, yi in zip(z, Y)) / 16

    def grad(p, f=1.0):
        return {"w": f * X @ (sigmoid(p["w"] @ X) - Y) / 16}

    good = jc.check(cost, grad, params)
    assert good.twin == "none" and good.ok
    assert good.leaves["w"].fd_error < 1e-7
    bad = jc.check(cost, lambda p: grad(p, factor), params)
    assert not bad.ok, str(bad)


def test_float64_cancellation_in_a_correct_backprop_is_not_blamed():
    # Unnormalised house-price features (square feet, bedrooms, lot size up to 1e5), weights at
    # the generating values: the residual is 1e-3 of predictions near 1e5, so the user's correct
    # float64 X.T @ r carries ~2e-7 relative rounding (a longdouble run of the same code shows
    # it), above float64's rtol. That is precision, not a bug: never "BACKPROP WRONG".
    rng = np.random.default_rng(0)
    m = 200
    X = np.c_[rng.uniform(500, 5000, m), rng.uniform(1, 6, m), rng.uniform(1e4, 1e5, m)]
    w_true = np.array([150.0, 1e4, 2.0])
    y = X @ w_true + 5e4 + rng.normal(size=m) * 1e-3
    params = {"w": w_true.copy(), "b": np.array(5e4)}

    def cost(p):
        r = X @ p["w"] + p["b"] - y
        return 0.5 * np.sum(r**2) / m

    def grad(p):
        r = X @ p["w"] + p["b"] - y
        return {"w": X.T @ r / m, "b": np.sum(r) / m}

    exact = grad({k: v.astype(np.longdouble) for k, v in params.items()})["w"]
    assert np.all(np.abs(grad(params)["w"] - exact) <= 1e-6 * np.abs(exact))  # right formula
    report = jc.check(cost, grad, params)
    assert report.failing == [], str(report)
    assert report.leaves["w"].status != "backprop"


def test_float16_correct_passes_and_three_percent_off_fails():
    cost, grad, params = logistic(np.float16)
    good = jc.check(cost, grad, params)
    assert good.ok, str(good)
    assert good.dtype == "float16"
    bad = jc.check(cost, lambda p: grad(p, np.float16(1.03)), params)
    assert bad.failing == ["w"]
    assert bad.leaves["w"].factor == pytest.approx(1.03, abs=2e-3)


def test_float16_params_with_float32_gradient_is_judged_as_float16():
    cost, grad, params = logistic(np.float16)
    report = jc.check(cost, lambda p: {k: v.astype(np.float32) for k, v in grad(p).items()}, params)
    assert report.ok
    assert report.leaves["w"].rtol == pytest.approx(1e-2)


def test_bfloat16_params_are_checked():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cost, grad, params = logistic(ml_dtypes.bfloat16)
    good = jc.check(cost, grad, params)
    assert good.ok, str(good)
    assert good.dtype == "bfloat16"
    bad = jc.check(cost, lambda p: grad(p, ml_dtypes.bfloat16(1.05)), params)
    assert bad.failing == ["w"]


def test_float64_rtol_is_1e7():
    cost, grad, params = logistic(np.float64)
    assert jc.check(cost, grad, params).leaves["w"].rtol == 1e-7
    bad = jc.check(cost, lambda p: grad(p, 1 + 1e-5), params)
    assert bad.failing == ["w"]


@pytest.mark.parametrize("factor", [1 + 1e-6, 1 - 1e-6, 1 + 5e-7])
def test_float64_error_between_rtol_and_1e6_is_blamed_on_backprop(factor):
    # rtol is 1e-7 and finite differences agree with autodiff to ~1e-11 here, with an
    # estimated error ~5e-9: backprop differs, autodiff and FD agree, so backprop is wrong
    # (the table of the README), not "inconclusive: finite differences too imprecise".
    cost, grad, params = logistic(np.float64)
    report = jc.check(cost, lambda p: grad(p, factor), params)
    leaf = report.leaves["w"]
    assert leaf.difference_fd_autodiff < 1e-9 and leaf.fd_error < 1e-7
    assert report.failing == ["w"], str(report)
    assert leaf.status == "backprop"


@pytest.mark.parametrize("factor", [1 + 1e-5, 1 + 1e-4, 1.005])
def test_longdouble_params_are_judged_like_float64(factor):
    # float64 data, np.longdouble params: rtol 1e-7, not 5e-2 (nor float16's 1e-2).
    rng = np.random.default_rng(0)
    m = 16
    X = rng.normal(size=(3, m))
    Y = (rng.random((1, m)) > 0.5).astype(float)
    params = {
        "w": (0.5 * rng.normal(size=(1, 3))).astype(np.longdouble),
        "b": np.array([[0.1]], np.longdouble),
    }

    def cost(p):
        A = sigmoid(p["w"] @ X + p["b"])
        return -np.mean(Y * np.log(A) + (1 - Y) * np.log(1 - A))

    def grad(p, f=1.0):
        dZ = (sigmoid(p["w"] @ X + p["b"]) - Y) / m
        return {"dw": dZ @ X.T * f, "db": np.sum(dZ, axis=1, keepdims=True)}

    good = jc.check(cost, grad, params)
    assert good.ok, str(good)
    assert good.leaves["w"].rtol == pytest.approx(1e-7)
    bad = jc.check(cost, lambda p: grad(p, factor), params)
    assert not bad.ok
    assert not_passing(bad) == ["w"]


def test_float32_zoo_models_pass_and_fail_as_declared():
    for name in ("tanh_mlp", "softmax_regression", "batchnorm"):
        model = models.make(name, dtype=np.float32)
        assert jc.check(model.cost, model.grad, model.params, jax_cost=model.jax_cost).ok, name
        for bug in model.bugs.values():
            report = jc.check(model.cost, bug.grad, model.params, jax_cost=model.jax_cost)
            assert sorted(report.failing) == sorted(bug.leaves), (name, bug.name)
