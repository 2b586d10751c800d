"""Linear models of the zoo: logistic regression and softmax regression.

Column-major as in the lesson: inputs ``X`` are ``(n_x, m)``, labels ``(n_out, m)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.models._base import (
    Model,
    bce_with_logits,
    bce_with_logits_jax,
    bug_table,
    normal,
    require,
    with_bug,
)
from jaxcheck.models._base import sigmoid as _sigmoid
from jaxcheck.models._base import to_jax as _to_jax


def logistic_regression(
    rng: np.random.Generator, dtype: Any, *, n_x: int = 4, m: int = 10
) -> Model:
    """Logistic regression: ``sigmoid(w.T X + b)`` with binary cross-entropy.

    ``b`` is a 0-d array, so this model also exercises scalar leaves.

    Args:
        rng: Source of the data and the parameters.
        dtype: Float dtype of the data and the parameters.
        n_x: Number of input features.
        m: Number of examples (at least 2, so that a missing ``1/m`` shows).

    Returns:
        The model, with bugs ``sign_flip`` (``{"w"}``) and ``missing_1_over_m`` (``{"b"}``).
    """
    require(m >= 2, "logistic_regression", f"needs m >= 2 examples, got m={m}")
    x = rng.standard_normal((n_x, m))
    w_true = rng.standard_normal((n_x, 1))
    y = (rng.random((1, m)) < _sigmoid(w_true.T @ x)).astype(dtype)
    x = x.astype(dtype)
    params = {
        "w": normal(rng, (n_x, 1), 0.5, dtype),
        "b": np.asarray(0.1 * rng.standard_normal(), dtype),
    }

    def cost(params: dict[str, np.ndarray]) -> np.floating:
        return bce_with_logits(params["w"].T @ x + params["b"], y)

    def backprop(params: dict[str, np.ndarray], bug: str | None) -> dict[str, np.ndarray]:
        a = _sigmoid(params["w"].T @ x + params["b"])
        dz = a - y
        dw = x @ dz.T / m
        db = np.sum(dz) if bug == "missing_1_over_m" else np.sum(dz) / m
        if bug == "sign_flip":
            dw = -dw
        return {"w": dw, "b": np.asarray(db, dtype)}

    def jax_cost(params: dict[str, Any]) -> jax.Array:
        p = _to_jax(params)
        return bce_with_logits_jax(p["w"].T @ jnp.asarray(x) + p["b"], jnp.asarray(y))

    bugs = bug_table(
        backprop,
        ("sign_flip", "dw has the wrong sign", {"w"}),
        ("missing_1_over_m", "db forgets to divide by m", {"b"}),
    )
    return Model(
        name="logistic_regression",
        description=f"logistic regression, {n_x} features, {m} examples, binary cross-entropy",
        params=params,
        cost=cost,
        grad=with_bug(backprop, None),
        jax_cost=jax_cost,
        bugs=bugs,
    )


def softmax_regression(
    rng: np.random.Generator, dtype: Any, *, n_x: int = 4, n_classes: int = 3, m: int = 10
) -> Model:
    """Softmax regression: ``softmax(W X + b)`` with cross-entropy (stable log-sum-exp).

    Args:
        rng: Source of the data and the parameters.
        dtype: Float dtype of the data and the parameters.
        n_x: Number of input features.
        n_classes: Number of classes (at least 2).
        m: Number of examples (at least 2, so that a missing ``1/m`` shows).

    Returns:
        The model, with bugs ``missing_1_over_m`` (``{"W"}``) and ``diagonal_softmax_jacobian``
        (``{"W", "b"}``).
    """
    require(m >= 2, "softmax_regression", f"needs m >= 2 examples, got m={m}")
    require(n_classes >= 2, "softmax_regression", f"needs n_classes >= 2, got {n_classes}")
    x = rng.standard_normal((n_x, m)).astype(dtype)
    labels = rng.integers(n_classes, size=m)
    y = np.eye(n_classes, dtype=dtype)[:, labels]
    params = {
        "W": normal(rng, (n_classes, n_x), 0.5, dtype),
        "b": normal(rng, (n_classes, 1), 0.1, dtype),
    }

    def log_softmax(params: dict[str, np.ndarray]) -> np.ndarray:
        z = params["W"] @ x + params["b"]
        z_max = np.max(z, axis=0, keepdims=True)
        return z - z_max - np.log(np.sum(np.exp(z - z_max), axis=0, keepdims=True))

    def cost(params: dict[str, np.ndarray]) -> np.floating:
        return -np.sum(y * log_softmax(params)) / m

    def backprop(params: dict[str, np.ndarray], bug: str | None) -> dict[str, np.ndarray]:
        p = np.exp(log_softmax(params))
        if bug == "diagonal_softmax_jacobian":
            # d(-log p_y)/dp_y = -1/p_y times the diagonal p_y (1 - p_y) only.
            dz = -y * (1 - p) / m
        else:
            dz = (p - y) / m
        dw = (p - y) @ x.T if bug == "missing_1_over_m" else dz @ x.T
        return {"W": dw, "b": np.sum(dz, axis=1, keepdims=True)}

    def jax_cost(params: dict[str, Any]) -> jax.Array:
        p = _to_jax(params)
        z = p["W"] @ jnp.asarray(x) + p["b"]
        return -jnp.sum(jnp.asarray(y) * jax.nn.log_softmax(z, axis=0)) / m

    bugs = bug_table(
        backprop,
        ("missing_1_over_m", "dW forgets to divide by m", {"W"}),
        (
            "diagonal_softmax_jacobian",
            "dZ keeps only the diagonal of the softmax Jacobian: -y(1 - p) instead of p - y",
            {"W", "b"},
        ),
    )
    return Model(
        name="softmax_regression",
        description=(
            f"softmax regression, {n_x} features, {n_classes} classes, {m} examples, cross-entropy"
        ),
        params=params,
        cost=cost,
        grad=with_bug(backprop, None),
        jax_cost=jax_cost,
        bugs=bugs,
    )
