"""The records of the model zoo (`Model`, `Bug`) and the helpers its families share.

Nothing here knows a particular network; each family module builds its `Model`s from these.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Bug:
    """A named, realistic mistake in a hand-written backprop, and where it shows.

    Attributes:
        name: Short identifier, e.g. ``"missing_1_over_m"``.
        description: One line in plain words, e.g. ``"db2 forgets to divide by m"``.
        grad: The buggy NumPy gradient, ``params -> gradient``, in the same convention as the
            model's correct :attr:`Model.grad`.
        leaves: Exactly the leaf paths whose gradient the bug makes wrong. A path joins dict keys
            and list indices with ``"/"``: ``"b2"``, ``"layers/0/W"``.
    """

    name: str
    description: str
    grad: Callable[[Any], Any] = dataclasses.field(repr=False)
    leaves: frozenset[str]


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A NumPy network with a hand-written backprop, its JAX twin, and its named bugs.

    The closures hold the data (inputs, labels, dropout masks), so every function here depends on
    ``params`` alone; none of them mutates ``params``.

    Attributes:
        name: The name :func:`jaxcheck.models.make` knows the model by.
        description: One line saying what the network is.
        params: A pytree (dict, possibly holding dicts and lists) of float NumPy arrays.
        cost: NumPy cost, ``params -> scalar``; the lesson-style models return ``(cost, cache)``.
        grad: The correct hand-written NumPy backprop, ``params -> gradient``; the gradient is
            shaped like ``params``, or, for the lesson-style flat-dict models, is a flat dict
            keyed ``"d" + name`` that also holds intermediate ``dZ*``/``dA*`` entries.
        jax_cost: The JAX twin of ``cost``: takes ``params`` with the same structure (NumPy or
            JAX arrays) and returns a scalar JAX array; traceable by ``jit``, ``vmap`` and
            ``grad``.
        bugs: The model's bugs, keyed by :attr:`Bug.name`.
    """

    name: str
    description: str
    params: Any = dataclasses.field(repr=False)
    cost: Callable[[Any], Any] = dataclasses.field(repr=False)
    grad: Callable[[Any], Any] = dataclasses.field(repr=False)
    jax_cost: Callable[[Any], jax.Array] = dataclasses.field(repr=False)
    bugs: Mapping[str, Bug]


def bug_table(
    backprop: Callable[[Any, str | None], Any], *specs: tuple[str, str, Iterable[str]]
) -> Mapping[str, Bug]:
    """Builds a model's read-only table of bugs.

    Args:
        backprop: The family's ``backprop(params, bug)``, which switches on the bug's name.
        *specs: One ``(name, description, leaves)`` per bug.

    Returns:
        A read-only mapping from each bug's name to its :class:`Bug`.
    """
    return types.MappingProxyType(
        {
            name: Bug(name, description, with_bug(backprop, name), frozenset(leaves))
            for name, description, leaves in specs
        }
    )


def normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float, dtype: Any) -> Any:
    """Draws ``scale * N(0, 1)`` of ``shape`` in float64 and casts it to ``dtype``."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings, in the dtype of ``z``."""
    return np.exp(-np.logaddexp(0, -z))


def relu(z: np.ndarray) -> np.ndarray:
    """``max(z, 0)`` in the dtype of ``z``."""
    return np.maximum(z, 0)


def bce_with_logits(z: np.ndarray, y: np.ndarray) -> np.floating:
    """Mean over examples (axis 1) of the summed binary cross-entropy of ``sigmoid(z)`` vs ``y``.

    Written as ``softplus(z) - y z``, which is exact for large ``|z|`` where ``log(sigmoid(z))``
    would round to ``log(0)``.
    """
    return np.sum(np.logaddexp(0, z) - y * z) / z.shape[1]


def bce_with_logits_jax(z: jax.Array, y: jax.Array) -> jax.Array:
    """JAX twin of :func:`bce_with_logits`."""
    return jnp.sum(jnp.logaddexp(0, z) - y * z) / z.shape[1]


def to_jax(tree: Any) -> Any:
    """The same pytree with every leaf a JAX array (data keep their dtype; x64 decides float64)."""
    return jax.tree.map(jnp.asarray, tree)


def require(condition: bool, model: str, message: str) -> None:
    """Raises ``ValueError("<model>: <message>")`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{model}: {message}")


def with_bug(backprop: Callable[[Any, str | None], Any], bug: str | None) -> Callable[[Any], Any]:
    """Binds a family's ``backprop(params, bug)`` to one bug (``None``: the correct gradient)."""

    def grad(params: Any) -> Any:
        return backprop(params, bug)

    grad.__name__ = grad.__qualname__ = "grad" if bug is None else f"grad_{bug}"
    grad.__doc__ = "The correct backprop." if bug is None else f"The backprop with bug {bug!r}."
    return grad
