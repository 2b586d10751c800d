"""Tests for jaxcheck.lesson: the lesson's numbers, its false alarm, and the JAX twins."""

from __future__ import annotations

import copy
import importlib

import jax
import numpy as np
import pytest

from jaxcheck import lesson
from jaxcheck.errors import InputError

try:
    from tests.compiled import jit
except ImportError:  # pytest run without the repository root on sys.path: tests/ is on it
    from compiled import jit

PARAMETER_KEYS = ("W1", "b1", "W2", "b2", "W3", "b3")
PARAMETER_SHAPES = {
    "W1": (5, 4),
    "b1": (5, 1),
    "W2": (3, 5),
    "b2": (3, 1),
    "W3": (1, 3),
    "b3": (1, 1),
}
GRADIENT_KEYS = ("dZ3", "dW3", "db3", "dA2", "dZ2", "dW2", "db2", "dA1", "dZ1", "dW1", "db1")
# jax.grad of the lesson's twin, one compiled program for the tests that need it: an eager call
# would compile each primitive on its own (seconds).
AUTODIFF = jit(jax.grad(lesson.forward_propagation_n_jax, argnums=2))
MISTAKE = "There is a mistake in the backward propagation!"
FINE = "Your backward propagation works perfectly fine!"


@pytest.fixture(autouse=True)
def x64_flag_unchanged():
    """Every test must leave JAX's global x64 flag as it found it."""
    before = jax.config.jax_enable_x64
    yield
    assert jax.config.jax_enable_x64 == before


@pytest.fixture
def test_case():
    return lesson.gradient_check_n_test_case()


def _gradients(backward, test_case):
    X, Y, parameters = test_case
    _, cache = lesson.forward_propagation_n(X, Y, parameters)
    return backward(X, Y, cache)


# ---------------------------------------------------------------------------------------------
# 1-D
# ---------------------------------------------------------------------------------------------


def test_gradient_check_1d_lesson_value(capsys):
    difference = lesson.gradient_check(2, 4)
    assert 1e-10 < difference < 1e-9  # the lesson's 2.919e-10
    out = capsys.readouterr().out
    assert "The gradient is correct!" in out
    assert "wrong" not in out


def test_gradient_check_1d_wrong_backward_says_wrong(monkeypatch, capsys):
    monkeypatch.setattr(lesson, "backward_propagation", lambda x, theta: 2 * x)
    difference = lesson.gradient_check(2, 4)
    assert difference == pytest.approx(1 / 3, rel=1e-6)
    assert "The gradient is wrong!" in capsys.readouterr().out


def test_gradient_check_1d_print_msg_false_is_silent(capsys):
    lesson.gradient_check(2, 4, print_msg=False)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------
# N-D: the lesson's two runs
# ---------------------------------------------------------------------------------------------


def test_gradient_check_n_buggy_backward_lesson_value(test_case, capsys):
    X, Y, parameters = test_case
    gradients = _gradients(lesson.backward_propagation_n_buggy, test_case)
    difference = lesson.gradient_check_n(parameters, gradients, X, Y)
    assert difference == pytest.approx(0.2850931567761624, rel=1e-6)
    assert MISTAKE in capsys.readouterr().out


def test_gradient_check_n_fixed_backward_keeps_the_lesson_false_alarm(test_case, capsys):
    X, Y, parameters = test_case
    gradients = _gradients(lesson.backward_propagation_n, test_case)
    difference = lesson.gradient_check_n(parameters, gradients, X, Y)
    # The lesson's 1.1890913024229996e-07: the gradient is correct (see the jax.grad test below),
    # but rounding error at epsilon = 1e-7 lifts the difference just above the 1e-7 threshold.
    assert 1.18e-7 < difference < 1.20e-7
    assert MISTAKE in capsys.readouterr().out


def test_gradient_check_n_correct_gradient_passes_with_larger_epsilon(test_case, capsys):
    X, Y, parameters = test_case
    gradients = _gradients(lesson.backward_propagation_n, test_case)
    difference = lesson.gradient_check_n(parameters, gradients, X, Y, epsilon=1e-5)
    assert difference < 1e-8
    assert FINE in capsys.readouterr().out


@pytest.mark.parametrize("scale", [0.5, 1.5, 3.0], ids=["half", "one-and-a-half", "triple"])
def test_gradient_check_n_scaled_gradient_is_caught(test_case, capsys, scale):
    X, Y, parameters = test_case
    gradients = _gradients(lesson.backward_propagation_n, test_case)
    scaled = {key: scale * value for key, value in gradients.items()}
    difference = lesson.gradient_check_n(parameters, scaled, X, Y)
    # For grad = k * gradapprox the seed formula gives |k - 1| / (k + 1).
    assert difference == pytest.approx(abs(scale - 1) / (scale + 1), rel=1e-6)
    assert MISTAKE in capsys.readouterr().out


@pytest.mark.parametrize("key", ["dW1", "db1", "dW2", "db2", "dW3", "db3"])
def test_gradient_check_n_one_wrong_leaf_is_caught(test_case, key):
    X, Y, parameters = test_case
    gradients = _gradients(lesson.backward_propagation_n, test_case)
    gradients[key] = gradients[key] + 1e-3
    assert lesson.gradient_check_n(parameters, gradients, X, Y, print_msg=False) > 1e-5


def test_gradient_check_n_does_not_modify_inputs(test_case):
    X, Y, parameters = test_case
    gradients = _gradients(lesson.backward_propagation_n_buggy, test_case)
    before = copy.deepcopy((X, Y, parameters, gradients))
    lesson.gradient_check_n(parameters, gradients, X, Y, print_msg=False)
    after = (X, Y, parameters, gradients)
    assert np.array_equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])
    for original, now in [(before[2], after[2]), (before[3], after[3])]:
        assert original.keys() == now.keys()
        for key in original:
            assert np.array_equal(original[key], now[key]), key


# ---------------------------------------------------------------------------------------------
# The system under test
# ---------------------------------------------------------------------------------------------


def test_test_case_shapes(test_case):
    X, Y, parameters = test_case
    assert X.shape == (4, 3)
    assert Y.shape == (3,)
    assert np.issubdtype(Y.dtype, np.integer)
    assert Y.tolist() == [1, 1, 0]
    assert list(parameters) == list(PARAMETER_KEYS)
    assert {key: value.shape for key, value in parameters.items()} == PARAMETER_SHAPES


def test_test_case_is_reproducible():
    X1, _, parameters1 = lesson.gradient_check_n_test_case()
    X2, _, parameters2 = lesson.gradient_check_n_test_case()
    assert np.array_equal(X1, X2)
    assert all(np.array_equal(parameters1[key], parameters2[key]) for key in PARAMETER_KEYS)


def test_forward_propagation_n_returns_scalar_cost_and_cache(test_case):
    X, Y, parameters = test_case
    cost, cache = lesson.forward_propagation_n(X, Y, parameters)
    assert np.ndim(cost) == 0
    assert np.isfinite(cost) and cost > 0
    Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3 = cache
    assert W1 is parameters["W1"] and b3 is parameters["b3"]
    assert Z1.shape == A1.shape == (5, 3)
    assert Z2.shape == A2.shape == (3, 3)
    assert Z3.shape == A3.shape == (1, 3)


def test_buggy_backward_differs_only_by_the_lesson_bugs(test_case):
    correct = _gradients(lesson.backward_propagation_n, test_case)
    buggy = _gradients(lesson.backward_propagation_n_buggy, test_case)
    assert correct.keys() == buggy.keys() == set(GRADIENT_KEYS)
    np.testing.assert_allclose(buggy["dW2"], 2 * correct["dW2"], rtol=1e-15)
    np.testing.assert_allclose(buggy["db1"], 4 * correct["db1"], rtol=1e-15)
    for key in correct.keys() - {"dW2", "db1"}:
        np.testing.assert_array_equal(buggy[key], correct[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# Vector helpers
# ---------------------------------------------------------------------------------------------


def test_dictionary_to_vector_has_47_parameters_in_lesson_order(test_case):
    _, _, parameters = test_case
    theta, names = lesson.dictionary_to_vector(parameters)
    assert theta.shape == (47, 1)
    expected_names = [key for key in PARAMETER_KEYS for _ in range(np.prod(PARAMETER_SHAPES[key]))]
    assert names == expected_names
    np.testing.assert_array_equal(theta[:20, 0], parameters["W1"].ravel())
    np.testing.assert_array_equal(theta[-1, 0], parameters["b3"].item())


def test_vector_round_trip(test_case):
    _, _, parameters = test_case
    theta, _ = lesson.dictionary_to_vector(parameters)
    restored = lesson.vector_to_dictionary(theta)
    assert list(restored) == list(PARAMETER_KEYS)
    for key in PARAMETER_KEYS:
        np.testing.assert_array_equal(restored[key], parameters[key], err_msg=key)
    theta_again, _ = lesson.dictionary_to_vector(restored)
    np.testing.assert_array_equal(theta_again, theta)


def test_vector_to_dictionary_returns_copies():
    theta = np.arange(47.0).reshape(47, 1)
    parameters = lesson.vector_to_dictionary(theta)
    parameters["W1"][0, 0] = -1.0
    assert theta[0, 0] == 0.0


def test_gradients_to_vector_lines_up_with_parameters(test_case):
    _, _, parameters = test_case
    theta, _ = lesson.dictionary_to_vector(parameters)
    as_gradients = {"d" + key: value for key, value in parameters.items()}
    as_gradients["dZ1"] = np.zeros((5, 3))  # intermediates are ignored
    np.testing.assert_array_equal(lesson.gradients_to_vector(as_gradients), theta)


def test_vector_helpers_take_other_layouts():
    parameters = {"w": np.arange(6.0).reshape(2, 3), "b": np.array([7.0])}
    theta, names = lesson.dictionary_to_vector(parameters, keys=["w", "b"])
    assert theta.ravel().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0]
    assert names == ["w"] * 6 + ["b"]
    restored = lesson.vector_to_dictionary(theta, shapes={"w": (2, 3), "b": (1,)})
    np.testing.assert_array_equal(restored["w"], parameters["w"])
    np.testing.assert_array_equal(restored["b"], parameters["b"])
    gradients = {"dw": parameters["w"], "db": parameters["b"]}
    np.testing.assert_array_equal(lesson.gradients_to_vector(gradients, keys=["dw", "db"]), theta)


def test_vector_to_dictionary_rejects_wrong_size():
    with pytest.raises(InputError, match="theta has 46 entries .* need 47"):
        lesson.vector_to_dictionary(np.zeros((46, 1)))


# ---------------------------------------------------------------------------------------------
# JAX twins
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("x", "theta"), [(2.0, 4.0), (-3.5, 0.25)], ids=["lesson", "negative"])
def test_forward_propagation_jax_equals_numpy(x, theta):
    with jax.enable_x64(True):
        cost = lesson.forward_propagation_jax(x, theta)
        grad = jax.grad(lesson.forward_propagation_jax, argnums=1)(x, theta)
    assert cost.shape == ()
    assert float(cost) == pytest.approx(lesson.forward_propagation(x, theta), rel=1e-12)
    assert float(grad) == pytest.approx(lesson.backward_propagation(x, theta), rel=1e-12)


def test_forward_propagation_jax_vmaps_over_theta():
    thetas = np.array([1.0, 2.0, 3.0])
    with jax.enable_x64(True):
        costs = jit(jax.vmap(lesson.forward_propagation_jax, in_axes=(None, 0)))(2.0, thetas)
    np.testing.assert_allclose(costs, 2.0 * thetas, rtol=1e-12)


def test_forward_propagation_n_jax_equals_numpy_cost(test_case):
    X, Y, parameters = test_case
    expected, _ = lesson.forward_propagation_n(X, Y, parameters)
    with jax.enable_x64(True):
        cost = lesson.forward_propagation_n_jax(X, Y, parameters)
        jitted = jit(lesson.forward_propagation_n_jax)(X, Y, parameters)
    assert cost.shape == ()
    assert cost.dtype == np.float64
    assert float(cost) == pytest.approx(expected, rel=1e-12)
    assert float(jitted) == pytest.approx(expected, rel=1e-12)


def test_forward_propagation_n_jax_vmaps_over_parameter_vectors(test_case):
    X, Y, parameters = test_case
    theta, _ = lesson.dictionary_to_vector(parameters)
    thetas = np.stack([theta, 0.5 * theta, -theta])
    expected = [
        lesson.forward_propagation_n(X, Y, lesson.vector_to_dictionary(t))[0] for t in thetas
    ]

    def cost_of_vector(t):
        pieces, start = {}, 0
        for key, shape in PARAMETER_SHAPES.items():
            size = int(np.prod(shape))
            pieces[key] = t[start : start + size].reshape(shape)
            start += size
        return lesson.forward_propagation_n_jax(X, Y, pieces)

    with jax.enable_x64(True):
        costs = jit(jax.vmap(cost_of_vector))(thetas)
    np.testing.assert_allclose(costs, expected, rtol=1e-12)


def test_jax_grad_equals_backward_propagation_n(test_case):
    X, Y, parameters = test_case
    gradients = _gradients(lesson.backward_propagation_n, test_case)
    with jax.enable_x64(True):
        autodiff = AUTODIFF(X, Y, parameters)
    for key in PARAMETER_KEYS:
        np.testing.assert_allclose(
            autodiff[key], gradients["d" + key], rtol=1e-10, atol=1e-12, err_msg=key
        )


def test_jax_grad_disagrees_with_buggy_backward_where_the_bugs_are(test_case):
    X, Y, parameters = test_case
    buggy = _gradients(lesson.backward_propagation_n_buggy, test_case)
    with jax.enable_x64(True):
        autodiff = AUTODIFF(X, Y, parameters)
    wrong = {
        key
        for key in PARAMETER_KEYS
        if not np.allclose(autodiff[key], buggy["d" + key], rtol=1e-10, atol=1e-12)
    }
    assert wrong == {"W2", "b1"}


def test_importing_seed_leaves_x64_flag_alone():
    before = jax.config.jax_enable_x64
    importlib.reload(lesson)
    assert jax.config.jax_enable_x64 == before
