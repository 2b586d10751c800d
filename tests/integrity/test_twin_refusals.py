"""Verdict integrity, twin refusals: no false refusal of a faithful twin, and a true
refusal of an unfaithful one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcheck as jc
from integrity.course import TwoLayerNet, logistic


@pytest.mark.parametrize("K, m, scale", [(10, 20, 1e-4), (20, 20, 1e-5), (30, 10, 1e-5)])
def test_faithful_port_of_a_cancelling_cost_is_not_refused(K, m, scale):
    # KL(P‖softmax(Z)) written as Σ P log P − Σ P log q: two large sums that nearly cancel, so
    # NumPy's pairwise summation and XLA's order differ far above 1e-9 relative.
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(K), size=m).T
    params = {"Z": np.log(P) + scale * rng.normal(size=(K, m))}

    def cost(p):
        Z = p["Z"] - p["Z"].max(axis=0, keepdims=True)
        logq = Z - np.log(np.sum(np.exp(Z), axis=0, keepdims=True))
        return (np.sum(P * np.log(P)) - np.sum(P * logq)) / m

    def grad(p):
        Z = p["Z"] - p["Z"].max(axis=0, keepdims=True)
        q = np.exp(Z)
        q /= q.sum(axis=0, keepdims=True)
        return {"Z": (q - P) / m}

    def twin(p):  # the same function written the JAX way: another summation order
        logq = jax.nn.log_softmax(p["Z"], axis=0)
        return jnp.mean(jnp.sum(P * (jnp.log(P) - logq), axis=0))

    mismatches = []
    for jax_cost in (None, twin):
        report = jc.check(cost, grad, params, jax_cost=jax_cost)
        assert report.ok, str(report)
        mismatches.append(report.cost_mismatch)
        wrong = jc.check(cost, lambda p: {"Z": 1.5 * grad(p)["Z"]}, params, jax_cost=jax_cost)
        assert wrong.failing == ["Z"]
    assert max(mismatches) > 1e-9  # above float64's flat tolerance: the rounding rule decided


class L2Net(TwoLayerNet):
    def __init__(self, dtype=np.float64, l2_share=1e-3):
        super().__init__(seed=4, m=32, dtype=dtype)
        base = float(self.cross_entropy(self.params))
        l2 = float(np.sum(self.params["W1"] ** 2) + np.sum(self.params["W2"] ** 2))
        self.m = self.X.shape[1]
        # λ so that the L2 term is l2_share of the cost
        self.lambd = l2_share / (1 - l2_share) * base / l2 * 2 * self.m

    def cross_entropy(self, p, np=np):
        A1 = np.tanh(p["W1"] @ self.X + p["b1"])
        Z2 = p["W2"] @ A1 + p["b2"]
        return np.mean(np.logaddexp(0, Z2) - self.Y * Z2)

    def cost(self, p):
        l2 = np.sum(np.square(p["W1"])) + np.sum(np.square(p["W2"]))
        return self.cross_entropy(p) + self.lambd / (2 * self.m) * l2

    def grad(self, p):
        g = super().grad(p)
        g["dW1"] = g["dW1"] + self.lambd / self.m * p["W1"]
        g["dW2"] = g["dW2"] + self.lambd / self.m * p["W2"]
        return g

    def twins(self):
        m, lam = self.m, self.lambd

        def l2(p):
            return jnp.sum(p["W1"] ** 2) + jnp.sum(p["W2"] ** 2)

        def faithful(p):
            Z2 = p["W2"] @ jnp.tanh(p["W1"] @ self.X + p["b1"]) + p["b2"]
            return jnp.mean(jax.nn.softplus(Z2) - self.Y * Z2) + lam / (2 * m) * l2(p)

        return {
            "faithful": faithful,
            "missing-l2": lambda p: self.cross_entropy(p, np=jnp),
            "l2-over-m-not-2m": lambda p: self.cross_entropy(p, np=jnp) + lam / m * l2(p),
            "mean-over-m-minus-1": lambda p: faithful(p) * m / (m - 1),
        }


@pytest.mark.parametrize("l2_share", [1e-3, 1e-5])
def test_unfaithful_twins_are_refused_float64(l2_share):
    net = L2Net(np.float64, l2_share)
    twins = net.twins()
    assert jc.check(net.cost, net.grad, net.params, jax_cost=twins["faithful"]).ok
    for name in ("missing-l2", "l2-over-m-not-2m", "mean-over-m-minus-1"):
        with pytest.raises(jc.ReimplementationError) as info:
            jc.check(net.cost, net.grad, net.params, jax_cost=twins[name])
        assert "does not compute the NumPy cost" in str(info.value), name


@pytest.mark.parametrize("l2_share", [1e-3, 5e-4])
def test_unfaithful_twins_are_refused_float32(l2_share):
    # The float32 cost's own rounding is ~1e-7 relative; an L2 term worth 1e-3 of the cost is
    # another function, and accepting it blames the user's (correct) dW1 for the twin's gap.
    net = L2Net(np.float32, l2_share)
    twins = net.twins()
    assert jc.check(net.cost, net.grad, net.params, jax_cost=twins["faithful"]).ok
    for name in ("missing-l2", "l2-over-m-not-2m"):
        with pytest.raises(jc.ReimplementationError):
            report = jc.check(net.cost, net.grad, net.params, jax_cost=twins[name])
            raise AssertionError(f"{name} accepted: {report}")


def test_twin_without_the_constant_entropy_term_is_refused():
    # Cross-entropy instead of KL: the same gradient, another function.
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(5), size=8).T
    params = {"Z": rng.normal(size=(5, 8))}

    def cost(p):
        logq = p["Z"] - np.log(np.sum(np.exp(p["Z"]), axis=0, keepdims=True))
        return float(np.sum(P * (np.log(P) - logq)) / 8)

    def grad(p):
        q = np.exp(p["Z"]) / np.sum(np.exp(p["Z"]), axis=0, keepdims=True)
        return {"Z": (q - P) / 8}

    with pytest.raises(jc.ReimplementationError):
        jc.check(
            cost,
            grad,
            params,
            jax_cost=lambda p: -jnp.sum(P * jax.nn.log_softmax(p["Z"], axis=0)) / 8,
        )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float32_twin_is_refused_saying_so(dtype):
    cost, grad, params = logistic(dtype)
    rng = np.random.default_rng(0)  # the same data as logistic(seed=0)
    X = rng.normal(size=(3, 16)).astype(dtype)
    Y = (rng.random((1, 16)) > 0.5).astype(dtype)

    def twin32(p):
        Z = p["w"].astype(jnp.float32) @ jnp.asarray(X, jnp.float32) + p["b"].astype(jnp.float32)
        A = jax.nn.sigmoid(Z)
        return -jnp.mean(Y * jnp.log(A) + (1 - Y) * jnp.log(1 - A))

    with pytest.raises(jc.ReimplementationError) as info:
        jc.check(cost, grad, params, jax_cost=twin32)
    message = str(info.value)
    assert "float32" in message
    assert "astype" in message or "dtype=jnp.float32" in message
