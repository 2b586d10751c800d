"""Verdict integrity, the culprit: a twin whose jax.grad is useless is blamed, not the
user's gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from integrity.course import METHODS, sigmoid, statuses


def mse_problem(seed=0, m=16):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3, m))
    Y = rng.normal(size=(1, m))
    params = {"W": rng.normal(size=(1, 3)), "b": np.array([[0.1]])}

    def cost(p):
        return float(np.mean((p["W"] @ X + p["b"] - Y) ** 2))

    def grad(p):
        d = 2 * (p["W"] @ X + p["b"] - Y) / m
        return {"dW": d @ X.T, "db": d.sum(axis=1, keepdims=True)}

    return X, Y, cost, grad, params


Q = 1e-12  # quantisation far below the cost's tolerance: the twin's value is right


def _sq(p, X, Y):
    return jnp.mean((p["W"] @ X + p["b"] - Y) ** 2)


@jax.custom_jvp
def _square_wrong_rule(z):
    return z**2


@_square_wrong_rule.defjvp
def _square_wrong_rule_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    return z**2, z * dz  # should be 2·z·dz


TWINS = {
    "round-cost": lambda p, X, Y: jnp.round(_sq(p, X, Y) / Q) * Q,
    "floor-cost": lambda p, X, Y: jnp.floor(_sq(p, X, Y) / Q) * Q,
    "round-params": lambda p, X, Y: jnp.mean(
        (jnp.round(p["W"] / Q) * Q @ X + jnp.round(p["b"] / Q) * Q - Y) ** 2
    ),
    "stop-gradient-all": lambda p, X, Y: jax.lax.stop_gradient(_sq(p, X, Y)),
    "custom-jvp": lambda p, X, Y: jnp.mean(_square_wrong_rule(p["W"] @ X + p["b"] - Y)),
}


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("twin", sorted(TWINS))
def test_useless_autodiff_with_fd_and_backprop_agreeing_blames_the_twin(method, options, twin):
    X, Y, cost, grad, params = mse_problem()
    report = jc.check(
        cost, grad, params, jax_cost=lambda p: TWINS[twin](p, X, Y), method=method, **options
    )
    assert report.failing == []
    assert report.ok, str(report)
    assert statuses(report) == {"W": "twin", "b": "twin"}
    assert "not your backprop" in report.leaves["W"].message
    assert "BACKPROP WRONG" not in str(report)


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_useless_autodiff_with_a_wrong_backprop_never_passes(twin):
    X, Y, cost, grad, params = mse_problem()

    def doubled(p):
        g = grad(p)
        return {"dW": 2 * g["dW"], "db": g["db"]}

    report = jc.check(cost, doubled, params, jax_cost=lambda p: TWINS[twin](p, X, Y))
    assert not report.ok
    assert report.leaves["W"].status in ("backprop", "inconclusive")
    assert report.leaves["b"].status == "twin"


def test_stop_gradient_on_one_leaf_and_a_real_bug_in_another():
    X, Y, cost, grad, params = mse_problem()

    def twin(p):
        return jnp.mean((jax.lax.stop_gradient(p["W"]) @ X + p["b"] - Y) ** 2)

    report = jc.check(cost, grad, params, jax_cost=twin)
    assert statuses(report) == {"W": "twin", "b": "ok"}
    assert report.ok

    def bad_b(p):
        g = grad(p)
        return {"dW": g["dW"], "db": g["db"] / 2}

    report = jc.check(cost, bad_b, params, jax_cost=twin)
    assert statuses(report) == {"W": "twin", "b": "backprop"}
    assert report.failing == ["b"]
    assert report.leaves["b"].factor == pytest.approx(0.5, rel=1e-6)


def test_quantised_relu_twin_with_argmax_one_hot():
    # A twin that builds the softmax target with a comparison is fine; one that takes the
    # prediction's one-hot (argmax) has a zero jax.grad through it.
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4, 12))
    params = {"w": rng.normal(size=(4,))}
    labels = (X.T @ np.array([1.0, -1.0, 0.5, 0.0]) > 0).astype(float)

    def cost(p):
        z = X.T @ p["w"]
        return float(np.mean(np.logaddexp(0, z) - labels * z))

    def grad(p):
        z = X.T @ p["w"]
        return {"w": X @ (sigmoid(z) - labels) / len(labels)}

    def twin(p):
        z = X.T @ p["w"]
        z_q = z + jax.lax.stop_gradient(jnp.round(z / Q) * Q - z)  # straight-through… of nothing
        return jnp.mean(jnp.logaddexp(0, z_q) - labels * jax.lax.stop_gradient(z_q))

    report = jc.check(cost, grad, params, jax_cost=twin)
    assert report.failing == []
    assert report.leaves["w"].status == "twin"
