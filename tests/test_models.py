"""Tests of the model zoo: twins agree with NumPy, backprops are right, bugs break what they say."""

from __future__ import annotations

import copy
import functools
from typing import Any

import jax
import numpy as np
import pytest

from jaxcheck import models

try:
    from tests.compiled import jit
except ImportError:  # pytest run without the repository root on sys.path: tests/ is on it
    from compiled import jit

NAMES = [
    "batchnorm",
    "conv1d",
    "dropout_lesson",
    "l2_mlp",
    "logistic_regression",
    "relu_mlp",
    "softmax_regression",
    "tanh_mlp",
]

# Non-default sizes, to show the declared leaves do not depend on the defaults.
OTHER_SIZES = {
    "batchnorm": {"n_x": 5, "n_h": 6, "n_y": 1, "m": 5},
    "conv1d": {"m": 3, "c_in": 1, "length": 6, "c_out": 2, "kernel_size": 2, "n_y": 3},
    "dropout_lesson": {"m": 7, "keep_prob": 0.6},
    "l2_mlp": {"n_x": 2, "n_h1": 6, "n_h2": 2, "m": 5, "lambd": 0.1},
    "logistic_regression": {"n_x": 2, "m": 3},
    "relu_mlp": {"layers": [3, 4, 4, 2, 2], "m": 9},
    "softmax_regression": {"n_x": 2, "n_classes": 5, "m": 4},
    "tanh_mlp": {"n_x": 1, "n_h": 3, "n_y": 1, "m": 2},
}

BUGS = [(name, bug) for name in NAMES for bug in models.make(name).bugs]


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Maps each leaf's path (dict keys and list indices joined by "/") to the leaf."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return {prefix: np.asarray(tree)}
    out: dict[str, np.ndarray] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return out


def as_params_tree(model: models.Model, grads: Any) -> Any:
    """The gradient shaped like the params: picks ``d<name>`` out of a lesson-style dict."""
    params = model.params
    if isinstance(grads, dict) and not set(params) <= set(grads):
        return {name: grads["d" + name] for name in params}
    return grads


def scalar_cost(model: models.Model, params: Any) -> Any:
    value = model.cost(params)
    return value[0] if isinstance(value, tuple) else value


def autodiff(model: models.Model, params: Any | None = None) -> dict[str, np.ndarray]:
    """``jax.grad`` of the twin in float64, flattened by path."""
    params = model.params if params is None else params
    params64 = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), params)
    with jax.enable_x64(True):
        # One compilation is cheaper than the op-by-op compilations of an eager first call.
        return flatten(jax.device_get(jit(jax.grad(model.jax_cost))(params64)))


@functools.cache
def default_autodiff(name: str) -> dict[str, np.ndarray]:
    """:func:`autodiff` of ``models.make(name)``, computed once (``make`` is deterministic)."""
    return autodiff(models.make(name))


def leaf_errors(grads: Any, reference: dict[str, np.ndarray], floor: float) -> dict[str, float]:
    """Per leaf ``|g - ref| / (|ref| + floor * |whole ref|)``.

    The floor, a fraction of the global gradient norm, turns the relative error into an absolute
    one for leaves whose true gradient is zero (batchnorm's ``b1``), where both sides are rounding
    noise.
    """
    grads = flatten(grads)
    assert grads.keys() == reference.keys()
    scale = np.sqrt(sum(np.sum(ref**2) for ref in reference.values()))
    return {
        path: float(
            np.linalg.norm(grads[path] - reference[path])
            / (np.linalg.norm(reference[path]) + floor * scale)
        )
        for path in reference
    }


def test_names_lists_every_model() -> None:
    assert models.names() == NAMES


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_numpy_cost_equals_twin(name: str) -> None:
    model = models.make(name)
    cost = scalar_cost(model, model.params)
    with jax.enable_x64(True):
        twin = float(jit(model.jax_cost)(model.params))
    assert np.ndim(cost) == 0
    assert abs(cost - twin) <= 1e-12 * abs(cost)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_twin_is_traceable(name: str) -> None:
    model = models.make(name)
    doubled = jax.tree.map(lambda leaf: 2 * leaf, model.params)
    expected = [scalar_cost(model, model.params), scalar_cost(model, doubled)]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), model.params, doubled)
    with jax.enable_x64(True):
        jitted = jit(model.jax_cost)(model.params)
        batched = jit(jax.vmap(model.jax_cost))(stacked)
    np.testing.assert_allclose(jitted, expected[0], rtol=1e-12)
    np.testing.assert_allclose(batched, expected, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_backprop_equals_autodiff(name: str) -> None:
    model = models.make(name)
    reference = default_autodiff(name)
    errors = leaf_errors(as_params_tree(model, model.grad(model.params)), reference, 1e-4)
    assert max(errors.values()) <= 1e-9, errors


@pytest.mark.parametrize(("name", "bug"), BUGS, ids=[f"{name}-{bug}" for name, bug in BUGS])
def test_bug_breaks_exactly_its_leaves(name: str, bug: str) -> None:
    model = models.make(name)
    the_bug = model.bugs[bug]
    assert the_bug.name == bug
    assert the_bug.description and "\n" not in the_bug.description
    reference = default_autodiff(name)
    errors = leaf_errors(as_params_tree(model, the_bug.grad(model.params)), reference, 1e-4)
    assert {path for path, error in errors.items() if error > 1e-6} == the_bug.leaves, errors


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_other_sizes(name: str) -> None:
    model = models.make(name, seed=3, **OTHER_SIZES[name])
    cost = scalar_cost(model, model.params)
    with jax.enable_x64(True):
        assert abs(cost - float(jit(model.jax_cost)(model.params))) <= 1e-12 * abs(cost)
    reference = autodiff(model)
    errors = leaf_errors(as_params_tree(model, model.grad(model.params)), reference, 1e-4)
    assert max(errors.values()) <= 1e-9, errors
    for bug in model.bugs.values():
        errors = leaf_errors(as_params_tree(model, bug.grad(model.params)), reference, 1e-4)
        assert {path for path, error in errors.items() if error > 1e-6} == bug.leaves, bug.name


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_float32(name: str) -> None:
    model = models.make(name, dtype=np.float32)
    assert all(leaf.dtype == np.float32 for leaf in flatten(model.params).values())
    assert scalar_cost(model, model.params).dtype == np.float32
    grads = as_params_tree(model, model.grad(model.params))
    assert all(leaf.dtype == np.float32 for leaf in flatten(grads).values())
    errors = leaf_errors(grads, autodiff(model), 1e-3)
    assert max(errors.values()) <= 1e-3, errors


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_make_gives_fresh_arrays_and_nothing_mutates_params(name: str) -> None:
    first, second = models.make(name), models.make(name)
    before = copy.deepcopy(first.params)
    first.cost(first.params)
    first.grad(first.params)
    for bug in first.bugs.values():
        bug.grad(first.params)
    autodiff(first)
    for path, leaf in flatten(before).items():
        np.testing.assert_array_equal(flatten(first.params)[path], leaf, err_msg=path)
    for leaf in flatten(first.params).values():
        leaf[...] = 0
    for path, leaf in flatten(second.params).items():
        np.testing.assert_array_equal(leaf, flatten(before)[path], err_msg=path)


def test_seed_changes_the_draw() -> None:
    assert not np.array_equal(
        models.make("tanh_mlp", seed=0).params["W1"], models.make("tanh_mlp", seed=1).params["W1"]
    )


def test_relu_mlp_is_a_nested_pytree() -> None:
    model = models.make("relu_mlp", layers=[3, 2, 1], m=4)
    assert list(flatten(model.params)) == ["layers/0/W", "layers/0/b", "layers/1/W", "layers/1/b"]
    assert model.params["layers"][0]["W"].shape == (2, 3)
    assert jax.tree.structure(model.grad(model.params)) == jax.tree.structure(model.params)


@pytest.mark.parametrize(
    ("layers", "m"),
    [([100, 200, 100, 1], 128), ([784, 256, 128, 1], 64), ([784, 1024, 1024, 1], 32)],
    ids=["100-200-100-1", "784-256-128-1", "784-1024-1024-1"],
)
def test_relu_mlp_benchmark_sizes_keep_their_bugs(layers: list[int], m: int) -> None:
    # The backprop is verified against autodiff above; here bugs are compared with it directly.
    model = models.make("relu_mlp", layers=layers, m=m)
    correct = flatten(model.grad(model.params))
    for bug in model.bugs.values():
        errors = leaf_errors(bug.grad(model.params), correct, 1e-4)
        assert {path for path, error in errors.items() if error > 1e-6} == bug.leaves, bug.name


def test_dropout_lesson_follows_the_lesson() -> None:
    model = models.make("dropout_lesson")
    assert {name: leaf.shape for name, leaf in model.params.items()} == {
        "W1": (5, 4),
        "b1": (5, 1),
        "W2": (3, 5),
        "b2": (3, 1),
        "W3": (1, 3),
        "b3": (1, 1),
    }
    cost, cache = model.cost(model.params)
    assert len(cache) == 14
    grads = model.grad(model.params)
    assert {"dZ3", "dA2", "dZ2", "dA1", "dZ1"} <= set(grads)
    assert {"d" + name for name in model.params} <= set(grads)


def test_dropout_frozen_is_deterministic() -> None:
    model = models.make("dropout_lesson")
    assert model.cost(model.params)[0] == model.cost(model.params)[0]
    first, second = model.grad(model.params), model.grad(model.params)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_dropout_unfrozen_draws_new_masks() -> None:
    model = models.make("dropout_lesson", frozen=False, m=20)
    costs = {float(model.cost(model.params)[0]) for _ in range(5)}
    assert len(costs) > 1
    with jax.enable_x64(True):
        assert np.isfinite(float(jit(model.jax_cost)(model.params)))


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown model 'mlp'; choose one of batchnorm"):
        models.make("mlp")


def test_unknown_option() -> None:
    with pytest.raises(TypeError, match="tanh_mlp has no option n_h2; its options are n_x"):
        models.make("tanh_mlp", n_h2=3)


def test_unsupported_dtype() -> None:
    with pytest.raises(ValueError, match="dtype must be float32 or float64, got float16"):
        models.make("tanh_mlp", dtype=np.float16)


def test_sizes_that_hide_bugs_are_refused() -> None:
    with pytest.raises(ValueError, match="conv1d: needs kernel_size >= 2"):
        models.make("conv1d", kernel_size=1)
