"""check_rule: custom_vjp / custom_jvp rules judged three ways (or two without a reference)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 3))
BETA = np.array(0.7)


def scaled_tanh_reference(x, beta):
    return jnp.tanh(beta * x)


def scaled_tanh(factor_x=1.0, factor_beta=1.0):
    """tanh(beta * x) with a custom_vjp whose two cotangents can be scaled (bugs)."""

    @jax.custom_vjp
    def f(x, beta):
        return jnp.tanh(beta * x)

    def forward(x, beta):
        return f(x, beta), (x, beta)

    def backward(res, g):
        x, beta = res
        d = g * (1 - jnp.tanh(beta * x) ** 2)
        return factor_x * d * beta, factor_beta * jnp.sum(d * x).reshape(jnp.shape(beta))

    f.defvjp(forward, backward)
    return f


# --------------------------------------------------------------------------- correct rules


def test_correct_rule_with_reference_is_three_way_and_named_by_parameters():
    report = jc.check_rule(scaled_tanh(), X, BETA, reference=scaled_tanh_reference)
    assert report.ok, str(report)
    assert list(report.leaves) == ["beta", "x"]
    assert report.autodiff
    assert report.leaves["x"].shape == (4, 3)
    assert report.leaves["x"].difference_autodiff < 1e-12
    assert report.leaves["x"].difference_fd < 1e-7
    text = str(report)
    assert "the custom rule of f" in text
    assert "is correct: it agrees with the reference's jax.grad and finite differences" in text


def test_correct_rule_without_reference_is_two_way():
    report = jc.check_rule(scaled_tanh(), X, BETA)
    assert report.ok
    assert not report.autodiff
    assert "two-way: no reference" in str(report)
    assert "pass reference=" in str(report)


def test_custom_jvp_rules_are_checked_through_their_linearisation():
    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    @softplus.defjvp
    def _(primals, tangents):
        (x,), (dx,) = primals, tangents
        return softplus(x), jax.nn.sigmoid(x) * dx

    x = np.linspace(-3, 3, 7)
    assert jc.check_rule(softplus, x, reference=lambda x: jnp.logaddexp(x, 0.0)).ok

    @jax.custom_jvp
    def bad(x):
        return jnp.logaddexp(x, 0.0)

    @bad.defjvp
    def _(primals, tangents):
        (x,), (dx,) = primals, tangents
        return bad(x), jax.nn.sigmoid(-x) * dx  # the derivative mirrored

    report = jc.check_rule(bad, x, reference=lambda x: jnp.logaddexp(x, 0.0))
    assert report.failing == ["x"]


# --------------------------------------------------------------------------- wrong rules


@pytest.mark.parametrize("reference", [None, scaled_tanh_reference], ids=["two-way", "three-way"])
def test_a_wrong_cotangent_is_localised_to_its_argument_with_its_factor(reference):
    report = jc.check_rule(scaled_tanh(factor_beta=2.0), X, BETA, reference=reference)
    assert not report.ok
    assert report.failing == ["beta"]
    assert report.leaves["beta"].factor == pytest.approx(2.0, rel=1e-6)
    assert report.leaves["x"].status == "ok"
    assert "beta: the rule is 2.00×" in str(report)
    assert "The custom rule of f is WRONG in beta." in report.verdict


def test_a_sign_error_says_so():
    report = jc.check_rule(scaled_tanh(factor_x=-1.0), X, BETA, reference=scaled_tanh_reference)
    assert report.failing == ["x"]
    assert "x: the rule has the wrong sign" in report.verdict


def test_pytree_and_static_arguments_and_pytree_outputs():
    def layer(params, x, activation):
        z = params["W"] @ x + params["b"]
        return {"out": jnp.tanh(z) if activation == "tanh" else z, "norm": jnp.sum(z**2)}

    rule = jax.custom_vjp(layer, nondiff_argnums=(2,))

    def forward(params, x, activation):
        return layer(params, x, activation), (params, x)

    def backward(activation, res, g):
        params, x = res
        z = params["W"] @ x + params["b"]
        dz = g["out"] * (1 - jnp.tanh(z) ** 2) + 2 * z * g["norm"]
        grads = {"W": 3 * dz @ x.T, "b": jnp.sum(dz, axis=1, keepdims=True), "steps": None}
        return grads, params["W"].T @ dz  # bug: dW is 3× too big

    rule.defvjp(forward, backward)
    params = {"W": RNG.normal(size=(2, 4)), "b": RNG.normal(size=(2, 1)), "steps": 3}
    report = jc.check_rule(rule, params, X, "tanh", reference=layer)
    assert list(report.leaves) == ["params/W", "params/b", "x"]
    assert report.failing == ["params/W"]
    assert report.leaves["params/W"].factor == pytest.approx(3.0, rel=1e-6)
    assert report.static == ["activation"]
    assert "static: activation" in str(report)


def test_python_scalars_and_ints_are_static():
    @jax.custom_vjp
    def power(x, n, scale):
        return scale * x**n

    power.defvjp(
        lambda x, n, s: (power(x, n, s), (x, n, s)),
        lambda res, g: (g * res[2] * res[1] * res[0] ** (res[1] - 1), None, None),
    )
    report = jc.check_rule(power, np.array([0.5, 2.0]), 3, 2.0)
    assert report.ok
    assert list(report.leaves) == ["x"]
    assert report.static == ["n", "scale"]
    on_jax = jc.check_rule(power, jnp.asarray([0.5, 2.0], dtype=jnp.float32), 3, 2.0)
    assert on_jax.ok and on_jax.dtype == "float32"


# --------------------------------------------------------------------------- kinks, precision


def custom_relu():
    @jax.custom_vjp
    def relu(x):
        return jnp.maximum(x, 0.0)

    relu.defvjp(lambda x: (relu(x), x), lambda x, g: (g * (x > 0),))
    return relu


@pytest.mark.parametrize("reference", [None, jax.nn.relu], ids=["two-way", "three-way"])
def test_a_custom_relu_at_zero_is_a_kink_not_a_bug(reference):
    x = np.array([-1.0, 0.0, 0.5, 0.0, 2.0])
    report = jc.check_rule(custom_relu(), x, reference=reference)
    assert report.ok, str(report)
    leaf = report.leaves["x"]
    assert leaf.status == "kink"
    assert leaf.kinks == [(1,), (3,)]


def test_float32_rules_are_judged_at_float32_tolerance():
    x32, beta32 = X.astype(np.float32), BETA.astype(np.float32)
    good = jc.check_rule(scaled_tanh(), x32, beta32, reference=scaled_tanh_reference)
    assert good.ok, str(good)
    assert good.dtype == "float32"
    assert good.leaves["x"].rtol == pytest.approx(1e-3)
    bad = jc.check_rule(scaled_tanh(factor_x=1.01), x32, beta32, reference=scaled_tanh_reference)
    assert bad.failing == ["x"]
    assert bad.leaves["x"].ratio == pytest.approx(1.01, rel=1e-4)


# --------------------------------------------------------------------------- culprits


def test_a_reference_whose_gradient_is_wrong_is_blamed_not_the_rule():
    def reference(x, beta):
        # The value of tanh(beta x) whose gradient in beta is cut off.
        return jnp.tanh(jax.lax.stop_gradient(beta) * x)

    report = jc.check_rule(scaled_tanh(), X, BETA, reference=reference)
    assert report.ok
    assert report.leaves["beta"].status == "twin"
    assert "fix the reference" in report.verdict
    # the first sentence names the function whose rule is cleared
    assert "where the custom rule of f agrees" in report.verdict.splitlines()[0]


def test_a_reference_that_computes_another_function_stops_the_check():
    with pytest.raises(jc.ReimplementationError, match="does not compute f"):
        jc.check_rule(scaled_tanh(), X, BETA, reference=lambda x, beta: jnp.tanh(x))


# --------------------------------------------------------------------------- surrogates


def straight_through_round():
    @jax.custom_vjp
    def round_ste(x):
        return jnp.round(x)

    round_ste.defvjp(lambda x: (round_ste(x), None), lambda _, g: (g,))
    return round_ste


def test_a_surrogate_rule_is_reported_but_never_fails():
    x = np.array([0.2, 1.3, -0.7, 2.6])
    judged = jc.check_rule(straight_through_round(), x)
    assert judged.failing == ["x"]
    report = jc.check_rule(straight_through_round(), x, expected="surrogate")
    assert report.ok
    assert report.failing == [] and report.inconclusive == []
    assert report.leaves["x"].ok
    assert report.leaves["x"].status == "backprop"  # what the differences would have earned
    assert report.verdict.startswith("Surrogate rule: not judged.")
    assert "not judged (surrogate rule): x:" in report.verdict
    assert "not judged" in str(report).splitlines()[3]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["check"] == "rule" and data["expected"] == "surrogate" and data["ok"]


# --------------------------------------------------------------------------- errors


def test_errors_say_what_to_do():
    f = scaled_tanh()
    with pytest.raises(jc.InputError, match="none of the 2 arguments"):
        jc.check_rule(f, 1, 2)
    with pytest.raises(jc.InputError, match="expected='maybe'"):
        jc.check_rule(f, X, BETA, expected="maybe")
    with pytest.raises(jc.InputError, match="check_rule\\(\\) got an unknown option 'step'"):
        jc.check_rule(f, X, BETA, step=1e-3)
    with pytest.raises(jc.InputError, match="twin= does not apply"):
        jc.check_rule(f, X, BETA, twin="auto")
    with pytest.raises(jc.InputError, match="reference must be callable"):
        jc.check_rule(f, X, BETA, reference=3)

    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(jc.UserCodeError, match="boom"):
        jc.check_rule(broken, X)


def test_options_pass_through_to_the_engine():
    report = jc.check_rule(
        scaled_tanh(factor_x=2.0), X, BETA, method="sample", samples=4, seed=3, eps=1e-6
    )
    assert report.method == "sample"
    assert report.failing == ["x"]
    assert report.seed == 3
    assert report.leaves["x"].step == pytest.approx(1e-6)
