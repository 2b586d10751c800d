"""Verdict integrity (issue 10): hostile cases for every way a verdict could lie.

Never call a wrong gradient correct, never blame the wrong party, never leave a trace. One
section per class of the issue, each with pass/fail pairs written the way people write NumPy
backprop (course layer functions, ``{"W1": ..., "b1": ...}`` params, ``grads["dW1"]``):

1. non-finite backprop entries;
2. stale answers from caches (closed-over data, module globals, config values changed);
3. ties in a max-pool window (joint kink test), and method consistency;
4. a wrong leaf hidden by a whole-model floor; zero-gradient leaves that must keep passing;
5. precision is not a bug, and a bug is not precision (float32/float16/bfloat16/longdouble);
6. the wrong culprit: a twin whose jax.grad is useless;
7. false refusals of a faithful twin, and true refusals of an unfaithful one;

then errors (options, params, twins, the user's own exceptions), ``jax_disable_jit``, many
small leaves, and the user's arrays left alone.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import models

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


# =========================================================================== 1. non-finite


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize(
    "key, index, value, word, where",
    [
        ("dW1", (2, 3), np.inf, "infinite", "(2, 3)"),
        ("dW1", (0, 0), -np.inf, "infinite", "(0, 0)"),
        ("dW1", (4, 1), np.nan, "NaN", "(4, 1)"),
        ("db1", None, np.nan, "NaN", "(0, 0)"),
        ("db2", None, -np.inf, "infinite", "(0, 0)"),
    ],
)
def test_non_finite_backprop_entry_fails_in_every_method(
    method, options, key, index, value, word, where
):
    net = TwoLayerNet()
    report = jc.check(
        net.cost, with_entry(net.grad, key, index, value), net.params, method=method, **options
    )
    leaf = key[1:]
    assert not report.ok
    assert report.failing == [leaf]
    assert report.leaves[leaf].status == jc.Status.BACKPROP
    message = report.leaves[leaf].message
    assert word in message and where in message, message


def test_whole_leaf_nan_counts_every_entry():
    net = TwoLayerNet()
    report = jc.check(net.cost, with_entry(net.grad, "db1", None, np.nan), net.params)
    assert report.failing == ["b1"]
    assert "5 NaN entries" in report.leaves["b1"].message


def test_nan_and_inf_together_are_both_named():
    def grad(p):
        g = TwoLayerNet().grad(p)
        g["dW2"] = g["dW2"].copy()
        g["dW2"][0, 1] = np.nan
        g["dW2"][0, 3] = -np.inf
        return g

    net = TwoLayerNet()
    report = jc.check(net.cost, grad, net.params)
    message = report.leaves["W2"].message
    assert report.failing == ["W2"]
    assert "NaN" in message and "infinite" in message and "(0, 1)" in message


@pytest.mark.parametrize(
    "method, options",
    [("sample", {"samples": 2}), ("directional", {"directions": 1})],
)
def test_nan_in_entries_the_method_does_not_probe_still_fails(method, options):
    # 20 entries, 2 samples (or 1 direction): entry (4, 3) is almost surely not a probe.
    net = TwoLayerNet()
    for index in [(4, 3), (3, 2), (0, 1)]:
        report = jc.check(
            net.cost,
            with_entry(net.grad, "dW1", index, np.nan),
            net.params,
            method=method,
            **options,
        )
        assert report.failing == ["W1"], (index, str(report))
        assert f"first at {index}" in report.leaves["W1"].message


def test_float32_sigmoid_derivative_overflow_is_nan_and_fails():
    # e/(1+e)^2 overflows to inf/inf = NaN in float32 for z < -44: the cost (logaddexp) is fine.
    X = np.array([[-60.0, -40, -10, 0, 5, 10, 30, 50]], np.float32)
    Y = np.array([[0, 1, 0, 1, 0, 1, 0, 1]], np.float32)
    m = X.shape[1]
    params = {"w": np.array([[2.0]], np.float32), "b": np.array([[0.0]], np.float32)}

    def cost(p):
        z = p["w"] @ X + p["b"]
        return np.mean(np.logaddexp(0, z) - Y * z)

    def grad(p):
        with np.errstate(all="ignore"):
            z = p["w"] @ X + p["b"]
            e = np.exp(-z)
            s = 1 / (1 + e)
            dz = (s - Y) / (s * (1 - s)) * (e / (1 + e) ** 2) / m
        return {"dw": dz @ X.T, "db": dz.sum(axis=1, keepdims=True)}

    report = jc.check(cost, grad, params)
    assert report.failing == ["w", "b"]
    for leaf in ("b", "w"):
        assert report.leaves[leaf].status == "backprop"
        assert "NaN" in report.leaves[leaf].message


def test_float16_gradient_overflow_to_inf_is_not_excused_as_rounding():
    # The float64 re-run would give finite numbers; an infinite backprop still fails.
    params = {"w": np.array([3.0, -2.0, 1.0], np.float16)}

    def cost(p):
        return np.sum(p["w"] ** 2)  # 14 in float16: finite

    def grad(p):
        return {"w": np.float16(2e3) * p["w"] * np.float16(40) / np.float16(1e3)}  # overflows

    with np.errstate(over="ignore"):
        report = jc.check(cost, grad, params)
    assert report.failing == ["w"]
    assert report.leaves["w"].status == "backprop"
    assert "3 infinite entries" in report.leaves["w"].message


def test_non_finite_in_a_nested_pytree_names_the_path():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3, 6))
    params = {
        "layers": [
            {"W": rng.normal(size=(4, 3)), "b": np.zeros((4, 1))},
            {"W": rng.normal(size=(1, 4)), "b": np.zeros((1, 1))},
        ]
    }

    def cost(p):
        A = np.tanh(p["layers"][0]["W"] @ X + p["layers"][0]["b"])
        return float(np.mean(p["layers"][1]["W"] @ A + p["layers"][1]["b"]))

    def grad(p):
        A = np.tanh(p["layers"][0]["W"] @ X + p["layers"][0]["b"])
        dZ2 = np.full((1, X.shape[1]), 1 / X.shape[1])
        dZ1 = (p["layers"][1]["W"].T @ dZ2) * (1 - A**2)
        db1 = np.sum(dZ1, axis=1, keepdims=True)
        db1[2, 0] = np.inf
        return {
            "layers": [
                {"W": dZ1 @ X.T, "b": db1},
                {"W": dZ2 @ A.T, "b": dZ2.sum(axis=1, keepdims=True)},
            ]
        }

    report = jc.check(cost, grad, params)
    assert report.failing == ["layers/0/b"]
    assert "infinite" in report.leaves["layers/0/b"].message
    assert "(2, 0)" in report.leaves["layers/0/b"].message


def test_non_finite_with_grad_none_loss_and_grads_together():
    net = TwoLayerNet()
    wrong = with_entry(net.grad, "dW2", (0, 2), np.inf)
    report = jc.check(lambda p: (net.cost(p), wrong(p)), None, net.params)
    assert report.failing == ["W2"]
    assert "infinite" in report.leaves["W2"].message


def test_non_finite_in_a_two_way_check():
    # Python control flow on values: no twin, backprop against finite differences of the cost.
    params = {"w": np.array([0.5, -1.0, 2.0])}

    def cost(p):
        values = np.tanh(p["w"]).tolist()
        return sum(v * v for v in values)

    def grad(p):
        t = np.tanh(p["w"])
        g = 2 * t * (1 - t**2)
        g[1] = -np.inf
        return {"w": g}

    report = jc.check(cost, grad, params)
    assert report.twin == "none"
    assert report.failing == ["w"]
    assert "infinite" in report.leaves["w"].message and "(1,)" in report.leaves["w"].message


def test_assert_gradients_raises_on_non_finite():
    net = TwoLayerNet()
    with pytest.raises(jc.GradientError) as info:
        jc.assert_gradients(net.cost, with_entry(net.grad, "dW1", (1, 1), np.nan), net.params)
    assert isinstance(info.value, AssertionError)
    assert info.value.report.failing == ["W1"]
    assert "NaN" in str(info.value)


@pytest.mark.parametrize("method, options", METHODS)
def test_gradcheck_fixture_fails_on_infinite(gradcheck, method, options):
    net = TwoLayerNet()
    with pytest.raises(jc.GradientError) as info:
        gradcheck(
            net.cost,
            with_entry(net.grad, "db1", (3, 0), np.inf),
            net.params,
            method=method,
            **options,
        )
    assert "infinite" in str(info.value)
    assert gradcheck(net.cost, net.grad, net.params, method=method, **options).ok


# =========================================================================== 2. stale caches

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


# =========================================================================== 3. ties in max-pool


def pool_forward(A, size=2):
    """2×2 max-pool over the last two axes (stride 2), the course's vectorised way."""
    *lead, H, W = A.shape
    return A.reshape(*lead, H // size, size, W // size, size).max(axis=(-3, -1))


def pool_backward_every_max(dout, A, size=2):
    """The bug: dout to EVERY entry equal to the max (a mask A == max)."""
    *lead, H, W = A.shape
    R = A.reshape(*lead, H // size, size, W // size, size)
    mask = R == R.max(axis=(-3, -1), keepdims=True)
    return (mask * dout[..., :, None, :, None]).reshape(A.shape)


def pool_backward_first_argmax(dout, A, size=2):
    """Correct: dout to one argmax per window (np.argmax breaks ties by the first index)."""
    *lead, H, W = A.shape
    R = A.reshape(*lead, H // size, size, W // size, size)
    R = np.moveaxis(R, -3, -2).reshape(*lead, H // size, W // size, size * size)
    idx = R.argmax(axis=-1)
    G = np.zeros_like(R)
    np.put_along_axis(G, idx[..., None], dout[..., None], axis=-1)
    G = np.moveaxis(G.reshape(*lead, H // size, W // size, size, size), -2, -3)
    return G.reshape(A.shape)


def pool_backward_last_argmax(dout, A, size=2):
    flipped = pool_backward_first_argmax(dout[..., ::-1, ::-1], A[..., ::-1, ::-1], size)
    return flipped[..., ::-1, ::-1]


def pool_backward_naive_loop(dout, A, size=2):
    """CS231n max_pool_backward_naive: a loop, the first max of each window gets dout."""
    dA = np.zeros_like(A)
    *lead, H, W = A.shape
    for idx in np.ndindex(*lead):
        for i in range(H // size):
            for j in range(W // size):
                window = A[idx][i * size : (i + 1) * size, j * size : (j + 1) * size]
                r, c = np.unravel_index(np.argmax(window), window.shape)
                dA[idx][i * size + r, j * size + c] += dout[idx][i, j]
    return dA


def pool_backward_split(dout, A, size=2):
    """dout shared equally among the tied maxima: a convex combination, a valid subgradient."""
    *lead, H, W = A.shape
    R = A.reshape(*lead, H // size, size, W // size, size)
    mask = (R == R.max(axis=(-3, -1), keepdims=True)).astype(A.dtype)
    share = mask / mask.sum(axis=(-3, -1), keepdims=True)
    return (share * dout[..., :, None, :, None]).reshape(A.shape)


def relu_pool_problem(x0, V, backward):
    """cost = Σ V ⊙ maxpool(relu(x)); the params are the pre-activations x."""

    def cost(p):
        return float(np.sum(V * pool_forward(relu(p["x"]))))

    def grad(p):
        A = relu(p["x"])
        return {"x": backward(V, A) * (p["x"] > 0)}

    return cost, grad, {"x": x0}


def tied_input(k_per_window, seed=1):
    """Images (2, 4, 4) whose windows hold 2, 3 and 4 tied positive maxima."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 4, 4))
    windows = [(0, 0, 0), (0, 0, 1), (1, 1, 1)]
    for (n, i, j), k in zip(windows, k_per_window):
        block = x[n, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
        block[...] = -1.0 + 0.1 * rng.random((2, 2))
        value = 1.5 + (n + i + j)
        for r in range(k):
            block[r // 2, r % 2] = value
    return x


POSITIVE_V = np.abs(np.random.default_rng(7).normal(size=(2, 2, 2))) + 0.1


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("ties", [(2,), (3,), (4,), (2, 3, 4)], ids=["2", "3", "4", "2+3+4"])
def test_dout_to_every_tied_max_fails_in_every_method(method, options, ties):
    x = tied_input(ties)
    report = jc.check(
        *relu_pool_problem(x, POSITIVE_V, pool_backward_every_max), method=method, **options
    )
    leaf = report.leaves["x"]
    assert report.failing == ["x"], str(report)
    assert leaf.status == "backprop"
    assert "not a subgradient" in leaf.message and "taken together" in leaf.message
    tested, failed = leaf.joint
    assert tested > 0 and failed > 0


@pytest.mark.parametrize("method, options", METHODS)
@pytest.mark.parametrize("ties", [(3,), (2, 3, 4)], ids=["3", "2+3+4"])
@pytest.mark.parametrize(
    "backward",
    [
        pool_backward_first_argmax,
        pool_backward_last_argmax,
        pool_backward_naive_loop,
        pool_backward_split,
    ],
    ids=["first-argmax", "last-argmax", "naive-loop", "split"],
)
def test_one_argmax_pool_backward_passes_in_every_method(method, options, ties, backward):
    x = tied_input(ties)
    report = jc.check(*relu_pool_problem(x, POSITIVE_V, backward), method=method, **options)
    leaf = report.leaves["x"]
    assert report.ok, str(report)
    assert report.failing == []
    # jax.grad of max shares a tie equally, so the split backward can agree with it outright
    assert leaf.status == ("kink" if backward is not pool_backward_split else leaf.status)
    assert leaf.status in ("kink", "ok")
    assert leaf.joint[1] == 0


@pytest.mark.parametrize("method, options", METHODS)
def test_one_argmax_passes_when_the_next_layer_has_weights_of_both_signs(method, options):
    # A max-pool followed by a linear layer: dout has both signs. Each window is a valid
    # subgradient of its own max, and the windows are separate coordinates, so the product of
    # the windows' subdifferentials is the subdifferential of the sum: first-argmax is correct.
    V = np.array([[[1.0, -0.5], [0.3, 2.0]], [[-1.2, 0.7], [0.4, -0.9]]])
    x = tied_input((2, 3, 4))
    good = jc.check(*relu_pool_problem(x, V, pool_backward_first_argmax), method=method, **options)
    assert good.ok, str(good)
    assert good.leaves["x"].status == "kink"
    bad = jc.check(*relu_pool_problem(x, V, pool_backward_every_max), method=method, **options)
    assert bad.failing == ["x"]


def test_two_maxima_of_opposite_sign_minimal():
    # The smallest case of the above: J = max(x0, x1) − max(x2, x3) at x = (1, 1, 2, 2).
    # g = (1, 0, −1, 0) is a Clarke subgradient (one argmax per max); sending the gradient to
    # both tied entries, g = (1, 1, −1, −1), is not.
    params = {"x": np.array([1.0, 1.0, 2.0, 2.0])}

    def cost(p):
        return float(np.max(p["x"][:2]) - np.max(p["x"][2:]))

    good = jc.check(cost, lambda p: {"x": np.array([1.0, 0.0, -1.0, 0.0])}, params)
    assert good.ok, str(good)
    assert good.leaves["x"].status == "kink"
    bad = jc.check(cost, lambda p: {"x": np.array([1.0, 1.0, -1.0, -1.0])}, params)
    assert bad.failing == ["x"]


class UpsampledConvNet:
    """1×1 conv → ReLU → 2×2 max-pool → linear → MSE on nearest-neighbour upsampled images.

    Every 2×2 block of the input repeats one pixel, so the pool's windows are tied whatever the
    weights: the max is smooth in the weights, and sending dout to all four tied entries makes
    the conv's gradient exactly 4× too big.
    """

    def __init__(self, seed=3, n=3, c=2, f=3):
        rng = np.random.default_rng(seed)
        self.img = rng.normal(size=(n, c, 2, 2)).repeat(2, axis=2).repeat(2, axis=3)
        self.Y = rng.normal(size=(n, 1))
        self.n, self.f = n, f
        self.params = {
            "Wc": rng.normal(size=(f, c)),
            "bc": np.full(f, 0.1),
            "Wf": 0.5 * rng.normal(size=(1, 4 * f)),
            "bf": np.zeros(1),
        }

    def forward(self, p):
        Z = np.einsum("fc,nchw->nfhw", p["Wc"], self.img) + p["bc"][None, :, None, None]
        A = relu(Z)
        P = pool_forward(A)
        flat = P.reshape(self.n, -1)
        return Z, A, P, flat, flat @ p["Wf"].T + p["bf"]

    def cost(self, p):
        out = self.forward(p)[-1]
        return float(0.5 * np.mean((out - self.Y) ** 2))

    def grad_with(self, pool_backward):
        def grad(p):
            Z, A, P, flat, out = self.forward(p)
            d = (out - self.Y) / self.n
            dP = (d @ p["Wf"]).reshape(P.shape)
            dZ = pool_backward(dP, A) * (Z > 0)
            return {
                "Wc": np.einsum("nfhw,nchw->fc", dZ, self.img),
                "bc": dZ.sum(axis=(0, 2, 3)),
                "Wf": d.T @ flat,
                "bf": d.sum(axis=0),
            }

        return grad


@pytest.mark.parametrize("method, options", METHODS)
def test_upsampled_images_every_max_is_4x_and_first_argmax_is_right(method, options):
    net = UpsampledConvNet()
    bad = jc.check(
        net.cost, net.grad_with(pool_backward_every_max), net.params, method=method, **options
    )
    assert bad.failing == ["Wc", "bc"]
    assert bad.leaves["Wc"].factor == pytest.approx(4.0, rel=1e-6)
    assert bad.leaves["bc"].factor == pytest.approx(4.0, rel=1e-6)
    assert "4.00×" in bad.leaves["bc"].message
    good = jc.check(
        net.cost, net.grad_with(pool_backward_first_argmax), net.params, method=method, **options
    )
    assert good.ok, str(good)


@pytest.mark.parametrize("backward", [pool_backward_every_max, pool_backward_first_argmax])
def test_ties_methods_agree_on_the_failing_set(backward):
    x = tied_input((2, 3, 4), seed=5)
    problem = relu_pool_problem(x, POSITIVE_V, backward)
    runs = [
        ("full", {}),
        ("sample", {"samples": 32}),
        ("sample", {"samples": 1}),
        ("directional", {}),
        ("directional", {"directions": 1}),
    ]
    failing = {
        f"{method}{options}": jc.check(*problem, method=method, **options).failing
        for method, options in runs
    }
    assert len({tuple(v) for v in failing.values()}) == 1, failing


@pytest.mark.parametrize(
    "method, options", [*METHODS, pytest.param("sample", {"samples": 8}, id="sample-8")]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_a_tie_half_right_fails_in_every_method(method, options, seed):
    # jax.grad splits a tie equally: (0.5, 0.5). This backprop gives (0.5, 1.0): entry 0 agrees
    # with autodiff, entry 1 lies between its one-sided slopes, and together they are not a
    # subgradient of the max (0.5 + 1.0 > 1 along (1, 1)). Full finds it through the joint
    # test; a method that leaves entry 0 unprobed must not call it correct.
    x = np.linspace(-1.0, 1.0, 16)
    x[0] = x[1] = 2.0

    def cost(p):
        return float(max(p["x"][0], p["x"][1]) + 0.5 * np.sum(p["x"][2:] ** 2))

    def grad(p):
        g = p["x"].copy()
        g[0], g[1] = 0.5, 1.0
        return {"x": g}

    report = jc.check(cost, grad, {"x": x}, method=method, seed=seed, **options)
    assert report.failing == ["x"], str(report)


@pytest.mark.parametrize("method, options", METHODS)
def test_relu_at_exactly_zero_both_conventions_pass(method, options):
    # A padding example (all-zero input) and zero-initialised biases put every hidden unit at
    # Z = 0 exactly: relu'(0) = 0 (Z > 0) and relu'(0) = 1 (Z >= 0) are both valid.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 6))
    X[:, 0] = 0.0
    Y = rng.normal(size=(1, 6))
    params = {
        "W1": rng.normal(size=(4, 3)),
        "b1": np.zeros((4, 1)),
        "W2": np.array([[1.0, -1.0, 0.5, -2.0]]),
        "b2": np.zeros((1, 1)),
    }

    def cost(p):
        A1 = relu(p["W1"] @ X + p["b1"])
        return float(np.sum((p["W2"] @ A1 + p["b2"] - Y) ** 2) / 12)

    def grad(p, mask):
        Z1 = p["W1"] @ X + p["b1"]
        A1 = relu(Z1)
        dZ2 = (p["W2"] @ A1 + p["b2"] - Y) / 6
        dZ1 = (p["W2"].T @ dZ2) * mask(Z1)
        return {
            "dW1": dZ1 @ X.T,
            "db1": dZ1.sum(axis=1, keepdims=True),
            "dW2": dZ2 @ A1.T,
            "db2": dZ2.sum(axis=1, keepdims=True),
        }

    for mask in (lambda Z: Z > 0, lambda Z: Z >= 0):
        report = jc.check(
            cost, lambda p, mask=mask: grad(p, mask), params, method=method, **options
        )
        assert report.ok, str(report)
        assert report.leaves["b1"].status == "kink"
    missing = jc.check(
        cost, lambda p: grad(p, lambda Z: np.ones_like(Z)), params, method=method, **options
    )
    assert missing.failing == ["W1", "b1"]


def test_l1_subgradient_at_pruned_weights():
    # λ‖w‖₁ with weights pruned to exactly 0: sign(w) (0 there) and a ±1 choice are valid;
    # w / |w| is NaN there, and a doubled penalty is outside the one-sided slopes.
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(12, 6)), rng.normal(size=12)
    w = rng.normal(size=6)
    w[[1, 4]] = 0.0
    lam = 0.3

    def cost(p):
        r = X @ p["w"] - y
        return float(np.mean(r**2) / 2 + lam * np.sum(np.abs(p["w"])))

    def grad(p, l1):
        return {"w": X.T @ (X @ p["w"] - y) / len(y) + l1(p["w"])}

    for l1 in (lambda v: lam * np.sign(v), lambda v: lam * np.where(v >= 0, 1.0, -1.0)):
        report = jc.check(cost, lambda p, l1=l1: grad(p, l1), {"w": w})
        assert report.ok, str(report)
        assert report.leaves["w"].status == "kink"
    with np.errstate(invalid="ignore"):
        report = jc.check(cost, lambda p: grad(p, lambda v: lam * v / np.abs(v)), {"w": w})
    assert report.failing == ["w"]
    assert "NaN" in report.leaves["w"].message and "(1,)" in report.leaves["w"].message


def test_abs_kink_backprop_outside_both_one_sided_slopes_is_wrong():
    # At |x| = 0 the one-sided slopes are ±w; backprop 1.5·w lies outside both, with finite
    # differences (and the slopes) exact: that is a wrong gradient, not an undecidable one.
    w = np.array([1.0, -1.0, 2.0, -0.5])
    params = {"x": np.array([0.0, 0.0, 0.0, 0.0, 1.0, 2.0])}

    def cost(p):
        return float(np.sum(w * np.abs(p["x"][:4])) + np.sum(p["x"][4:] ** 2))

    def grad(p, f):
        return {"x": np.concatenate([f * w, 2 * p["x"][4:]])}

    assert jc.check(cost, lambda p: grad(p, 1.0), params).ok
    report = jc.check(cost, lambda p: grad(p, 1.5), params)
    assert report.failing == ["x"], str(report)


def max_pool_forward_naive(x, pool_param):
    N, C, H, W = x.shape
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    Ho, Wo = 1 + (H - ph) // s, 1 + (W - pw) // s
    out = np.zeros((N, C, Ho, Wo))
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    out[n, c, i, j] = np.max(x[n, c, i * s : i * s + ph, j * s : j * s + pw])
    return out, (x, pool_param)


def max_pool_backward_naive(dout, cache, every=False):
    x, pool_param = cache
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    dx = np.zeros_like(x)
    N, C, Ho, Wo = dout.shape
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    window = x[n, c, i * s : i * s + ph, j * s : j * s + pw]
                    if every:  # the bug: every entry equal to the max gets dout
                        mask = window == np.max(window)
                        dx[n, c, i * s : i * s + ph, j * s : j * s + pw] += mask * dout[n, c, i, j]
                    else:
                        r, q = np.unravel_index(np.argmax(window), window.shape)
                        dx[n, c, i * s + r, j * s + q] += dout[n, c, i, j]
    return dx


@pytest.mark.slow  # tracing the four nested loops of the naive layer takes a few seconds
@pytest.mark.parametrize("method, options", METHODS)
def test_check_layer_naive_max_pool_with_ties_after_relu(method, options):
    # The course's layer file, checked with check_layer and a random (signed) dout.
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(2, 2, 4, 4)), 0)  # after a ReLU
    x[0, 0, 0:2, 0:2] = [[1.5, 1.5], [0.2, 0.0]]  # 2 tied
    x[0, 1, 2:4, 2:4] = [[0.7, 0.7], [0.7, 0.1]]  # 3 tied
    x[1, 0, 0:2, 2:4] = [[2.0, 2.0], [2.0, 2.0]]  # 4 tied
    pool = {"pool_height": 2, "pool_width": 2, "stride": 2}
    good = jc.check_layer(
        max_pool_forward_naive, max_pool_backward_naive, x, pool, method=method, **options
    )
    assert good.ok, str(good)
    assert good.leaves["x"].status == "kink"
    bad = jc.check_layer(
        max_pool_forward_naive,
        lambda dout, cache: max_pool_backward_naive(dout, cache, every=True),
        x,
        pool,
        method=method,
        **options,
    )
    assert bad.failing == ["x"], str(bad)
    assert "not a subgradient" in bad.leaves["x"].message


def test_check_layer_backward_with_a_nan_fails():
    def affine_forward(x, w, b):
        return x @ w + b, (x, w, b)

    def affine_backward(dout, cache):
        x, w, b = cache
        dw = x.T @ dout
        dw[1, 0] = np.nan
        return dout @ w.T, dw, dout.sum(axis=0)

    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=(2,))
    report = jc.check_layer(affine_forward, affine_backward, x, w, b)
    assert report.failing == ["w"]
    assert "NaN" in report.leaves["w"].message and "(1, 0)" in report.leaves["w"].message


# =========================================================================== 4. per-leaf floors


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


# =========================================================================== 5. precision


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


# =========================================================================== 6. the culprit


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


# =========================================================================== 7. twin refusals


@pytest.mark.parametrize("K, m, scale", [(10, 20, 1e-4), (20, 20, 1e-5), (30, 10, 1e-5)])
def test_faithful_port_of_a_cancelling_cost_is_not_refused(K, m, scale):
    # KL(P‖softmax(Z)) written as Σ P log P − Σ P log q: two large sums that nearly cancel, so
    # NumPy's pairwise summation and XLA's order differ far above 1e-9 relative.
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(K), size=m).T
    params = {"Z": np.log(P) + scale * rng.normal(size=(K, m))}

    def cost(p):
        Z = p["Z"] - p["Z"].max(axis=0, keepdims=True)
        logq = Z - np.log(np.sum(np.exp(Z), axis=0, keepdims=True))
        return (np.sum(P * np.log(P)) - np.sum(P * logq)) / m

    def grad(p):
        Z = p["Z"] - p["Z"].max(axis=0, keepdims=True)
        q = np.exp(Z)
        q /= q.sum(axis=0, keepdims=True)
        return {"Z": (q - P) / m}

    def twin(p):  # the same function written the JAX way: another summation order
        logq = jax.nn.log_softmax(p["Z"], axis=0)
        return jnp.mean(jnp.sum(P * (jnp.log(P) - logq), axis=0))

    mismatches = []
    for jax_cost in (None, twin):
        report = jc.check(cost, grad, params, jax_cost=jax_cost)
        assert report.ok, str(report)
        mismatches.append(report.cost_mismatch)
        wrong = jc.check(cost, lambda p: {"Z": 1.5 * grad(p)["Z"]}, params, jax_cost=jax_cost)
        assert wrong.failing == ["Z"]
    assert max(mismatches) > 1e-9  # above float64's flat tolerance: the rounding rule decided


class L2Net(TwoLayerNet):
    def __init__(self, dtype=np.float64, l2_share=1e-3):
        super().__init__(seed=4, m=32, dtype=dtype)
        base = float(self.cross_entropy(self.params))
        l2 = float(np.sum(self.params["W1"] ** 2) + np.sum(self.params["W2"] ** 2))
        self.m = self.X.shape[1]
        # λ so that the L2 term is l2_share of the cost
        self.lambd = l2_share / (1 - l2_share) * base / l2 * 2 * self.m

    def cross_entropy(self, p, np=np):
        A1 = np.tanh(p["W1"] @ self.X + p["b1"])
        Z2 = p["W2"] @ A1 + p["b2"]
        return np.mean(np.logaddexp(0, Z2) - self.Y * Z2)

    def cost(self, p):
        l2 = np.sum(np.square(p["W1"])) + np.sum(np.square(p["W2"]))
        return self.cross_entropy(p) + self.lambd / (2 * self.m) * l2

    def grad(self, p):
        g = super().grad(p)
        g["dW1"] = g["dW1"] + self.lambd / self.m * p["W1"]
        g["dW2"] = g["dW2"] + self.lambd / self.m * p["W2"]
        return g

    def twins(self):
        m, lam = self.m, self.lambd

        def l2(p):
            return jnp.sum(p["W1"] ** 2) + jnp.sum(p["W2"] ** 2)

        def faithful(p):
            Z2 = p["W2"] @ jnp.tanh(p["W1"] @ self.X + p["b1"]) + p["b2"]
            return jnp.mean(jax.nn.softplus(Z2) - self.Y * Z2) + lam / (2 * m) * l2(p)

        return {
            "faithful": faithful,
            "missing-l2": lambda p: self.cross_entropy(p, np=jnp),
            "l2-over-m-not-2m": lambda p: self.cross_entropy(p, np=jnp) + lam / m * l2(p),
            "mean-over-m-minus-1": lambda p: faithful(p) * m / (m - 1),
        }


@pytest.mark.parametrize("l2_share", [1e-3, 1e-5])
def test_unfaithful_twins_are_refused_float64(l2_share):
    net = L2Net(np.float64, l2_share)
    twins = net.twins()
    assert jc.check(net.cost, net.grad, net.params, jax_cost=twins["faithful"]).ok
    for name in ("missing-l2", "l2-over-m-not-2m", "mean-over-m-minus-1"):
        with pytest.raises(jc.ReimplementationError) as info:
            jc.check(net.cost, net.grad, net.params, jax_cost=twins[name])
        assert "does not compute the NumPy cost" in str(info.value), name


@pytest.mark.parametrize("l2_share", [1e-3, 5e-4])
def test_unfaithful_twins_are_refused_float32(l2_share):
    # The float32 cost's own rounding is ~1e-7 relative; an L2 term worth 1e-3 of the cost is
    # another function, and accepting it blames the user's (correct) dW1 for the twin's gap.
    net = L2Net(np.float32, l2_share)
    twins = net.twins()
    assert jc.check(net.cost, net.grad, net.params, jax_cost=twins["faithful"]).ok
    for name in ("missing-l2", "l2-over-m-not-2m"):
        with pytest.raises(jc.ReimplementationError):
            report = jc.check(net.cost, net.grad, net.params, jax_cost=twins[name])
            raise AssertionError(f"{name} accepted: {report}")


def test_twin_without_the_constant_entropy_term_is_refused():
    # Cross-entropy instead of KL: the same gradient, another function.
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(5), size=8).T
    params = {"Z": rng.normal(size=(5, 8))}

    def cost(p):
        logq = p["Z"] - np.log(np.sum(np.exp(p["Z"]), axis=0, keepdims=True))
        return float(np.sum(P * (np.log(P) - logq)) / 8)

    def grad(p):
        q = np.exp(p["Z"]) / np.sum(np.exp(p["Z"]), axis=0, keepdims=True)
        return {"Z": (q - P) / 8}

    with pytest.raises(jc.ReimplementationError):
        jc.check(
            cost,
            grad,
            params,
            jax_cost=lambda p: -jnp.sum(P * jax.nn.log_softmax(p["Z"], axis=0)) / 8,
        )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float32_twin_is_refused_saying_so(dtype):
    cost, grad, params = logistic(dtype)
    rng = np.random.default_rng(0)  # the same data as logistic(seed=0)
    X = rng.normal(size=(3, 16)).astype(dtype)
    Y = (rng.random((1, 16)) > 0.5).astype(dtype)

    def twin32(p):
        Z = p["w"].astype(jnp.float32) @ jnp.asarray(X, jnp.float32) + p["b"].astype(jnp.float32)
        A = jax.nn.sigmoid(Z)
        return -jnp.mean(Y * jnp.log(A) + (1 - Y) * jnp.log(1 - A))

    with pytest.raises(jc.ReimplementationError) as info:
        jc.check(cost, grad, params, jax_cost=twin32)
    message = str(info.value)
    assert "float32" in message
    assert "astype" in message or "dtype=jnp.float32" in message


# =========================================================================== errors

OK_PARAMS = {"w": np.array([0.5, -1.0, 2.0])}


def ok_cost(p):
    return float(np.sum(np.tanh(p["w"]) ** 2))


def ok_grad(p):
    t = np.tanh(p["w"])
    return {"w": 2 * t * (1 - t**2)}


@pytest.mark.parametrize(
    "options, name",
    [
        ({"seed": -1}, "seed"),
        ({"seed": None}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"eps": 1e-300}, "eps"),
        ({"eps": 1e-30}, "eps"),
        ({"eps": 0.0}, "eps"),
        ({"eps": -1e-6}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": float("inf")}, "eps"),
        ({"eps": "1e-6"}, "eps"),
        ({"eps": True}, "eps"),
        ({"rtol": 0}, "rtol"),
        ({"rtol": 2.0}, "rtol"),
        ({"rtol": float("nan")}, "rtol"),
        ({"rtol": -1e-3}, "rtol"),
        ({"method": "Full"}, "method"),
        ({"method": None}, "method"),
        ({"method": "sample", "samples": 0}, "samples"),
        ({"method": "sample", "samples": 2.0}, "samples"),
        ({"samples": 4}, "samples"),
        ({"method": "directional", "directions": -1}, "directions"),
        ({"directions": 4}, "directions"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"memory_budget": 0}, "memory_budget"),
        ({"progress": "yes"}, "progress"),
        ({"incremental": 1}, "incremental"),
        ({"twin": "never"}, "twin"),
        ({"devices": []}, "devices"),
        ({"devices": "cpu"}, "devices"),
    ],
)
def test_every_bad_option_is_an_input_error_naming_it(options, name):
    with pytest.raises(jc.InputError) as info:
        jc.check(ok_cost, ok_grad, OK_PARAMS, **options)
    assert name in str(info.value)


def test_eps_underflow_says_where_and_what_to_use():
    with pytest.raises(jc.InputError) as info:
        jc.check(ok_cost, ok_grad, {"w": np.array([0.5, 1e6])}, eps=1e-12)
    message = str(info.value)
    assert "eps=1e-12" in message and "'w'" in message and "(1,)" in message


def test_numpy_integer_seed_is_accepted():
    assert jc.check(ok_cost, ok_grad, OK_PARAMS, seed=np.int64(3)).ok


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({1: np.ones(2), "a": np.ones(2)}, "sorted"),
        ({("x", 1): np.ones(2), "a": np.ones(2)}, "sorted"),
    ],
)
def test_unsortable_keys_are_an_input_error(params, fragment):
    with pytest.raises(jc.InputError) as info:
        jc.check(lambda p: 0.0, lambda p: p, params)
    assert fragment in str(info.value)


def test_cyclic_containers_are_an_input_error():
    d = {"w": np.ones(2)}
    d["self"] = d
    with pytest.raises(jc.InputError, match="cyclic"):
        jc.check(ok_cost, ok_grad, d)
    lst = [np.ones(2)]
    lst.append(lst)
    with pytest.raises(jc.InputError, match="cyclic"):
        jc.check(ok_cost, ok_grad, lst)
    nested = {"layers": [{"W": np.ones(2)}]}
    nested["layers"][0]["parent"] = nested
    with pytest.raises(jc.InputError, match="cyclic"):
        jc.check(ok_cost, ok_grad, nested)


@pytest.mark.parametrize(
    "twin",
    [
        lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2) + 0j,
        lambda p: jnp.sum(jnp.tanh(p["w"].astype(jnp.complex128)) ** 2),
        lambda p: jnp.vdot(jnp.tanh(p["w"]) + 1j, jnp.tanh(p["w"])),
    ],
)
def test_complex_twin_is_a_clear_error(twin):
    with pytest.raises(jc.JaxcheckError) as info:
        jc.check(ok_cost, ok_grad, OK_PARAMS, jax_cost=twin)
    assert "complex" in str(info.value)


def test_non_scalar_twin_is_a_clear_error():
    with pytest.raises(jc.JaxcheckError) as info:
        jc.check(ok_cost, ok_grad, OK_PARAMS, jax_cost=lambda p: jnp.tanh(p["w"]) ** 2)
    assert "(3,)" in str(info.value)


def test_exception_in_the_users_cost_names_file_and_line():
    def cost(p):
        A = np.tanh(p["w"])
        return float(A[5])  # IndexError in the user's forward

    with pytest.raises(jc.UserCodeError) as info:
        jc.check(cost, ok_grad, OK_PARAMS)
    err = info.value
    assert isinstance(err.__cause__, IndexError)
    assert err.filename == __file__
    assert err.lineno == cost.__code__.co_firstlineno + 2
    assert "return float(A[5])" in str(err)
    assert "IndexError" in str(err)


def test_exception_in_the_users_grad_inside_a_helper_names_the_helper_line():
    def layer_backward(dout, cache):
        x, w = cache
        return dout @ w, x.T @ dout, dout.sum(axis=0)  # (2, 3) @ (2, 3): ValueError

    def grad(p):
        return {"w": layer_backward(np.ones((2, 3)), (np.ones((2, 4)), np.ones((2, 3))))[1][0]}

    with pytest.raises(jc.UserCodeError) as info:
        jc.check(ok_cost, grad, OK_PARAMS)
    err = info.value
    assert isinstance(err.__cause__, ValueError)
    assert err.filename == __file__
    assert err.lineno == layer_backward.__code__.co_firstlineno + 2
    assert "grad" in str(err)


def test_exception_in_the_users_twin_is_a_user_code_error():
    def twin(p):
        return jnp.sum(p["W"])  # KeyError: the params hold "w"

    with pytest.raises(jc.UserCodeError) as info:
        jc.check(ok_cost, ok_grad, OK_PARAMS, jax_cost=twin)
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.lineno == twin.__code__.co_firstlineno + 1


@pytest.mark.parametrize("method, options", METHODS)
def test_jax_disable_jit_context_does_not_break_a_check(method, options):
    net = TwoLayerNet()
    with jax.disable_jit():
        good = jc.check(net.cost, net.grad, net.params, method=method, **options)
        bad = jc.check(
            net.cost, with_entry(net.grad, "db2", None, 0.0), net.params, method=method, **options
        )
    assert good.ok
    assert bad.failing == ["b2"]


def test_jax_disable_jit_config_flag_does_not_break_a_check():
    net = TwoLayerNet()
    jax.config.update("jax_disable_jit", True)
    try:
        report = jc.check(net.cost, net.grad, net.params)
        assert jax.config.jax_disable_jit
    finally:
        jax.config.update("jax_disable_jit", False)
    assert report.ok


# --------------------------------------------------------------------------- many small leaves


def many_leaves(n_layers, size, seed=0):
    rng = np.random.default_rng(seed)
    params = [
        {"w": 0.5 * rng.normal(size=(size,)), "b": 0.1 * rng.normal(size=(size,))}
        for _ in range(n_layers)
    ]

    def cost(p):
        return float(sum(np.sum(np.tanh(layer["w"] + layer["b"])) for layer in p))

    def grad(p):
        out = []
        for layer in p:
            d = 1 - np.tanh(layer["w"] + layer["b"]) ** 2
            out.append({"w": d, "b": d.copy()})
        return out

    return cost, grad, params


def test_300_small_leaves_full_check_finds_the_one_bug():
    cost, grad, params = many_leaves(150, 1)

    def wrong(p):
        g = grad(p)
        g[77]["b"] = 1.01 * g[77]["b"]
        return g

    start = time.perf_counter()
    assert jc.check(cost, grad, params).ok
    report = jc.check(cost, wrong, params)
    assert report.failing == ["77/b"]
    assert len(report.leaves) == 300
    assert time.perf_counter() - start < 60


_MANY_LEAVES_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_integrity import many_leaves
    import jaxcheck as jc
    cost, grad, params = many_leaves(150, 16)
    start = time.perf_counter()
    report = jc.check(cost, grad, params, method={method!r})
    assert report.ok and len(report.leaves) == 300, report
    print("seconds", time.perf_counter() - start)
    """
)


@pytest.mark.slow
# sample with 16-entry leaves is full mode's program; directional once grew one per leaf
@pytest.mark.parametrize("method", ["full", "directional"])
def test_300_leaves_of_16_compile_in_reasonable_time(method, tmp_path):
    # A fresh process with the disk cache off, so the compile is measured: one program for the
    # small leaves, not one per leaf.
    import os

    env = dict(os.environ, JAXCHECK_NO_CACHE="1")
    script = _MANY_LEAVES_SCRIPT.format(
        tests=str(__import__("pathlib").Path(__file__).parent), method=method
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"method={method}: 300 leaves of 16 entries took over 120 s")
    assert out.returncode == 0, out.stderr[-2000:]


# --------------------------------------------------------------------------- no trace left


@pytest.mark.parametrize("method, options", METHODS)
def test_no_check_changes_the_users_arrays(method, options):
    net = TwoLayerNet()
    params_before = {k: v.copy() for k, v in net.params.items()}
    ids = {k: id(v) for k, v in net.params.items()}
    X_before, Y_before = net.X.copy(), net.Y.copy()
    flags = {k: v.flags.writeable for k, v in net.params.items()}
    returned = {}

    def grad(p):
        g = net.grad(p)
        returned.update({k: (v, v.copy()) for k, v in g.items()})
        return g

    for g in (grad, with_entry(net.grad, "dW1", (0, 0), np.nan)):
        jc.check(net.cost, g, net.params, method=method, **options)
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, params_before[k])
        assert id(v) == ids[k] and v.flags.writeable == flags[k]
    np.testing.assert_array_equal(net.X, X_before)
    np.testing.assert_array_equal(net.Y, Y_before)
    for array, copy in returned.values():
        np.testing.assert_array_equal(array, copy)  # the gradient the user returned, too


def test_in_place_backprop_does_not_reach_the_users_params():
    net = TwoLayerNet()
    before = {k: v.copy() for k, v in net.params.items()}

    def grad_that_updates(p):  # a backward that does the SGD step in place, as a trainer would
        g = net.grad(p)
        for k in ("W1", "b1", "W2", "b2"):
            p[k] -= 0.1 * g["d" + k]
        return net.grad({k: v + 0.1 * g["d" + k] for k, v in p.items()})

    jc.check(net.cost, grad_that_updates, net.params)
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_a_check_leaves_jax_config_and_numpy_state_alone():
    net = TwoLayerNet()
    x64 = jax.config.jax_enable_x64
    errstate = np.geterr()
    printopts = np.get_printoptions()
    state = np.random.get_state()[1].copy()
    jc.check(net.cost, net.grad, net.params, method="directional")
    jc.check(net.cost, net.grad, net.params, method="sample", samples=2)
    assert jax.config.jax_enable_x64 == x64
    assert np.geterr() == errstate
    assert np.get_printoptions() == printopts
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert math.isfinite(net.cost(net.params))
