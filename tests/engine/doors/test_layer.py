"""Tests of jc.check_layer: course-style layers checked with no JAX written, right and wrong.

The layers below are written the way a deep-learning course's ``layers.py`` has them: forward
returns ``(out, cache)``, backward takes ``(dout, cache)`` and returns the gradients of the
arguments in order. Each planted bug is one people make, and must be found in its own leaf.
"""

from __future__ import annotations

import numpy as np
import pytest
from realistic.layers import (
    affine_backward,
    affine_forward,
    conv_backward_naive,
    conv_forward_naive,
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    max_pool_backward_naive,
    max_pool_forward_naive,
)

import jaxcheck as jc

# --------------------------------------------------------------------------------------------
# The system under test: layers as people write them
# --------------------------------------------------------------------------------------------


def affine_backward_no_transpose(dout, cache):
    x, w, b = cache
    dx = dout.dot(w).reshape(x.shape)  # bug: w, not w.T (silent when w is square)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = np.sum(dout, axis=0)
    return dx, dw, db


def affine_backward_mean_bias(dout, cache):
    x, w, b = cache
    dx = dout.dot(w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T.dot(dout)
    db = np.mean(dout, axis=0)  # bug: an extra 1/N
    return dx, dw, db


def relu_forward(x):
    out = np.maximum(0, x)
    return out, x


def relu_backward(dout, cache):
    x = cache
    dout[x <= 0] = 0  # in place on dout: right values, and jaxcheck passes a copy
    return dout


def relu_backward_uses_output(dout, cache):
    x = cache
    return dout * np.maximum(0, x)  # bug: multiplies by the output instead of its mask


def sigmoid_forward(x):
    out = 1 / (1 + np.exp(-x))
    return out, out


def sigmoid_backward(dout, cache):
    out = cache
    return dout * out * (1 - out)


def sigmoid_forward_caching_z(x):
    out = 1 / (1 + np.exp(-x))
    return out, x


def sigmoid_backward_on_z(dout, cache):
    z = cache
    return dout * z * (1 - z)  # bug: sigmoid'(z) = a(1 - a), written with z for a


def batchnorm_forward(x, gamma, beta, bn_param):
    """Train mode: normalise with the batch's statistics and update the running ones."""
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D))
    running_var = bn_param.get("running_var", np.zeros(D))
    mu = x.mean(axis=0)
    xmu = x - mu
    var = np.mean(xmu**2, axis=0)
    sqrtvar = np.sqrt(var + eps)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    out = gamma * xhat + beta
    bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * mu
    bn_param["running_var"] = momentum * running_var + (1 - momentum) * var
    cache = (xhat, gamma, xmu, ivar, sqrtvar, var, eps)
    return out, cache


def batchnorm_backward(dout, cache):
    """Step by step back through the computational graph of the forward pass."""
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N, D = dout.shape
    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * xhat, axis=0)
    dxhat = dout * gamma
    divar = np.sum(dxhat * xmu, axis=0)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1.0 / (sqrtvar**2) * divar
    dvar = 0.5 * 1.0 / np.sqrt(var + eps) * dsqrtvar
    dsq = 1.0 / N * np.ones((N, D)) * dvar
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -1 * np.sum(dxmu1 + dxmu2, axis=0)
    dx2 = 1.0 / N * np.ones((N, D)) * dmu
    dx = dx1 + dx2
    return dx, dgamma, dbeta


def batchnorm_backward_no_mean_path(dout, cache):
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    xhat, gamma, xmu, ivar, *_ = cache
    N = dout.shape[0]
    dmu = -np.sum(dout * gamma * ivar, axis=0)
    return dx - dmu / N, dgamma, dbeta  # bug: the gradient through the mean is dropped


def batchnorm_backward_dgamma_sum(dout, cache):
    dx, dgamma, dbeta = batchnorm_backward(dout, cache)
    return dx, np.sum(dout, axis=0), dbeta  # bug: dgamma without the xhat factor


def layernorm_backward_no_variance_term(dout, cache):
    xhat, std, gamma = cache
    D = xhat.shape[1]
    dxhat = dout * gamma
    dx = (D * dxhat - dxhat.sum(axis=1, keepdims=True)) / (D * std)  # bug: var term missing
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


def dropout_backward_unscaled(dout, cache):
    dropout_param, mask = cache
    return dout * (mask > 0)  # bug: the 1/p of inverted dropout is forgotten


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = np.tanh(prev_h.dot(Wh) + x.dot(Wx) + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h**2)
    return da.dot(Wx.T), da.dot(Wh.T), x.T.dot(da), prev_h.T.dot(da), da.sum(axis=0)


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """Two outputs, next_h and next_c, then the cache."""
    H = prev_h.shape[1]
    a = x.dot(Wx) + prev_h.dot(Wh) + b
    i = 1 / (1 + np.exp(-a[:, :H]))
    f = 1 / (1 + np.exp(-a[:, H : 2 * H]))
    o = 1 / (1 + np.exp(-a[:, 2 * H : 3 * H]))
    g = np.tanh(a[:, 3 * H :])
    next_c = f * prev_c + i * g
    next_h = o * np.tanh(next_c)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c)


def lstm_step_backward(dnext_h, dnext_c, cache, bug=False):
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c = cache
    tanh_c = np.tanh(next_c)
    dc = dnext_c + dnext_h * o * (1 - tanh_c**2)
    di, df, do, dg = dc * g, dc * prev_c, dnext_h * tanh_c, dc * i
    da = np.hstack([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g**2)])
    dprev_c = dc * (1 if bug else f)  # the bug: the forget gate is left out of dprev_c
    return da.dot(Wx.T), da.dot(Wh.T), dprev_c, x.T.dot(da), prev_h.T.dot(da), da.sum(axis=0)


class Linear:
    """A layer object whose methods follow the (out, cache) convention."""

    def forward(self, x, w, b):
        return x @ w + b, (x, w, b)

    def backward(self, grad, cache):
        x, w, b = cache
        return grad @ w.T, x.T @ grad, grad.sum(axis=0)


class Affine:
    """A layer object that keeps its weights and its cache on itself: forward(x) -> out."""

    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = self.dW = self.db = None

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

RNG = np.random.default_rng(7)
X = RNG.normal(size=(4, 2, 3))  # a batch of 4 inputs of shape (2, 3): D = 6
W = RNG.normal(size=(6, 5))
B = RNG.normal(size=5)
XS, WS, BS = RNG.normal(size=(4, 3)), RNG.normal(size=(3, 3)), RNG.normal(size=3)  # square w
XN = RNG.normal(size=(6, 4))  # relu, sigmoid, norms, dropout
XN[0, 0] = 0.25  # (keeps every entry of XN away from ReLU's kink)
GAMMA, BETA = RNG.normal(size=4), RNG.normal(size=4)
CONV_X, CONV_W, CONV_B = (
    RNG.normal(size=(1, 2, 4, 4)),
    RNG.normal(size=(2, 2, 3, 3)),
    RNG.normal(size=2),
)
POOL_X = RNG.normal(size=(1, 2, 4, 4))


def _copies(*arrays):
    return [a.copy() for a in arrays]


# --------------------------------------------------------------------------------------------
# Correct layers pass; planted bugs are found in their own leaves
# --------------------------------------------------------------------------------------------

CORRECT = {
    "affine": (affine_forward, affine_backward, (X, W, B), ["x", "w", "b"]),
    "relu": (relu_forward, relu_backward, (XN,), ["x"]),
    "sigmoid": (sigmoid_forward, sigmoid_backward, (XN,), ["x"]),
    "batchnorm": (
        batchnorm_forward,
        batchnorm_backward,
        (XN, GAMMA, BETA, {"mode": "train"}),
        ["x", "gamma", "beta"],
    ),
    "layernorm": (layernorm_forward, layernorm_backward, (XN, GAMMA, BETA, {}), None),
    "dropout": (
        dropout_forward,
        dropout_backward,
        (XN, {"p": 0.6, "mode": "train", "seed": 3}),
        None,
    ),
    "rnn_step": (
        rnn_step_forward,
        rnn_step_backward,
        (XS, RNG.normal(size=(4, 2)), RNG.normal(size=(3, 2)), RNG.normal(size=(2, 2)), BS[:2]),
        ["x", "prev_h", "Wx", "Wh", "b"],
    ),
}


@pytest.mark.parametrize("name", list(CORRECT))
def test_correct_layers_pass(name):
    forward, backward, args, leaves = CORRECT[name]
    report = jc.check_layer(forward, backward, *args)
    assert report.ok, str(report)
    assert report.twin == "ported"  # no JAX written: forward was ported
    if leaves is not None:
        assert list(report.leaves) == leaves


BUGS = {
    "affine-missing-transpose": (
        affine_forward,
        affine_backward_no_transpose,
        (XS, WS, BS),
        ["x"],
        None,
    ),
    "affine-bias-mean": (affine_forward, affine_backward_mean_bias, (X, W, B), ["b"], 1 / 4),
    "relu-output-for-mask": (relu_forward, relu_backward_uses_output, (XN,), ["x"], None),
    "sigmoid-prime-of-z": (sigmoid_forward_caching_z, sigmoid_backward_on_z, (XN,), ["x"], None),
    "batchnorm-no-mean-path": (
        batchnorm_forward,
        batchnorm_backward_no_mean_path,
        (XN, GAMMA, BETA, {"mode": "train"}),
        ["x"],
        None,
    ),
    "batchnorm-dgamma": (
        batchnorm_forward,
        batchnorm_backward_dgamma_sum,
        (XN, GAMMA, BETA, {"mode": "train"}),
        ["gamma"],
        None,
    ),
    "layernorm-no-variance-term": (
        layernorm_forward,
        layernorm_backward_no_variance_term,
        (XN, GAMMA, BETA, {}),
        ["x"],
        None,
    ),
    "dropout-unscaled": (
        dropout_forward,
        dropout_backward_unscaled,
        (XN, {"p": 0.5, "mode": "train", "seed": 3}),
        ["x"],
        0.5,
    ),
}


@pytest.mark.parametrize("name", list(BUGS))
def test_planted_bugs_are_found_in_their_leaf(name):
    forward, backward, args, failing, ratio = BUGS[name]
    report = jc.check_layer(forward, backward, *args)
    assert not report.ok
    assert report.failing == failing, str(report)
    if ratio is not None:
        assert report.leaves[failing[0]].ratio == pytest.approx(ratio, rel=1e-6)


def test_lstm_step_with_two_outputs():
    H = 2
    args = (
        RNG.normal(size=(3, 4)),
        RNG.normal(size=(3, H)),
        RNG.normal(size=(3, H)),
        RNG.normal(size=(4, 4 * H)),
        RNG.normal(size=(H, 4 * H)),
        RNG.normal(size=4 * H),
    )
    report = jc.check_layer(lstm_step_forward, lstm_step_backward, *args)
    assert report.ok, str(report)
    assert sorted(report.leaves) == sorted(["x", "prev_h", "prev_c", "Wx", "Wh", "b"])

    def buggy(dnext_h, dnext_c, cache):
        return lstm_step_backward(dnext_h, dnext_c, cache, bug=True)

    report = jc.check_layer(lstm_step_forward, buggy, *args)
    assert report.failing == ["prev_c"]
    # Given douts: one per output, in order.
    douts = (np.ones((3, H)), np.zeros((3, H)))
    report = jc.check_layer(lstm_step_forward, buggy, *args, dout=douts)
    assert report.failing == ["prev_c"]
    with pytest.raises(jc.InputError, match="2 outputs, so dout must be a tuple of 2 arrays"):
        jc.check_layer(lstm_step_forward, lstm_step_backward, *args, dout=np.ones((3, H)))


@pytest.mark.slow  # tracing the four nested loops takes a few seconds
def test_naive_convolution_with_assignment_into_arrays():
    conv_param = {"stride": 1, "pad": 1}
    args = (CONV_X, CONV_W, CONV_B, conv_param)
    report = jc.check_layer(conv_forward_naive, conv_backward_naive, *args)
    assert report.ok and report.twin == "ported", str(report)
    assert report.leaves["w"].shape == (2, 2, 3, 3)

    def no_accumulation(dout, cache):
        return conv_backward_naive(dout, cache, accumulate_dw=False)

    report = jc.check_layer(conv_forward_naive, no_accumulation, *args)
    assert report.failing == ["w"], str(report)
    assert conv_param == {"stride": 1, "pad": 1}


def test_naive_max_pool_with_assignment_into_arrays():
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    report = jc.check_layer(max_pool_forward_naive, max_pool_backward_naive, POOL_X, pool_param)
    assert report.ok and report.twin == "ported", str(report)

    def average(dout, cache):
        return max_pool_backward_naive(dout, cache, average=True)

    report = jc.check_layer(max_pool_forward_naive, average, POOL_X, pool_param)
    assert report.failing == ["x"] and report.leaves["x"].worst_index is not None


# --------------------------------------------------------------------------------------------
# Arguments: names, wrt, pass-through, keywords, dout
# --------------------------------------------------------------------------------------------


def test_leaves_are_named_by_forward_parameters_or_by_position():
    def forward(*args):
        return affine_forward(*args)

    report = jc.check_layer(forward, affine_backward, X, W, B)
    assert list(report.leaves) == ["args0", "args1", "args2"]  # one rule: see check_rule
    report = jc.check_layer(Linear().forward, Linear().backward, XS, WS, BS)
    assert list(report.leaves) == ["x", "w", "b"] and report.ok  # forward's order


@pytest.mark.parametrize("wrt", [["x", "w"], [0, 1], ("w", 0)], ids=["names", "indices", "mixed"])
def test_wrt_selects_the_checked_arguments(wrt):
    report = jc.check_layer(affine_forward, affine_backward_mean_bias, X, W, B, wrt=wrt)
    assert sorted(report.leaves) == ["w", "x"] and report.ok  # the buggy db is not checked


def test_wrt_one_argument_and_backward_returning_only_that():
    report = jc.check_layer(affine_forward, affine_backward_mean_bias, X, W, B, wrt="b")
    assert report.failing == ["b"]
    only_dw = lambda dout, cache: affine_backward(dout, cache)[1]  # noqa: E731
    assert jc.check_layer(affine_forward, only_dw, X, W, B, wrt=["w"]).ok


@pytest.mark.parametrize(
    ("wrt", "message"),
    [
        (["x", "v"], r"wrt names 'v', which is not an argument of forward\(x, w, b\)"),
        ([3], r"position 3, but forward\(x, w, b\) was given 3 argument"),
        (["x", 0], r"names 'x' twice"),
        ([1.5], r"wrt holds 1.5; expected argument names \(str\) or positions \(int\)"),
        ([], r"selects no argument"),
    ],
    ids=["unknown-name", "out-of-range", "twice", "bad-type", "empty"],
)
def test_wrt_errors(wrt, message):
    with pytest.raises(jc.InputError, match=message):
        jc.check_layer(affine_forward, affine_backward, X, W, B, wrt=wrt)


def test_non_float_arguments_pass_through_unchecked_and_untouched():
    def embed_forward(x, idx, w):
        out = x + w[idx]
        return out, (idx, w.shape)

    def embed_backward(dout, cache):
        idx, shape = cache
        dw = np.zeros(shape)
        np.add.at(dw, idx, dout)
        return dout, dw

    x, idx, w = RNG.normal(size=(3, 2)), np.array([1, 0, 1]), RNG.normal(size=(2, 2))
    report = jc.check_layer(embed_forward, embed_backward, x, idx, w)
    assert report.ok and sorted(report.leaves) == ["w", "x"]
    with pytest.raises(jc.InputError, match=r"wrt names 'idx' \(argument 1\), which is a int64"):
        jc.check_layer(embed_forward, embed_backward, x, idx, w, wrt=["idx"])


def test_forward_kwargs_are_passed_and_never_checked():
    def scaled_forward(x, w, *, scale=1.0):
        return scale * (x @ w), (x, w, scale)

    def scaled_backward(dout, cache):
        x, w, scale = cache
        return scale * dout @ w.T, scale * x.T @ dout

    kwargs = {"scale": 3.0}
    report = jc.check_layer(scaled_forward, scaled_backward, XS, WS, forward_kwargs=kwargs)
    assert report.ok and sorted(report.leaves) == ["w", "x"]
    with pytest.raises(jc.InputError, match="forward_kwargs must be a dict"):
        jc.check_layer(scaled_forward, scaled_backward, XS, WS, forward_kwargs=[3.0])


def test_dout_seeded_or_given():
    seen = []

    def backward(dout, cache):
        seen.append(dout.copy())
        return affine_backward(dout, cache)

    jc.check_layer(affine_forward, backward, X, W, B, seed=1)
    jc.check_layer(affine_forward, backward, X, W, B, seed=1)
    first, second = seen[0], seen[-1]
    assert first.shape == (4, 5) and np.array_equal(first, second)
    seen.clear()
    jc.check_layer(affine_forward, backward, X, W, B, seed=2)
    assert not np.array_equal(seen[0], first)
    seen.clear()
    dout = np.arange(20.0).reshape(4, 5)
    jc.check_layer(affine_forward, backward, X, W, B, dout=dout)
    assert all(np.array_equal(d, dout) for d in seen)


@pytest.mark.parametrize(
    ("dout", "message"),
    [
        (np.ones((5, 4)), r"dout has shape \(5, 4\); expected \(4, 5\), the shape of forward's"),
        (np.ones((4, 5), dtype=int), "dout has dtype int64; expected a float array"),
        (np.full((4, 5), np.nan), "dout holds non-finite values"),
    ],
    ids=["shape", "dtype", "nan"],
)
def test_dout_errors(dout, message):
    with pytest.raises(jc.InputError, match=message):
        jc.check_layer(affine_forward, affine_backward, X, W, B, dout=dout)


def test_float32_layer():
    args = [a.astype(np.float32) for a in (X, W, B)]
    report = jc.check_layer(affine_forward, affine_backward, *args)
    assert report.ok and report.dtype == "float32", str(report)
    assert jc.check_layer(affine_forward, affine_backward_mean_bias, *args).failing == ["b"]


# --------------------------------------------------------------------------------------------
# What backward returns
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backward", "message"),
    [
        (
            lambda dout, cache: affine_backward(dout, cache)[:2],
            r"backward\(dout, cache\) returned a tuple of 2 item\(s\) \(a float64 array of shape "
            r"\(4, 2, 3\), a float64 array of shape \(6, 5\)\); expected 3 gradients \(dx, dw, "
            r"db\), one per floating-point argument of forward\(x, w, b\), in order",
        ),
        (
            lambda dout, cache: (*affine_backward(dout, cache), None),
            r"returned a tuple of 4 item\(s\).*expected 3 gradients",
        ),
        (
            lambda dout, cache: affine_backward(dout, cache)[1],
            r"returned a float64 array of shape \(6, 5\); expected a tuple of 3 gradients",
        ),
        (
            lambda dout, cache: affine_backward(dout, cache)[::-1],
            r"returned a gradient of shape \(5,\) for 'x' \(item 0 of 3\), whose shape is "
            r"\(4, 2, 3\); backward returns the gradients of forward's floating-point arguments "
            r"\(x, w, b\) in that order",
        ),
        (
            lambda dout, cache: (None, *affine_backward(dout, cache)[1:]),
            r"returned None as the gradient of 'x' \(item 0 of 3\)",
        ),
        (
            lambda dout, cache: {"dx": 0 * dout, "dw": 0 * dout},
            r"returned a dict with keys \['dw', 'dx'\] but none for 'b'",
        ),
    ],
    ids=["too-few", "too-many", "one-for-three", "wrong-order", "none", "dict-missing"],
)
def test_backward_returning_the_wrong_gradients(backward, message):
    with pytest.raises(jc.InputError, match=message):
        jc.check_layer(affine_forward, backward, X, W, B)


def test_backward_returning_a_tuple_for_one_argument():
    with pytest.raises(
        jc.InputError, match=r"returned a tuple of 2 item\(s\).*expected one array, dx"
    ):
        jc.check_layer(relu_forward, lambda dout, x: (dout * (x > 0), x), XN)
    # A 1-tuple is the gradient of the one argument, in order.
    assert jc.check_layer(relu_forward, lambda dout, x: (dout * (x > 0),), XN).ok


def test_backward_returning_a_dict():
    def backward(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return {"dx": dx, "w": dw, "db": db, "dout": dout}

    assert jc.check_layer(affine_forward, backward, X, W, B).ok


def test_forward_without_cache_and_a_two_argument_backward():
    with pytest.raises(
        jc.InputError, match=r"returned a float64 array of shape \(6, 4\) and no cache"
    ):
        jc.check_layer(lambda x: np.maximum(0, x), relu_backward, XN)


def test_forward_returning_bad_outputs():
    with pytest.raises(jc.InputError, match="forward\\(x\\) output is a dict; expected a float"):
        jc.check_layer(lambda x: ({"out": x}, None), relu_backward, XN)
    with pytest.raises(jc.InputError, match="output holds a non-finite value"):
        jc.check_layer(lambda x: (np.full_like(x, np.inf), x), relu_backward, XN)
    with pytest.raises(jc.InputError, match="returned a tuple of length 1"):
        jc.check_layer(lambda x: (x,), relu_backward, XN)


def test_errors_in_forward_and_backward_name_the_line():
    def broken_forward(x, w, b):
        return x.dot(w.T) + b, None  # shapes do not fit

    with pytest.raises(jc.UserCodeError, match=r"forward\(x, w, b\) raised ValueError") as info:
        jc.check_layer(broken_forward, affine_backward, XS, W[:3], B)
    assert info.value.filename.endswith("test_layer.py")

    def broken_backward(dout, cache):
        raise ZeroDivisionError("oops")

    with pytest.raises(jc.UserCodeError, match=r"backward\(dout, cache\) raised ZeroDivisionError"):
        jc.check_layer(affine_forward, broken_backward, X, W, B)


def test_too_many_arguments_and_no_float_arguments():
    with pytest.raises(jc.InputError, match="cannot be called with 4 positional argument"):
        jc.check_layer(affine_forward, affine_backward, X, W, B, B)
    with pytest.raises(jc.InputError, match="none of the arguments of forward\\(x\\) is a float"):
        jc.check_layer(relu_forward, relu_backward, [1.0, -2.0])


def test_unseeded_dropout_is_nondeterministic():
    with pytest.raises(jc.NondeterminismError, match="Seed it inside forward"):
        jc.check_layer(dropout_forward, dropout_backward, XN, {"p": 0.5, "mode": "train"})


# --------------------------------------------------------------------------------------------
# The user's data and objects are left as found
# --------------------------------------------------------------------------------------------


def test_arrays_params_and_random_state_are_left_as_found():
    x, gamma, beta = _copies(XN, GAMMA, BETA)
    bn_param = {"mode": "train"}
    np.random.seed(123)
    state = np.random.get_state()
    jc.check_layer(batchnorm_forward, batchnorm_backward, x, gamma, beta, bn_param)
    assert bn_param == {"mode": "train"}  # the running statistics went into copies
    assert np.array_equal(x, XN) and np.array_equal(gamma, GAMMA) and np.array_equal(beta, BETA)
    dropout_param = {"p": 0.5, "mode": "train", "seed": 3}
    jc.check_layer(dropout_forward, dropout_backward, x, dropout_param)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2] == state[2]


def test_dout_and_cache_modified_in_place_by_backward():
    def backward(dout, cache):
        x, w, b = cache
        dout *= 1.0  # harmless, but writes into dout
        x[...] = 0.0  # writes into the cache: the next call must get a fresh one
        return dout @ w.T, np.zeros_like(w), dout.sum(axis=0)

    given = RNG.normal(size=(4, 3))
    xs = XS.copy()
    report = jc.check_layer(affine_forward, backward, xs, WS, BS, dout=given)
    assert report.failing == ["w"] and np.array_equal(xs, XS)


def test_layer_objects_keeping_their_cache_are_left_as_found():
    layer = Affine(WS.copy(), BS.copy())
    report = jc.check_layer(layer.forward, layer.backward, XS)
    assert report.ok and list(report.leaves) == ["x"]
    assert layer.x is None and layer.dW is None  # its state as before the check


# --------------------------------------------------------------------------------------------
# Options, twins, assert_layer
# --------------------------------------------------------------------------------------------


def test_options_pass_through():
    report = jc.check_layer(affine_forward, affine_backward, X, W, B, method="sample", samples=3)
    assert report.ok and report.method == "sample"
    with pytest.raises(jc.InputError, match="method="):
        jc.check_layer(affine_forward, affine_backward, X, W, B, method="nope")
    with pytest.raises(jc.InputError, match="pass jax_forward="):
        jc.check_layer(affine_forward, affine_backward, X, W, B, jax_cost=lambda p: 0.0)
    with pytest.raises(jc.InputError, match="seed=-1"):
        jc.check_layer(affine_forward, affine_backward, X, W, B, seed=-1)


def branchy_forward(x, w):
    """A forward with Python control flow on values that returns from a branch: not ported."""
    out = x @ w
    if out.sum() > 0:
        return 2 * out, (x, w, True)
    return out, (x, w, False)


def branchy_backward(dout, cache):
    x, w, doubled = cache
    k = 2 if doubled else 1
    return k * dout @ w.T, k * x.T @ dout


def test_unportable_forward_two_way_or_jax_forward():
    report = jc.check_layer(branchy_forward, branchy_backward, XS, WS)
    assert report.ok and report.twin == "none" and "branchy_forward" in report.twin_error
    with pytest.raises(
        jc.PortError,
        match=(
            r"(?s)branchy_forward.*check_layer.<sum\(dout \* branchy_forward\)>.*"
            r"For check_layer, that JAX version is jax_forward="
        ),
    ) as info:
        jc.check_layer(branchy_forward, branchy_backward, XS, WS, twin="required")
    assert "jax_forward=" in info.value.hint and "jax_cost=" not in str(info.value)

    import jax.numpy as jnp

    def jax_forward(x, w):
        out = x @ w
        return jnp.where(out.sum() > 0, 2 * out, out)

    report = jc.check_layer(branchy_forward, branchy_backward, XS, WS, jax_forward=jax_forward)
    assert report.ok and report.twin == "given"

    def bad(dout, cache):
        dx, dw = branchy_backward(dout, cache)
        return dx, 3 * dw

    report = jc.check_layer(branchy_forward, bad, XS, WS, jax_forward=jax_forward)
    assert report.failing == ["w"] and report.leaves["w"].ratio == pytest.approx(3)


def test_assert_layer():
    assert jc.assert_layer(affine_forward, affine_backward, X, W, B).ok
    with pytest.raises(jc.GradientError, match="BACKPROP WRONG") as info:
        jc.assert_layer(affine_forward, affine_backward_mean_bias, X, W, B)
    assert isinstance(info.value, AssertionError) and info.value.report.failing == ["b"]
    with pytest.raises(jc.GradientError):
        jc.assert_layer(affine_forward, affine_backward_mean_bias, X, W, B, wrt=["b"], seed=4)
