"""Diagnoses of wrong gradients: each kind found where it is planted, and never claimed otherwise.

The first part builds backprop and reference arrays by hand (no JAX, fast), including a
randomized search for false diagnoses over many bugs of other kinds; the last part checks
course-style NumPy networks end to end with ``jc.check`` (the twin ported, no JAX written).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.verdict.classify import Status
from jaxcheck._engine.verdict.diagnosis import (
    COMMON_FACTOR,
    MEAN_FOR_SUM,
    OFFSET,
    REGULARISER,
    SIGN,
    SUM_FOR_MEAN,
    SWAPPED,
    TRANSPOSED,
    Diagnosis,
    LeafFacts,
    diagnose,
    dimensions_of,
)

# The data a cost of a 2-layer net reads: X (3, 64), Y (1, 64); its params' shapes.
PARAM_SHAPES = [(5, 3), (5, 1), (1, 5), (1, 1)]
DIMS = dimensions_of([(3, 64), (1, 64)], PARAM_SHAPES)


def facts(path, backprop, reference, theta, *, status=Status.BACKPROP, rtol=1e-7):
    reference = np.asarray(reference, np.float64)
    shape = reference.shape
    scale = float(np.nanmax(np.abs(reference), initial=0.0))
    return LeafFacts(
        path=path,
        shape=shape,
        theta=np.asarray(theta, np.float64).ravel(),
        backprop=np.asarray(backprop, np.float64).ravel(),
        reference=reference.ravel(),
        status=status,
        rtol=rtol,
        atol=np.full(reference.size, rtol * 1e-2 * scale + 1e-12),
    )


def one(f: LeafFacts) -> Diagnosis | None:
    found, common = diagnose([f], DIMS)
    assert common is None
    return found.get(f.path)


def test_dimensions_are_the_datas_and_not_the_params():
    assert [d.size for d in DIMS] == [64, 192]
    assert DIMS[0].shape == (3, 64)
    # The lesson's data: X (4, 3), Y (1, 3); W1 is 5×4, W2 3×5: only X's size is left.
    lesson = dimensions_of([(4, 3), (1, 3)], [(5, 4), (5, 1), (3, 5), (3, 1), (1, 3), (1, 1)])
    assert [d.size for d in lesson] == [12]
    assert [d.size for d in dimensions_of([(2, 2)], [])] == [4]  # the size; 2 is too small


# ----------------------------------------------------------------------------- each kind found


def _leaf(rng, shape):
    return rng.normal(size=shape), rng.normal(size=shape)


def _planted(kind, rng):
    """(facts of every leaf, the path expected to be diagnosed, the kind) for one planted bug."""
    shape = (5, 3) if kind != TRANSPOSED else (4, 4)
    ref, theta = _leaf(rng, shape)
    if kind == SIGN:
        bp = -ref
    elif kind == MEAN_FOR_SUM:
        bp = ref / 64
    elif kind == SUM_FOR_MEAN:
        bp = ref * 64
    elif kind == TRANSPOSED:
        bp = ref.T
    elif kind == REGULARISER:
        bp = ref - rng.uniform(0.01, 1.0) * theta * rng.choice([-1, 1])
    elif kind == OFFSET:
        bp = ref + rng.uniform(0.01, 1.0) * rng.choice([-1, 1])
    else:
        raise AssertionError(kind)
    return [facts("W1", bp, ref, theta)]


KINDS = [SIGN, MEAN_FOR_SUM, SUM_FOR_MEAN, TRANSPOSED, REGULARISER, OFFSET]


@pytest.mark.parametrize("kind", KINDS)
def test_each_leaf_kind_is_found(kind):
    for seed in range(25):
        (f,) = _planted(kind, np.random.default_rng(seed))
        d = one(f)
        assert d is not None and d.kind == kind, (seed, d)
        assert d.sentence and d.sentence[0].isupper()


def test_the_constants_are_the_planted_ones():
    rng = np.random.default_rng(1)
    ref, theta = _leaf(rng, (5, 3))
    d = one(facts("W1", ref - 0.03 * theta, ref, theta))
    assert d.kind == REGULARISER and d.value == pytest.approx(-0.03)
    assert "lacks a term 0.03·W1" in d.sentence
    d = one(facts("W1", ref + 0.5 * theta, ref, theta))
    assert "extra term 0.5·W1" in d.sentence
    d = one(facts("b1", ref - 0.25, ref, theta))
    assert d.kind == OFFSET and d.value == pytest.approx(-0.25)
    d = one(facts("W1", ref / 192, ref, theta))
    assert d.kind == MEAN_FOR_SUM and d.value == 192
    d = one(facts("W1", ref / 64, ref, theta))
    assert "1/64" in d.sentence and "3×64" in d.sentence


def test_a_low_precision_backprop_is_judged_at_its_own_tolerance():
    rng = np.random.default_rng(2)
    ref, theta = _leaf(rng, (5, 3))
    bp = (ref / 64).astype(np.float16)
    assert one(facts("W1", bp, ref, theta, rtol=1e-2)).kind == MEAN_FOR_SUM
    # At float64's tolerance float16 rounding is a difference: no exact factor is claimed.
    assert one(facts("W1", bp, ref, theta)) is None


def test_swapped_leaves():
    for seed in range(25):
        rng = np.random.default_rng(seed)
        shape = [(5, 1), (5, 5), (3,)][seed % 3]
        (r1, t1), (r2, t2) = _leaf(rng, shape), _leaf(rng, shape)
        leaves = [facts("b1", r2, r1, t1), facts("b2", r1, r2, t2)]
        found, common = diagnose(leaves, DIMS)
        assert common is None
        assert found["b1"].kind == SWAPPED and found["b1"].other == "b2"
        assert found["b2"].kind == SWAPPED and found["b2"].other == "b1"
        assert "b1 holds the gradient of b2" in found["b1"].sentence


def test_a_common_small_factor_in_every_leaf():
    rng = np.random.default_rng(3)
    leaves, ok = [], []
    for name, shape in zip(("W1", "b1", "W2", "b2"), PARAM_SHAPES):
        ref, theta = _leaf(rng, shape)
        leaves.append(facts(name, (1 + 1e-3) * ref, ref, theta))
    found, common = diagnose(leaves, DIMS)
    assert common is not None and common.kind == COMMON_FACTOR
    assert common.value == pytest.approx(1e-3)
    assert set(found) == {"W1", "b1", "W2", "b2"}
    assert "1 + 0.001" in common.sentence
    # A leaf that passes with a real gradient contradicts "the same factor everywhere".
    ref, theta = _leaf(rng, (2, 2))
    ok.append(facts("W3", ref, ref, theta, status=Status.OK))
    found, common = diagnose(leaves + ok, DIMS)
    assert common is None and not found
    # An epsilon's worth (1e-6) is found as well, at float64's tolerance.
    tiny = [dataclasses.replace(f, backprop=(1 + 1e-6) * f.reference) for f in leaves]
    found, common = diagnose(tiny, DIMS)
    assert common.kind == COMMON_FACTOR and common.value == pytest.approx(1e-6)
    # One failing leaf alone is a factor (LeafReport.factor), not a common one.
    found, common = diagnose(leaves[:1], DIMS)
    assert common is None and not found


def test_only_failing_leaves_are_diagnosed():
    rng = np.random.default_rng(4)
    ref, theta = _leaf(rng, (5, 3))
    for status in Status:
        if status != Status.BACKPROP:
            assert one(facts("W1", -ref, ref, theta, status=status)) is None


def test_two_way_reference_known_in_part():
    rng = np.random.default_rng(5)
    ref, theta = _leaf(rng, (4, 4))
    partial = ref.copy()
    partial[0, :2] = np.nan
    assert one(facts("W1", -ref, partial, theta)).kind == SIGN
    assert one(facts("W1", ref.T, partial, theta)) is None  # a transpose needs every entry


# ------------------------------------------------------------------------ never a false claim


def _other_bug(rng, ref, theta, rtol):
    """A wrong backprop of a kind that has no diagnosis (or only part of one), and its name.

    Where a bug is a kind plus a small error, the error is well beyond the tolerance ``rtol``.
    """
    n = ref.size
    small = max(1e-3, 100 * rtol)
    flat, th = ref.ravel().copy(), theta.ravel()
    some = rng.choice(n, size=int(rng.integers(1, max(2, n - 1))), replace=False)
    kind = rng.choice(
        [
            "noise",
            "relative noise",
            "entries changed",
            "one entry",
            "scale",
            "scale and noise",
            "partial sign",
            "partial offset",
            "partial regulariser",
            "permuted",
            "transpose and noise",
            "offset and noise",
            "regulariser and offset",
            "near factor",
            "zeros",
            "another gradient",
        ]
    )
    if kind == "noise":
        bp = flat + rng.normal(size=n) * 10.0 ** rng.uniform(-6, 0)
    elif kind == "relative noise":
        bp = flat * (1 + rng.normal(size=n) * 10.0 ** rng.uniform(-5, -1))
    elif kind == "entries changed":
        bp = flat.copy()
        bp[some] = rng.normal(size=some.size)
    elif kind == "one entry":
        bp = flat.copy()
        bp[rng.integers(n)] += rng.choice([-1, 1]) * 10.0 ** rng.uniform(-4, 1)
    elif kind == "scale":
        k = rng.uniform(-4, 4)
        while min(abs(k + 1), abs(k - 1), abs(k * 64 - 1), abs(k - 64)) < 1e-3:
            k = rng.uniform(-4, 4)
        bp = k * flat
    elif kind == "scale and noise":
        bp = rng.uniform(-4, 4) * flat + small * rng.normal(size=n)
    elif kind == "partial sign":
        bp = flat.copy()
        bp[some] *= -1
    elif kind == "partial offset":
        bp = flat.copy()
        bp[some] += rng.uniform(0.1, 1)
    elif kind == "partial regulariser":
        bp = flat.copy()
        bp[some] += rng.uniform(0.1, 1) * th[some]
    elif kind == "permuted":
        bp = flat[rng.permutation(n)]
    elif kind == "transpose and noise":
        m = ref.reshape(ref.shape[0], -1)
        bp = (m.T if m.shape[0] == m.shape[1] else m).ravel() + small * rng.normal(size=n)
    elif kind == "offset and noise":
        bp = flat + 0.3 + small * rng.normal(size=n)
    elif kind == "regulariser and offset":
        bp = flat + 0.3 * th + 0.2
    elif kind == "near factor":  # close to, not at, 1/m, m or −1
        bp = flat * rng.choice([1 / 64 * (1 + small), -(1 + small), 64 * (1 - small)])
    elif kind == "zeros":
        bp = np.zeros(n)
    else:
        bp = rng.normal(size=n)
    return bp.reshape(ref.shape), kind


@pytest.mark.parametrize("rtol", [1e-7, 1e-3], ids=["float64", "float32"])
def test_random_bugs_of_other_kinds_are_never_diagnosed(rtol):
    seen = set()
    for seed in range(800):
        rng = np.random.default_rng(1000 + seed)
        shape = [(5, 3), (4, 4), (5, 1), (7,), (3, 3), (16, 8)][seed % 6]
        ref, theta = _leaf(rng, shape)
        bp, kind = _other_bug(rng, ref, theta, rtol)
        if np.allclose(bp, ref, rtol=2 * rtol, atol=1e-9):
            continue  # within the tolerance: such a leaf passes and is never diagnosed
        seen.add(kind)
        d = one(facts("W1", bp, ref, theta, rtol=rtol))
        assert d is None, (seed, kind, d)
    assert len(seen) == 16


def test_random_pairs_of_leaves_are_never_called_swapped():
    for seed in range(200):
        rng = np.random.default_rng(5000 + seed)
        (r1, t1), (r2, t2) = _leaf(rng, (5, 1)), _leaf(rng, (5, 1))
        case = seed % 4
        if case == 0:  # b1 holds b2's gradient; b2 is wrong some other way
            leaves = [facts("b1", r2, r1, t1), facts("b2", 2.5 * r2, r2, t2)]
        elif case == 1:  # a swap with noise on one side
            leaves = [
                facts("b1", r2, r1, t1),
                facts("b2", r1 + 1e-3 * rng.normal(size=(5, 1)), r2, t2),
            ]
        elif case == 2:  # both copied from one gradient
            leaves = [facts("b1", r2, r1, t1), facts("b2", r2 * 1.5, r2, t2)]
        else:  # swapped and one of them scaled
            leaves = [facts("b1", 3 * r2, r1, t1), facts("b2", r1, r2, t2)]
        found, common = diagnose(leaves, DIMS)
        assert all(d.kind != SWAPPED for d in found.values()), (seed, found)
        assert common is None


def test_different_factors_in_every_leaf_are_not_a_common_one():
    for seed in range(100):
        rng = np.random.default_rng(7000 + seed)
        leaves = []
        for name, shape in zip(("W1", "b1", "W2", "b2"), PARAM_SHAPES):
            ref, theta = _leaf(rng, shape)
            leaves.append(facts(name, (1 + rng.uniform(-0.1, 0.1)) * ref, ref, theta))
        found, common = diagnose(leaves, DIMS)
        assert common is None and not found, seed


def test_ambiguous_evidence_gets_no_diagnosis():
    rng = np.random.default_rng(8)
    ref, _ = _leaf(rng, (5, 3))
    theta = 0.5 * ref  # a gradient proportional to θ (a quadratic cost) ...
    # ... scaled: a regulariser fits, but so does a plain factor; neither is claimed.
    assert one(facts("W1", 1.7 * ref, ref, theta)) is None
    const = np.full((5, 3), 0.1)  # biases all initialised to 0.1: an offset is also c·θ
    assert one(facts("b1", ref + 0.2, ref, const)) is None
    antisym = rng.normal(size=(4, 4))
    antisym = antisym - antisym.T  # its transpose is its negative: sign or transpose?
    assert one(facts("W1", antisym.T, antisym, rng.normal(size=(4, 4)))) is None
    # A scalar leaf: an offset fits any difference, so it is not evidence.
    assert one(facts("b2", [[0.7]], [[0.2]], [[0.1]])) is None
    # ... but an exact sign flip of a scalar is.
    assert one(facts("b2", [[-0.2]], [[0.2]], [[0.1]])).kind == SIGN


# -------------------------------------------------------------------------------- end to end
# Course-style code: a 2-layer classifier (tanh hidden layer, sigmoid output, cross-entropy) and
# a 2-layer autoencoder whose layers have the same shape; each with one planted bug.


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def initialize_parameters(n_x, n_h, n_y, seed=1):
    rng = np.random.RandomState(seed)
    return {
        "W1": rng.randn(n_h, n_x) * 0.5,
        "b1": rng.randn(n_h, 1) * 0.1,
        "W2": rng.randn(n_y, n_h) * 0.5,
        "b2": rng.randn(n_y, 1) * 0.1,
    }


def forward_propagation(X, parameters):
    W1, b1 = parameters["W1"], parameters["b1"]
    W2, b2 = parameters["W2"], parameters["b2"]
    Z1 = np.dot(W1, X) + b1
    A1 = np.tanh(Z1)
    Z2 = np.dot(W2, A1) + b2
    A2 = sigmoid(Z2)
    cache = {"Z1": Z1, "A1": A1, "Z2": Z2, "A2": A2}
    return A2, cache


def compute_cost(A2, Y, parameters, lambd=0.0, total=False):
    m = Y.shape[1]
    logprobs = np.multiply(np.log(A2), Y) + np.multiply(np.log(1 - A2), 1 - Y)
    cost = -np.sum(logprobs) if total else -np.sum(logprobs) / m
    W1, W2 = parameters["W1"], parameters["W2"]
    cost = cost + lambd / (2 * m) * (np.sum(np.square(W1)) + np.sum(np.square(W2)))
    return np.squeeze(cost)


def backward_propagation(parameters, cache, X, Y, lambd=0.0, bug=None):
    m = X.shape[1]
    W1, W2 = parameters["W1"], parameters["W2"]
    A1, A2 = cache["A1"], cache["A2"]
    dZ2 = A2 - Y if bug != "sign" else Y - A2
    dW2 = np.dot(dZ2, A1.T) / m
    if bug != "forgot regularisation":
        dW2 = dW2 + lambd / m * W2
    db2 = np.sum(dZ2, axis=1, keepdims=True) / m
    dZ1 = np.multiply(np.dot(W2.T, dZ2), 1 - np.power(A1, 2))
    dW1 = np.dot(dZ1, X.T) if bug == "no 1/m" else np.dot(dZ1, X.T) / m
    dW1 = dW1 + (lambd / m if bug == "regularisation without W" else lambd / m * W1)
    db1 = np.sum(dZ1, axis=1, keepdims=True) / m
    return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}


@pytest.fixture(scope="module")
def classifier():
    rng = np.random.RandomState(3)
    X = rng.randn(3, 64)
    Y = (rng.rand(1, 64) > 0.5).astype(float)
    return X, Y, initialize_parameters(3, 5, 1)


def _check(data, *, lambd=0.0, total=False, bug=None, cost_lambd=None):
    X, Y, parameters = data
    cost_lambd = lambd if cost_lambd is None else cost_lambd

    def cost(p):
        A2, _ = forward_propagation(X, p)
        return compute_cost(A2, Y, p, cost_lambd, total)

    def grad(p):
        _, cache = forward_propagation(X, p)
        return backward_propagation(p, cache, X, Y, lambd, bug)

    return jc.check(cost, grad, parameters)


def test_a_correct_network_has_no_diagnosis(classifier):
    report = _check(classifier, lambd=0.7)
    assert report.ok and report.diagnosis is None
    assert all(leaf.diagnosis is None for leaf in report.leaves.values())
    assert report.to_dict()["leaves"]["W1"]["diagnosis"] is None


def test_sign_flip_and_a_forgotten_division_by_m(classifier):
    report = _check(classifier, bug="sign")
    assert report.twin == "ported" and set(report.failing) == {"W1", "b1", "W2", "b2"}
    assert {leaf.diagnosis.kind for leaf in report.leaves.values()} == {"sign"}
    report = _check(classifier, bug="no 1/m")
    assert report.failing == ["W1"]
    d = report.leaves["W1"].diagnosis
    assert d.kind == "sum-for-mean" and d.value == 64
    assert d.sentence in report.leaves["W1"].message and d.sentence in str(report)
    assert json.loads(json.dumps(report.to_dict()))["leaves"]["W1"]["diagnosis"]["value"] == 64


def test_a_two_way_check_diagnoses_against_finite_differences(classifier):
    X, Y, parameters = classifier

    def cost(p):
        return compute_cost(forward_propagation(X, p)[0], Y, p)

    def grad(p):
        return backward_propagation(p, forward_propagation(X, p)[1], X, Y, bug="sign")

    report = jc.check(cost, grad, parameters, twin="none")
    assert report.twin == "none" and set(report.failing) == {"W1", "b1", "W2", "b2"}
    assert {leaf.diagnosis.kind for leaf in report.leaves.values()} == {"sign"}


def test_a_mean_where_the_cost_sums(classifier):
    report = _check(classifier, total=True)  # the cost sums over examples, backprop averages
    assert set(report.failing) == {"W1", "b1", "W2", "b2"}
    for leaf in report.leaves.values():
        assert leaf.diagnosis.kind == "mean-for-sum" and leaf.diagnosis.value == 64


def test_a_forgotten_regulariser_and_one_without_its_weight(classifier):
    report = _check(classifier, lambd=0.7, bug="forgot regularisation")
    assert report.failing == ["W2"]
    d = report.leaves["W2"].diagnosis
    assert d.kind == "regulariser" and d.value == pytest.approx(-0.7 / 64)
    # λ/m added without its W: backprop − autodiff = λ/m − λ/m·W1, two kinds at once: neither.
    report = _check(classifier, lambd=0.7, bug="regularisation without W")
    assert report.failing == ["W1"] and report.leaves["W1"].diagnosis is None
    # ... and where the cost has no regulariser, the stray λ/m is an offset.
    report = _check(classifier, lambd=0.7, cost_lambd=0.0, bug="regularisation without W")
    assert set(report.failing) == {"W1", "W2"}
    d = report.leaves["W1"].diagnosis
    assert d.kind == "offset" and d.value == pytest.approx(0.7 / 64)
    assert "+ 0.01094 at every entry" in report.leaves["W1"].message
    d = report.leaves["W2"].diagnosis
    assert d.kind == "regulariser" and d.value == pytest.approx(0.7 / 64)


def autoencoder_forward(X, parameters):
    Z1 = parameters["W1"] @ X + parameters["b1"]
    A1 = np.tanh(Z1)
    A2 = parameters["W2"] @ A1 + parameters["b2"]
    return A2, {"A1": A1, "A2": A2}


def autoencoder_backward(parameters, cache, X, bug=None):
    m = X.shape[1] if bug != "m - 1" else X.shape[1] - 1
    A1, A2 = cache["A1"], cache["A2"]
    dZ2 = A2 - X
    dW2 = dZ2 @ A1.T / m
    db2 = np.sum(dZ2, axis=1, keepdims=True) / m
    dZ1 = (parameters["W2"].T @ dZ2) * (1 - A1**2)
    dW1 = X @ dZ1.T / m if bug == "transposed" else dZ1 @ X.T / m
    db1 = np.sum(dZ1, axis=1, keepdims=True) / m
    if bug == "swapped":
        return {"dW1": dW2, "db1": db2, "dW2": dW1, "db2": db1}
    return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}


@pytest.mark.parametrize("bug", ["swapped", "transposed", "m - 1"])
def test_autoencoder_bugs(bug):
    rng = np.random.RandomState(5)
    X = rng.randn(4, 50)
    parameters = {
        "W1": rng.randn(4, 4) * 0.5,
        "b1": rng.randn(4, 1) * 0.1,
        "W2": rng.randn(4, 4) * 0.5,
        "b2": rng.randn(4, 1) * 0.1,
    }

    def cost(p):
        A2, _ = autoencoder_forward(X, p)
        m = X.shape[1]
        return np.sum((A2 - X) ** 2) / (2 * m)

    def grad(p):
        _, cache = autoencoder_forward(X, p)
        return autoencoder_backward(p, cache, X, bug)

    report = jc.check(cost, grad, parameters)
    leaves = report.leaves
    if bug == "swapped":
        assert set(report.failing) == {"W1", "b1", "W2", "b2"}
        assert leaves["W1"].diagnosis.kind == "swapped" and leaves["W1"].diagnosis.other == "W2"
        assert leaves["b2"].diagnosis.kind == "swapped" and leaves["b2"].diagnosis.other == "b1"
        assert "W1 holds the gradient of W2" in str(report)
    elif bug == "transposed":
        assert report.failing == ["W1"] and leaves["W1"].diagnosis.kind == "transposed"
    else:
        assert set(report.failing) == {"W1", "b1", "W2", "b2"}
        common = report.diagnosis
        assert common.kind == "common-factor" and common.value == pytest.approx(1 / 49)
        assert all(leaf.diagnosis is common for leaf in leaves.values())
        assert str(report).count(common.sentence) == 1
        assert report.to_dict()["diagnosis"]["kind"] == "common-factor"


def test_the_lessons_factors_are_not_called_a_mean(lesson):
    """dW2 ×2 and db1 ×4, with X of shape 4×3: 4 is also W1's width, so no mean is claimed."""
    report = jc.check(lesson.cost, lesson.buggy, lesson.params, jax_cost=lesson.twin)
    assert set(report.failing) == {"W2", "b1"}
    assert report.leaves["b1"].factor == pytest.approx(4.0)
    assert all(leaf.diagnosis is None for leaf in report.leaves.values())
    assert report.diagnosis is None
