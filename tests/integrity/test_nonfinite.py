"""Verdict integrity, non-finite backprop entries: a NaN or inf in the user's gradient
never passes, whichever entries the method probes.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxcheck as jc
from integrity.course import METHODS, TwoLayerNet, with_entry


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
