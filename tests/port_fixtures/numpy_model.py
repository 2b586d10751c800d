"""NumPy costs for tests/test_port.py, with module-level helpers that `port` must find and port.

The functions at the end cannot run on traced values; the tests check that PortError names the
line and the value that caused it.
"""

import math

import numpy as np
from numpy import exp


def relu(z):
    return np.maximum(0, z)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def sigmoid_imported(z):
    return 1.0 / (1.0 + exp(-z))


def two_layer_cost(X, Y, params):
    """LINEAR -> RELU -> LINEAR -> SIGMOID with cross-entropy, as a float at the end."""
    m = X.shape[1]
    cache = {}
    Z1 = np.dot(params["W1"], X) + params["b1"]
    A1 = relu(Z1)
    cache["Z1"] = Z1
    cache["A1"] = A1
    Z2 = params["W2"] @ A1 + params["b2"]
    A2 = sigmoid(Z2)
    cache["A2"] = A2
    logprobs = np.multiply(Y, np.log(A2)) + np.multiply(1 - Y, np.log(1 - A2))
    cost = -1.0 / m * np.sum(logprobs, axis=1, keepdims=True)
    return float(np.squeeze(cost))


def two_layer_gradients(X, Y, params):
    """The analytic gradient of :func:`two_layer_cost`, by hand."""
    m = X.shape[1]
    Z1 = np.dot(params["W1"], X) + params["b1"]
    A1 = relu(Z1)
    A2 = sigmoid(params["W2"] @ A1 + params["b2"])
    dZ2 = A2 - Y
    dZ1 = np.dot(params["W2"].T, dZ2) * (Z1 > 0)
    return {
        "W1": np.dot(dZ1, X.T) / m,
        "b1": np.sum(dZ1, axis=1, keepdims=True) / m,
        "W2": np.dot(dZ2, A1.T) / m,
        "b2": np.sum(dZ2, axis=1, keepdims=True) / m,
    }


def cost_with_cache(X, Y, params):
    """Returns ``(cost, cache)`` like the lesson's forward_propagation_n."""
    A1 = np.tanh(params["W1"] @ X + params["b1"])
    A2 = sigmoid_imported(np.dot(params["W2"], A1) + params["b2"])
    cost = np.mean(np.square(A2 - Y))
    return cost, {"A1": A1, "A2": A2}


def item_cost(X, Y, params):
    """Many NumPy idioms, and ``cost.item()`` at the end."""
    H = np.maximum(params["W1"].dot(X) + params["b1"], 0.0)
    out = np.where(H > 1.0, np.sqrt(H + 1.0), H).T.reshape(-1, H.shape[0])
    err = np.abs(np.sum(out, axis=1) - Y.reshape(-1)) + np.tanh(np.mean(params["W2"]))
    cost = 1.0 / Y.size * np.sum(np.square(err)) + np.log(np.exp(params["b2"]).sum())
    return cost.item()


def power(x, n):
    """x**n by recursion: porting a recursive helper must not loop."""
    return np.ones_like(x) if n == 0 else x * power(x, n - 1)


def ping(x, n):
    return x if n == 0 else pong(np.sin(x), n - 1)


def pong(x, n):
    return x if n == 0 else ping(np.cos(x), n - 1)


def recursive_cost(params):
    return np.sum(power(params["w"], 3)) + np.sum(ping(params["w"], 3))


def generator_cost(params):
    """Uses `sigmoid` only inside a generator expression, a code object of its own."""
    return sum(np.sum(sigmoid(w)) for w in params.values())


# ---- Code that once could not be ported ----------------------------------------------------


def relu_inplace(z):
    a = z * 1.0
    a[a < 0] = 0
    return a


def inplace_cost(params):
    return np.sum(relu_inplace(params["w"]))


def augmented_cost(params):
    z = np.zeros(3)
    z[0] += np.sum(params["w"])
    z[1:] -= params["w"][:2] ** 2
    return np.sum(z)


def math_cost(params):
    return math.exp(np.sum(params["w"]) / 10) + math.log(1 + math.tanh(params["v"][0, 0]) ** 2)


def dropout_cost(params):
    mask = np.random.rand(*params["w"].shape) < 0.5
    return np.sum(params["w"] * mask)


def concrete_cost(params):
    """Sizes, indices, dtypes and a seeded mask computed with NumPy stay NumPy values."""
    w = params["w"]
    n = np.prod(w.shape)
    steps = np.uint8(n)
    index = np.arange(steps)[::-1]
    np.random.seed(0)
    mask = np.random.rand(*w.shape) < 0.7
    noise = np.random.randn(n) * 1e-3
    scale = np.float64(np.pi) / steps
    with np.errstate(divide="ignore"):
        total = np.sum(w[index] * mask + noise) * scale
    if n > 2:  # a condition on sizes, not on the parameters
        total = total + np.sum(np.array([w[0], w[-1]]) ** 2)
    parts = np.stack([np.maximum(0, w), np.where(w > 0, w, 0.1 * w)])
    return total + np.sum(parts[:, np.newaxis]) + np.sum([np.dot(w, w), w.T @ w])


def library_calls_cost(params):
    """NumPy methods and ufunc methods given traced values, renamed keywords, builtins."""
    w, X = params["w"], np.arange(6.0).reshape(2, 3)
    a = X.dot(w)
    b = np.clip(a, a_min=-1.0, a_max=1.0)
    c = np.linalg.norm(w) + np.einsum("ij,j->i", X, w).sum()
    d = np.add.outer(w, w).sum() + np.maximum.reduce(w)
    e = max(0, np.sum(w)) + min(np.sum(w), 1.0) + math.exp(w[0])
    f = w.astype(np.float64, copy=True).sum() + np.float64(w[1])
    g = np.sum(np.vstack([w, w]) * np.hstack([[1.0], w[1:]]))
    assert isinstance(w, np.ndarray)
    return np.sum(b) + c + d + e + f + g


# ---- Functions that cannot be ported -------------------------------------------------------


def branching_cost(params):
    if np.sum(params["w"]) > 0:
        return np.sum(params["w"] ** 2)
    return np.sum(params["w"])


def scipy_cost(params):
    from scipy.special import expit

    return np.sum(expit(params["w"]))


def mismatch_cost(params):
    return np.sum(np.dot(params["w"], params["v"]))


def mask_select_cost(params):
    w = params["w"]
    return np.sum(np.sort(w[w > 0])[-2:])


def integer_cost(params):
    total = 0.0
    for k in range(int(np.sum(params["w"]))):
        total += k
    return total


def while_cost(params):
    w = params["w"]
    while np.max(w) > 1:
        w = w / 2
    return np.sum(w)
