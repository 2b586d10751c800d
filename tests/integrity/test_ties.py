"""Verdict integrity, ties in a max-pool window (the joint kink test), and method
consistency: methods never contradict each other.
"""

from __future__ import annotations

import numpy as np
import pytest
from realistic.layers import max_pool_forward_naive

import jaxcheck as jc
from integrity.course import METHODS, relu


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
