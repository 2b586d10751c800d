"""Declared approximations: ``expected={"path": "surrogate"}`` on check, check_layer, check_object.

Gradient clipping and truncated backprop through time are deliberate: the gradient differs from
the cost's derivative by design. Declared, the leaf shows its difference and factor with status
"declared" and never fails; undeclared, the same code fails as before.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxcheck as jc

# ------------------------------------------------------------ a net with clipped gradients


def _two_layer(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(5, 4))
    Y = rng.normal(size=(5, 2))
    params = {
        "W1": rng.normal(size=(4, 3)),
        "b1": np.zeros(3),
        "W2": rng.normal(size=(3, 2)),
        "b2": np.zeros(2),
    }
    return X, Y, params


def forward_backward(params, X, Y, clip=None):
    """A course-style training step: the loss, and grads clipped elementwise to ±clip."""
    Z1 = X @ params["W1"] + params["b1"]
    A1 = np.tanh(Z1)
    out = A1 @ params["W2"] + params["b2"]
    loss = 0.5 * np.sum((out - Y) ** 2)
    dout = out - Y
    grads = {"W2": A1.T @ dout, "b2": dout.sum(axis=0)}
    dA1 = dout @ params["W2"].T
    dZ1 = dA1 * (1 - A1**2)
    grads["W1"] = X.T @ dZ1
    grads["b1"] = dZ1.sum(axis=0)
    if clip is not None:
        for k in grads:
            np.clip(grads[k], -clip, clip, out=grads[k])
    return loss, grads


def _clipped_setup():
    X, Y, params = _two_layer()
    _, exact = forward_backward(params, X, Y)
    clip = 0.5 * min(np.max(np.abs(g)) for g in exact.values())  # every leaf gets clipped
    return X, Y, params, clip


def test_declared_gradient_clipping_passes_and_says_declared():
    X, Y, params, clip = _clipped_setup()
    report = jc.check(
        lambda p: forward_backward(p, X, Y, clip)[0],
        lambda p: forward_backward(p, X, Y, clip)[1],
        params,
        expected={k: "surrogate" for k in params},
    )
    assert report.ok and report.failing == []
    assert sorted(report.declared) == sorted(params)
    for leaf in report.leaves.values():
        assert leaf.status == jc.Status.DECLARED and leaf.found == "backprop"
        assert leaf.wrong > 0 and leaf.difference_autodiff > 1e-3
        assert "declared" in leaf.message
    text = str(report)
    assert "declared" in text and "WRONG" not in text
    assert "declared" in report._repr_html_()
    out = json.loads(json.dumps(report.to_dict()))
    assert out["ok"] and sorted(out["declared"]) == sorted(params)
    assert {leaf["status"] for leaf in out["leaves"].values()} == {"declared"}


def test_undeclared_gradient_clipping_still_fails():
    X, Y, params, clip = _clipped_setup()
    report = jc.check(
        lambda p: forward_backward(p, X, Y, clip)[0],
        lambda p: forward_backward(p, X, Y, clip)[1],
        params,
    )
    assert not report.ok and sorted(report.failing) == sorted(params)
    assert report.declared == []


def test_declaring_one_leaf_leaves_the_others_judged():
    X, Y, params, clip = _clipped_setup()
    report = jc.check(
        lambda p: forward_backward(p, X, Y, clip)[0],
        lambda p: forward_backward(p, X, Y, clip)[1],
        params,
        expected={"W1": "surrogate"},
    )
    assert not report.ok
    assert report.leaves["W1"].status == "declared"
    assert "W1" not in report.failing and "W2" in report.failing


def test_a_correct_leaf_declared_a_surrogate_keeps_its_own_status():
    X, Y, params = _two_layer()
    report = jc.check(
        lambda p: forward_backward(p, X, Y)[0],
        lambda p: forward_backward(p, X, Y)[1],
        params,
        expected={"W1": "surrogate"},
    )
    assert report.ok and report.leaves["W1"].status == "ok"
    assert report.leaves["W1"].expected == "surrogate"


def test_expected_naming_no_leaf_lists_the_leaves():
    X, Y, params = _two_layer()
    with pytest.raises(jc.InputError, match=r"'dW1'.*leaves are 'W1', 'W2', 'b1', 'b2'"):
        jc.check(
            lambda p: forward_backward(p, X, Y)[0],
            lambda p: forward_backward(p, X, Y)[1],
            params,
            expected={"dW1": "surrogate"},
        )


# --------------------------------------------------------- truncated backprop through time


def rnn_loss_and_grads(params, xs, target, truncate=None):
    """A vanilla RNN over the sequence; loss on the last hidden state; BPTT over the last
    ``truncate`` steps only (all of them when None)."""
    Wxh, Whh, bh = params["Wxh"], params["Whh"], params["bh"]
    hs = [np.zeros(Whh.shape[0])]
    for x in xs:
        hs.append(np.tanh(Wxh @ x + Whh @ hs[-1] + bh))
    diff = hs[-1] - target
    loss = 0.5 * np.sum(diff**2)
    dWxh, dWhh, dbh = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(bh)
    dh = diff
    steps = range(len(xs) - 1, -1, -1)
    if truncate is not None:
        steps = list(steps)[:truncate]
    for t in steps:
        dz = dh * (1 - hs[t + 1] ** 2)
        dWxh += np.outer(dz, xs[t])
        dWhh += np.outer(dz, hs[t])
        dbh += dz
        dh = Whh.T @ dz
    return loss, {"Wxh": dWxh, "Whh": dWhh, "bh": dbh}


def _rnn():
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=3) for _ in range(6)]
    params = {
        "Wxh": 0.8 * rng.normal(size=(4, 3)),
        "Whh": 0.8 * rng.normal(size=(4, 4)),
        "bh": 0.1 * rng.normal(size=4),
    }
    return params, xs, rng.normal(size=4)


def test_truncated_bptt_declared_passes_and_full_bptt_is_correct():
    params, xs, target = _rnn()
    full = jc.check(lambda p: rnn_loss_and_grads(p, xs, target), None, params)
    assert full.ok
    report = jc.check(
        lambda p: rnn_loss_and_grads(p, xs, target, truncate=2),
        None,
        params,
        expected={"Wxh": "surrogate", "Whh": "surrogate", "bh": "surrogate"},
    )
    assert report.ok
    assert {p: str(leaf.status) for p, leaf in report.leaves.items()} == {
        "Wxh": "declared",
        "Whh": "declared",
        "bh": "declared",
    }


def test_truncated_bptt_undeclared_fails():
    params, xs, target = _rnn()
    report = jc.check(lambda p: rnn_loss_and_grads(p, xs, target, truncate=2), None, params)
    assert not report.ok and sorted(report.failing) == ["Whh", "Wxh", "bh"]


# ------------------------------------------------------------------ check_layer, check_object


def affine_forward(x, w, b):
    return x @ w + b, (x, w)


def clipped_affine_backward(dout, cache):
    x, w = cache
    dw = np.clip(x.T @ dout, -0.1, 0.1)  # the layer clips its weight gradient
    return dout @ w.T, dw, dout.sum(axis=0)


def test_check_layer_takes_declared_approximations():
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2)), rng.normal(size=2)
    bad = jc.check_layer(affine_forward, clipped_affine_backward, x, w, b)
    assert bad.failing == ["w"]
    report = jc.check_layer(
        affine_forward, clipped_affine_backward, x, w, b, expected={"w": "surrogate"}
    )
    assert report.ok and report.leaves["w"].status == "declared"
    assert report.leaves["x"].status == "ok"


class ClippedNet:
    """A from-scratch model whose ``loss`` returns grads clipped by their global norm."""

    def __init__(self, rng, max_norm):
        self.params = {"W": rng.normal(size=(3, 2)), "b": np.zeros(2)}
        self.max_norm = max_norm

    def loss(self, X, y):
        scores = X @ self.params["W"] + self.params["b"]
        loss = 0.5 * np.sum((scores - y) ** 2)
        d = scores - y
        grads = {"W": X.T @ d, "b": d.sum(axis=0)}
        norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
        if norm > self.max_norm:
            grads = {k: g * (self.max_norm / norm) for k, g in grads.items()}
        return loss, grads


def test_check_object_takes_declared_approximations():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    net = ClippedNet(rng, max_norm=0.1)
    bad = jc.check_object(net, lambda m: m.loss(X, y), attributes="params")
    assert sorted(bad.failing) == ["W", "b"]
    report = jc.check_object(
        net,
        lambda m: m.loss(X, y),
        attributes="params",
        expected={"W": "surrogate", "b": "surrogate"},
    )
    assert report.ok and report.declared == ["W", "b"]
    # The difference is a factor (clipping by norm scales every gradient): still shown.
    assert report.leaves["W"].factor is not None and report.leaves["W"].factor < 1
