"""Verdict integrity, errors: bad options, params and twins, and the user's own exceptions,
each a clear JaxcheckError naming the file and line; and checks under ``jax_disable_jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from integrity.course import METHODS, TwoLayerNet, with_entry

OK_PARAMS = {"w": np.array([0.5, -1.0, 2.0])}


def ok_cost(p):
    return float(np.sum(np.tanh(p["w"]) ** 2))


def ok_grad(p):
    t = np.tanh(p["w"])
    return {"w": 2 * t * (1 - t**2)}


@pytest.mark.parametrize(
    "options, name",
    [
        ({"seed": -1}, "seed"),
        ({"seed": None}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"eps": 1e-300}, "eps"),
        ({"eps": 1e-30}, "eps"),
        ({"eps": 0.0}, "eps"),
        ({"eps": -1e-6}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": float("inf")}, "eps"),
        ({"eps": "1e-6"}, "eps"),
        ({"eps": True}, "eps"),
        ({"rtol": 0}, "rtol"),
        ({"rtol": 2.0}, "rtol"),
        ({"rtol": float("nan")}, "rtol"),
        ({"rtol": -1e-3}, "rtol"),
        ({"method": "Full"}, "method"),
        ({"method": None}, "method"),
        ({"method": "sample", "samples": 0}, "samples"),
        ({"method": "sample", "samples": 2.0}, "samples"),
        ({"samples": 4}, "samples"),
        ({"method": "directional", "directions": -1}, "directions"),
        ({"directions": 4}, "directions"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"memory_budget": 0}, "memory_budget"),
        ({"progress": "yes"}, "progress"),
        ({"incremental": 1}, "incremental"),
        ({"twin": "never"}, "twin"),
        ({"devices": []}, "devices"),
        ({"devices": "cpu"}, "devices"),
    ],
)
def test_every_bad_option_is_an_input_error_naming_it(options, name):
    with pytest.raises(jc.InputError) as info:
        jc.check(ok_cost, ok_grad, OK_PARAMS, **options)
    assert name in str(info.value)


def test_eps_underflow_says_where_and_what_to_use():
    with pytest.raises(jc.InputError) as info:
        jc.check(ok_cost, ok_grad, {"w": np.array([0.5, 1e6])}, eps=1e-12)
    message = str(info.value)
    assert "eps=1e-12" in message and "'w'" in message and "(1,)" in message


def test_numpy_integer_seed_is_accepted():
    assert jc.check(ok_cost, ok_grad, OK_PARAMS, seed=np.int64(3)).ok


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({1: np.ones(2), "a": np.ones(2)}, "sorted"),
        ({("x", 1): np.ones(2), "a": np.ones(2)}, "sorted"),
    ],
)
def test_unsortable_keys_are_an_input_error(params, fragment):
    with pytest.raises(jc.InputError) as info:
        jc.check(lambda p: 0.0, lambda p: p, params)
    assert fragment in str(info.value)


def test_cyclic_containers_are_an_input_error():
    d = {"w": np.ones(2)}
    d["self"] = d
    with pytest.raises(jc.InputError, match="cyclic"):
        jc.check(ok_cost, ok_grad, d)
    lst = [np.ones(2)]
    lst.append(lst)
    with pytest.raises(jc.InputError, match="cyclic"):
        jc.check(ok_cost, ok_grad, lst)
    nested = {"layers": [{"W": np.ones(2)}]}
    nested["layers"][0]["parent"] = nested
    with pytest.raises(jc.InputError, match="cyclic"):
        jc.check(ok_cost, ok_grad, nested)


@pytest.mark.parametrize(
    "twin",
    [
        lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2) + 0j,
        lambda p: jnp.sum(jnp.tanh(p["w"].astype(jnp.complex128)) ** 2),
        lambda p: jnp.vdot(jnp.tanh(p["w"]) + 1j, jnp.tanh(p["w"])),
    ],
)
def test_complex_twin_is_a_clear_error(twin):
    with pytest.raises(jc.JaxcheckError) as info:
        jc.check(ok_cost, ok_grad, OK_PARAMS, jax_cost=twin)
    assert "complex" in str(info.value)


def test_non_scalar_twin_is_a_clear_error():
    with pytest.raises(jc.JaxcheckError) as info:
        jc.check(ok_cost, ok_grad, OK_PARAMS, jax_cost=lambda p: jnp.tanh(p["w"]) ** 2)
    assert "(3,)" in str(info.value)


def test_exception_in_the_users_cost_names_file_and_line():
    def cost(p):
        A = np.tanh(p["w"])
        return float(A[5])  # IndexError in the user's forward

    with pytest.raises(jc.UserCodeError) as info:
        jc.check(cost, ok_grad, OK_PARAMS)
    err = info.value
    assert isinstance(err.__cause__, IndexError)
    assert err.filename == __file__
    assert err.lineno == cost.__code__.co_firstlineno + 2
    assert "return float(A[5])" in str(err)
    assert "IndexError" in str(err)


def test_exception_in_the_users_grad_inside_a_helper_names_the_helper_line():
    def layer_backward(dout, cache):
        x, w = cache
        return dout @ w, x.T @ dout, dout.sum(axis=0)  # (2, 3) @ (2, 3): ValueError

    def grad(p):
        return {"w": layer_backward(np.ones((2, 3)), (np.ones((2, 4)), np.ones((2, 3))))[1][0]}

    with pytest.raises(jc.UserCodeError) as info:
        jc.check(ok_cost, grad, OK_PARAMS)
    err = info.value
    assert isinstance(err.__cause__, ValueError)
    assert err.filename == __file__
    assert err.lineno == layer_backward.__code__.co_firstlineno + 2
    assert "grad" in str(err)


def test_exception_in_the_users_twin_is_a_user_code_error():
    def twin(p):
        return jnp.sum(p["W"])  # KeyError: the params hold "w"

    with pytest.raises(jc.UserCodeError) as info:
        jc.check(ok_cost, ok_grad, OK_PARAMS, jax_cost=twin)
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.lineno == twin.__code__.co_firstlineno + 1


@pytest.mark.parametrize("method, options", METHODS)
def test_jax_disable_jit_context_does_not_break_a_check(method, options):
    net = TwoLayerNet()
    with jax.disable_jit():
        good = jc.check(net.cost, net.grad, net.params, method=method, **options)
        bad = jc.check(
            net.cost, with_entry(net.grad, "db2", None, 0.0), net.params, method=method, **options
        )
    assert good.ok
    assert bad.failing == ["b2"]


def test_jax_disable_jit_config_flag_does_not_break_a_check():
    net = TwoLayerNet()
    jax.config.update("jax_disable_jit", True)
    try:
        report = jc.check(net.cost, net.grad, net.params)
        assert jax.config.jax_disable_jit
    finally:
        jax.config.update("jax_disable_jit", False)
    assert report.ok
