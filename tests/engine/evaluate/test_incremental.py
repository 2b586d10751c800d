"""The incremental evaluator gives the twin's value at every perturbed point, whatever the ops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcheck._engine.evaluate.incremental import perturbed_cost

rng = np.random.default_rng(0)
X = rng.normal(size=(4, 6))
T = rng.normal(size=(2, 4, 3))


def _twins():
    return {
        "W@X": lambda p: jnp.sum(jnp.tanh(p["W"] @ X + p["b"]) ** 2),
        "X.T@W.T (contracting axis)": lambda p: jnp.sum(jax.nn.relu(X.T @ p["W"].T) ** 2),
        "softmax + logsumexp": lambda p: (
            jax.nn.logsumexp(p["W"] @ X) + jnp.sum(jax.nn.softmax(p["W"] @ X, axis=0) * X[:3])
        ),
        "reduce max and min": lambda p: (
            jnp.max(p["W"] @ X, axis=1).sum() + jnp.min(p["W"] @ X) + jnp.max(p["W"])
        ),
        "broadcast, reshape, squeeze": lambda p: (
            jnp.sum(jnp.broadcast_to(p["b"].reshape(3, 1, 1), (3, 2, 6)) * (p["W"] @ X)[:, None, :])
            + jnp.sum(jnp.squeeze(p["b"], 1) ** 3)
        ),
        "batched dot (einsum)": lambda p: jnp.sum(jnp.einsum("bij,jk->bik", T, p["W"] @ X) ** 2),
        "weight used twice": lambda p: jnp.sum((p["W"] @ X) ** 2) + 0.1 * jnp.sum(p["W"] ** 2),
        "concatenate, slice, where": lambda p: jnp.sum(
            jnp.where(p["W"] > 0, jnp.concatenate([p["W"], p["W"] ** 2], 1)[:, :4], -p["W"])[:, 1:]
        ),
        "3-D leaf": lambda p: jnp.sum(jnp.tanh(jnp.einsum("bij,jk->bik", p["K"], X))),
        "batch axis of a product": lambda p: jnp.sum(
            jnp.sin(jnp.einsum("bij,bjk->bik", p["K"], T.transpose(0, 1, 2)[:, :, :2]))
        ),
        "scalar leaf": lambda p: p["s"] * jnp.sum(p["W"] @ X) + jnp.exp(p["s"]),
        "convolution": lambda p: jnp.sum(
            jax.lax.conv_general_dilated(
                X[None, :, :], p["C"], window_strides=(1,), padding="VALID"
            )
            ** 2
        ),
    }


PARAMS = {
    "W": rng.normal(size=(3, 4)),
    "b": rng.normal(size=(3, 1)),
    "K": rng.normal(size=(2, 3, 4)),
    "s": np.array(0.7),
    "C": rng.normal(size=(2, 4, 3)),
}


@pytest.mark.parametrize("name", list(_twins()), ids=list(_twins()))
def test_incremental_value_equals_the_perturbed_twin(name):
    twin = _twins()[name]
    with jax.enable_x64(True):
        flat, treedef = jax.tree_util.tree_flatten(PARAMS)
        leaves = [jnp.asarray(v) for v in flat]

        def total(ls):
            return twin(jax.tree_util.tree_unflatten(treedef, list(ls)))

        for index, leaf in enumerate(leaves):
            fast = jax.jit(jax.vmap(perturbed_cost(total, leaves, index)))
            coords = jnp.arange(leaf.size, dtype=jnp.int32)
            steps = jnp.linspace(-0.3, 0.5, leaf.size)

            def scratch(i, s, leaf=leaf, index=index):
                moved = list(leaves)
                moved[index] = leaf.reshape(-1).at[i].add(s).reshape(leaf.shape)
                return total(moved)

            expected = jax.vmap(scratch)(coords, steps)
            np.testing.assert_allclose(fast(coords, steps), expected, rtol=1e-12, atol=1e-12)
