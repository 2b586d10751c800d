"""Functions that return ``(loss, grads)`` together, checked with ``jc.check(fn, None, params)``.

The losses are written as course assignments write them: vectorized ``svm_loss(x, y)`` and
``softmax_loss(x, y)`` returning ``(loss, dx)``, naive loops returning ``(loss, dW)``, and a
two-layer network's loss returning ``(loss, grads)`` keyed like its parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
from realistic.losses import softmax_loss, softmax_loss_naive, svm_loss, svm_loss_naive

import jaxcheck as jc

# --------------------------------------------------------------------------------------------
# The system under test
# --------------------------------------------------------------------------------------------


def two_layer_loss(params, X, y, reg=0.0, bug=None):
    """A two-layer ReLU net's loss and gradients, written inline as in the first assignment."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    N = X.shape[0]
    hidden = np.maximum(0, X.dot(W1) + b1)
    scores = hidden.dot(W2) + b2
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(N), y]).mean() + reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
    dscores = probs.copy()
    dscores[np.arange(N), y] -= 1
    grads = {}
    grads["W2"] = hidden.T.dot(dscores) / N + 2 * reg * W2
    grads["b2"] = dscores.sum(axis=0) / N
    if bug == "forgot 1/N":
        grads["b2"] = dscores.sum(axis=0)
    dhidden = dscores.dot(W2.T) / N
    dhidden[hidden <= 0] = 0
    grads["W1"] = X.T.dot(dhidden) + 2 * reg * W1
    if bug == "reg":
        grads["W1"] = X.T.dot(dhidden) + reg * W1
    grads["b1"] = dhidden.sum(axis=0)
    return loss, grads


def logistic_loss_lesson_style(parameters, X, Y):
    """Column-major, keys prefixed with "d" and extra intermediates, as in the lesson."""
    W, b = parameters["W"], parameters["b"]
    m = X.shape[1]
    A = 1 / (1 + np.exp(-(W @ X + b)))
    cost = -np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A)) / m
    dZ = A - Y
    return float(np.squeeze(cost)), {
        "dW": dZ @ X.T / m,
        "db": dZ.sum(axis=1, keepdims=True),
        "dZ": dZ,
    }


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

RNG = np.random.default_rng(11)
N, C, D, H = 6, 4, 5, 7
SCORES = RNG.normal(size=(N, C))
LABELS = RNG.integers(0, C, size=N)
X = RNG.normal(size=(N, D))
W_LINEAR = 0.1 * RNG.normal(size=(D, C))
PARAMS = {
    "W1": 0.5 * RNG.normal(size=(D, H)),
    "b1": 0.1 * RNG.normal(size=H),
    "W2": 0.5 * RNG.normal(size=(H, C)),
    "b2": 0.1 * RNG.normal(size=C),
}


# --------------------------------------------------------------------------------------------
# (loss, dx): one leaf, the gradient returned bare
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [svm_loss, softmax_loss], ids=["svm", "softmax"])
def test_loss_returning_a_bare_dx_for_one_leaf(loss):
    x = SCORES.copy()
    report = jc.check(lambda p: loss(p["x"], LABELS), None, {"x": x})
    assert report.ok and report.twin == "ported", str(report)
    assert list(report.leaves) == ["x"] and np.array_equal(x, SCORES)


def test_svm_forgetting_one_over_n():
    report = jc.check(lambda p: svm_loss(p["x"], LABELS, forget_n=True), None, {"x": SCORES})
    assert report.failing == ["x"] and report.leaves["x"].ratio == pytest.approx(N)


def test_softmax_forgetting_the_correct_class_term():
    fn = lambda p: softmax_loss(p["x"], LABELS, forget_correct_class=True)  # noqa: E731
    report = jc.check(fn, None, {"x": SCORES})
    assert report.failing == ["x"]
    assert "BACKPROP WRONG" in str(report)


def test_bare_gradient_for_several_leaves_is_an_input_error():
    def fn(p):
        loss, dx = softmax_loss(p["x"] + p["shift"], LABELS)
        return loss, dx

    with pytest.raises(jc.InputError, match="no entry for leaf"):
        jc.check(fn, None, {"x": SCORES, "shift": np.zeros(C)})


# --------------------------------------------------------------------------------------------
# (loss, dW) with loops
# --------------------------------------------------------------------------------------------


def test_naive_softmax_with_loops_ports():
    report = jc.check(lambda p: softmax_loss_naive(p["W"], X, LABELS, 0.1), None, {"W": W_LINEAR})
    assert report.ok and report.twin == "ported", str(report)


def test_naive_svm_with_if_on_margins_is_checked_three_way():
    """``if margin > 0`` branches on a value computed from W: the port if-converts it."""
    report = jc.check(lambda p: svm_loss_naive(p["W"], X, LABELS, 0.1), None, {"W": W_LINEAR})
    assert report.ok and report.twin == "ported", str(report)
    wrong_reg = lambda p: svm_loss_naive(p["W"], X, LABELS, 0.1, reg_factor=1)  # noqa: E731
    report = jc.check(wrong_reg, None, {"W": W_LINEAR})
    assert report.failing == ["W"]


# --------------------------------------------------------------------------------------------
# (loss, grads) keyed like params
# --------------------------------------------------------------------------------------------


def test_two_layer_loss_keyed_like_params():
    params = {k: v.copy() for k, v in PARAMS.items()}
    report = jc.check(lambda p: two_layer_loss(p, X, LABELS, reg=0.05), None, params)
    assert report.ok and sorted(report.leaves) == ["W1", "W2", "b1", "b2"], str(report)
    assert all(np.array_equal(params[k], PARAMS[k]) for k in PARAMS)


@pytest.mark.parametrize(
    ("bug", "failing", "ratio"),
    [("forgot 1/N", ["b2"], N), ("reg", ["W1"], None)],
    ids=["forgot-1/N", "wrong-reg"],
)
def test_two_layer_loss_bugs_are_localised(bug, failing, ratio):
    report = jc.check(lambda p: two_layer_loss(p, X, LABELS, reg=0.05, bug=bug), None, PARAMS)
    assert report.failing == failing, str(report)
    if ratio is not None:
        assert report.leaves[failing[0]].ratio == pytest.approx(ratio)


def test_lesson_style_d_keys_and_intermediates():
    Xc, Y = X.T, (LABELS[None, :] % 2).astype(float)
    params = {"W": 0.1 * RNG.normal(size=(1, D)), "b": np.zeros((1, 1))}
    report = jc.check(lambda p: logistic_loss_lesson_style(p, Xc, Y), None, params)
    assert report.failing == ["b"] and report.leaves["b"].ratio == pytest.approx(N), str(report)


def test_loss_returning_the_loss_alone_with_grad_none():
    with pytest.raises(jc.InputError, match=r"must return \(loss, grads\)"):
        jc.check(lambda p: softmax_loss(p["x"], LABELS)[0], None, {"x": SCORES})
