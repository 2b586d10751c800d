"""The lesson's three-layer network with inverted dropout, in the lesson's own conventions.

Flat-dict parameters ``W1``…``b3``; the cost returns ``(cost, cache)`` and the backprop returns the
lesson's ``"d" + name`` dict, with its ``dZ*``/``dA*`` entries.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcheck.models._base import Model, bug_table, normal, require, to_jax, with_bug

_SIZES = (4, 5, 3, 1)  # the lesson's gradient_check_n_test_case: W1 (5, 4) ... b3 (1, 1)


def _lesson_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _lesson_cost(a3: np.ndarray, y: np.ndarray) -> np.floating:
    logprobs = np.multiply(-np.log(a3), y) + np.multiply(-np.log(1 - a3), 1 - y)
    return np.nansum(logprobs) / y.shape[1]


Masks = tuple[np.ndarray, np.ndarray]


def _forward(params: dict[str, np.ndarray], x: np.ndarray, masks: Masks, keep_prob: float) -> tuple:
    """The lesson's forward with dropout; returns its cache (``cache[11]`` is ``A3``)."""
    d1, d2 = masks
    z1 = params["W1"] @ x + params["b1"]
    a1 = np.maximum(z1, 0) * d1 / keep_prob
    z2 = params["W2"] @ a1 + params["b2"]
    a2 = np.maximum(z2, 0) * d2 / keep_prob
    z3 = params["W3"] @ a2 + params["b3"]
    a3 = _lesson_sigmoid(z3)
    return (z1, d1, a1, params["W1"], params["b1"], z2, d2, a2, params["W2"], params["b2"],
            z3, a3, params["W3"], params["b3"])  # fmt: skip


def _backward(
    cache: tuple, x: np.ndarray, y: np.ndarray, keep_prob: float, bug: str | None
) -> dict[str, np.ndarray]:
    """The lesson's backward with dropout, with ``bug`` (a bug's name, or ``None``) in it."""
    z1, d1, a1, w1, b1, z2, d2, a2, w2, b2, z3, a3, w3, b3 = cache
    m = x.shape[1]
    dz3 = a3 - y
    dw3 = dz3 @ a2.T / m
    db3 = np.sum(dz3, axis=1, keepdims=True) / m
    da2 = w3.T @ dz3
    if bug != "mask_not_applied_in_backward":
        da2 = da2 * d2
    da2 = da2 / keep_prob
    dz2 = da2 * (z2 > 0)
    dw2 = dz2 @ a1.T / m
    db2 = np.sum(dz2, axis=1, keepdims=True) / m
    da1 = (w2.T @ dz2) * d1
    if bug != "forgot_keep_prob_scaling":
        da1 = da1 / keep_prob
    dz1 = da1 * (z1 > 0)
    dw1 = dz1 @ x.T / m
    db1 = np.sum(dz1, axis=1, keepdims=True) / m
    if bug == "seed_bugs":
        dw2, db1 = 2 * dw2, 4 * db1
    return {"dZ3": dz3, "dW3": dw3, "db3": db3, "dA2": da2, "dZ2": dz2, "dW2": dw2,
            "db2": db2, "dA1": da1, "dZ1": dz1, "dW1": dw1, "db1": db1}  # fmt: skip


def _shows_bugs(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, masks: Masks, keep_prob: float
) -> bool:
    """Whether every bug of :func:`dropout_lesson` changes every leaf it declares."""
    # The output must not saturate (the lesson's cost loses all precision there); layer 2 must
    # drop a unit that is active and receives gradient, for an example that layer 1 passes some
    # signal for; and layer 1 must receive gradient at all.
    cache = _forward(params, x, masks, keep_prob)
    a1, z2, d2, a3 = cache[2], cache[5], cache[6], cache[11]
    if not np.all((a3 > 0.01) & (a3 < 0.99)):
        return False
    dropped_active = (d2 == 0) & (z2 > 0) & (params["W3"].T != 0) & np.any(a1 != 0, axis=0)
    dz1 = _backward(cache, x, y, keep_prob, None)["dZ1"]
    return bool(np.any(dropped_active) and np.any(dz1))


def dropout_lesson(
    rng: np.random.Generator,
    dtype: Any,
    *,
    m: int = 3,
    keep_prob: float = 0.8,
    frozen: bool = True,
) -> Model:
    """LINEAR→RELU→LINEAR→RELU→LINEAR→SIGMOID with inverted dropout on ``A1`` and ``A2``.

    With ``frozen=True`` the dropout masks ``D1``, ``D2`` are drawn once, here, and every call of
    ``cost``, ``grad`` and ``jax_cost`` uses them, so the cost is a function of the parameters.
    The whole draw (data, parameters, masks) is repeated until layer 2 drops a unit that carries
    gradient, so that every bug shows.
    With ``frozen=False`` the NumPy ``cost`` and ``grad`` draw fresh masks on every call (from an
    unseeded generator), as a training loop does: the cost is then not a function of the
    parameters, which a gradient check must refuse; ``jax_cost`` keeps the masks drawn here.

    The backprop takes the ReLU derivative from the pre-activations (``Z2 > 0``). The lesson takes
    it from the dropped-out activations (``A2 > 0``), which are zero wherever the mask is, and so
    would hide ``mask_not_applied_in_backward``.

    Args:
        rng: Source of the data, the parameters and the frozen masks.
        dtype: Float dtype of the data, the parameters and the masks.
        m: Number of examples.
        keep_prob: Probability of keeping a unit, strictly between 0 and 1.
        frozen: Whether the masks are fixed (``True``) or redrawn on every NumPy call.

    Returns:
        The model, with bugs ``mask_not_applied_in_backward`` (``{"W1", "b1", "W2", "b2"}``),
        ``forgot_keep_prob_scaling`` (``{"W1", "b1"}``) and ``seed_bugs`` (``{"W2", "b1"}``).
    """
    require(0 < keep_prob < 1, "dropout_lesson", f"needs 0 < keep_prob < 1, got {keep_prob}")

    def draw_masks(generator: np.random.Generator) -> Masks:
        d1 = (generator.random((_SIZES[1], m)) < keep_prob).astype(dtype)
        d2 = (generator.random((_SIZES[2], m)) < keep_prob).astype(dtype)
        return d1, d2

    # A small network can be dead for a whole batch, or drop nothing that matters; redraw the
    # whole draw (data, parameters, masks) until the bugs below show.
    for _ in range(1000):
        x = rng.standard_normal((_SIZES[0], m)).astype(dtype)
        y = (rng.random((1, m)) < 0.5).astype(dtype)
        params: dict[str, np.ndarray] = {}
        for i in range(1, 4):
            scale = np.sqrt(2 / _SIZES[i - 1])
            params[f"W{i}"] = normal(rng, (_SIZES[i], _SIZES[i - 1]), scale, dtype)
            params[f"b{i}"] = normal(rng, (_SIZES[i], 1), 0.1, dtype)
        frozen_masks = draw_masks(rng)
        if _shows_bugs(params, x, y, frozen_masks, keep_prob):
            break
    else:  # pragma: no cover - needs a pathological keep_prob
        raise ValueError(f"dropout_lesson: no draw shows the bugs at keep_prob={keep_prob}, m={m}")

    live = np.random.default_rng()  # unseeded: the nondeterminism is the point

    def current_masks() -> Masks:
        return frozen_masks if frozen else draw_masks(live)

    def cost(params: dict[str, np.ndarray]) -> tuple[np.floating, tuple]:
        cache = _forward(params, x, current_masks(), keep_prob)
        return _lesson_cost(cache[11], y), cache

    def backprop(params: dict[str, np.ndarray], bug: str | None) -> dict[str, np.ndarray]:
        return _backward(_forward(params, x, current_masks(), keep_prob), x, y, keep_prob, bug)

    def jax_cost(params: dict[str, Any]) -> jax.Array:
        p = to_jax(params)
        d1, d2 = (jnp.asarray(d) for d in frozen_masks)
        a1 = jnp.maximum(p["W1"] @ jnp.asarray(x) + p["b1"], 0) * d1 / keep_prob
        a2 = jnp.maximum(p["W2"] @ a1 + p["b2"], 0) * d2 / keep_prob
        a3 = 1 / (1 + jnp.exp(-(p["W3"] @ a2 + p["b3"])))
        y_ = jnp.asarray(y)
        return jnp.nansum(-jnp.log(a3) * y_ - jnp.log(1 - a3) * (1 - y_)) / m

    bugs = bug_table(
        backprop,
        (
            "mask_not_applied_in_backward",
            "backprop forgets to multiply dA2 by the dropout mask D2",
            {"W1", "b1", "W2", "b2"},
        ),
        (
            "forgot_keep_prob_scaling",
            "dA1 is masked but not divided by keep_prob",
            {"W1", "b1"},
        ),
        ("seed_bugs", "the seed's two bugs: dW2 is 2x and db1 is 4x too big", {"W2", "b1"}),
    )
    mode = "frozen masks" if frozen else "fresh masks on every call"
    return Model(
        name="dropout_lesson",
        description=(
            f"the lesson's 4-5-3-1 ReLU/sigmoid network, inverted dropout (keep_prob={keep_prob}, "
            f"{mode}), {m} examples"
        ),
        params=params,
        cost=cost,
        grad=with_bug(backprop, None),
        jax_cost=jax_cost,
        bugs=bugs,
    )
