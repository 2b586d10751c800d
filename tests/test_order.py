"""Leaves are listed in the user's order: dict insertion order, forward's arguments, attributes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.system.order import in_user_order, user_order

RNG = np.random.default_rng(3)
X, Y = RNG.normal(size=(3, 5)), RNG.normal(size=(2, 5))


def _net(p):  # one hidden tanh layer, the course's column layout
    h = np.tanh(p["W1"] @ X + p["b1"])
    return h, p["W2"] @ h + p["b2"]


def cost(p):
    return float(np.mean((_net(p)[1] - Y) ** 2))


def grad(p):
    h, out = _net(p)
    d = 2 * (out - Y) / out.size
    dh = (p["W2"].T @ d) * (1 - h**2)
    return {
        "W1": dh @ X.T,
        "b1": dh.sum(1, keepdims=True),
        "W2": d @ h.T,
        "b2": 3 * d.sum(1)[:, None],
    }


PARAMS = {
    "W1": RNG.normal(size=(4, 3)),
    "b1": np.zeros((4, 1)),
    "W2": RNG.normal(size=(2, 4)),
    "b2": np.zeros((2, 1)),
}


def test_user_order_walks_dicts_in_insertion_order_and_sequences_by_index() -> None:
    params = {"z": 1.0, "a": [np.ones(2), {"y": np.ones(1), "b": np.ones(1)}], "m": (2.0,)}
    assert user_order(params) == ["z", "a/0", "a/1/y", "a/1/b", "m/0"]


def test_in_user_order_keeps_paths_it_does_not_know_at_the_end() -> None:
    leaves = {"a": 1, "b": 2, "extra": 3, "c": 4}
    assert list(in_user_order(leaves, {"c": 0, "a": 0, "b": 0})) == ["c", "a", "b", "extra"]


def test_a_dict_is_reported_in_insertion_order_in_text_html_and_json() -> None:
    report = jc.check(cost, grad, PARAMS)
    assert list(report.leaves) == ["W1", "b1", "W2", "b2"]
    assert report.failing == ["b2"]
    rows = [line.split()[0] for line in str(report).splitlines()[3:7]]
    assert rows == ["W1", "b1", "W2", "b2"]
    page = report._repr_html_()
    assert [page.index(f">{p}</td>") for p in rows] == sorted(
        page.index(f">{p}</td>") for p in rows
    )
    assert list(json.loads(json.dumps(report.to_dict()))["leaves"]) == ["W1", "b1", "W2", "b2"]


def test_the_plot_puts_leaves_in_the_users_order() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    report = jc.check(cost, grad, {k: PARAMS[k] for k in ("b2", "W1", "b1", "W2")})
    figure = report.plot()
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    plt.close(figure)
    assert labels == ["b2", "W1", "b1", "W2"]


def test_a_layer_is_reported_in_forwards_argument_order() -> None:
    def forward(x, w, b):
        return x @ w + b, (x, w)

    def backward(dout, cache):
        x, w = cache
        return dout @ w.T, x.T @ dout, dout.sum(axis=0)

    x, w, b = RNG.normal(size=(3, 4)), RNG.normal(size=(4, 2)), RNG.normal(size=2)
    report = jc.check_layer(forward, backward, x, w, b)
    assert report.ok and list(report.leaves) == ["x", "w", "b"]


class Model:
    def __init__(self):
        self.weights = [RNG.normal(size=(2, 3))]
        self.bias = np.zeros((2, 1))

    def loss(self):
        return float(np.sum(np.tanh(self.weights[0] @ X + self.bias) ** 2))

    def gradients(self):
        t = np.tanh(self.weights[0] @ X + self.bias)
        d = 2 * t * (1 - t**2)
        return d.sum(axis=1, keepdims=True), [d @ X.T]


def test_an_object_is_reported_in_the_order_of_attributes() -> None:
    model = Model()
    report = jc.check_object(model, Model.loss, Model.gradients, attributes=("bias", "weights"))
    assert report.ok, str(report)
    assert list(report.leaves) == ["bias", "weights/0"]
