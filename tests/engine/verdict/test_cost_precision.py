"""A cost that computes below float64 inside, and costs the twin cannot match.

A NumPy cost with float64 params that casts to float32 in the middle (or whose loss is cast to
float32) is judged at float32's precision against the same formula run in float64, and the
report says so; a twin/cost mismatch the size of float32 rounding says "float32"; a cost in the
subnormal range names XLA's flush-to-zero when the twin is compiled (small checks, evaluated
with NumPy, judge it).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc

rng = np.random.default_rng(7)
X = rng.normal(size=(10, 3))
Y = rng.normal(size=10)
PARAMS = {"w": rng.normal(size=3), "b": np.array(0.2)}


def cost32(p):
    """A training-script cost: features cast to float32 halfway (to save memory)."""
    z = (X @ p["w"] + p["b"]).astype(np.float32)
    return float(np.mean((np.tanh(z) - Y) ** 2))


def grad64(p, scale_w=1.0):
    t = np.tanh(X @ p["w"] + p["b"])
    d = 2 * (t - Y) * (1 - t**2) / len(Y)
    return {"w": scale_w * (X.T @ d), "b": d.sum()}


def test_a_cost_cast_to_float32_inside_is_judged_at_float32_precision_and_says_so():
    report = jc.check(cost32, grad64, PARAMS)
    assert report.ok and report.dtype == "float32"
    assert all(leaf.rtol == pytest.approx(1e-3) for leaf in report.leaves.values())
    assert "float32" in report.precision and "rtol 1e-03" in report.precision
    assert "test_cost_precision.py" in report.precision  # the line of the cast
    assert report.precision in str(report) and report.to_dict()["precision"] == report.precision


def test_a_wrong_gradient_of_a_float32_inside_cost_still_fails():
    report = jc.check(cost32, lambda p: grad64(p, scale_w=1.5), PARAMS)
    assert report.failing == ["w"]
    assert report.leaves["w"].factor == pytest.approx(1.5, rel=1e-3)


def test_a_loss_cast_to_float32_at_the_end_is_judged_not_refused():
    def loss_and_grads(p):
        t = np.tanh(X @ p["w"] + p["b"])
        loss = np.mean((t - Y) ** 2).astype(np.float32)
        return loss, grad64(p)

    report = jc.check(loss_and_grads, None, PARAMS)
    assert report.ok and report.precision is not None


def test_a_given_float32_twin_is_still_refused():
    def twin32(p):
        z = (jnp.asarray(X, jnp.float32) @ p["w"].astype(jnp.float32)) + p["b"]
        return jnp.mean((jnp.tanh(z) - Y) ** 2)

    with pytest.raises(jc.ReimplementationError, match="float32"):
        jc.check(cost32, grad64, PARAMS, jax_cost=twin32)


def test_a_mismatch_the_size_of_float32_rounding_says_float32_and_what_to_do():
    def cost(p):  # float32 data, returned as a Python float: the cost looks float64
        X32 = X.astype(np.float32)
        return float(np.sum(np.sin(X32 @ p["w"].astype(np.float32))) + p["b"] ** 2)

    def twin(p):
        return jnp.sum(jnp.sin(X @ p["w"])) + p["b"] ** 2

    def grad(p):
        return {"w": X.T @ np.cos(X @ p["w"]), "b": 2 * p["b"]}

    with pytest.raises(jc.ReimplementationError, match="size of float32 rounding") as info:
        jc.check(cost, grad, PARAMS, jax_cost=twin)
    assert ".astype(np.float64)" in str(info.value)


def _subnormal():
    scale = 1e-300

    def cost(p):
        return float(scale * np.sum(p["w"] ** 2) * 1e-10)

    def grad(p):
        return {"w": scale * 2 * p["w"] * 1e-10}

    return cost, grad, {"w": np.array([0.5, 1.5])}


def test_a_cost_in_the_subnormal_range_names_flush_to_zero():
    cost, grad, params = _subnormal()
    with pytest.raises(jc.ReimplementationError, match="flush-to-zero") as info:
        jc.check(cost, grad, params, compile=True)  # XLA's program flushes subnormals to zero
    assert "subnormal" in str(info.value)


def test_a_small_subnormal_check_is_judged_in_numpy():
    cost, grad, params = _subnormal()  # small checks are evaluated with NumPy: no flush-to-zero
    assert jc.check(cost, grad, params).ok
    assert jc.check(cost, lambda p: {"w": 3 * grad(p)["w"]}, params).failing == ["w"]


def test_a_subnormal_cost_is_judged_two_way_in_numpy():
    w = {"w": np.array([0.5, 1.5])}

    def cost(p):
        return float(1e-310 * np.sum(p["w"] ** 2))

    def grad(p, factor=1.0):
        return {"w": factor * 1e-310 * 2 * p["w"]}

    assert jc.check(cost, grad, w, twin="none").ok
    assert jc.check(cost, lambda p: grad(p, 3.0), w, twin="none").failing == ["w"]


def test_a_float32_mask_of_the_params_carries_no_derivative_and_is_not_refused():
    # `(z > 0).astype("float32")`: float32, computed from the params, but through a comparison,
    # so no derivative flows through it; the cost itself stays float64.
    def cost(p):
        z = X @ p["w"] + p["b"]
        return float(np.sum(z * (z > 0).astype("float32")))

    def grad(p, scale=1.0):
        z = X @ p["w"] + p["b"]
        mask = (z > 0) * 1.0
        return {"w": scale * (X.T @ mask), "b": np.sum(mask)}

    report = jc.check(cost, grad, PARAMS)
    assert report.ok and report.twin == "ported" and report.precision is None
    assert jc.check(cost, lambda p: grad(p, 2.0), PARAMS).failing == ["w"]
