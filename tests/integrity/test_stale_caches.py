"""Verdict integrity, stale answers from caches: closed-over data, module globals and
config values changed between calls are never served from a stale program.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from integrity.course import TwoLayerNet

L2NET_SOURCE = textwrap.dedent(
    """
    import numpy as np

    LAMBD = 0.7
    X = None
    Y = None


    def sigmoid(z):
        return 1 / (1 + np.exp(-z))


    def compute_cost_with_regularization(parameters):
        W1, b1 = parameters["W1"], parameters["b1"]
        W2, b2 = parameters["W2"], parameters["b2"]
        m = X.shape[1]
        A1 = np.tanh(W1 @ X + b1)
        A2 = sigmoid(W2 @ A1 + b2)
        cross_entropy = -np.sum(Y * np.log(A2) + (1 - Y) * np.log(1 - A2)) / m
        L2 = LAMBD / (2 * m) * (np.sum(np.square(W1)) + np.sum(np.square(W2)))
        return cross_entropy + L2


    def backward_propagation_with_regularization(parameters, lambd=None, X_=None, Y_=None):
        lambd = LAMBD if lambd is None else lambd
        X_ = X if X_ is None else X_
        Y_ = Y if Y_ is None else Y_
        W1, b1 = parameters["W1"], parameters["b1"]
        W2, b2 = parameters["W2"], parameters["b2"]
        m = X_.shape[1]
        A1 = np.tanh(W1 @ X_ + b1)
        A2 = sigmoid(W2 @ A1 + b2)
        dZ2 = A2 - Y_
        dW2 = dZ2 @ A1.T / m + lambd / m * W2
        db2 = np.sum(dZ2, axis=1, keepdims=True) / m
        dZ1 = (W2.T @ dZ2) * (1 - A1**2)
        dW1 = dZ1 @ X_.T / m + lambd / m * W1
        db1 = np.sum(dZ1, axis=1, keepdims=True) / m
        return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}
    """
)


@pytest.fixture
def l2net(tmp_path, monkeypatch):
    """A user's module whose cost reads module globals (X, Y, LAMBD), imported from a file."""
    (tmp_path / "user_l2net.py").write_text(L2NET_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_l2net", None)
    module = importlib.import_module("user_l2net")
    rng = np.random.default_rng(0)
    module.X = rng.normal(size=(3, 12))
    module.Y = (rng.random((1, 12)) > 0.5).astype(float)
    params = {
        "W1": 0.5 * rng.normal(size=(4, 3)),
        "b1": np.zeros((4, 1)),
        "W2": 0.5 * rng.normal(size=(1, 4)),
        "b2": np.zeros((1, 1)),
    }
    yield module, params
    sys.modules.pop("user_l2net", None)


def test_module_global_regularisation_strength_changed(l2net):
    mod, params = l2net
    cost, grad = mod.compute_cost_with_regularization, mod.backward_propagation_with_regularization
    assert jc.check(cost, grad, params).ok
    mod.LAMBD = 0.0  # module.X = ... style change between two checks
    fresh = jc.check(cost, grad, params)
    assert fresh.ok
    assert fresh.cost == pytest.approx(cost(params), rel=1e-12)
    stale = jc.check(cost, lambda p: grad(p, lambd=0.7), params)
    assert stale.failing == ["W1", "W2"]  # the L2 term's gradient is in W only


def test_module_global_data_changed_in_place_and_rebound(l2net):
    mod, params = l2net
    cost, grad = mod.compute_cost_with_regularization, mod.backward_propagation_with_regularization
    assert jc.check(cost, grad, params).ok
    X_old, Y_old = mod.X.copy(), mod.Y.copy()
    mod.X += 0.5  # in place
    assert jc.check(cost, grad, params).ok
    stale = jc.check(cost, lambda p: grad(p, X_=X_old), params)
    assert stale.failing == ["W1", "b1", "W2", "b2"]
    mod.Y = 1 - mod.Y  # rebound
    assert jc.check(cost, grad, params).ok
    stale = jc.check(cost, lambda p: grad(p, Y_=Y_old), params)
    assert not stale.ok and "W2" in stale.failing


class SoftmaxClassifier:
    """Softmax regression with L2, closing over X, integer labels and a config dict."""

    def __init__(self, seed=1):
        rng = np.random.default_rng(seed)
        self.X = rng.normal(size=(3, 10))
        self.y = rng.integers(0, 3, size=10)
        self.config = {"reg": 0.1}
        self.params = {"W": 0.3 * rng.normal(size=(3, 3)), "b": np.zeros(3)}

    @staticmethod
    def softmax(S):
        S = S - S.max(axis=0, keepdims=True)
        E = np.exp(S)
        return E / E.sum(axis=0, keepdims=True)

    def loss(self, p):
        X, y, m = self.X, self.y, self.X.shape[1]
        P = self.softmax(p["W"] @ X + p["b"][:, None])
        data = -np.mean(np.log(P[y, np.arange(m)]))
        return data + 0.5 * self.config["reg"] * np.sum(p["W"] ** 2)

    def grads(self, p, reg=None, X=None, y=None):
        reg = self.config["reg"] if reg is None else reg
        X = self.X if X is None else X
        y = self.y if y is None else y
        m = X.shape[1]
        dS = self.softmax(p["W"] @ X + p["b"][:, None])
        dS[y, np.arange(m)] -= 1
        dS /= m
        return {"W": dS @ X.T + reg * p["W"], "b": dS.sum(axis=1)}

    def jax_loss(self, p):
        X, y, m = self.X, self.y, self.X.shape[1]
        logp = jax.nn.log_softmax(p["W"] @ X + p["b"][:, None], axis=0)
        return -jnp.mean(logp[y, jnp.arange(m)]) + 0.5 * self.config["reg"] * jnp.sum(p["W"] ** 2)


@pytest.mark.parametrize("given_twin", [False, True], ids=["ported", "given"])
def test_closed_over_labels_changed_in_place(given_twin):
    net = SoftmaxClassifier()
    twin = net.jax_loss if given_twin else None
    assert jc.check(net.loss, net.grads, net.params, jax_cost=twin).ok
    y_old = net.y.copy()
    net.y[:] = (net.y + 1) % 3  # the label vector edited in place
    assert jc.check(net.loss, net.grads, net.params, jax_cost=twin).ok
    stale = jc.check(net.loss, lambda p: net.grads(p, y=y_old), net.params, jax_cost=twin)
    assert stale.failing == ["W", "b"]


@pytest.mark.parametrize("given_twin", [False, True], ids=["ported", "given"])
def test_config_dict_value_changed(given_twin):
    net = SoftmaxClassifier()
    twin = net.jax_loss if given_twin else None
    assert jc.check(net.loss, net.grads, net.params, jax_cost=twin).ok
    net.config["reg"] = 0.0
    assert jc.check(net.loss, net.grads, net.params, jax_cost=twin).ok
    stale = jc.check(net.loss, lambda p: net.grads(p, reg=0.1), net.params, jax_cost=twin)
    assert stale.failing == ["W"]
    net.config["reg"] = 2.5
    stale = jc.check(net.loss, lambda p: net.grads(p, reg=0.0), net.params, jax_cost=twin)
    assert stale.failing == ["W"]


@pytest.mark.parametrize("given_twin", [False, True], ids=["ported", "given"])
def test_closed_over_inputs_scaled_in_place_and_attribute_rebound(given_twin):
    net = SoftmaxClassifier()
    twin = net.jax_loss if given_twin else None
    assert jc.check(net.loss, net.grads, net.params, jax_cost=twin).ok
    X_old = net.X.copy()
    net.X *= 2.0
    assert jc.check(net.loss, net.grads, net.params, jax_cost=twin).ok
    stale = jc.check(net.loss, lambda p: net.grads(p, X=X_old), net.params, jax_cost=twin)
    assert "W" in stale.failing
    net.X = X_old * -0.5  # rebound
    report = jc.check(net.loss, net.grads, net.params, jax_cost=twin)
    assert report.ok
    assert report.cost == pytest.approx(net.loss(net.params), rel=1e-12)


def test_closure_variable_rebound_with_nonlocal():
    rng = np.random.default_rng(2)

    def make_problem():
        X = rng.normal(size=(2, 6))
        Y = rng.normal(size=(1, 6))

        def cost(p):
            return float(np.mean((p["w"] @ X - Y) ** 2))

        def grad(p):
            return {"w": 2 * (p["w"] @ X - Y) @ X.T / X.shape[1]}

        def set_inputs(new):
            nonlocal X
            X = new

        return cost, grad, set_inputs, lambda: X

    cost, grad, set_inputs, get_inputs = make_problem()
    params = {"w": np.array([[0.3, -0.7]])}
    assert jc.check(cost, grad, params).ok
    X0 = get_inputs()
    X1 = 3 * X0 + 1
    set_inputs(X1)
    assert jc.check(cost, grad, params).ok

    def stale(p):  # the gradient of the old inputs
        set_inputs(X0)
        try:
            return grad(p)
        finally:
            set_inputs(X1)

    assert jc.check(cost, stale, params).failing == ["w"]


def test_same_code_other_closure_is_not_answered_from_the_cache():
    # Two models from one factory: same twin structure, other data. The gradient of one must not
    # pass against the cost of the other because a compiled program was reused.
    a, b = TwoLayerNet(seed=10), TwoLayerNet(seed=11)
    b.params = {k: v.copy() for k, v in a.params.items()}
    assert jc.check(a.cost, a.grad, a.params).ok
    assert jc.check(b.cost, b.grad, b.params).ok
    crossed = jc.check(b.cost, a.grad, b.params)
    assert not crossed.ok
    assert set(crossed.failing) >= {"W1", "W2"}
