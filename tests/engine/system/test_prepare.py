"""The system under test: gradients in every container, the user's errors, the twin's checks."""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.evaluate import processes
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.prepare import prepare
from jaxcheck._engine.verdict import evidence as judge

X = np.random.default_rng(0).normal(size=(6, 3))


def cost(p):
    return float(np.sum(np.sin(X @ p["w"])) + np.sum(p["b"] ** 2))


def grad(p):
    return {"w": X.T @ np.cos(X @ p["w"]), "b": 2 * p["b"]}


PARAMS = {"w": np.array([0.1, -0.2, 0.3]), "b": np.array([1.0, 2.0])}


def test_params_and_gradients_as_lists_tuples_and_attribute_objects():
    as_list = [PARAMS["w"], PARAMS["b"]]
    report = jc.check(
        lambda p: cost({"w": p[0], "b": p[1]}),
        lambda p: [grad({"w": p[0], "b": p[1]})["w"], grad({"w": p[0], "b": p[1]})["b"]],
        as_list,
    )
    assert report.ok and list(report.leaves) == ["0", "1"]
    # a gradient returned as an object with attributes, for dict params
    report = jc.check(cost, lambda p: types.SimpleNamespace(**grad(p)), PARAMS)
    assert report.ok
    wrong = jc.check(cost, lambda p: types.SimpleNamespace(w=grad(p)["w"], b=p["b"]), PARAMS)
    assert wrong.failing == ["b"] and wrong.leaves["b"].factor == pytest.approx(0.5)


def test_an_exception_in_the_users_code_is_a_user_code_error_with_file_and_line():
    def backward(p):
        dW = X.T @ np.cos(X @ p["w"])
        return {"w": dW, "b": undefined_name}  # noqa: F821

    with pytest.raises(jc.UserCodeError, match="grad\\(params\\) raised NameError") as info:
        jc.check(cost, backward, PARAMS)
    assert info.value.filename == __file__
    assert "undefined_name" in str(info.value)
    assert isinstance(info.value.__cause__, NameError)
    assert not isinstance(info.value, jc.InputError)


def test_cyclic_params_and_unsortable_keys_are_input_errors():
    cyclic: dict = {"w": np.ones(2)}
    cyclic["self"] = cyclic
    with pytest.raises(jc.InputError, match="contains itself at 'self'"):
        jc.check(cost, grad, cyclic)
    with pytest.raises(jc.InputError, match="keys cannot be sorted"):
        jc.check(cost, grad, {1: np.ones(2), "b": np.ones(2)})


def test_a_twin_returning_a_complex_value_is_refused():
    with pytest.raises(jc.InputError, match="complex"):
        jc.check(cost, grad, PARAMS, jax_cost=lambda p: jnp.sum(p["w"]) * (1 + 1j))


def test_a_twin_that_computes_in_float32_is_refused_and_says_so():
    def twin32(p):
        w = p["w"].astype(jnp.float32)
        return jnp.sum(jnp.sin(X.astype(np.float32) @ w)) + jnp.sum(p["b"] ** 2)

    with pytest.raises(jc.ReimplementationError, match="computes in float32 or narrower") as info:
        jc.check(cost, grad, PARAMS, jax_cost=twin32)
    assert "astype" in str(info.value) and "test_prepare.py" in str(info.value)


def test_a_faithful_twin_is_not_refused_for_rounding_in_large_cancelling_sums():
    big = np.random.default_rng(1).normal(size=(400, 3)) * 1e4

    def cancelling(p):
        z = big @ p["w"]
        return float(np.sum(z**2) - np.sum((z - 1e-3) ** 2))

    def twin(p):
        z = big @ p["w"]
        return jnp.sum(jnp.sort(z**2)[::-1]) - jnp.sum((z - 1e-3) ** 2)  # another order

    report = jc.check(
        cancelling, lambda p: {"w": 2e-3 * big.T @ np.ones(400)}, {"w": np.ones(3)}, jax_cost=twin
    )
    assert report.ok, str(report)
    with pytest.raises(jc.ReimplementationError):  # a twin missing the constant term
        jc.check(
            cancelling,
            lambda p: {"w": 2e-3 * big.T @ np.ones(400)},
            {"w": np.ones(3)},
            jax_cost=lambda p: 2e-3 * jnp.sum(big @ p["w"]),
        )


def _callback_twin(p):
    return jax.pure_callback(
        lambda w, b: np.float64(cost({"w": w, "b": b})),
        jax.ShapeDtypeStruct((), jnp.float64),
        p["w"],
        p["b"],
    )


def test_a_given_twin_that_fails_under_grad_is_an_input_error():
    with pytest.raises(jc.InputError, match="failed under jax.vmap or jax.grad"):
        jc.check(cost, grad, PARAMS, jax_cost=_callback_twin)


def test_without_a_portable_cost_the_check_is_two_way_and_says_so():
    def unportable(p):
        return math.fsum(np.sin(X @ p["w"]).tolist()) + float(np.sum(p["b"] ** 2))

    report = jc.check(unportable, grad, PARAMS)
    assert report.ok and report.twin == "none" and not report.autodiff
    assert "two-way: no JAX twin" in str(report) and "jax_cost=" in str(report)
    wrong = jc.check(unportable, lambda p: {**grad(p), "w": -grad(p)["w"]}, PARAMS)
    assert wrong.failing == ["w"] and "wrong sign" in wrong.leaves["w"].message
    with pytest.raises(jc.PortError):
        jc.check(unportable, grad, PARAMS, twin="required")


def test_jax_disable_jit_set_by_the_user_does_not_break_a_check():
    with jax.disable_jit():
        assert jc.check(cost, grad, PARAMS).ok


def test_refinement_is_capped_per_leaf(monkeypatch):
    monkeypatch.setattr(judge, "MAX_REFINE", 4)
    rng = np.random.default_rng(2)
    A = rng.normal(size=(200, 3))
    params = {"W": rng.normal(size=(3, 40))}

    def many_wrong(p):
        g = 2 * A.T @ (A @ p["W"])
        return {"W": g * np.where(np.arange(40) % 2 == 0, 1.0, 1.5)}

    report = jc.check(
        lambda p: float(np.sum((A @ p["W"]) ** 2)), many_wrong, params, method="sample", samples=8
    )
    leaf = report.leaves["W"]
    assert report.failing == ["W"] and leaf.wrong >= 60
    assert leaf.checked <= 8 + 4  # the sample plus at most MAX_REFINE re-evaluated entries


def counted_cost(p):
    print("cost runs")  # a side effect no isolation of the port's writes can undo
    return float(np.sum(np.sin(X @ p["w"])) + np.sum(p["b"] ** 2))


def counted_grad(p):
    print("grad runs")
    return grad(p)


def _counts(text: str) -> dict[str, int]:
    return {name: text.count(f"{name} runs") for name in ("cost", "grad")}


def test_the_users_code_runs_as_few_times_as_documented(capsys):
    capsys.readouterr()
    assert jc.check(counted_cost, counted_grad, PARAMS).ok
    # cost twice and grad twice (randomness), and the port's single trace of cost's body
    assert _counts(capsys.readouterr().out) == {"cost": 3, "grad": 2}
    params32 = {k: v.astype(np.float32) for k, v in PARAMS.items()}
    jc.check(counted_cost, counted_grad, params32)
    # and each once more at float64 copies of θ
    assert _counts(capsys.readouterr().out) == {"cost": 4, "grad": 3}


def test_a_cost_written_with_jax_numpy_in_float32_is_matched_at_float32_precision():
    def jnp_cost(p):  # JAX's default config: float32 values, whatever the params
        w32 = jnp.asarray(p["w"], jnp.float32)
        return jnp.sum(jnp.sin(jnp.asarray(X, jnp.float32) @ w32)) + jnp.sum(p["b"] ** 2)

    def twin(p):
        return jnp.sum(jnp.sin(X @ p["w"])) + jnp.sum(p["b"] ** 2)

    with jax.enable_x64(False):
        report = jc.check(jnp_cost, grad, PARAMS, jax_cost=twin)
    assert report.ok and report.cost_mismatch > 1e-9  # a float32 cost, not refused for it


def test_a_check_of_no_gradient_meets_the_other_processes(monkeypatch):
    # check_hvp's system has no backprop; across processes it is compared as none (it was a
    # TypeError from inside the meeting). Two processes that agree, faked: both publish ours.
    met = []
    monkeypatch.setattr(processes, "client", lambda: object())
    monkeypatch.setattr(processes, "spans_processes", lambda devices: True)
    monkeypatch.setattr(processes, "meet", lambda payload: met.append(payload) or [payload] * 2)
    system = prepare(cost, None, PARAMS, None, Options(), gradient=False)
    assert system.backprop is None
    assert len(met) == 1 and met[0]["backprop"] == [] and met[0]["params"]
