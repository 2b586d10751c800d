"""Batch normalisation in the zoo: a network whose first bias has a true gradient of exactly zero.

Training mode: the mean and variance are those of the batch, so they depend on the parameters.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.models._base import Model, bug_table, normal, relu, require, to_jax, with_bug

_EPS = 1e-5


def batchnorm(
    rng: np.random.Generator,
    dtype: Any,
    *,
    n_x: int = 3,
    n_h: int = 4,
    n_y: int = 2,
    m: int = 8,
) -> Model:
    """Linear → batch norm (gamma, beta) → ReLU → linear, squared error.

    ``Z1 = W1 X + b1`` is normalised per unit over the batch, ``(Z1 - mean) / sqrt(var + 1e-5)``,
    then scaled by ``gamma`` and shifted by ``beta``. ``b1`` sits right before the normalisation,
    which subtracts it again, so its true gradient is exactly zero: every correct opinion of
    ``db1`` is rounding noise.

    Args:
        rng: Source of the data and the parameters.
        dtype: Float dtype of the data and the parameters.
        n_x: Number of input features.
        n_h: Width of the normalised hidden layer.
        n_y: Number of outputs.
        m: Batch size (at least 2).

    Returns:
        The model, with bugs ``frozen_batch_statistics`` (``{"W1", "b1"}``),
        ``missing_variance_path`` (``{"W1"}``) and ``gamma_grad_sign`` (``{"gamma"}``).
    """
    require(m >= 2, "batchnorm", f"needs a batch of m >= 2 examples, got m={m}")
    x = rng.standard_normal((n_x, m)).astype(dtype)
    y = rng.standard_normal((n_y, m)).astype(dtype)
    params = {
        "W1": normal(rng, (n_h, n_x), 1 / np.sqrt(n_x), dtype),
        "b1": normal(rng, (n_h, 1), 0.1, dtype),
        "gamma": (1 + 0.1 * rng.standard_normal((n_h, 1))).astype(dtype),
        "beta": normal(rng, (n_h, 1), 0.1, dtype),
        "W2": normal(rng, (n_y, n_h), 1 / np.sqrt(n_h), dtype),
        "b2": normal(rng, (n_y, 1), 0.1, dtype),
    }

    def forward(params: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        z1 = params["W1"] @ x + params["b1"]
        centred = z1 - np.mean(z1, axis=1, keepdims=True)
        inv_std = 1 / np.sqrt(np.mean(centred**2, axis=1, keepdims=True) + _EPS)
        z_norm = centred * inv_std
        z_bn = params["gamma"] * z_norm + params["beta"]
        a1 = relu(z_bn)
        z2 = params["W2"] @ a1 + params["b2"]
        return inv_std, z_norm, z_bn, a1, z2

    def cost(params: dict[str, np.ndarray]) -> np.floating:
        return np.sum((forward(params)[4] - y) ** 2) / (2 * m)

    def backprop(params: dict[str, np.ndarray], bug: str | None) -> dict[str, np.ndarray]:
        inv_std, z_norm, z_bn, a1, z2 = forward(params)
        dz2 = (z2 - y) / m
        dz_bn = (params["W2"].T @ dz2) * (z_bn > 0)
        dgamma = np.sum(dz_bn * z_norm, axis=1, keepdims=True)
        dz_norm = dz_bn * params["gamma"]
        mean_dz_norm = np.mean(dz_norm, axis=1, keepdims=True)
        if bug == "frozen_batch_statistics":
            dz1 = dz_norm * inv_std
        elif bug == "missing_variance_path":
            dz1 = inv_std * (dz_norm - mean_dz_norm)
        else:
            variance_path = z_norm * np.mean(dz_norm * z_norm, axis=1, keepdims=True)
            dz1 = inv_std * (dz_norm - mean_dz_norm - variance_path)
        return {
            "W1": dz1 @ x.T,
            "b1": np.sum(dz1, axis=1, keepdims=True),
            "gamma": -dgamma if bug == "gamma_grad_sign" else dgamma,
            "beta": np.sum(dz_bn, axis=1, keepdims=True),
            "W2": dz2 @ a1.T,
            "b2": np.sum(dz2, axis=1, keepdims=True),
        }

    def jax_cost(params: dict[str, Any]) -> jax.Array:
        p = to_jax(params)
        z1 = p["W1"] @ jnp.asarray(x) + p["b1"]
        centred = z1 - jnp.mean(z1, axis=1, keepdims=True)
        z_norm = centred / jnp.sqrt(jnp.mean(centred**2, axis=1, keepdims=True) + _EPS)
        a1 = jnp.maximum(p["gamma"] * z_norm + p["beta"], 0)
        z2 = p["W2"] @ a1 + p["b2"]
        return jnp.sum((z2 - jnp.asarray(y)) ** 2) / (2 * m)

    bugs = bug_table(backprop, *_BATCHNORM_BUGS)
    return Model(
        name="batchnorm",
        description=(
            f"linear {n_x}->{n_h}, batch norm, ReLU, linear {n_h}->{n_y}, squared error, "
            f"batch of {m}"
        ),
        params=params,
        cost=cost,
        grad=with_bug(backprop, None),
        jax_cost=jax_cost,
        bugs=bugs,
    )


#: The planted bugs of :func:`batchnorm`: name, what is wrong, the leaves it makes wrong.
_BATCHNORM_BUGS = (
    (
        "frozen_batch_statistics",
        "backprop treats the batch mean and variance as constants: dZ1 = dZnorm / std",
        {"W1", "b1"},
    ),
    (
        "missing_variance_path",
        "backprop keeps the batch mean's dependence on Z1 but not the variance's",
        {"W1"},
    ),
    ("gamma_grad_sign", "dgamma has the wrong sign", {"gamma"}),
)
