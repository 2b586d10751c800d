"""Networks as classes: a course-style ``TwoLayerNet`` with a ``params`` dict, a ``Network`` with
lists of weights and biases and per-example backprop, layer objects that keep their own caches,
and a forward pass that keeps its intermediates in a module-level dict."""

from collections import OrderedDict

import numpy as np

from .layers import affine_backward, affine_forward, affine_relu_backward, affine_relu_forward
from .losses import softmax_loss


class TwoLayerNet:
    """affine - relu - affine - softmax, parameters in ``self.params``."""

    def __init__(self, input_dim=4, hidden_dim=5, num_classes=3, weight_scale=0.5, reg=0.1, seed=0):
        rng = np.random.RandomState(seed)
        self.reg = reg
        self.params = {
            "W1": weight_scale * rng.randn(input_dim, hidden_dim),
            "b1": np.zeros(hidden_dim),
            "W2": weight_scale * rng.randn(hidden_dim, num_classes),
            "b2": np.zeros(num_classes),
        }

    def loss(self, X, y=None):
        """Scores when ``y`` is None, else ``(loss, grads)`` with grads keyed like params."""
        W1, b1 = self.params["W1"], self.params["b1"]
        W2, b2 = self.params["W2"], self.params["b2"]
        hidden, hidden_cache = affine_relu_forward(X, W1, b1)
        scores, scores_cache = affine_forward(hidden, W2, b2)
        if y is None:
            return scores
        grads = {}
        loss, dscores = softmax_loss(scores, y)
        loss += 0.5 * self.reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
        dhidden, grads["W2"], grads["b2"] = affine_backward(dscores, scores_cache)
        grads["W2"] += self.reg * W2
        _, grads["W1"], grads["b1"] = affine_relu_backward(dhidden, hidden_cache)
        grads["W1"] += self.reg * W1
        return loss, grads


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_prime(z):
    return sigmoid(z) * (1 - sigmoid(z))


class Network:
    """A sigmoid network with quadratic cost, weights and biases as lists of column layers."""

    def __init__(self, sizes, seed=0):
        rng = np.random.RandomState(seed)
        self.num_layers = len(sizes)
        self.sizes = sizes
        self.biases = [rng.randn(y, 1) for y in sizes[1:]]
        self.weights = [rng.randn(y, x) for x, y in zip(sizes[:-1], sizes[1:])]

    def feedforward(self, a):
        for b, w in zip(self.biases, self.weights):
            a = sigmoid(np.dot(w, a) + b)
        return a

    def cost(self, x, y):
        """Quadratic cost of one example (column vectors x and y)."""
        return 0.5 * np.sum((self.feedforward(x) - y) ** 2)

    def backprop(self, x, y):
        """``(nabla_b, nabla_w)``: the gradient of :meth:`cost`, layer by layer."""
        nabla_b = [np.zeros(b.shape) for b in self.biases]
        nabla_w = [np.zeros(w.shape) for w in self.weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(self.biases, self.weights):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = self.cost_derivative(activations[-1], y) * self.sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for layer in range(2, self.num_layers):
            delta = self.hidden_delta(layer, zs, delta)
            nabla_b[-layer] = delta
            nabla_w[-layer] = np.dot(delta, activations[-layer - 1].transpose())
        return nabla_b, nabla_w

    def hidden_delta(self, layer, zs, delta):
        """The error of hidden layer ``-layer`` from the one above it."""
        sp = self.sigmoid_prime(zs[-layer])
        return np.dot(self.weights[-layer + 1].transpose(), delta) * sp

    def cost_derivative(self, output_activations, y):
        return output_activations - y

    def sigmoid_prime(self, z):
        return sigmoid_prime(z)


# ---- layer objects that keep their caches on themselves --------------------------------------


class Affine:
    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.dW = None
        self.db = None

    def forward(self, x):
        self.x = x
        return np.dot(x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout = dout.copy()
        dout[self.mask] = 0
        return dout


class Sigmoid:
    def __init__(self):
        self.out = None

    def forward(self, x):
        self.out = sigmoid(x)
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out

    __call__ = forward


class SoftmaxWithLoss:
    def __init__(self):
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        shifted = x - x.max(axis=1, keepdims=True)
        self.y = np.exp(shifted) / np.sum(np.exp(shifted), axis=1, keepdims=True)
        batch_size = x.shape[0]
        return -np.sum(np.log(self.y[np.arange(batch_size), t] + 1e-12)) / batch_size

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(batch_size), self.t] -= 1
        return dx * dout / batch_size


class LayerNet:
    """Affine - Relu - Affine - Sigmoid... as an ordered dict of layer objects."""

    def __init__(self, sizes, seed=0):
        rng = np.random.RandomState(seed)
        self.params = {}
        self.layers = OrderedDict()
        for k in range(len(sizes) - 1):
            self.params[f"W{k + 1}"] = 0.5 * rng.randn(sizes[k], sizes[k + 1])
            self.params[f"b{k + 1}"] = 0.1 * rng.randn(sizes[k + 1])
            self.layers[f"Affine{k + 1}"] = Affine(
                self.params[f"W{k + 1}"], self.params[f"b{k + 1}"]
            )
            if k < len(sizes) - 2:
                self.layers[f"Relu{k + 1}"] = Relu() if k % 2 == 0 else Sigmoid()
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x), t)

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.last_layer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        grads = {}
        for k in range(1, len(self.params) // 2 + 1):
            grads[f"W{k}"] = self.layers[f"Affine{k}"].dW
            grads[f"b{k}"] = self.layers[f"Affine{k}"].db
        return grads

    def set_params(self, params):
        """Puts new parameter arrays into the net and its layers."""
        self.params = params
        for k in range(1, len(params) // 2 + 1):
            self.layers[f"Affine{k}"].W = params[f"W{k}"]
            self.layers[f"Affine{k}"].b = params[f"b{k}"]


# ---- layers that leave their results on themselves: forward returns nothing -------------------


class Dense:
    def __init__(self, n_inputs, n_neurons, seed=0):
        rng = np.random.RandomState(seed)
        self.weights = 0.1 * rng.randn(n_inputs, n_neurons)
        self.biases = np.zeros((1, n_neurons))

    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.dot(inputs, self.weights) + self.biases

    def backward(self, dvalues):
        self.dweights = np.dot(self.inputs.T, dvalues)
        self.dbiases = np.sum(dvalues, axis=0, keepdims=True)
        self.dinputs = np.dot(dvalues, self.weights.T)


class ActivationReLU:
    def forward(self, inputs):
        self.inputs = inputs
        self.output = np.maximum(0, inputs)

    def backward(self, dvalues):
        self.dinputs = dvalues.copy()
        self.dinputs[self.inputs <= 0] = 0


class SoftmaxCrossEntropy:
    """Softmax and categorical cross-entropy together, for labels as indices or one-hot rows."""

    def forward(self, inputs, y_true):
        exp_values = np.exp(inputs - np.max(inputs, axis=1, keepdims=True))
        self.output = exp_values / np.sum(exp_values, axis=1, keepdims=True)
        samples = len(self.output)
        clipped = np.clip(self.output, 1e-7, 1 - 1e-7)
        if len(y_true.shape) == 1:
            confidences = clipped[range(samples), y_true]
        else:
            confidences = np.sum(clipped * y_true, axis=1)
        return np.mean(-np.log(confidences))

    def backward(self, dvalues, y_true):
        samples = len(dvalues)
        if len(y_true.shape) == 2:
            y_true = np.argmax(y_true, axis=1)
        self.dinputs = dvalues.copy()
        self.dinputs[range(samples), y_true] -= 1
        self.dinputs = self.dinputs / samples


# ---- a forward pass that keeps its intermediates in a module-level dict -----------------------

CACHE = {}


def forward_with_global_cache(X, Y, parameters):
    """Two-layer tanh/sigmoid network with cross-entropy cost; intermediates go to ``CACHE``."""
    W1, b1, W2, b2 = parameters["W1"], parameters["b1"], parameters["W2"], parameters["b2"]
    Z1 = np.dot(W1, X) + b1
    A1 = np.tanh(Z1)
    Z2 = np.dot(W2, A1) + b2
    A2 = sigmoid(Z2)
    CACHE["A1"] = A1
    CACHE["A2"] = A2
    m = Y.shape[1]
    logprobs = np.multiply(np.log(A2), Y) + np.multiply(np.log(1 - A2), 1 - Y)
    cost = -np.sum(logprobs) / m
    return float(np.squeeze(cost))


def backward_from_global_cache(X, Y, parameters):
    """The gradient of :func:`forward_with_global_cache`, from what it left in ``CACHE``."""
    m = X.shape[1]
    A1, A2 = CACHE["A1"], CACHE["A2"]
    dZ2 = A2 - Y
    dW2 = np.dot(dZ2, A1.T) / m
    db2 = np.sum(dZ2, axis=1, keepdims=True) / m
    dZ1 = np.dot(parameters["W2"].T, dZ2) * (1 - np.power(A1, 2))
    dW1 = np.dot(dZ1, X.T) / m
    db1 = np.sum(dZ1, axis=1, keepdims=True) / m
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}
