"""Networks whose parameters live in objects, checked with jc.check_object and no JAX written.

Two class styles people write: a ``Network`` with lists ``weights``/``biases`` and
``backprop(x, y) -> (nabla_b, nabla_w)`` (the online book's style), and a ``TwoLayerNet`` with a
``params`` dict and ``loss(X, y) -> (loss, grads)`` built from layer functions (the course
style). The object must be left exactly as found, also when the check fails or raises.
"""

from __future__ import annotations

import numpy as np
import pytest
from realistic.layers import (
    affine_backward,
    affine_forward,
    affine_relu_backward,
    affine_relu_forward,
)
from realistic.losses import softmax_loss
from realistic.nets import Network, sigmoid_prime

import jaxcheck as jc

# --------------------------------------------------------------------------------------------
# Lists of weights and biases, per-example backprop
# --------------------------------------------------------------------------------------------


class NetworkPrimeOfZ(Network):
    def hidden_delta(self, layer, zs, delta):
        z = zs[-layer]
        sp = z * (1 - z)  # bug: a(1 - a) written with z for a
        return np.dot(self.weights[-layer + 1].transpose(), delta) * sp


class NetworkNoTranspose(Network):
    def hidden_delta(self, layer, zs, delta):
        sp = sigmoid_prime(zs[-layer])
        return np.dot(self.weights[-layer + 1], delta) * sp  # bug: transpose missing


def quadratic_cost(net, x, y):
    return 0.5 * np.sum((net.feedforward(x) - y) ** 2)


RNG = np.random.default_rng(5)
X1, Y1 = RNG.normal(size=(3, 1)), RNG.uniform(size=(2, 1))


def _check_network(net, x, y):
    """check_object of one example's quadratic cost and ``net.backprop``."""
    return jc.check_object(
        net,
        lambda n: quadratic_cost(n, x, y),
        lambda n: n.backprop(x, y),
        attributes=("biases", "weights"),
    )


def test_network_with_lists_of_weights_and_biases():
    report = _check_network(Network([3, 4, 2]), X1, Y1)
    assert report.ok and report.twin == "ported", str(report)
    assert list(report.leaves) == ["biases/0", "biases/1", "weights/0", "weights/1"]


def test_network_sigmoid_prime_of_z_is_found_in_the_hidden_layer():
    report = _check_network(NetworkPrimeOfZ([3, 4, 2]), X1, Y1)
    assert report.failing == ["biases/0", "weights/0"], str(report)


def test_network_missing_transpose_with_square_weights():
    report = _check_network(NetworkNoTranspose([3, 4, 4]), X1, RNG.uniform(size=(4, 1)))
    assert report.failing == ["biases/0", "weights/0"], str(report)


def test_network_summed_over_a_mini_batch():
    batch = [(RNG.normal(size=(3, 1)), RNG.uniform(size=(2, 1))) for _ in range(4)]

    def cost(net):
        return sum(quadratic_cost(net, x, y) for x, y in batch)

    def grad(net):
        nabla_b = [np.zeros(b.shape) for b in net.biases]
        nabla_w = [np.zeros(w.shape) for w in net.weights]
        for x, y in batch:
            delta_b, delta_w = net.backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_w)]
        return nabla_b, nabla_w

    net = Network([3, 5, 2], seed=1)
    assert jc.check_object(net, cost, grad, attributes=("biases", "weights")).ok


def test_attribute_order_must_match_the_gradient_tuple():
    net = Network([3, 4, 2])
    message = (
        r"grad\(obj\) returned a tuple whose item 0, the gradient of obj.weights by the order of "
        r"attributes=\('weights', 'biases'\), has shapes \[\(4, 1\), \(2, 1\)\] where "
        r"obj.weights has \[\(4, 3\), \(2, 4\)\]"
    )
    with pytest.raises(jc.InputError, match=message):
        jc.check_object(
            net,
            lambda n: quadratic_cost(n, X1, Y1),
            lambda n: n.backprop(X1, Y1),
            attributes=("weights", "biases"),  # backprop returns (nabla_b, nabla_w)
        )


# --------------------------------------------------------------------------------------------
# A params dict and loss(X, y) -> (loss, grads)
# --------------------------------------------------------------------------------------------


class TwoLayerNet:
    """affine - relu - affine - softmax; the learnable parameters in self.params."""

    def __init__(self, input_dim=5, hidden_dim=6, num_classes=3, weight_scale=0.5, reg=0.1):
        rng = np.random.RandomState(3)
        self.reg = reg
        self.params = {
            "W1": weight_scale * rng.randn(input_dim, hidden_dim),
            "b1": 0.1 * rng.randn(hidden_dim),
            "W2": weight_scale * rng.randn(hidden_dim, num_classes),
            "b2": 0.1 * rng.randn(num_classes),
        }

    def loss(self, X, y=None):
        W1, b1, W2, b2 = (self.params[k] for k in ("W1", "b1", "W2", "b2"))
        hidden, hidden_cache = affine_relu_forward(X, W1, b1)
        scores, scores_cache = affine_forward(hidden, W2, b2)
        if y is None:
            return scores
        loss, dscores = softmax_loss(scores, y)
        loss += 0.5 * self.reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
        grads = {}
        dhidden, grads["W2"], grads["b2"] = self.scores_backward(dscores, scores_cache)
        grads["W2"] += self.reg_grad(W2)
        _, grads["W1"], grads["b1"] = affine_relu_backward(dhidden, hidden_cache)
        grads["W1"] += self.reg * W1
        return loss, grads

    def scores_backward(self, dscores, cache):
        return affine_backward(dscores, cache)

    def reg_grad(self, W):
        return self.reg * W


class TwoLayerNetWrongReg(TwoLayerNet):
    def reg_grad(self, W):
        return 2 * self.reg * W  # bug: the loss has 0.5 * reg * sum(W**2)


class TwoLayerNetNoTranspose(TwoLayerNet):
    def scores_backward(self, dscores, cache):
        x, w, b = cache
        return dscores.dot(w), x.T.dot(dscores), dscores.sum(0)  # bug: w, not w.T


XB, YB = RNG.normal(size=(8, 5)), RNG.integers(0, 3, size=8)


def test_two_layer_net_with_a_params_dict():
    model = TwoLayerNet()
    report = jc.check_object(model, lambda m: m.loss(XB, YB), attributes="params")
    assert report.ok and report.twin == "ported", str(report)
    assert list(report.leaves) == ["W1", "b1", "W2", "b2"]  # the order of the dict


def test_two_layer_net_wrong_reg_term_is_found_in_w2():
    report = jc.check_object(TwoLayerNetWrongReg(), lambda m: m.loss(XB, YB), attributes="params")
    assert report.failing == ["W2"], str(report)


def test_two_layer_net_missing_transpose_is_found_upstream():
    model = TwoLayerNetNoTranspose(hidden_dim=3, num_classes=3)  # square W2: no shape error
    report = jc.check_object(model, lambda m: m.loss(XB, YB), attributes="params")
    assert report.failing == ["W1", "b1"], str(report)


def test_assert_object():
    model = TwoLayerNet()
    assert jc.assert_object(model, lambda m: m.loss(XB, YB), attributes="params").ok
    with pytest.raises(jc.GradientError, match="W2") as info:
        jc.assert_object(TwoLayerNetWrongReg(), lambda m: m.loss(XB, YB), attributes="params")
    assert info.value.report.failing == ["W2"]


# --------------------------------------------------------------------------------------------
# The object is left exactly as found
# --------------------------------------------------------------------------------------------


class CachingNet(TwoLayerNet):
    """Keeps its last scores on itself and counts its calls, as some classes do."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.calls = 0
        self.history = []
        self.fail_after = fail_after

    def loss(self, X, y=None):
        self.calls += 1
        self.history.append(self.calls)
        self.params["W1"][0, 0] += 0.0  # an in-place write into a parameter (a no-op)
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("exploded")
        self.last_scores = super().loss(X)
        return super().loss(X, y)


def _state(obj):
    return {k: v for k, v in vars(obj).items()}


@pytest.mark.parametrize("fail_after", [None, 1], ids=["passing", "raising"])
def test_object_left_exactly_as_found(fail_after):
    model = CachingNet(fail_after=fail_after)
    before = _state(model)
    params, history = model.params, model.history
    arrays = {k: v.copy() for k, v in params.items()}
    if fail_after is None:
        assert jc.check_object(model, lambda m: m.loss(XB, YB), attributes="params").ok
    else:
        with pytest.raises(jc.UserCodeError, match="exploded"):
            jc.check_object(model, lambda m: m.loss(XB, YB), attributes="params")
    assert _state(model).keys() == before.keys()
    assert all(vars(model)[k] is v for k, v in before.items())
    assert model.params is params and model.history is history and history == []
    assert model.calls == 0 and not hasattr(model, "last_scores")
    assert all(np.array_equal(params[k], arrays[k]) for k in arrays)
    assert all(params[k] is not None for k in ("W1", "b1", "W2", "b2"))


class Monitor:
    def __init__(self):
        self.last_cost = None


class MonitoredNetwork(Network):
    """Holds other objects and lists that its methods change."""

    def __init__(self, sizes):
        super().__init__(sizes)
        self.monitor = Monitor()
        self.log = []
        self.layers = [{"kind": "sigmoid"} for _ in sizes[1:]]

    def feedforward(self, a):
        out = super().feedforward(a)
        self.monitor.last_cost = out
        self.log.append("forward")
        self.layers[0]["seen"] = True
        return out


def test_objects_and_containers_held_by_the_object_are_restored_too():
    net = MonitoredNetwork([3, 4, 2])
    monitor, log, layers, weights = net.monitor, net.log, net.layers, net.weights
    report = jc.check_object(
        net,
        lambda n: quadratic_cost(n, X1, Y1),
        lambda n: n.backprop(X1, Y1),
        attributes=("biases", "weights"),
    )
    assert report.ok, str(report)
    assert net.monitor is monitor and monitor.last_cost is None
    assert net.log is log and log == []
    assert net.layers is layers and layers == [{"kind": "sigmoid"}, {"kind": "sigmoid"}]
    assert net.weights is weights


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class AliasedNet:
    """Keeps copies of its arrays in layer objects: replacing self.params changes nothing.

    (References to the same arrays are perturbed with them: see tests/engine/doors/test_object.py.)
    """

    def __init__(self):
        self.params = {"W": RNG.normal(size=(5, 3))}
        self.layer = {"W": self.params["W"].copy()}

    def loss(self, X, y):
        loss, dscores = softmax_loss(X @ self.layer["W"], y)
        return loss, {"W": X.T @ dscores}


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (
            "weight",
            r"TwoLayerNet object has no attribute 'weight'; its attributes holding float "
            r"arrays are \['params'\]",
        ),
        ((), "expected an attribute name or a sequence of names"),
        (("params", "params"), "names an attribute twice"),
        (("params", 3), "expected an attribute name"),
        ("steps", "params leaf 'steps' is the Python int 3"),
    ],
    ids=["missing", "empty", "twice", "not-a-string", "not-an-array"],
)
def test_attribute_errors(attributes, message):
    model = TwoLayerNet()
    model.steps = 3
    with pytest.raises(jc.InputError, match=message):
        jc.check_object(model, lambda m: m.loss(XB, YB), attributes=attributes)


def test_loss_that_does_not_read_the_attributes():
    with pytest.raises(jc.InputError, match="does not read its parameters from obj.params"):
        jc.check_object(AliasedNet(), lambda m: m.loss(XB, YB), attributes="params")


def test_gradient_that_does_not_line_up_with_the_attributes():
    net = Network([3, 4, 2])
    with pytest.raises(jc.InputError, match=r"grad\(obj\) returned a tuple of 3 item\(s\)"):
        jc.check_object(
            net,
            lambda n: quadratic_cost(n, X1, Y1),
            lambda n: (*n.backprop(X1, Y1), None),
            attributes=("biases", "weights"),
        )
    with pytest.raises(jc.InputError, match=r"must return \(loss, grads\)"):
        jc.check_object(net, lambda n: quadratic_cost(n, X1, Y1), attributes=("biases", "weights"))
