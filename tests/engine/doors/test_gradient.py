"""The three-way check: every verdict path, every error class, pytrees, precision, modes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Lesson

import jaxcheck as jc
from jaxcheck import models

# --------------------------------------------------------------------------- the lesson


def test_lesson_fixed_backprop_passes(lesson):
    report = jc.check(lesson.cost, lesson.grad, lesson.params, jax_cost=lesson.twin)
    assert report.ok
    assert report.failing == []
    assert report.difference_autodiff < 1e-10
    assert report.difference_fd < 1e-8  # the default step, not the lesson's 1e-7
    assert {leaf.status for leaf in report.leaves.values()} == {"ok"}
    assert list(report.leaves) == ["W1", "b1", "W2", "b2", "W3", "b3"]


def test_lesson_buggy_backprop_fails_on_exactly_w2_and_b1(lesson):
    report = jc.check(lesson.cost, lesson.buggy, lesson.params, jax_cost=lesson.twin)
    assert not report.ok
    assert report.failing == ["b1", "W2"]
    assert report.leaves["W2"].ratio == pytest.approx(2.0, rel=1e-9)
    assert report.leaves["b1"].ratio == pytest.approx(4.0, rel=1e-9)
    for path in ("W1", "W3", "b2", "b3"):
        assert report.leaves[path].ok
    # the autodiff and FD opinions agree with each other: the backprop is outvoted
    assert report.leaves["W2"].difference_fd_autodiff < 1e-8
    text = str(report)
    assert "W2: backprop is 2.00× autodiff and finite differences" in text
    assert "b1: backprop is 4.00× autodiff and finite differences" in text
    assert report.difference_fd == pytest.approx(0.2850931567761624, rel=1e-3)


def test_lesson_eps_1e7_reproduces_the_false_alarm_but_says_correct(lesson):
    report = jc.check(lesson.cost, lesson.grad, lesson.params, jax_cost=lesson.twin, eps=1e-7)
    assert report.difference_fd == pytest.approx(1.19e-7, rel=0.05)
    assert report.ok
    # the FD error estimate covers the gap between FD and autodiff
    for leaf in report.leaves.values():
        assert leaf.step == pytest.approx(1e-7, rel=1e-6)
        assert leaf.difference_fd_autodiff <= 3 * leaf.fd_error


def test_lesson_float32_system_under_test():
    lesson = Lesson(np.float32)
    assert lesson.params["W1"].dtype == np.float32
    good = jc.check(lesson.cost, lesson.grad, lesson.params, jax_cost=lesson.twin)
    assert good.ok, str(good)
    assert good.dtype == "float32"
    assert good.leaves["W1"].rtol == pytest.approx(1e-3)
    bad = jc.check(lesson.cost, lesson.buggy, lesson.params, jax_cost=lesson.twin)
    assert bad.failing == ["b1", "W2"]
    assert bad.leaves["b1"].ratio == pytest.approx(4.0, rel=1e-3)


def test_check_leaves_the_users_arrays_alone(lesson):
    before = {k: v.copy() for k, v in lesson.params.items()}
    ids = {k: id(v) for k, v in lesson.params.items()}

    def vandal_cost(p):
        value = lesson.cost(p)
        p["W1"] += 1.0  # a cost that scribbles on its input must not reach the user's arrays
        return value

    jc.check(vandal_cost, lesson.grad, lesson.params, jax_cost=lesson.twin)
    for k, v in lesson.params.items():
        np.testing.assert_array_equal(v, before[k])
        assert id(v) == ids[k]


# --------------------------------------------------------------------------- verdict paths


def _relu_net(sign_bug_in_b2: bool = False):
    """A ReLU net whose first pre-activation is exactly 0 for one example (a kink at θ)."""
    X = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]])
    Y = np.array([[0.3, -0.1, 0.8]])
    params = {
        "W1": np.array([[1.0, 2.0], [-1.0, 2.0], [0.5, -0.5]]),  # W1[0] @ X[:, 1] == 0
        "b1": np.zeros((3, 1)),
        "W2": np.array([[0.7, -1.2, 0.4]]),
        "b2": np.array([[0.1]]),
    }

    def forward(p):
        Z1 = p["W1"] @ X + p["b1"]
        A1 = np.maximum(0, Z1)
        Z2 = p["W2"] @ A1 + p["b2"]
        return 0.5 * np.mean((Z2 - Y) ** 2), (Z1, A1, Z2)

    def grad(p):
        _, (Z1, A1, Z2) = forward(p)
        dZ2 = (Z2 - Y) / X.shape[1]
        dZ1 = (p["W2"].T @ dZ2) * (Z1 > 0)  # the subgradient 0 at the kink
        db2 = dZ2.sum(axis=1, keepdims=True)
        return {
            "W1": dZ1 @ X.T,
            "b1": dZ1.sum(axis=1, keepdims=True),
            "W2": dZ2 @ A1.T,
            "b2": -db2 if sign_bug_in_b2 else db2,
        }

    def twin(p):  # jnp.maximum splits the tie: its derivative at 0 is 0.5
        Z1 = p["W1"] @ X + p["b1"]
        Z2 = p["W2"] @ jnp.maximum(0, Z1) + p["b2"]
        return 0.5 * jnp.mean((Z2 - Y) ** 2)

    assert (params["W1"] @ X)[0, 1] == 0.0
    return (lambda p: forward(p)[0]), grad, params, twin


def test_kink_with_a_valid_subgradient_is_not_a_bug():
    cost, grad, params, twin = _relu_net()
    report = jc.check(cost, grad, params, jax_cost=twin)
    assert report.ok, str(report)
    # autodiff picked another subgradient than the backprop did, and that is fine
    assert report.leaves["b1"].difference_autodiff > 1e-2
    assert report.leaves["b1"].status == "kink"
    assert report.leaves["b1"].kinks == [(0, 0)]
    assert set(report.leaves["W1"].kinks) == {(0, 0), (0, 1)}
    assert "kink" in str(report)


def test_a_real_bug_next_to_a_kink_is_still_localised():
    cost, grad, params, twin = _relu_net(sign_bug_in_b2=True)
    report = jc.check(cost, grad, params, jax_cost=twin)
    assert report.failing == ["b2"]
    assert report.leaves["b2"].ratio == pytest.approx(-1.0)
    assert "wrong sign" in report.leaves["b2"].message
    assert report.leaves["b1"].status == "kink"


def test_wrong_twin_gradient_is_blamed_on_the_twin_not_the_backprop():
    @jax.custom_jvp
    def tanh(x):
        return jnp.tanh(x)

    @tanh.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return jnp.tanh(x), 2 * (1 - jnp.tanh(x) ** 2) * t  # twice the true derivative

    params = {"a": np.array([0.3, -0.2]), "b": np.array([1.5])}
    report = jc.check(
        lambda p: float(np.sum(np.tanh(p["a"])) + np.sum(p["b"] ** 2)),
        lambda p: {"a": 1 - np.tanh(p["a"]) ** 2, "b": 2 * p["b"]},
        params,
        jax_cost=lambda p: jnp.sum(tanh(p["a"])) + jnp.sum(p["b"] ** 2),
    )
    assert report.leaves["a"].status == "twin"
    assert report.leaves["b"].status == "ok"
    assert report.ok
    assert report.failing == []
    assert report.leaves["a"].difference_fd < 1e-8
    assert "twin" in report.verdict


def test_finite_differences_with_a_far_too_large_step_are_called_unreliable():
    params = {"a": np.array([0.3, -0.2])}
    report = jc.check(
        lambda p: float(np.sum(np.tanh(p["a"]))),
        lambda p: {"a": 1 - np.tanh(p["a"]) ** 2},
        params,
        jax_cost=lambda p: jnp.sum(jnp.tanh(p["a"])),
        eps=0.5,
    )
    assert report.ok
    assert report.leaves["a"].status == "fd-unreliable"
    assert report.leaves["a"].difference_fd_autodiff > 1e-3
    assert "Not a bug" in report.leaves["a"].message


def test_zero_true_gradient_leaf_is_agreement_not_a_bug():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 16))
    Y = rng.normal(size=(1, 16))
    params = {
        "W": rng.normal(size=(4, 3)),
        "b": rng.normal(size=(4, 1)),
        "v": rng.normal(size=(1, 4)),
    }

    def forward(p, xp=np):
        Z = p["W"] @ X + p["b"]
        N = (Z - Z.mean(axis=1, keepdims=True)) / xp.sqrt(Z.var(axis=1, keepdims=True) + 1e-5)
        return 0.5 * xp.mean((p["v"] @ N - Y) ** 2), (Z, N)

    def grad(p):
        _, (Z, N) = forward(p)
        m = X.shape[1]
        dO = (p["v"] @ N - Y) / m
        dN = p["v"].T @ dO
        std = np.sqrt(Z.var(axis=1, keepdims=True) + 1e-5)
        dZ = (dN - dN.mean(axis=1, keepdims=True) - N * (dN * N).mean(axis=1, keepdims=True)) / std
        return {"W": dZ @ X.T, "b": dZ.sum(axis=1, keepdims=True), "v": dO @ N.T}

    report = jc.check(lambda p: forward(p)[0], grad, params, jax_cost=lambda p: forward(p, jnp)[0])
    assert report.ok, str(report)
    assert np.max(np.abs(grad(params)["b"])) < 1e-14  # the bias's true gradient is zero
    assert report.leaves["b"].status == "ok"

    wrong = jc.check(
        lambda p: forward(p)[0],
        lambda p: {**grad(p), "b": grad(p)["b"] + 1e-3},
        params,
        jax_cost=lambda p: forward(p, jnp)[0],
    )
    assert wrong.failing == ["b"]
    assert "zero" in wrong.leaves["b"].message or "disagrees" in wrong.leaves["b"].message


def test_nan_in_the_users_gradient_is_a_failing_leaf(lesson):
    def grad(p):
        g = lesson.grad(p)
        g["db2"] = g["db2"].copy()
        g["db2"][1, 0] = np.nan
        return g

    report = jc.check(lesson.cost, grad, lesson.params, jax_cost=lesson.twin)
    assert report.failing == ["b2"]
    assert report.leaves["b2"].worst_index == (1, 0)
    assert "NaN" in report.leaves["b2"].message


# --------------------------------------------------------------------------- pytrees


def test_nested_pytree_paths_and_structured_gradient():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, 3))
    params = {
        "enc": {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))},
        "dec": [rng.normal(size=(4, 2)), (rng.normal(size=(2,)),)],
    }

    def forward(p, xp=np):
        H = xp.tanh(X @ p["enc"]["W"] + p["enc"]["b"])
        return xp.sum((H @ p["dec"][0] + p["dec"][1][0]) ** 2), H

    def grad(p, bug=False):
        H = forward(p)[1]
        out = H @ p["dec"][0] + p["dec"][1][0]
        dO = 2 * out
        dH = dO @ p["dec"][0].T * (1 - H**2)
        dW = X.T @ dH
        return {
            "enc": {"W": 3 * dW if bug else dW, "b": dH.sum(0)},
            "dec": [H.T @ dO, (dO.sum(0),)],
        }

    kwargs = dict(jax_cost=lambda p: forward(p, jnp)[0])
    report = jc.check(lambda p: forward(p)[0], grad, params, **kwargs)
    assert report.ok
    assert sorted(report.leaves) == ["dec/0", "dec/1/0", "enc/W", "enc/b"]
    bad = jc.check(lambda p: forward(p)[0], lambda p: grad(p, bug=True), params, **kwargs)
    assert bad.failing == ["enc/W"]
    assert bad.leaves["enc/W"].ratio == pytest.approx(3.0)


def test_python_float_leaf_and_scalar_cost_tuple():
    params = {"w": 2.0, "v": np.array([1.0, -1.0])}
    report = jc.check(
        lambda p: (p["w"] ** 2 * np.sum(p["v"] ** 3), "cache"),
        lambda p: {"w": 2 * p["w"] * np.sum(p["v"] ** 3), "v": 3 * p["w"] ** 2 * p["v"] ** 2},
        params,
        jax_cost=lambda p: (p["w"] ** 2 * jnp.sum(p["v"] ** 3), None),
    )
    assert report.ok
    assert report.leaves["w"].shape == ()


# --------------------------------------------------------------------------- errors


def _quadratic():
    params = {"w": np.array([1.0, 2.0])}
    return (
        lambda p: float(np.sum(p["w"] ** 2)),
        lambda p: {"w": 2 * p["w"]},
        params,
        lambda p: jnp.sum(p["w"] ** 2),
    )


@pytest.mark.parametrize(
    "params, match",
    [
        ({}, "params is empty"),
        ({"w": np.array([1, 2])}, "'w' has dtype int"),
        ({"w": np.array([1.0, np.nan])}, r"'w' holds a non-finite value .* index \(1,\)"),
        ({"w": np.array([1.0, np.inf])}, "non-finite"),
        ({"w": np.array(["a"])}, "'w' has dtype"),
        ({"w": 3}, "'w' is the Python int"),
        ({"w": np.array([1 + 2j])}, "'w' has dtype complex"),
    ],
    ids=["empty", "int", "nan", "inf", "str", "python-int", "complex"],
)
def test_bad_params_raise_input_error_naming_the_leaf(params, match):
    cost, grad, _, twin = _quadratic()
    with pytest.raises(jc.InputError, match=match) as info:
        jc.check(cost, grad, params, jax_cost=twin)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, jc.JaxcheckError)


@pytest.mark.parametrize(
    "grad, match",
    [
        (lambda p: {"v": 2 * p["w"]}, r"no entry for leaf 'w'.*'w' and 'dw'.*\['v'\]"),
        (lambda p: {"w": np.ones(3)}, r"'w' has shape \(3,\); expected \(2,\)"),
        (lambda p: {"w": np.array(["x", "y"])}, "'w' has dtype"),
        (lambda p: {"w": 1j * p["w"]}, "complex"),
    ],
    ids=["missing", "shape", "strings", "complex"],
)
def test_bad_gradient_raises_input_error_naming_the_leaf(grad, match):
    cost, _, params, twin = _quadratic()
    with pytest.raises(jc.InputError, match=match):
        jc.check(cost, grad, params, jax_cost=twin)


@pytest.mark.parametrize(
    "cost, match",
    [
        (lambda p: p["w"] ** 2, r"shape \(2,\); expected a scalar"),
        (lambda p: float("nan"), "cost.* is nan"),
        (lambda p: np.inf, "is inf"),
        (lambda p: "cost", "expected a"),
        (lambda p: (), "empty tuple"),
    ],
    ids=["vector", "nan", "inf", "string", "empty-tuple"],
)
def test_bad_cost_raises_input_error(cost, match):
    _, grad, params, twin = _quadratic()
    with pytest.raises(jc.InputError, match=match):
        jc.check(cost, grad, params, jax_cost=twin)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"method": "fast"}, "method='fast' is not one of"),
        ({"eps": 0.0}, "eps=0.0"),
        ({"eps": -1e-3}, "eps=-0.001"),
        ({"rtol": float("nan")}, "rtol=nan"),
        ({"method": "sample", "samples": 0}, "samples=0"),
        ({"samples": 4}, "only applies to method='sample'"),
        ({"method": "directional", "directions": 2.5}, "directions=2.5"),
        ({"batch_size": -2}, "batch_size=-2"),
    ],
    ids=[
        "method",
        "eps-zero",
        "eps-negative",
        "rtol-nan",
        "samples-zero",
        "samples-full",
        "directions-float",
        "batch-negative",
    ],
)
def test_bad_options_raise_input_error(options, match):
    cost, grad, params, twin = _quadratic()
    with pytest.raises(jc.InputError, match=match):
        jc.check(cost, grad, params, jax_cost=twin, **options)


def test_user_function_errors_are_reported_not_leaked():
    _, grad, params, twin = _quadratic()

    def broken(p):
        raise KeyError("W9")

    with pytest.raises(jc.UserCodeError, match="cost\\(params\\) raised KeyError") as info:
        jc.check(broken, grad, params, jax_cost=twin)
    # the user's file and line, and the original exception chained
    assert info.value.filename == __file__ and "raise KeyError" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(jc.UserCodeError, match="grad\\(params\\) raised KeyError"):
        jc.check(lambda p: 1.0, broken, params, jax_cost=twin)
    with pytest.raises(jc.UserCodeError, match="jax_cost\\(params\\) raised"):
        jc.check(lambda p: float(np.sum(p["w"] ** 2)), grad, params, jax_cost=broken)
    with pytest.raises(jc.InputError, match="cost must be callable"):
        jc.check(3.0, grad, params, jax_cost=twin)


def test_twin_that_computes_another_cost_raises_reimplementation_error(lesson):
    with pytest.raises(jc.ReimplementationError, match=r"2\.40783.*relative mismatch") as info:
        jc.check(lesson.cost, lesson.grad, lesson.params, jax_cost=lambda p: 1.01 * lesson.twin(p))
    assert "nothing was judged" in str(info.value)


def test_dropout_drawn_inside_the_cost_raises_nondeterminism_error(lesson):
    rng = np.random.default_rng(0)

    def noisy(p):
        return lesson.cost(p)[0] * (1 + 0.1 * rng.random())

    with pytest.raises(jc.NondeterminismError, match="freeze|draw them once"):
        jc.check(noisy, lesson.grad, lesson.params, jax_cost=lesson.twin)

    def noisy_grad(p):
        g = lesson.grad(p)
        g["dW1"] = g["dW1"] * (rng.random(g["dW1"].shape) < 0.8)
        return g

    with pytest.raises(jc.NondeterminismError, match="grad\\(params\\).*'W1'"):
        jc.check(lesson.cost, noisy_grad, lesson.params, jax_cost=lesson.twin)

    live = models.make("dropout_lesson", frozen=False)  # the zoo's dropout, masks drawn live
    with pytest.raises(jc.NondeterminismError, match="draw them once outside the cost"):
        jc.check(live.cost, live.grad, live.params, jax_cost=live.jax_cost)


# --------------------------------------------------------------------------- report & assert


def test_report_to_dict_is_json_and_str_is_a_table(lesson):
    report = jc.check(lesson.cost, lesson.buggy, lesson.params, jax_cost=lesson.twin)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["failing"] == ["b1", "W2"]
    assert data["leaves"]["b1"]["ratio"] == pytest.approx(4.0)
    assert data["leaves"]["W2"]["shape"] == [3, 5]
    lines = str(report).splitlines()
    assert lines[1].split()[:4] == ["leaf", "shape", "checked", "bp"]
    assert sum(1 for line in lines if line.startswith(("W", "b"))) >= 6
    assert "ok=False" in repr(report)


def test_assert_gradients_raises_gradient_error_with_the_table(lesson):
    kwargs = dict(jax_cost=lesson.twin)
    assert jc.assert_gradients(lesson.cost, lesson.grad, lesson.params, **kwargs).ok
    with pytest.raises(jc.GradientError, match="b1: backprop is 4.00×") as info:
        jc.assert_gradients(lesson.cost, lesson.buggy, lesson.params, **kwargs)
    assert isinstance(info.value, AssertionError)
    assert info.value.report.failing == ["b1", "W2"]
    assert "bp vs fd" in str(info.value)


# --------------------------------------------------------------------------- batching & modes


def test_batches_give_the_same_answer_as_one_batch(lesson):
    kwargs = dict(jax_cost=lesson.twin)
    one = jc.check(lesson.cost, lesson.buggy, lesson.params, **kwargs)
    many = jc.check(lesson.cost, lesson.buggy, lesson.params, batch_size=3, **kwargs)
    assert many.leaves["W1"].batch_size == 3
    assert one.leaves["W1"].batch_size == 47  # the six small leaves, one group, one batch
    assert many.failing == one.failing
    for path in one.leaves:
        assert many.leaves[path].difference_fd == pytest.approx(
            one.leaves[path].difference_fd, rel=1e-6, abs=1e-12
        )


def test_memory_budget_bounds_the_batch(lesson):
    kwargs = dict(jax_cost=lesson.twin)
    roomy = jc.check(lesson.cost, lesson.grad, lesson.params, **kwargs)
    tight = jc.check(lesson.cost, lesson.grad, lesson.params, memory_budget=4096, **kwargs)
    assert tight.ok and roomy.ok
    assert tight.leaves["W1"].batch_size < roomy.leaves["W1"].batch_size


@pytest.mark.parametrize("method", ["sample", "directional"])
def test_partial_methods_pass_correct_and_localise_buggy(lesson, method):
    kwargs = dict(jax_cost=lesson.twin, method=method)
    if method == "sample":
        kwargs["samples"] = 4
    good = jc.check(lesson.cost, lesson.grad, lesson.params, **kwargs)
    assert good.ok, str(good)
    bad = jc.check(lesson.cost, lesson.buggy, lesson.params, **kwargs)
    assert bad.failing == ["b1", "W2"]
    assert bad.leaves["b1"].ratio == pytest.approx(4.0)
    if method == "sample":
        assert bad.leaves["W1"].checked == 4
        assert bad.leaves["b3"].checked == 1  # all of a leaf smaller than samples
        assert "4/20" in str(bad)
    else:
        # every leaf of the lesson is small: all its coordinates cost no more than 8 directions,
        # and the small leaves share one program
        assert bad.leaves["W1"].checked == 20


def test_directional_probes_large_leaves_along_directions():
    model = models.make("relu_mlp", layers=[30, 40, 20, 1], m=32)
    report = jc.check(model.cost, model.grad, model.params, method="directional", directions=6)
    assert report.ok
    assert report.leaves["layers/0/W"].checked == 6 and "6 dir" in str(report)
    assert report.leaves["layers/2/b"].checked == 1  # a small leaf: its one coordinate


@pytest.mark.parametrize("method", ["sample", "directional"])
def test_partial_methods_catch_a_one_percent_error_in_one_leaf(method):
    model = models.make("relu_mlp", layers=[30, 40, 20, 1], m=32)
    kwargs = {"jax_cost": model.jax_cost, "method": method}
    assert jc.check(model.cost, model.grad, model.params, **kwargs).ok
    bug = model.bugs["bias_grad_1_percent"]
    report = jc.check(model.cost, bug.grad, model.params, **kwargs)
    assert report.failing == ["layers/0/b"]
    assert report.leaves["layers/0/b"].ratio == pytest.approx(1.01, rel=1e-6)


def test_a_single_wrong_entry_is_named_not_summarised_as_a_ratio():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 8))
    params = {"W": rng.normal(size=(30, 30))}

    def grad(p, wrong=False):
        g = 2 * (p["W"] @ X) @ X.T
        if wrong:
            g = g.copy()
            g[3, 4] += 1e-3 * np.max(np.abs(g))
        return {"W": g}

    report = jc.check(
        lambda p: float(np.sum((p["W"] @ X) ** 2)),
        lambda p: grad(p, wrong=True),
        params,
        jax_cost=lambda p: jnp.sum((p["W"] @ X) ** 2),
    )
    assert report.failing == ["W"]
    assert report.leaves["W"].worst_index == (3, 4)
    assert "at 1 of 900 entries; worst at (3, 4)" in report.leaves["W"].message
    assert "1.00×" not in str(report)


def test_gradient_with_both_name_and_d_name_is_ambiguous():
    cost, _, params, twin = _quadratic()
    with pytest.raises(jc.InputError, match="both 'w' and 'dw'"):
        jc.check(cost, lambda p: {"w": 2 * p["w"], "dw": 4 * p["w"]}, params, jax_cost=twin)


def test_errors_inside_user_functions_get_advice_that_fits():
    _, grad, params, twin = _quadratic()
    with pytest.raises(
        jc.UserCodeError, match=r"params has the keys \['w'\]; cost.* looked up 'b1'"
    ):
        jc.check(lambda p: p["b1"], grad, params, jax_cost=twin)
    with pytest.raises(jc.UserCodeError, match="wrap the data in a closure"):
        jc.check(lambda X, Y, p: 1.0, grad, params, jax_cost=twin)
    with pytest.raises(
        jc.UserCodeError, match=r"raised ZeroDivisionError: (.|\n)*The error is in grad"
    ):
        jc.check(lambda p: float(np.sum(p["w"] ** 2)), lambda p: 1 / 0, params, jax_cost=twin)
