"""A 1-D convolution layer of the zoo, with its backprop written out in NumPy.

Batch-first as in deep-learning frameworks: inputs are ``(m, c_in, length)``; the kernel is
``(c_out, c_in, kernel_size)`` and is applied as a cross-correlation (no flip), valid padding,
stride 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.models._base import Model, bug_table, normal, require, to_jax, with_bug


def _conv1d_twin(x: np.ndarray, y: np.ndarray, m: int) -> Callable[[dict[str, Any]], jax.Array]:
    """The JAX twin of :func:`conv1d`'s cost, for its data."""

    def jax_cost(params: dict[str, Any]) -> jax.Array:
        # An independent forward: XLA's convolution instead of the stacked windows.
        p = to_jax(params)
        kernel = p["conv"]["w"]
        dtype = jnp.result_type(kernel, x)  # lax does not promote mixed float32/float64
        pre = jax.lax.conv_general_dilated(
            jnp.asarray(x, dtype),
            kernel.astype(dtype),
            window_strides=(1,),
            padding="VALID",
            dimension_numbers=("NCH", "OIH", "NCH"),
            precision=jax.lax.Precision.HIGHEST,
        )
        h = jnp.tanh(pre + p["conv"]["b"][:, None])
        y_hat = h.reshape(m, -1) @ p["readout"]["w"].T + p["readout"]["b"]
        return jnp.sum((y_hat - jnp.asarray(y)) ** 2) / (2 * m)

    return jax_cost


def conv1d(
    rng: np.random.Generator,
    dtype: Any,
    *,
    m: int = 4,
    c_in: int = 2,
    length: int = 8,
    c_out: int = 3,
    kernel_size: int = 3,
    n_y: int = 2,
) -> Model:
    """Conv1d → tanh → flatten → linear readout, squared error.

    ``H[i, o, t] = tanh(sum_{c, j} K[o, c, j] X[i, c, t + j] + bK[o])``, then
    ``Yhat = flatten(H) @ V.T + bV`` and ``J = 1/(2m) * sum((Yhat - Y)**2)``. The parameters are
    nested dicts: ``{"conv": {"w": K, "b": bK}, "readout": {"w": V, "b": bV}}``.

    Args:
        rng: Source of the data and the parameters.
        dtype: Float dtype of the data and the parameters.
        m: Number of examples.
        c_in: Input channels.
        length: Input length.
        c_out: Output channels (at least 2, so that a wrong unflatten order shows).
        kernel_size: Kernel width (at least 2, so that a flipped kernel shows).
        n_y: Number of outputs.

    Returns:
        The model, with bugs ``flipped_kernel_grad`` (``{"conv/w"}``),
        ``bias_mean_over_positions`` (``{"conv/b"}``) and ``wrong_unflatten_order``
        (``{"conv/w", "conv/b"}``).
    """
    n_pos = length - kernel_size + 1
    require(kernel_size >= 2, "conv1d", f"needs kernel_size >= 2, got {kernel_size}")
    require(c_out >= 2, "conv1d", f"needs c_out >= 2, got {c_out}")
    require(n_pos >= 2, "conv1d", f"needs length >= kernel_size + 1, got {length}, {kernel_size}")
    x = rng.standard_normal((m, c_in, length)).astype(dtype)
    y = rng.standard_normal((m, n_y)).astype(dtype)
    # windows[i, c, t, j] = x[i, c, t + j]: the data never change, so stack them once.
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel_size, axis=2)
    fan_in = c_in * kernel_size
    params = {
        "conv": {
            "w": normal(rng, (c_out, c_in, kernel_size), 1 / np.sqrt(fan_in), dtype),
            "b": normal(rng, (c_out,), 0.1, dtype),
        },
        "readout": {
            "w": normal(rng, (n_y, c_out * n_pos), 1 / np.sqrt(c_out * n_pos), dtype),
            "b": normal(rng, (n_y,), 0.1, dtype),
        },
    }

    def forward(params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        conv, readout = params["conv"], params["readout"]
        h = np.tanh(np.einsum("ictj,ocj->iot", windows, conv["w"]) + conv["b"][:, None])
        return h, h.reshape(m, -1) @ readout["w"].T + readout["b"]

    def cost(params: dict[str, Any]) -> np.floating:
        return np.sum((forward(params)[1] - y) ** 2) / (2 * m)

    def backprop(params: dict[str, Any], bug: str | None) -> dict[str, Any]:
        h, y_hat = forward(params)
        dy = (y_hat - y) / m
        dh_flat = dy @ params["readout"]["w"]
        if bug == "wrong_unflatten_order":
            dh = dh_flat.reshape(m, n_pos, c_out).transpose(0, 2, 1)
        else:
            dh = dh_flat.reshape(m, c_out, n_pos)
        dpre = dh * (1 - h**2)
        dk = np.einsum("iot,ictj->ocj", dpre, windows)
        if bug == "flipped_kernel_grad":
            dk = dk[:, :, ::-1]
        if bug == "bias_mean_over_positions":
            dbk = np.sum(np.mean(dpre, axis=2), axis=0)
        else:
            dbk = np.sum(dpre, axis=(0, 2))
        return {
            "conv": {"w": dk, "b": dbk},
            "readout": {"w": dy.T @ h.reshape(m, -1), "b": np.sum(dy, axis=0)},
        }

    jax_cost = _conv1d_twin(x, y, m)

    bugs = bug_table(backprop, *_CONV1D_BUGS)
    return Model(
        name="conv1d",
        description=(
            f"conv1d {c_in}->{c_out} channels, width {kernel_size}, length {length}, tanh, "
            f"linear readout to {n_y}, squared error, {m} examples"
        ),
        params=params,
        cost=cost,
        grad=with_bug(backprop, None),
        jax_cost=jax_cost,
        bugs=bugs,
    )


#: The planted bugs of :func:`conv1d`: name, what is wrong, the leaves it makes wrong.
_CONV1D_BUGS = (
    (
        "flipped_kernel_grad",
        "the kernel gradient is flipped along its width (convolution instead of correlation)",
        {"conv/w"},
    ),
    (
        "bias_mean_over_positions",
        "the conv bias gradient averages over output positions instead of summing them",
        {"conv/b"},
    ),
    (
        "wrong_unflatten_order",
        "the readout gradient is unflattened position-major instead of channel-major",
        {"conv/w", "conv/b"},
    ),
)
