"""check_hvp probes what a hand-written product can get wrong: its scale, |v|, basis vectors,
linearity; and the product door's public surface (assert_hvp, options, specifications)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.doors import product as door
from jaxcheck._engine.evaluate import products as engine
from jaxcheck._engine.options import Options


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


class Logistic:
    """L2-regularised logistic regression as a course writes it: the loss, its gradient and the
    Hessian-vector product Xᵀ diag(s(1 − s)) X v / m + λ v, with the usual mistakes."""

    def __init__(self, m=40, d=5, lam=0.1, seed=0):
        rng = np.random.default_rng(seed)
        self.X = rng.standard_normal((m, d))
        self.y = (rng.random(m) < 0.5).astype(float)
        self.m, self.lam = m, lam
        self.params = {"w": 0.3 * rng.standard_normal(d), "b": np.array(0.2)}

    def cost(self, p):
        z = self.X @ p["w"] + p["b"]
        loss = np.mean(np.logaddexp(0, z) - self.y * z)
        return loss + self.lam / 2 * np.sum(p["w"] ** 2)

    def jax_cost(self, p):
        z = self.X @ p["w"] + p["b"]
        return jnp.mean(jnp.logaddexp(0, z) - self.y * z) + self.lam / 2 * jnp.sum(p["w"] ** 2)

    def hessian(self, p):
        """The full Hessian over (w, b), for products that index into it."""
        s = _sigmoid(self.X @ p["w"] + p["b"])
        A = np.hstack([self.X, np.ones((self.m, 1))])
        H = A.T @ (A * (s * (1 - s))[:, None]) / self.m
        H[:-1, :-1] += self.lam * np.eye(self.X.shape[1])
        return H

    def hvp(self, p, v, bug=None):
        s = _sigmoid(self.X @ p["w"] + p["b"])
        vw, vb = v["w"], v["b"]
        if bug == "normalised":  # "a direction": divided by its norm
            norm = np.sqrt(np.sum(vw**2) + vb**2)
            vw, vb = vw / norm, vb / norm
        if bug == "abs":
            vw, vb = np.abs(vw), np.abs(vb)
        r = s * (1 - s) * (self.X @ vw + vb) / self.m
        lam = 2 * self.lam if bug == "twice the penalty" else self.lam
        return {"w": self.X.T @ r + lam * vw, "b": np.sum(r)}


@pytest.fixture(scope="module")
def logistic():
    return Logistic()


def _run(model, hvp, **options):
    return jc.check_hvp(model.cost, hvp, model.params, jax_cost=model.jax_cost, **options)


# --------------------------------------------------------------------------- what the probes catch


@pytest.mark.parametrize("directions", [None, 3], ids=["full", "random"])
def test_a_correct_logistic_regression_hvp_passes(logistic, directions):
    report = _run(logistic, logistic.hvp, directions=directions)
    assert report.ok, str(report)
    assert report.nonlinear == []
    assert {leaf.status for leaf in report.leaves.values()} == {"ok"}


@pytest.mark.parametrize("directions", [None, 3], ids=["full", "random"])
@pytest.mark.parametrize("bug", ["normalised", "abs"])
def test_a_product_that_normalises_v_or_takes_its_absolute_value_fails(logistic, bug, directions):
    report = _run(logistic, lambda p, v: logistic.hvp(p, v, bug=bug), directions=directions)
    assert not report.ok
    assert sorted(report.failing) == ["b", "w"]
    # A negative factor a exposes both: hvp(params, a·v) is not a·hvp(params, v).
    assert sorted(report.nonlinear) == ["b", "w"]
    text = report.leaves["w"].message
    assert text.startswith("w: hvp ")
    assert "; and hvp is not linear in v: hvp(params, -" in text
    assert "·hvp(params, v)" in text


def test_a_product_right_only_on_basis_vectors_fails_on_their_combination(logistic):
    def hvp(p, v):
        # Reads the Hessian's column off the one non-zero entry of v: right on every scaled
        # basis vector, wrong on anything else.
        flat = np.concatenate([v["w"], np.atleast_1d(v["b"])])
        k = int(np.argmax(np.abs(flat)))
        column = logistic.hessian(p)[:, k] * flat[k]
        return {"w": column[:-1], "b": column[-1]}

    full = _run(logistic, hvp)
    assert full.method == "full"
    assert not full.ok
    assert set(full.nonlinear) == {"w", "b"}
    assert "w: hvp is not additive in v: hvp(params, Σ cₖ·vₖ) ≠ Σ cₖ·hvp(params, vₖ)" in str(full)
    # Every basis direction on its own agrees with both references.
    assert full.leaves["w"].wrong == 0
    random = _run(logistic, hvp, directions=4)
    assert set(random.failing) == {"w", "b"}
    assert random.leaves["w"].wrong > 0  # dense directions are wrong one by one


def test_a_product_off_by_a_factor_in_one_block_is_localised(logistic):
    report = _run(logistic, lambda p, v: logistic.hvp(p, v, bug="twice the penalty"))
    assert report.failing == ["w"]
    assert report.nonlinear == []  # linear, only wrong
    assert report.leaves["b"].status == "ok"
    assert "w: hvp disagrees with the exact product and finite differences" in str(report)


def test_a_product_scaled_by_a_constant_gets_its_factor_on_scaled_directions(logistic):
    report = _run(logistic, lambda p, v: {k: 1.5 * x for k, x in logistic.hvp(p, v).items()})
    assert sorted(report.failing) == ["b", "w"]
    assert report.leaves["w"].factor == pytest.approx(1.5, rel=1e-9)
    assert report.nonlinear == []


def test_directions_have_random_norms_and_basis_vectors_are_scaled(logistic):
    from jaxcheck._engine.system.params import flatten_params

    flat = flatten_params(logistic.params)
    random = door._Directions(flat, False, 6, seed=3).take(np.arange(6))
    norms = np.linalg.norm(random, axis=1)
    assert norms.max() / norms.min() > 1.5
    assert np.all((norms > 1 / door.NORM_SPREAD) & (norms < door.NORM_SPREAD))
    basis = door._Directions(flat, True, 6, seed=3).take(np.arange(6))
    assert np.count_nonzero(basis) == 6
    scales = np.abs(np.diag(basis))
    assert np.all(scales != 1.0) and len(set(scales)) == 6
    again = door._Directions(flat, False, 6, seed=3).take(np.arange(6))
    np.testing.assert_array_equal(random, again)  # seeded


# --------------------------------------------------------------------------- Gauss-Newton of an MLP


class SoftmaxMLP:
    """A one-hidden-layer tanh network with softmax cross-entropy, and its Gauss-Newton product
    Jᵀ H_L J v written by hand (R-operator forward, softmax curvature, backward)."""

    def __init__(self, n_x=4, n_h=5, n_y=3, m=8, seed=1):
        rng = np.random.default_rng(seed)
        self.X = rng.standard_normal((n_x, m))
        self.Y = np.eye(n_y)[:, rng.integers(0, n_y, m)]
        self.m = m
        self.params = {
            "W1": rng.standard_normal((n_h, n_x)) * 0.5,
            "b1": 0.3 * rng.standard_normal((n_h, 1)),
            "W2": rng.standard_normal((n_y, n_h)) * 0.5,
            "b2": np.zeros((n_y, 1)),
        }

    def model_output(self, p):
        return p["W2"] @ jnp.tanh(p["W1"] @ self.X + p["b1"]) + p["b2"]

    def loss_of_output(self, z):
        z = z - jnp.max(z, axis=0, keepdims=True)
        logp = z - jnp.log(jnp.sum(jnp.exp(z), axis=0, keepdims=True))
        return -jnp.sum(self.Y * logp) / self.m

    def cost(self, p):
        a1 = np.tanh(p["W1"] @ self.X + p["b1"])
        z = p["W2"] @ a1 + p["b2"]
        z = z - z.max(axis=0, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=0, keepdims=True))
        return -np.sum(self.Y * logp) / self.m

    def gnvp(self, p, v, bug=None):
        a1 = np.tanh(p["W1"] @ self.X + p["b1"])
        z = p["W2"] @ a1 + p["b2"]
        e = np.exp(z - z.max(axis=0, keepdims=True))
        s = e / e.sum(axis=0, keepdims=True)
        # J v: the R-operator through the network.
        ra1 = (1 - a1**2) * (v["W1"] @ self.X + v["b1"])
        rz = v["W2"] @ a1 + p["W2"] @ ra1 + v["b2"]
        # H_L (J v): the softmax cross-entropy curvature, (diag(s) − s sᵀ) / m per example.
        rdz = (s * rz - s * np.sum(s * rz, axis=0, keepdims=True)) / self.m
        if bug == "no 1/m":
            rdz = rdz * self.m
        # Jᵀ (...): ordinary backprop of rdz.
        rda1 = p["W2"].T @ rdz
        rdz1 = rda1 * (1 - a1**2)
        out = {
            "W1": rdz1 @ self.X.T,
            "b1": rdz1.sum(axis=1, keepdims=True),
            "W2": rdz @ a1.T,
            "b2": rdz.sum(axis=1, keepdims=True),
        }
        if bug == "W2 forgets b1":  # the activation recomputed without the bias
            out["W2"] = rdz @ np.tanh(p["W1"] @ self.X).T
        return out


def test_an_mlp_gauss_newton_product_passes_and_its_bugs_are_localised():
    net = SoftmaxMLP()

    def check(product, **options):
        return jc.check_hvp(
            net.cost,
            product,
            net.params,
            kind="gauss_newton",
            model_output=net.model_output,
            loss_of_output=net.loss_of_output,
            **options,
        )

    good = check(net.gnvp)
    assert good.ok, str(good)
    assert "Gauss-Newton product correct" in good.verdict
    scaled = check(lambda p, v: net.gnvp(p, v, bug="no 1/m"), directions=5)
    assert sorted(scaled.failing) == ["W1", "W2", "b1", "b2"]
    assert scaled.leaves["W2"].factor == pytest.approx(net.m, rel=1e-9)
    forgot_bias = check(lambda p, v: net.gnvp(p, v, bug="W2 forgets b1"))
    assert forgot_bias.failing == ["W2"]
    assert forgot_bias.nonlinear == []
    assert "worst at H[W2[" in forgot_bias.leaves["W2"].message


# --------------------------------------------------------------------------- fewer evaluations


@pytest.fixture
def evaluations(monkeypatch):
    """The number of directions of every evaluation of finite differences, in order."""
    seen = []
    evaluate = engine.Products.evaluate

    def counting(self, vectors, *args):
        seen.append(len(vectors))
        return evaluate(self, vectors, *args)

    monkeypatch.setattr(engine.Products, "evaluate", counting)
    return seen


def test_finite_differences_are_taken_only_along_directions_that_need_them(logistic, evaluations):
    seen = evaluations
    good = _run(logistic, logistic.hvp, directions=6)
    assert good.ok and seen == []  # the probe w confirmed the exact products: no more
    assert good.difference_fd < 1e-7  # finite differences along w were taken all the same
    calls = []

    def wrong_sometimes(p, v):
        calls.append(1)
        out = logistic.hvp(p, v)
        if abs(float(v["b"])) > 0.8:  # only some directions are wrong
            out["b"] = 3 * out["b"]
        return out

    bad = _run(logistic, wrong_sometimes, directions=6)
    assert bad.failing == ["b"]
    assert 0 < seen[0] < 6
    # 6 directions, the purity re-call and the probe w (and one a·v where linearity fails).
    assert len(calls) in (8, 9)


def test_a_product_without_finite_differences_is_judged_against_the_exact_one(logistic):
    spec = dataclasses.replace(engine.HESSIAN, kind="exact only", finite_differences=None)

    def check(product):
        options = Options(twin="required")
        return door.check_product(
            spec, logistic.cost, product, logistic.params, options, logistic.jax_cost, {}, 4
        )

    good = check(logistic.hvp)
    assert good.ok, str(good)
    assert np.isnan(good.difference_fd) and np.isnan(good.leaves["w"].difference_fd_autodiff)
    bad = check(lambda p, v: logistic.hvp(p, v, bug="twice the penalty"))
    assert bad.failing == ["w"]
    assert "w: hvp disagrees with the exact product at" in bad.leaves["w"].message
    assert "finite differences" not in bad.leaves["w"].message


# --------------------------------------------------------------------------- the public surface


def test_assert_hvp_raises_with_the_report_and_returns_it_otherwise(logistic):
    report = jc.assert_hvp(logistic.cost, logistic.hvp, logistic.params, directions=2)
    assert isinstance(report, jc.HvpReport) and report.ok
    with pytest.raises(jc.GradientError, match="Hessian-vector product WRONG in") as caught:
        jc.assert_hvp(
            logistic.cost,
            lambda p, v: logistic.hvp(p, v, bug="abs"),
            logistic.params,
            jax_cost=logistic.jax_cost,
        )
    assert isinstance(caught.value, AssertionError)
    assert sorted(caught.value.report.nonlinear) == ["b", "w"]
    assert str(caught.value) == str(caught.value.report)


def test_unknown_options_name_the_door_and_the_option(logistic):
    with pytest.raises(jc.InputError, match=r"check_hvp\(\) got an unknown option 'method'"):
        jc.check_hvp(logistic.cost, logistic.hvp, logistic.params, method="sample")
    with pytest.raises(jc.InputError, match=r"assert_hvp\(\) got an unknown option 'samples'"):
        jc.assert_hvp(logistic.cost, logistic.hvp, logistic.params, samples=3)
    with pytest.raises(jc.InputError, match=r"assert_rule\(\) got an unknown option 'kind'"):
        jc.assert_rule(lambda x: x, np.ones(2), kind="hessian")


def test_a_product_that_returns_the_wrong_structure_is_named_as_the_product(logistic):
    with pytest.raises(jc.InputError, match=r"hvp\(params, v\) has no entry for leaf 'b'"):
        jc.check_hvp(logistic.cost, lambda p, v: {"w": v["w"]}, logistic.params, directions=2)


def test_the_product_specifications_speak_for_their_product():
    assert set(engine.SPECS) == set(door.KINDS) == {"hessian", "gauss_newton"}
    assert engine.HESSIAN.subject == "hvp(params, v)"
    assert engine.HESSIAN.call("2·v") == "hvp(params, 2·v)"
    assert engine.GAUSS_NEWTON.witnesses == (
        "the exact Gauss-Newton product and finite differences of the linearised gradient"
    )
    assert engine.GAUSS_NEWTON.functions == ("model_output", "loss_of_output")


# --------------------------------------------------------------------------- hostile but correct


def test_an_ill_conditioned_quadratic_is_not_called_non_linear():
    # J = ½ θᵀAθ + bᵀθ with cond(A) = 1e6, as in a least-squares solver's test: its product A v
    # rounds like any matmul, which the linearity test must not mistake for a bug.
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    A = q @ np.diag(np.logspace(0, 6, 12)) @ q.T
    A = (A + A.T) / 2
    b = rng.standard_normal(12)
    params = {"theta": rng.standard_normal(12)}

    def cost(p):
        return 0.5 * p["theta"] @ A @ p["theta"] + b @ p["theta"]

    for directions in (None, 5):
        good = jc.check_hvp(
            cost, lambda p, v: {"theta": A @ v["theta"]}, params, directions=directions
        )
        assert good.ok and good.nonlinear == [], str(good)
    diagonal = jc.check_hvp(cost, lambda p, v: {"theta": np.diag(A) * v["theta"]}, params)
    assert diagonal.failing == ["theta"] and diagonal.nonlinear == []


def test_float32_products_along_random_directions_pass_and_fail_at_float32_tolerance():
    model = Logistic(seed=2)
    model.X = model.X.astype(np.float32)
    model.params = {k: v.astype(np.float32) for k, v in model.params.items()}
    good = _run(model, model.hvp, directions=6)
    assert good.ok and good.dtype == "float32", str(good)
    bad = _run(model, lambda p, v: model.hvp(p, v, bug="abs"), directions=6)
    assert sorted(bad.failing) == ["b", "w"]


def test_a_kink_crossed_by_the_probe_is_reported_without_more_finite_differences(evaluations):
    seen = evaluations
    # An L1 penalty: the gradient sign(θ) jumps at θ = 0, where jax.grad takes 0 and the exact
    # product is the smooth part's.
    params = {"theta": np.array([0.0, 0.7, -1.2, 0.3])}

    def cost(p):
        return float(np.sum(np.abs(p["theta"])) + np.sum(p["theta"] ** 4) / 4)

    report = jc.check_hvp(cost, lambda p, v: {"theta": 3 * p["theta"] ** 2 * v["theta"]}, params)
    assert report.ok and report.leaves["theta"].status == "kink", str(report)
    assert report.leaves["theta"].kinks == [(0,)]
    assert seen == []


def test_where_the_probe_cannot_confirm_the_exact_product_every_direction_gets_fd(evaluations):
    seen = evaluations
    import jax

    @jax.custom_jvp
    def cube(x):
        return x**3

    # The rule's own derivative is cut off: jax.grad of the twin is right, its Hessian is 0.
    cube.defjvp(lambda xs, ts: (cube(xs[0]), 3 * jax.lax.stop_gradient(xs[0]) ** 2 * ts[0]))
    params = {"x": np.array([0.5, -1.0, 2.0])}
    report = jc.check_hvp(
        lambda p: float(np.sum(p["x"] ** 3)),
        lambda p, v: {"x": 0 * v["x"]},  # agrees with the wrong exact product
        params,
        jax_cost=lambda p: jnp.sum(cube(p["x"])),
    )
    assert seen == [3]  # finite differences along every direction, not just w
    assert report.leaves["x"].checked == 3
    assert report.leaves["x"].difference_fd_autodiff > 0.5  # and they show the twin's Hessian off
