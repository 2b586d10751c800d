"""Properties of the verdict over many random small models, and method consistency on the zoo.

Over seeded random MLPs and regressions (activations tanh, sigmoid, ReLU, softplus; losses MSE,
binary cross-entropy with logits, softmax cross-entropy; float64 and float32; dict params with
``"dW1"``-style gradients or nested lists of layers):

(a) a correct backprop never fails;
(b) a perturbed leaf (one entry, the whole leaf scaled, or the whole leaf offset, by 10× the
    stated tolerance relative to the leaf's gradient) never passes, and only that leaf fails;
(c) no check changes the user's arrays (params, data, returned gradients) or module globals.

And on every model of ``jaxcheck.models``: full, sample (with at least a leaf's size of samples)
and directional checks give the same failing set, the one each bug declares.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import models

#: Module-level state a user's cost reads: a check must leave it as it found it.
LEAKY_SLOPE = 0.0
SETTINGS = {"clip": 30.0, "calls": 0}

N_MODELS = 40

_U64 = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- random models


def _act(name, Z):
    if name == "tanh":
        return np.tanh(Z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-np.clip(Z, -SETTINGS["clip"], SETTINGS["clip"])))
    if name == "relu":
        return np.maximum(Z, LEAKY_SLOPE * Z)
    if name == "softplus":
        return np.logaddexp(0, Z)
    raise ValueError(name)


def _act_grad(name, Z, A):
    if name == "tanh":
        return 1 - A**2
    if name == "sigmoid":
        return A * (1 - A)
    if name == "relu":
        return np.where(Z > 0, 1.0, LEAKY_SLOPE).astype(Z.dtype)
    if name == "softplus":
        return 1 / (1 + np.exp(-Z))
    raise ValueError(name)


@dataclasses.dataclass
class RandomNet:
    """A random MLP (or, with no hidden layer, a regression) with a hand-written backprop."""

    seed: int
    dtype: type
    sizes: list
    activations: list
    loss: str
    style: str
    X: np.ndarray
    Y: np.ndarray
    params: object

    def layers(self, p):
        if self.style == "dict":
            return [(p[f"W{i + 1}"], p[f"b{i + 1}"]) for i in range(len(self.sizes) - 1)]
        return [(layer["W"], layer["b"]) for layer in p["layers"]]

    def forward(self, p):
        A = self.X
        caches = []
        layers = self.layers(p)
        for i, (W, b) in enumerate(layers):
            Z = W @ A + b
            if i < len(layers) - 1:
                A_next = _act(self.activations[i], Z)
            else:
                A_next = Z
            caches.append((A, Z, A_next))
            A = A_next
        return A, caches

    def cost(self, p):
        SETTINGS["calls"] += 1  # a user's counter: side effects outside the arrays are allowed
        Z, _ = self.forward(p)
        m = self.X.shape[1]
        if self.loss == "mse":
            return np.sum((Z - self.Y) ** 2) / (2 * m)
        if self.loss == "bce":
            return np.sum(np.logaddexp(0, Z) - self.Y * Z) / m
        S = Z - Z.max(axis=0, keepdims=True)
        logp = S - np.log(np.sum(np.exp(S), axis=0, keepdims=True))
        return -np.sum(self.Y * logp) / m

    def grad(self, p):
        Z, caches = self.forward(p)
        m = self.X.shape[1]
        if self.loss == "mse":
            dZ = (Z - self.Y) / m
        elif self.loss == "bce":
            dZ = (1 / (1 + np.exp(-Z)) - self.Y) / m
        else:
            S = np.exp(Z - Z.max(axis=0, keepdims=True))
            dZ = (S / S.sum(axis=0, keepdims=True) - self.Y) / m
        layers = self.layers(p)
        grads = [None] * len(layers)
        dA = None
        for i in reversed(range(len(layers))):
            A_prev, Z_i, A_i = caches[i]
            if dA is not None:
                dZ = dA * _act_grad(self.activations[i], Z_i, A_i)
            grads[i] = (dZ @ A_prev.T, np.sum(dZ, axis=1, keepdims=True))
            dA = layers[i][0].T @ dZ
        if self.style == "dict":
            out = {}
            for i, (dW, db) in enumerate(grads):
                out[f"dW{i + 1}"], out[f"db{i + 1}"] = dW, db
            out["dA0"] = dA  # an extra cache entry, as lesson code returns
            return out
        return {"layers": [{"W": dW, "b": db} for dW, db in grads]}

    def leaf_paths(self):
        n = len(self.sizes) - 1
        if self.style == "dict":
            return sorted([f"W{i + 1}" for i in range(n)] + [f"b{i + 1}" for i in range(n)])
        return [f"layers/{i}/{k}" for i in range(n) for k in ("W", "b")]


def random_net(seed):
    rng = np.random.default_rng([seed, 2024])
    dtype = np.float32 if seed % 3 == 2 else np.float64
    loss = ["mse", "bce", "softmax"][seed % 3 if seed % 2 else (seed // 2) % 3]
    hidden = [int(rng.integers(2, 6)) for _ in range(int(rng.integers(0, 3)))]
    n_x = int(rng.integers(1, 5))
    n_y = (
        1
        if loss == "bce"
        else int(rng.integers(2, 4))
        if loss == "softmax"
        else int(rng.integers(1, 3))
    )
    m = int(rng.integers(4, 12))
    sizes = [n_x, *hidden, n_y]
    activations = [str(rng.choice(["tanh", "sigmoid", "relu", "softplus"])) for _ in hidden]
    X = rng.normal(size=(n_x, m)).astype(dtype)
    if loss == "mse":
        Y = rng.normal(size=(n_y, m)).astype(dtype)
    elif loss == "bce":
        Y = (rng.random((1, m)) > 0.5).astype(dtype)
    else:
        Y = np.eye(n_y, dtype=dtype)[:, rng.integers(0, n_y, size=m)]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        W = (rng.normal(size=(b, a)) / np.sqrt(a)).astype(dtype)
        bias = (0.1 * rng.normal(size=(b, 1))).astype(dtype)
        layers.append((W, bias))
    style = "dict" if seed % 4 != 3 else "layers"
    if style == "dict":
        params = {}
        for i, (W, b) in enumerate(layers):
            params[f"W{i + 1}"], params[f"b{i + 1}"] = W, b
    else:
        params = {"layers": [{"W": W, "b": b} for W, b in layers]}
    return RandomNet(seed, dtype, sizes, activations, loss, style, X, Y, params)


SEEDS = list(range(N_MODELS))


def _describe(net):
    return (
        f"seed={net.seed} {np.dtype(net.dtype).name} sizes={net.sizes} "
        f"act={net.activations} loss={net.loss} style={net.style}"
    )


def _flat_grad(net, grads):
    """The user's gradient per leaf path, as float64 arrays."""
    out = {}
    for path in net.leaf_paths():
        if net.style == "dict":
            out[path] = np.asarray(grads["d" + path], np.float64)
        else:
            _, i, k = path.split("/")
            out[path] = np.asarray(grads["layers"][int(i)][k], np.float64)
    return out


def _with_leaf(net, grad, path, change):
    """grad with ``change(g)`` applied to leaf ``path`` (whatever dtype grad computes in)."""

    def wrong(p):
        grads = grad(p)
        if net.style == "dict":
            grads["d" + path] = change(np.array(grads["d" + path], copy=True))
        else:
            _, i, k = path.split("/")
            layer = grads["layers"][int(i)]
            layer[k] = change(np.array(layer[k], copy=True))
        return grads

    return wrong


def _snapshot(net):
    leaves = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}/")
        else:
            leaves[prefix] = (node, node.copy(), node.dtype, node.flags.writeable)

    walk(net.params, "")
    return (
        leaves,
        (net.X, net.X.copy()),
        (net.Y, net.Y.copy()),
        LEAKY_SLOPE,
        dict(clip=SETTINGS["clip"]),
    )


def _assert_untouched(snapshot):
    leaves, (X, X0), (Y, Y0), slope, settings = snapshot
    for path, (array, copy, dtype, writeable) in leaves.items():
        np.testing.assert_array_equal(array, copy, err_msg=path)
        assert array.dtype == dtype and array.flags.writeable == writeable, path
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)
    assert LEAKY_SLOPE == slope
    assert SETTINGS["clip"] == settings["clip"]


# --------------------------------------------------------------------------- (a) and (c)


@pytest.mark.parametrize("seed", SEEDS)
def test_correct_backprop_never_fails_and_nothing_is_changed(seed):
    net = random_net(seed)
    snapshot = _snapshot(net)
    returned = []

    def grad(p):
        g = net.grad(p)
        returned.append({k: (v, np.array(v, copy=True)) for k, v in _flat_grad(net, g).items()})
        return g

    report = jc.check(net.cost, grad, net.params)
    assert report.ok, f"{_describe(net)}\n{report}"
    assert report.failing == [] and report.inconclusive == []
    assert sorted(report.leaves) == sorted(net.leaf_paths())
    assert report.dtype == np.dtype(net.dtype).name
    _assert_untouched(snapshot)


# --------------------------------------------------------------------------- (b)


def _perturbations(net, rng):
    """(leaf, kind, change) triples: 10× the stated tolerance relative to the leaf's gradient."""
    grads = _flat_grad(net, net.grad(net.params))
    rtol = 1e-7 if net.dtype == np.float64 else 1e-3
    cost = abs(float(net.cost(net.params)))
    top = max(float(np.max(np.abs(g))) for g in grads.values())
    candidates = []
    for path, g in grads.items():
        norm = float(np.linalg.norm(g))
        # Below the rounding floor of a finite difference (≈256·u·|J|/2h) nothing can be told
        # apart; a leaf whose true gradient is about zero is not a leaf to perturb.
        noise = 256 * _U64 * cost / (2 * np.cbrt(_U64))
        if norm > 1e-3 * top and 10 * rtol * norm > 10 * noise:
            candidates.append(path)
    path = candidates[int(rng.integers(len(candidates)))]
    g = grads[path]
    size = 10 * rtol * float(np.linalg.norm(g))
    entry = int(rng.integers(g.size))
    sign = 1.0 if rng.random() < 0.5 else -1.0

    def one_entry(a):
        flat = a.reshape(-1)
        flat[entry] = flat[entry] + sign * size
        return a

    scale = 1 + sign * 10 * rtol
    offset = sign * 10 * rtol * float(np.max(np.abs(g)))
    return [
        (path, "one-entry", one_entry),
        (path, "scaled", lambda a: a * a.dtype.type(scale)),
        (path, "offset", lambda a: a + a.dtype.type(offset)),
    ]


@pytest.mark.parametrize("seed", SEEDS)
def test_perturbed_leaf_never_passes_and_is_localised(seed):
    net = random_net(seed)
    rng = np.random.default_rng([seed, 99])
    snapshot = _snapshot(net)
    for path, kind, change in _perturbations(net, rng):
        report = jc.check(net.cost, _with_leaf(net, net.grad, path, change), net.params)
        context = f"{_describe(net)} leaf={path} {kind}\n{report}"
        assert not report.ok, context
        assert report.leaves[path].status in ("backprop", "inconclusive"), context
        others = {p: str(leaf.status) for p, leaf in report.leaves.items() if p != path}
        assert all(jc.Status(s).passes for s in others.values()), context
        assert report.failing in ([path], []), context
    _assert_untouched(snapshot)


# --------------------------------------------------------------------------- method consistency


def _methods(model):
    import jax

    biggest = max(int(np.size(x)) for x in jax.tree_util.tree_leaves(model.params))
    return [
        ("full", {}),
        ("sample", {"samples": biggest}),
        ("directional", {}),
    ]


ZOO_CASES = [
    pytest.param(name, bug, id=f"{name}-{bug or 'correct'}")
    for name in models.names()
    for bug in [None, *models.make(name).bugs]
]


@pytest.mark.parametrize("name, bug", ZOO_CASES)
def test_zoo_methods_agree_on_the_failing_set(name, bug):
    model = models.make(name)
    grad = model.grad if bug is None else model.bugs[bug].grad
    expected = [] if bug is None else sorted(model.bugs[bug].leaves)
    failing = {}
    for method, options in _methods(model):
        report = jc.check(
            model.cost, grad, model.params, jax_cost=model.jax_cost, method=method, **options
        )
        failing[method] = sorted(report.failing)
        assert (
            sorted(not_ok for not_ok, leaf in report.leaves.items() if not leaf.status.passes)
            == failing[method]
        ), (method, str(report))
    assert all(f == expected for f in failing.values()), failing


@pytest.mark.slow
@pytest.mark.parametrize("name, bug", ZOO_CASES)
def test_zoo_float32_and_small_samples_agree(name, bug):
    # Sample and directional may probe less: they may miss nothing here, since backprop is
    # compared with autodiff on every entry in every method; never a contradiction.
    model = models.make(name, dtype=np.float32)
    grad = model.grad if bug is None else model.bugs[bug].grad
    expected = [] if bug is None else sorted(model.bugs[bug].leaves)
    for method, options in [
        *_methods(model),
        ("sample", {"samples": 1}),
        ("directional", {"directions": 1}),
    ]:
        report = jc.check(
            model.cost, grad, model.params, jax_cost=model.jax_cost, method=method, **options
        )
        assert sorted(report.failing) == expected, (method, options, str(report))


def test_random_models_cover_what_they_claim():
    nets = [random_net(s) for s in SEEDS]
    assert {n.loss for n in nets} == {"mse", "bce", "softmax"}
    assert {np.dtype(n.dtype).name for n in nets} == {"float32", "float64"}
    assert {a for n in nets for a in n.activations} == {"tanh", "sigmoid", "relu", "softplus"}
    assert {n.style for n in nets} == {"dict", "layers"}
    assert {len(n.sizes) - 2 for n in nets} == {0, 1, 2}


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_random_models_methods_never_contradict_full(seed):
    # The correct backprop and each perturbed one: sample (1 coordinate per leaf) and
    # directional (1 direction per leaf) fail exactly the leaves full fails.
    net = random_net(seed)
    rng = np.random.default_rng([seed, 99])
    grads = [net.grad] + [
        _with_leaf(net, net.grad, path, change) for path, _, change in _perturbations(net, rng)
    ]
    for grad in grads:
        verdicts = {}
        for method, options in [
            ("full", {}),
            ("sample", {"samples": 1}),
            ("directional", {"directions": 1}),
        ]:
            report = jc.check(net.cost, grad, net.params, method=method, **options)
            verdicts[method] = (report.ok, tuple(sorted(report.failing)))
        assert len(set(verdicts.values())) == 1, (_describe(net), verdicts)
