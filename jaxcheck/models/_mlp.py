"""Multilayer perceptrons of the zoo: a tanh MLP, an L2-regularised ReLU MLP, a deep ReLU MLP.

Column-major as in the lesson: ``W`` is ``(n_out, n_in)``, ``b`` is ``(n_out, 1)``, inputs are
``(n_x, m)``.
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
    relu,
    require,
    sigmoid,
    to_jax,
    with_bug,
)

#: The planted bugs of :func:`l2_mlp`: name, what is wrong, the leaves it makes wrong.
_L2_MLP_BUGS = (
    ("forgotten_regularisation", "dW2 leaves out the regularisation term lambd/m * W2", {"W2"}),
    ("regularisation_on_bias", "db1 adds a regularisation term lambd/m * b1", {"b1"}),
    (
        "wrong_scale",
        "every dW adds lambd/(2m) * W instead of lambd/m * W (the 2 from W**2 is lost)",
        {"W1", "W2", "W3"},
    ),
)


def tanh_mlp(
    rng: np.random.Generator,
    dtype: Any,
    *,
    n_x: int = 3,
    n_h: int = 4,
    n_y: int = 2,
    m: int = 6,
) -> Model:
    """Two tanh hidden layers of equal width and a linear output, squared error.

    ``J = 1/(2m) * sum((W3 tanh(W2 tanh(W1 X + b1) + b2) + b3 - Y)**2)``. The hidden layers have
    the same width so that ``W2`` is square and backprop through ``W2`` instead of ``W2.T`` still
    has the right shapes.

    Args:
        rng: Source of the data and the parameters.
        dtype: Float dtype of the data and the parameters.
        n_x: Number of input features.
        n_h: Width of both hidden layers (at least 2).
        n_y: Number of outputs.
        m: Number of examples.

    Returns:
        The model, with bugs ``wrong_activation_derivative`` (``{"W1", "b1"}``), ``sign_flip``
        (``{"b2"}``) and ``transposed_weight`` (``{"W1", "b1"}``).
    """
    require(n_h >= 2, "tanh_mlp", f"needs n_h >= 2 so that W2 differs from W2.T, got {n_h}")
    x = rng.standard_normal((n_x, m)).astype(dtype)
    y = rng.standard_normal((n_y, m)).astype(dtype)
    params = {
        "W1": normal(rng, (n_h, n_x), 1 / np.sqrt(n_x), dtype),
        "b1": normal(rng, (n_h, 1), 0.1, dtype),
        "W2": normal(rng, (n_h, n_h), 1 / np.sqrt(n_h), dtype),
        "b2": normal(rng, (n_h, 1), 0.1, dtype),
        "W3": normal(rng, (n_y, n_h), 1 / np.sqrt(n_h), dtype),
        "b3": normal(rng, (n_y, 1), 0.1, dtype),
    }

    def forward(params: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        a1 = np.tanh(params["W1"] @ x + params["b1"])
        a2 = np.tanh(params["W2"] @ a1 + params["b2"])
        z3 = params["W3"] @ a2 + params["b3"]
        return a1, a2, z3

    def cost(params: dict[str, np.ndarray]) -> np.floating:
        return np.sum((forward(params)[2] - y) ** 2) / (2 * m)

    def backprop(params: dict[str, np.ndarray], bug: str | None) -> dict[str, np.ndarray]:
        a1, a2, z3 = forward(params)
        dz3 = (z3 - y) / m
        da2 = params["W3"].T @ dz3
        dz2 = da2 * (1 - a2**2)
        da1 = (params["W2"] if bug == "transposed_weight" else params["W2"].T) @ dz2
        dz1 = da1 * ((1 - a1) if bug == "wrong_activation_derivative" else (1 - a1**2))
        db2 = np.sum(dz2, axis=1, keepdims=True)
        return {
            "W1": dz1 @ x.T,
            "b1": np.sum(dz1, axis=1, keepdims=True),
            "W2": dz2 @ a1.T,
            "b2": -db2 if bug == "sign_flip" else db2,
            "W3": dz3 @ a2.T,
            "b3": np.sum(dz3, axis=1, keepdims=True),
        }

    def jax_cost(params: dict[str, Any]) -> jax.Array:
        p = to_jax(params)
        a1 = jnp.tanh(p["W1"] @ jnp.asarray(x) + p["b1"])
        a2 = jnp.tanh(p["W2"] @ a1 + p["b2"])
        z3 = p["W3"] @ a2 + p["b3"]
        return jnp.sum((z3 - jnp.asarray(y)) ** 2) / (2 * m)

    bugs = bug_table(
        backprop,
        (
            "wrong_activation_derivative",
            "the first hidden layer uses 1 - a instead of 1 - a**2 for the derivative of tanh",
            {"W1", "b1"},
        ),
        ("sign_flip", "db2 has the wrong sign", {"b2"}),
        (
            "transposed_weight",
            "backprop through the square W2 multiplies by W2 instead of W2.T",
            {"W1", "b1"},
        ),
    )
    return Model(
        name="tanh_mlp",
        description=(
            f"MLP {n_x}-{n_h}-{n_h}-{n_y}, tanh hidden layers, linear output, squared error, "
            f"{m} examples"
        ),
        params=params,
        cost=cost,
        grad=with_bug(backprop, None),
        jax_cost=jax_cost,
        bugs=bugs,
    )


def l2_mlp(
    rng: np.random.Generator,
    dtype: Any,
    *,
    n_x: int = 3,
    n_h1: int = 4,
    n_h2: int = 3,
    m: int = 8,
    lambd: float = 0.7,
) -> Model:
    """ReLU MLP with a sigmoid output, cross-entropy and L2 regularisation ``λ/(2m)·ΣW²``.

    The lesson's regularised network: LINEAR→RELU→LINEAR→RELU→LINEAR→SIGMOID with
    ``J = cross_entropy + lambd/(2m) * (sum(W1**2) + sum(W2**2) + sum(W3**2))``; biases are not
    regularised.

    Args:
        rng: Source of the data and the parameters.
        dtype: Float dtype of the data and the parameters.
        n_x: Number of input features.
        n_h1: Width of the first hidden layer.
        n_h2: Width of the second hidden layer.
        m: Number of examples.
        lambd: Regularisation strength λ (positive).

    Returns:
        The model, with bugs ``forgotten_regularisation`` (``{"W2"}``),
        ``regularisation_on_bias`` (``{"b1"}``) and ``wrong_scale`` (``{"W1", "W2", "W3"}``).
    """
    require(lambd > 0, "l2_mlp", f"needs lambd > 0 so that its bugs show, got {lambd}")
    x = rng.standard_normal((n_x, m)).astype(dtype)
    y = (rng.random((1, m)) < 0.5).astype(dtype)
    sizes = [n_x, n_h1, n_h2, 1]
    params: dict[str, np.ndarray] = {}
    for i in range(1, 4):
        params[f"W{i}"] = normal(rng, (sizes[i], sizes[i - 1]), np.sqrt(2 / sizes[i - 1]), dtype)
        params[f"b{i}"] = normal(rng, (sizes[i], 1), 0.1, dtype)

    def forward(params: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        z1 = params["W1"] @ x + params["b1"]
        a1 = relu(z1)
        z2 = params["W2"] @ a1 + params["b2"]
        a2 = relu(z2)
        z3 = params["W3"] @ a2 + params["b3"]
        return z1, a1, z2, a2, z3

    def cost(params: dict[str, np.ndarray]) -> np.floating:
        squares = sum(np.sum(params[f"W{i}"] ** 2) for i in range(1, 4))
        return bce_with_logits(forward(params)[4], y) + lambd / (2 * m) * squares

    def backprop(params: dict[str, np.ndarray], bug: str | None) -> dict[str, np.ndarray]:
        z1, a1, z2, a2, z3 = forward(params)
        dz3 = (sigmoid(z3) - y) / m
        dz2 = (params["W3"].T @ dz3) * (z2 > 0)
        dz1 = (params["W2"].T @ dz2) * (z1 > 0)
        # d/dW of lambd/(2m) W**2 is lambd/m W; the bug copies the cost's coefficient instead.
        scale = lambd / (2 * m) if bug == "wrong_scale" else lambd / m
        grads = {
            "W1": dz1 @ x.T + scale * params["W1"],
            "b1": np.sum(dz1, axis=1, keepdims=True),
            "W2": dz2 @ a1.T,
            "b2": np.sum(dz2, axis=1, keepdims=True),
            "W3": dz3 @ a2.T + scale * params["W3"],
            "b3": np.sum(dz3, axis=1, keepdims=True),
        }
        if bug != "forgotten_regularisation":
            grads["W2"] = grads["W2"] + scale * params["W2"]
        if bug == "regularisation_on_bias":
            grads["b1"] = grads["b1"] + scale * params["b1"]
        return grads

    def jax_cost(params: dict[str, Any]) -> jax.Array:
        p = to_jax(params)
        a = jnp.asarray(x)
        for i in (1, 2):
            a = jnp.maximum(p[f"W{i}"] @ a + p[f"b{i}"], 0)
        z3 = p["W3"] @ a + p["b3"]
        squares = sum(jnp.sum(p[f"W{i}"] ** 2) for i in range(1, 4))
        return bce_with_logits_jax(z3, jnp.asarray(y)) + lambd / (2 * m) * squares

    bugs = bug_table(backprop, *_L2_MLP_BUGS)
    return Model(
        name="l2_mlp",
        description=(
            f"MLP {n_x}-{n_h1}-{n_h2}-1, ReLU, sigmoid output, cross-entropy + L2 (lambd={lambd}),"
            f" {m} examples"
        ),
        params=params,
        cost=cost,
        grad=with_bug(backprop, None),
        jax_cost=jax_cost,
        bugs=bugs,
    )


def _relu_forward(params: dict[str, Any], x: np.ndarray) -> tuple[list, list]:
    """Returns the pre-activations ``zs`` and the inputs ``acts`` of every layer of a ReLU MLP."""
    acts, zs = [x], []
    depth = len(params["layers"])
    for i, layer in enumerate(params["layers"]):
        zs.append(layer["W"] @ acts[-1] + layer["b"])
        if i < depth - 1:
            acts.append(relu(zs[-1]))
    return zs, acts


def _relu_backprop(
    params: dict[str, Any], x: np.ndarray, y: np.ndarray, bug: str | None
) -> dict[str, Any]:
    """Backprop of :func:`relu_mlp`, with ``bug`` (a bug's name, or ``None``) in it."""
    zs, acts = _relu_forward(params, x)
    depth = len(zs)
    a_out = sigmoid(zs[-1])
    dz = (a_out - y) / x.shape[1]
    if bug == "extra_sigmoid_derivative":
        dz = dz * a_out * (1 - a_out)
    grads: list[dict[str, np.ndarray]] = [{} for _ in range(depth)]
    for i in reversed(range(depth)):
        grads[i] = {"W": dz @ acts[i].T, "b": np.sum(dz, axis=1, keepdims=True)}
        if i > 0:
            da = params["layers"][i]["W"].T @ dz
            dz = da if (bug == "missing_relu_mask" and i == 1) else da * (zs[i - 1] > 0)
    if bug == "bias_grad_1_percent":
        grads[0]["b"] = grads[0]["b"] * 1.01
    return {"layers": grads}


def _relu_bugs_show(params: dict[str, Any], x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the draw lets every bug of :func:`relu_mlp` change every leaf it declares."""
    # Every leaf must receive gradient (no layer dead for the whole batch), and some unit of the
    # first layer must be off for an example whose gradient reaches it.
    zs, _ = _relu_forward(params, x)
    grads = _relu_backprop(params, x, y, None)["layers"]
    if not all(np.any(g) for layer in grads for g in layer.values()):
        return False
    dz = (sigmoid(zs[-1]) - y) / x.shape[1]
    for i in reversed(range(1, len(zs))):  # down to da, the gradient of the first layer's output
        da = params["layers"][i]["W"].T @ dz
        dz = da * (zs[i - 1] > 0)
    return bool(np.any((zs[0] <= 0) & (da != 0)))


def relu_mlp(
    rng: np.random.Generator,
    dtype: Any,
    *,
    layers: tuple[int, ...] | list[int] = (4, 5, 3, 1),
    m: int = 16,
) -> Model:
    """A ReLU MLP of any depth with sigmoid outputs and cross-entropy, as a nested pytree.

    ``params == {"layers": [{"W": W0, "b": b0}, {"W": W1, "b": b1}, ...]}`` with paths like
    ``"layers/0/W"``; the gradient has the same structure. Plain matmuls throughout, so large
    sizes (e.g. ``layers=[784, 1024, 1024, 1]``) stay fast. A draw in which a layer is dead for
    the whole batch is redrawn, so that every bug shows.

    Args:
        rng: Source of the data and the parameters (He initialisation, small random biases).
        dtype: Float dtype of the data and the parameters.
        layers: Widths ``[n_x, n_h1, ..., n_y]``; at least one hidden layer.
        m: Number of examples.

    Returns:
        The model, with bugs ``bias_grad_1_percent`` (``{"layers/0/b"}``), ``missing_relu_mask``
        (``{"layers/0/W", "layers/0/b"}``) and ``extra_sigmoid_derivative`` (every leaf).
    """
    layers = [int(n) for n in layers]
    require(len(layers) >= 3, "relu_mlp", f"needs at least one hidden layer, got {layers}")
    depth = len(layers) - 1
    for _ in range(1000):
        x = rng.standard_normal((layers[0], m)).astype(dtype)
        y = (rng.random((layers[-1], m)) < 0.5).astype(dtype)
        params = {
            "layers": [
                {
                    "W": normal(rng, (n_out, n_in), np.sqrt(2 / n_in), dtype),
                    "b": normal(rng, (n_out, 1), 0.1, dtype),
                }
                for n_in, n_out in zip(layers[:-1], layers[1:], strict=True)
            ]
        }
        if _relu_bugs_show(params, x, y):
            break
    else:  # pragma: no cover - needs a pathological architecture
        raise ValueError(f"relu_mlp: no draw lets the bugs show for layers={layers}, m={m}")

    def cost(params: dict[str, Any]) -> np.floating:
        return bce_with_logits(_relu_forward(params, x)[0][-1], y)

    def backprop(params: dict[str, Any], bug: str | None) -> dict[str, Any]:
        return _relu_backprop(params, x, y, bug)

    def jax_cost(params: dict[str, Any]) -> jax.Array:
        p = to_jax(params)
        a = jnp.asarray(x)
        for i, layer in enumerate(p["layers"]):
            z = layer["W"] @ a + layer["b"]
            a = jnp.maximum(z, 0) if i < depth - 1 else z
        return bce_with_logits_jax(a, jnp.asarray(y))

    every_leaf = {f"layers/{i}/{name}" for i in range(depth) for name in ("W", "b")}
    bugs = bug_table(
        backprop,
        ("bias_grad_1_percent", "db of the first layer is 1% too big", {"layers/0/b"}),
        (
            "missing_relu_mask",
            "backprop into the first hidden layer skips the ReLU derivative (Z > 0)",
            {"layers/0/W", "layers/0/b"},
        ),
        (
            "extra_sigmoid_derivative",
            "the output's dZ is (A - Y) * A * (1 - A): a sigmoid' the cross-entropy had cancelled",
            every_leaf,
        ),
    )
    return Model(
        name="relu_mlp",
        description=(
            f"MLP {'-'.join(map(str, layers))}, ReLU, sigmoid output, cross-entropy, {m} examples"
        ),
        params=params,
        cost=cost,
        grad=with_bug(backprop, None),
        jax_cost=jax_cost,
        bugs=bugs,
    )
