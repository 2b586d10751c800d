"""Shared code of the integrity tests: the methods to run, report helpers, and the
deep-learning course's lesson-style helpers (``linear_forward``, ``TwoLayerNet``, ...) as students
write them.
"""

from __future__ import annotations

import numpy as np
import pytest

METHODS = [
    pytest.param("full", {}, id="full"),
    pytest.param("sample", {"samples": 3}, id="sample"),
    pytest.param("directional", {"directions": 2}, id="directional"),
]


def statuses(report):
    return {path: str(leaf.status) for path, leaf in report.leaves.items()}


def not_passing(report):
    return sorted(p for p, leaf in report.leaves.items() if not leaf.status.passes)


# --------------------------------------------------------------------------- course-style code
# The deep-learning course's helpers, as students write them.


def sigmoid(Z):
    return 1 / (1 + np.exp(-Z))


def relu(Z):
    return np.maximum(0, Z)


def linear_forward(A, W, b):
    Z = W @ A + b
    return Z, (A, W, b)


def linear_backward(dZ, cache):
    A_prev, W, b = cache
    m = A_prev.shape[1]
    dW = dZ @ A_prev.T / m
    db = np.sum(dZ, axis=1, keepdims=True) / m
    dA_prev = W.T @ dZ
    return dA_prev, dW, db


class TwoLayerNet:
    """LINEAR -> TANH -> LINEAR -> SIGMOID with cross-entropy, lesson style (dW1, db1, ...)."""

    def __init__(self, seed=0, n_x=4, n_h=5, m=10, dtype=np.float64):
        rng = np.random.default_rng(seed)
        self.X = rng.normal(size=(n_x, m)).astype(dtype)
        self.Y = (rng.random((1, m)) > 0.5).astype(dtype)
        self.params = {
            "W1": (0.5 * rng.normal(size=(n_h, n_x))).astype(dtype),
            "b1": (0.1 * rng.normal(size=(n_h, 1))).astype(dtype),
            "W2": (0.5 * rng.normal(size=(1, n_h))).astype(dtype),
            "b2": np.zeros((1, 1), dtype),
        }

    def forward(self, p):
        Z1, c1 = linear_forward(self.X, p["W1"], p["b1"])
        A1 = np.tanh(Z1)
        Z2, c2 = linear_forward(A1, p["W2"], p["b2"])
        A2 = sigmoid(Z2)
        return A2, (Z1, A1, c1, c2)

    def cost(self, p):
        A2, _ = self.forward(p)
        m = self.Y.shape[1]
        return -np.sum(self.Y * np.log(A2) + (1 - self.Y) * np.log(1 - A2)) / m

    def grad(self, p):
        A2, (Z1, A1, c1, c2) = self.forward(p)
        dZ2 = A2 - self.Y
        dA1, dW2, db2 = linear_backward(dZ2, c2)
        dZ1 = dA1 * (1 - A1**2)
        _, dW1, db1 = linear_backward(dZ1, c1)
        return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2, "dZ1": dZ1, "dA1": dA1}


def with_entry(grad, key, index, value):
    """grad with grads[key][index] = value (index None: the whole array)."""

    def wrong(p):
        grads = grad(p)
        g = np.array(grads[key], copy=True)
        if index is None:
            g[...] = value
        else:
            g[index] = value
        grads[key] = g
        return grads

    return wrong


def logistic(dtype, m=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3, m)).astype(dtype)
    Y = (rng.random((1, m)) > 0.5).astype(dtype)
    params = {"w": (0.5 * rng.normal(size=(1, 3))).astype(dtype), "b": np.array([[0.1]], dtype)}

    def cost(p):
        A = sigmoid(p["w"] @ X + p["b"])
        return -np.mean(Y * np.log(A) + (1 - Y) * np.log(1 - A))

    def grad(p, factor=1.0):
        dZ = (sigmoid(p["w"] @ X + p["b"]) - Y) / m
        return {"dw": (dZ @ X.T) * factor, "db": np.sum(dZ, axis=1, keepdims=True)}

    return cost, grad, params
