"""Kinks: subgradients accepted one entry at a time must also hold jointly (ties of a max)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc

METHODS = [("full", {}), ("sample", {"samples": 4}), ("directional", {})]


def _pool_case(ties: int):
    rng = np.random.default_rng(ties)
    x = rng.normal(size=(1, 1, 4, 4))
    window = [(0, 0), (0, 1), (1, 0), (1, 1)][:ties]
    for r, c in window:  # a tie in window (0, 0)
        x[0, 0, r, c] = 2.5
    x[0, 0, 2, 3] = x[0, 0, 3, 2] = 3.0  # and one in window (1, 1)
    dout = rng.normal(size=(1, 1, 2, 2))
    return x, dout


def max_pool_forward(x):
    N, C, H, W = x.shape
    out = np.zeros((N, C, H // 2, W // 2))
    for i in range(H // 2):
        for j in range(W // 2):
            out[:, :, i, j] = np.max(x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2], axis=(2, 3))
    return out


def max_pool_backward(x, dout, every_tie):
    dx = np.zeros_like(x)
    for i in range(x.shape[2] // 2):
        for j in range(x.shape[3] // 2):
            win = x[0, 0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            if every_tie:  # the bug: the window's gradient goes to every tied entry
                mask = win == win.max()
            else:  # one argmax (the first), as most course solutions do
                mask = np.zeros(win.shape, bool)
                mask.flat[np.argmax(win)] = True
            dx[0, 0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = mask * dout[0, 0, i, j]
    return dx


def _twin(dout):
    def twin(p):
        w = p["x"].reshape(1, 1, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 1, 2, 2, 4)
        return jnp.sum(jnp.max(w, axis=-1) * dout)

    return twin


@pytest.mark.parametrize("ties", [2, 3, 4])
@pytest.mark.parametrize("method, extra", METHODS, ids=[m for m, _ in METHODS])
def test_ties_sent_to_every_entry_fail_and_one_argmax_passes_in_every_method(ties, method, extra):
    x, dout = _pool_case(ties)
    cost = lambda p: float(np.sum(max_pool_forward(p["x"]) * dout))  # noqa: E731
    kwargs = dict(jax_cost=_twin(dout), method=method, **extra)
    good = jc.check(
        cost, lambda p: {"x": max_pool_backward(p["x"], dout, False)}, {"x": x}, **kwargs
    )
    assert good.ok, str(good)
    assert good.leaves["x"].status == "kink" and good.leaves["x"].joint[1] == 0
    bad = jc.check(cost, lambda p: {"x": max_pool_backward(p["x"], dout, True)}, {"x": x}, **kwargs)
    assert bad.failing == ["x"], str(bad)
    assert "not a subgradient" in bad.leaves["x"].message and bad.leaves["x"].joint[1] > 0


def test_a_relu_kink_shared_by_a_weight_row_and_its_bias_is_one_valid_cluster():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3, 6))
    W = rng.normal(size=(2, 3))
    b = rng.normal(size=(2, 1))
    b[0, 0] = -(W[0] @ X[:, 2])  # unit 0 sits exactly on its kink for example 2
    v = rng.normal(size=(1, 2))

    def cost(p):
        return float(np.sum(v @ np.maximum(0, p["W"] @ X + p["b"])))

    def grad(p):
        dz = (v.T @ np.ones((1, 6))) * (p["W"] @ X + p["b"] > 0)  # relu'(0) = 0
        return {"W": dz @ X.T, "b": dz.sum(axis=1, keepdims=True)}

    report = jc.check(cost, grad, {"W": W, "b": b})
    assert report.ok, str(report)
    assert report.leaves["b"].status == "kink"
