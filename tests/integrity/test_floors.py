"""Verdict integrity, per-leaf floors: a wrong leaf is never hidden by a whole-model
floor, and zero-gradient leaves keep passing.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxcheck as jc
from integrity.course import METHODS, relu
from jaxcheck import models


def tiny_leaf_regression(dtype, flip=False, forget=False, seed=0):
    """y ≈ W x + a·s + b, where the feature s is 1e-6 of the others: ∂J/∂a ≈ 1e-6 of the max."""
    rng = np.random.default_rng(seed)
    m = 20
    X = rng.normal(size=(3, m)).astype(dtype)
    s = (1e-6 * rng.normal(size=(1, m))).astype(dtype)
    Y = rng.normal(size=(1, m)).astype(dtype)
    params = {
        "W": rng.normal(size=(1, 3)).astype(dtype),
        "a": np.array([0.3], dtype),
        "b": np.zeros((1, 1), dtype),
    }

    def cost(p):
        r = p["W"] @ X + p["a"][0] * s + p["b"] - Y
        return np.mean(r**2)

    def grad(p):
        d = 2 * (p["W"] @ X + p["a"][0] * s + p["b"] - Y) / m
        da = np.array([np.sum(d * s)], dtype)
        if flip:
            da = -da
        if forget:
            da = np.zeros_like(da)
        return {"dW": d @ X.T, "da": da, "db": d.sum(axis=1, keepdims=True)}

    return cost, grad, params


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sign_flip_on_a_leaf_with_a_tiny_gradient_fails(method, options, dtype):
    cost, grad, params = tiny_leaf_regression(dtype)
    assert jc.check(cost, grad, params, method=method, **options).ok
    cost, grad, params = tiny_leaf_regression(dtype, flip=True)
    report = jc.check(cost, grad, params, method=method, **options)
    assert report.failing == ["a"], str(report)
    assert report.leaves["a"].factor == pytest.approx(-1.0, abs=1e-3)
    assert "wrong sign" in report.leaves["a"].message


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forgotten_term_on_a_leaf_with_a_tiny_gradient_fails(dtype):
    cost, grad, params = tiny_leaf_regression(dtype, forget=True)
    report = jc.check(cost, grad, params)
    assert report.failing == ["a"], str(report)


def test_temperature_scale_leaf_float32_gradient_doubled_fails():
    # A scalar leaf (a softmax temperature) whose gradient is far smaller than the weights'.
    rng = np.random.default_rng(8)
    X = rng.normal(size=(4, 32)).astype(np.float32)
    y = rng.integers(0, 3, size=32)
    params = {"W": rng.normal(size=(3, 4)).astype(np.float32), "t": np.array(1.0, np.float32)}
    target = np.eye(3, dtype=np.float32)[:, y]

    def forward(p):
        S = (p["W"] @ X) / p["t"]
        S = S - S.max(axis=0, keepdims=True)
        P = np.exp(S) / np.exp(S).sum(axis=0, keepdims=True)
        return S, P

    def cost(p):
        _, P = forward(p)
        return -np.mean(np.sum(target * np.log(P), axis=0))

    def grad(p, factor=1.0):
        _, P = forward(p)
        dS = (P - target) / X.shape[1]
        U = p["W"] @ X
        return {"W": dS @ X.T / p["t"], "t": np.float32(factor) * -np.sum(dS * U) / p["t"] ** 2}

    assert jc.check(cost, grad, params).ok
    report = jc.check(cost, lambda p: grad(p, 2.0), params)
    assert report.failing == ["t"]


class DeadUnitNet:
    """ReLU MLP with two dead hidden units (their pre-activations are negative for every input)."""

    def __init__(self, dtype=np.float64, seed=6):
        rng = np.random.default_rng(seed)
        self.X = np.abs(rng.normal(size=(3, 16))).astype(dtype)
        self.Y = rng.normal(size=(1, 16)).astype(dtype)
        W1 = rng.normal(size=(5, 3))
        b1 = 0.1 * rng.normal(size=(5, 1))
        W1[1] = -np.abs(W1[1])  # unit 1 and 3 never fire: inputs are positive
        W1[3] = -np.abs(W1[3])
        b1[1] = b1[3] = -0.5
        self.params = {
            "W1": W1.astype(dtype),
            "b1": b1.astype(dtype),
            "W2": rng.normal(size=(1, 5)).astype(dtype),
            "b2": np.zeros((1, 1), dtype),
        }

    def cost(self, p):
        A1 = relu(p["W1"] @ self.X + p["b1"])
        return np.mean((p["W2"] @ A1 + p["b2"] - self.Y) ** 2) / 2

    def grad(self, p, dead_garbage=0.0):
        Z1 = p["W1"] @ self.X + p["b1"]
        A1 = relu(Z1)
        dZ2 = (p["W2"] @ A1 + p["b2"] - self.Y) / self.X.shape[1]
        dZ1 = (p["W2"].T @ dZ2) * (Z1 > 0)
        grads = {
            "dW1": dZ1 @ self.X.T,
            "db1": dZ1.sum(axis=1, keepdims=True),
            "dW2": dZ2 @ A1.T,
            "db2": dZ2.sum(axis=1, keepdims=True),
        }
        grads["dW1"][[1, 3]] += dead_garbage
        return grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dead_units_keep_passing(dtype):
    net = DeadUnitNet(dtype)
    report = jc.check(net.cost, net.grad, net.params)
    assert report.ok, str(report)
    assert report.leaves["W2"].ok


def test_a_wrong_entry_on_a_dead_unit_fails():
    # A dead unit's true gradient is exactly 0; a backprop that writes 1e-3 there is wrong.
    net = DeadUnitNet()
    report = jc.check(net.cost, lambda p: net.grad(p, dead_garbage=1e-3), net.params)
    assert report.failing == ["W1"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_before_batch_norm_passes_and_its_sign_bug_stays_invisible(dtype):
    model = models.make("batchnorm", dtype=dtype)
    report = jc.check(model.cost, model.grad, model.params, jax_cost=model.jax_cost)
    assert report.ok, str(report)
    assert report.leaves["b1"].status in ("ok", "rounding")

    def flipped_b1(p):
        g = dict(model.grad(p))
        g["b1"] = -g["b1"]  # −(rounding noise) is as right as the noise
        return g

    assert jc.check(model.cost, flipped_b1, model.params, jax_cost=model.jax_cost).ok
