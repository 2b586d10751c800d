"""Tests of the pytest plugin: the ``gradcheck`` fixture passes right gradients, fails wrong."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# A user's test module, as it would be written once jaxcheck is installed: no import of the plugin.
USER_TESTS = textwrap.dedent(
    """
    import jaxcheck as jc
    from jaxcheck import lesson

    X, Y, PARAMS = lesson.gradient_check_n_test_case()


    def cost(p):
        return lesson.forward_propagation_n(X, Y, p)


    def jax_cost(p):
        return lesson.forward_propagation_n_jax(X, Y, p)


    def test_correct_backprop(gradcheck):
        def grad(p):
            return lesson.backward_propagation_n(X, Y, cost(p)[1])

        report = gradcheck(cost, grad, PARAMS, jax_cost=jax_cost)
        assert isinstance(report, jc.Report) and report.ok


    def test_buggy_backprop(gradcheck):
        def grad(p):
            return lesson.backward_propagation_n_buggy(X, Y, cost(p)[1])

        gradcheck(cost, grad, PARAMS, jax_cost=jax_cost)
    """
)


def test_one_passes_one_fails_with_the_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*GradientError*",
            "*b1*BACKPROP WRONG*",
            "*W2*BACKPROP WRONG*",
            "*Gradient WRONG in b1, W2.*",
            "*b1: backprop is 4.00*",
            "*W2: backprop is 2.00*",
            "*FAILED test_user.py::test_buggy_backprop*",
        ]
    )
    # The failure points at the user's call, not into jaxcheck's internals.
    output = result.stdout.str()
    assert "def run(" not in output and "raise GradientError" not in output


def test_explicit_plugin_loading_without_autoload(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "jaxcheck.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)


def test_options_and_input_errors_pass_through(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_options=textwrap.dedent(
            """
            import numpy as np
            import pytest

            import jaxcheck as jc

            PARAMS = {"w": np.array([1.0, 2.0, 3.0])}


            def cost(p):
                return float(np.sum(p["w"] ** 3))


            def jax_cost(p):
                return (p["w"] ** 3).sum()


            def test_sample_method(gradcheck):
                grad = lambda p: {"w": 3 * p["w"] ** 2}
                options = {"jax_cost": jax_cost, "method": "sample", "samples": 2}
                report = gradcheck(cost, grad, PARAMS, **options)
                assert report.method == "sample"


            def test_wrong_gradient_is_an_assertion_error(gradcheck):
                with pytest.raises(AssertionError, match="BACKPROP WRONG") as info:
                    gradcheck(cost, lambda p: {"w": 2 * p["w"]}, PARAMS, jax_cost=jax_cost)
                assert info.value.report.failing == ["w"]


            def test_bad_input_is_an_input_error(gradcheck):
                with pytest.raises(jc.InputError, match="w"):
                    gradcheck(cost, lambda p: {"w": np.ones(2)}, PARAMS, jax_cost=jax_cost)
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


LAYER_TESTS = textwrap.dedent(
    """
    import numpy as np
    import pytest

    import jaxcheck as jc

    RNG = np.random.default_rng(0)
    X, W, B = RNG.normal(size=(4, 3)), RNG.normal(size=(3, 2)), RNG.normal(size=2)


    def affine_forward(x, w, b):
        return x @ w + b, (x, w)


    def affine_backward(dout, cache):
        x, w = cache
        return dout @ w.T, x.T @ dout, dout.sum(axis=0)


    def affine_backward_buggy(dout, cache):
        x, w = cache
        return dout @ w.T, x.T @ dout, dout.mean(axis=0)


    def test_correct_layer(gradcheck_layer):
        report = gradcheck_layer(affine_forward, affine_backward, X, W, B)
        assert isinstance(report, jc.Report) and sorted(report.leaves) == ["b", "w", "x"]


    def test_options_pass_through(gradcheck_layer):
        report = gradcheck_layer(affine_forward, affine_backward_buggy, X, W, B, wrt=["x", "w"])
        assert sorted(report.leaves) == ["w", "x"]


    def test_bad_backward_is_an_input_error(gradcheck_layer):
        with pytest.raises(jc.InputError, match="expected a tuple of 3 gradients"):
            gradcheck_layer(affine_forward, lambda dout, cache: dout, X, W, B)


    def test_buggy_layer(gradcheck_layer):
        gradcheck_layer(affine_forward, affine_backward_buggy, X, W, B)
    """
)


def test_gradcheck_layer_passes_and_fails_with_the_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_layer_user=LAYER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*GradientError*",
            "*b *BACKPROP WRONG*",
            "*Gradient WRONG in b.*",
            "*b: backprop is 0.25*",
            "*FAILED test_layer_user.py::test_buggy_layer*",
        ]
    )
    output = result.stdout.str()
    assert "def run(" not in output and "raise GradientError" not in output
