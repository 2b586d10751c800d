"""The classic "Gradient Checking" lesson, kept whole: the system under test and its checks.

It holds the lesson's NumPy forward/backward passes, its loop of central differences, and JAX twins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxcheck._engine.verdict.classify import relative_difference
from jaxcheck.errors import InputError

__all__ = [
    "backward_propagation",
    "backward_propagation_n",
    "backward_propagation_n_buggy",
    "dictionary_to_vector",
    "forward_propagation",
    "forward_propagation_jax",
    "forward_propagation_n",
    "forward_propagation_n_jax",
    "gradient_check",
    "gradient_check_n",
    "gradient_check_n_test_case",
    "gradients_to_vector",
    "vector_to_dictionary",
]

# The lesson's parameter layout, in the order its vectors are flattened.
_LESSON_SHAPES: dict[str, tuple[int, ...]] = {
    "W1": (5, 4),
    "b1": (5, 1),
    "W2": (3, 5),
    "b2": (3, 1),
    "W3": (1, 3),
    "b3": (1, 1),
}

# The lesson's step size and its pass/fail threshold on the relative difference.
_EPSILON = 1e-7
_THRESHOLD = 1e-7

Cache = tuple[np.ndarray, ...]


# 1-D: J(theta) = theta * x


def forward_propagation(x: float, theta: float) -> float:
    """Computes the 1-D cost ``J(theta) = theta * x``.

    Args:
        x: the input.
        theta: the single parameter.

    Returns:
        The cost ``theta * x``.

    Examples:
        >>> forward_propagation(2, 4)
        8
    """
    return theta * x


def backward_propagation(x: float, theta: float) -> float:
    """Computes ``dJ/dtheta`` for ``J(theta) = theta * x``, which is ``x``.

    Args:
        x: the input.
        theta: the single parameter (the derivative does not depend on it).

    Returns:
        The derivative of the cost with respect to ``theta``.

    Examples:
        >>> backward_propagation(2, 4)
        2
    """
    del theta  # J is linear in theta.
    return x


def gradient_check(
    x: float, theta: float, epsilon: float = _EPSILON, print_msg: bool = True
) -> float:
    """Checks :func:`backward_propagation` against a central difference of the 1-D cost.

    The approximation is ``(J(theta + epsilon) - J(theta - epsilon)) / (2 * epsilon)`` and the
    verdict compares the relative difference against the lesson's threshold of ``1e-7``.

    Args:
        x: the input.
        theta: the parameter at which the derivative is checked.
        epsilon: the finite-difference step.
        print_msg: whether to print the verdict.

    Returns:
        ``|grad - gradapprox|_2 / (|grad|_2 + |gradapprox|_2)``.

    Examples:
        >>> difference = gradient_check(2, 4, print_msg=False)
        >>> difference < 1e-7
        True
    """
    j_plus = forward_propagation(x, theta + epsilon)
    j_minus = forward_propagation(x, theta - epsilon)
    gradapprox = (j_plus - j_minus) / (2 * epsilon)

    grad = backward_propagation(x, theta)
    difference = relative_difference(np.asarray(grad), np.asarray(gradapprox))

    if print_msg:
        if difference < _THRESHOLD:
            print(f"The gradient is correct! difference = {difference}")
        else:
            print(f"The gradient is wrong! difference = {difference}")
    return difference


# N-D: LINEAR -> RELU -> LINEAR -> RELU -> LINEAR -> SIGMOID, binary cross-entropy


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def forward_propagation_n(
    X: np.ndarray, Y: np.ndarray, parameters: Mapping[str, np.ndarray]
) -> tuple[float, Cache]:
    """Runs the 3-layer network forward and computes its binary cross-entropy cost.

    Args:
        X: inputs, shape ``(4, m)``.
        Y: labels in ``{0, 1}``, shape ``(m,)`` or ``(1, m)``.
        parameters: ``W1`` (5, 4), ``b1`` (5, 1), ``W2`` (3, 5), ``b2`` (3, 1), ``W3`` (1, 3),
            ``b3`` (1, 1).

    Returns:
        ``(cost, cache)``: the mean cross-entropy over the ``m`` examples, and the tuple
        ``(Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3)`` that the backward pass needs.

    Examples:
        >>> X, Y, parameters = gradient_check_n_test_case()
        >>> cost, cache = forward_propagation_n(X, Y, parameters)
        >>> round(float(cost), 6), len(cache)
        (2.407833, 12)
    """
    m = X.shape[1]
    W1, b1 = parameters["W1"], parameters["b1"]
    W2, b2 = parameters["W2"], parameters["b2"]
    W3, b3 = parameters["W3"], parameters["b3"]

    Z1 = np.dot(W1, X) + b1
    A1 = _relu(Z1)
    Z2 = np.dot(W2, A1) + b2
    A2 = _relu(Z2)
    Z3 = np.dot(W3, A2) + b3
    A3 = _sigmoid(Z3)

    logprobs = np.multiply(-np.log(A3), Y) + np.multiply(-np.log(1 - A3), 1 - Y)
    cost = 1.0 / m * np.sum(logprobs)

    cache = (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3)
    return cost, cache


def _backward(
    X: np.ndarray, Y: np.ndarray, cache: Cache, dW2_scale: float, db1_scale: float
) -> dict[str, np.ndarray]:
    """The backward pass; the scales are 1 for the correct gradient, the lesson's bugs otherwise."""
    m = X.shape[1]
    (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3) = cache

    dZ3 = A3 - Y
    dW3 = 1.0 / m * np.dot(dZ3, A2.T)
    db3 = 1.0 / m * np.sum(dZ3, axis=1, keepdims=True)

    dA2 = np.dot(W3.T, dZ3)
    dZ2 = np.multiply(dA2, np.int64(A2 > 0))
    dW2 = 1.0 / m * np.dot(dZ2, A1.T) * dW2_scale
    db2 = 1.0 / m * np.sum(dZ2, axis=1, keepdims=True)

    dA1 = np.dot(W2.T, dZ2)
    dZ1 = np.multiply(dA1, np.int64(A1 > 0))
    dW1 = 1.0 / m * np.dot(dZ1, X.T)
    db1 = db1_scale / m * np.sum(dZ1, axis=1, keepdims=True)

    return {
        "dZ3": dZ3,
        "dW3": dW3,
        "db3": db3,
        "dA2": dA2,
        "dZ2": dZ2,
        "dW2": dW2,
        "db2": db2,
        "dA1": dA1,
        "dZ1": dZ1,
        "dW1": dW1,
        "db1": db1,
    }


def backward_propagation_n(X: np.ndarray, Y: np.ndarray, cache: Cache) -> dict[str, np.ndarray]:
    """Computes the gradients of the cost of :func:`forward_propagation_n`, correctly.

    Args:
        X: inputs, shape ``(4, m)``.
        Y: labels, shape ``(m,)`` or ``(1, m)``.
        cache: the cache returned by :func:`forward_propagation_n`.

    Returns:
        A dict with ``dZ3, dW3, db3, dA2, dZ2, dW2, db2, dA1, dZ1, dW1, db1``; each ``dW*`` and
        ``db*`` has the shape of its parameter.

    Examples:
        >>> X, Y, parameters = gradient_check_n_test_case()
        >>> _, cache = forward_propagation_n(X, Y, parameters)
        >>> gradients = backward_propagation_n(X, Y, cache)
        >>> gradients["dW1"].shape, gradients["db3"].shape
        ((5, 4), (1, 1))
    """
    return _backward(X, Y, cache, dW2_scale=1.0, db1_scale=1.0)


def backward_propagation_n_buggy(
    X: np.ndarray, Y: np.ndarray, cache: Cache
) -> dict[str, np.ndarray]:
    """Like :func:`backward_propagation_n`, with the lesson's two deliberate bugs.

    ``dW2`` comes out twice too big and ``db1`` four times too big; everything else is correct.

    Args:
        X: inputs, shape ``(4, m)``.
        Y: labels, shape ``(m,)`` or ``(1, m)``.
        cache: the cache returned by :func:`forward_propagation_n`.

    Returns:
        The same dict as :func:`backward_propagation_n`, with ``dW2`` and ``db1`` wrong.
    """
    return _backward(X, Y, cache, dW2_scale=2.0, db1_scale=4.0)


# Flattening parameters and gradients to one column vector


def dictionary_to_vector(
    parameters: Mapping[str, np.ndarray], keys: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Flattens a dict of arrays into one column vector.

    Args:
        parameters: the arrays to flatten.
        keys: the names to flatten, in order; defaults to the lesson's
            ``W1, b1, W2, b2, W3, b3``.

    Returns:
        ``(theta, names)``: a new ``(N, 1)`` array, and a list of length ``N`` naming the
        parameter each entry of ``theta`` came from.

    Examples:
        >>> _, _, parameters = gradient_check_n_test_case()
        >>> theta, names = dictionary_to_vector(parameters)
        >>> theta.shape, names[0], names[-1]
        ((47, 1), 'W1', 'b3')
    """
    keys = list(_LESSON_SHAPES) if keys is None else list(keys)
    columns = [np.reshape(parameters[key], (-1, 1)) for key in keys]
    names = [key for key, column in zip(keys, columns, strict=True) for _ in range(column.shape[0])]
    return np.concatenate(columns, axis=0), names


def vector_to_dictionary(
    theta: np.ndarray, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """Unflattens a column vector into a dict of arrays, undoing :func:`dictionary_to_vector`.

    Args:
        theta: a vector with exactly as many entries as ``shapes`` asks for.
        shapes: the name and shape of each array, in flattening order; defaults to the lesson's
            ``W1`` (5, 4), ``b1`` (5, 1), ``W2`` (3, 5), ``b2`` (3, 1), ``W3`` (1, 3),
            ``b3`` (1, 1).

    Returns:
        A dict of new arrays (copies, not views of ``theta``).

    Raises:
        InputError: when ``theta`` does not have as many entries as ``shapes`` asks for.

    Examples:
        >>> parameters = vector_to_dictionary(np.arange(47.0))
        >>> parameters["b3"]
        array([[46.]])
    """
    shapes = _LESSON_SHAPES if shapes is None else shapes
    flat = np.reshape(theta, (-1,))
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    if sum(sizes) != flat.size:
        raise InputError(
            f"vector_to_dictionary: theta has {flat.size} entries but the shapes "
            f"{dict(shapes)} need {sum(sizes)}; pass the shapes theta was flattened from."
        )
    parameters = {}
    start = 0
    for (key, shape), size in zip(shapes.items(), sizes, strict=True):
        parameters[key] = flat[start : start + size].reshape(tuple(shape)).copy()
        start += size
    return parameters


def gradients_to_vector(
    gradients: Mapping[str, np.ndarray], keys: Sequence[str] | None = None
) -> np.ndarray:
    """Flattens the parameter gradients into one column vector, in the parameters' order.

    Args:
        gradients: a dict such as :func:`backward_propagation_n` returns; intermediate entries
            (``dZ*``, ``dA*``) are ignored.
        keys: the gradient names to flatten, in order; defaults to the lesson's
            ``dW1, db1, dW2, db2, dW3, db3``.

    Returns:
        A new ``(N, 1)`` array lined up with :func:`dictionary_to_vector`'s ``theta``.

    Examples:
        >>> X, Y, parameters = gradient_check_n_test_case()
        >>> _, cache = forward_propagation_n(X, Y, parameters)
        >>> gradients_to_vector(backward_propagation_n(X, Y, cache)).shape
        (47, 1)
    """
    keys = ["d" + key for key in _LESSON_SHAPES] if keys is None else list(keys)
    return np.concatenate([np.reshape(gradients[key], (-1, 1)) for key in keys], axis=0)


# The lesson's N-D check: one parameter at a time, in a Python loop


def gradient_check_n(
    parameters: Mapping[str, np.ndarray],
    gradients: Mapping[str, np.ndarray],
    X: np.ndarray,
    Y: np.ndarray,
    epsilon: float = _EPSILON,
    print_msg: bool = True,
) -> float:
    """Checks the gradients of :func:`forward_propagation_n` against central differences.

    Each of the ``N`` parameters is nudged by ``+epsilon`` and ``-epsilon`` in turn (``2N``
    forward passes); the verdict compares the relative difference against the lesson's
    threshold of ``1e-7``. At ``epsilon = 1e-7`` rounding error alone puts a correct gradient
    of the test case just above that threshold, so this check raises a false alarm there.
    The caller's arrays are not modified.

    Args:
        parameters: the network's parameters, as for :func:`forward_propagation_n`.
        gradients: the gradients to judge, as :func:`backward_propagation_n` returns them.
        X: inputs, shape ``(4, m)``.
        Y: labels, shape ``(m,)`` or ``(1, m)``.
        epsilon: the finite-difference step.
        print_msg: whether to print the verdict.

    Returns:
        ``|grad - gradapprox|_2 / (|grad|_2 + |gradapprox|_2)`` over all ``N`` parameters.

    Examples:
        >>> X, Y, parameters = gradient_check_n_test_case()
        >>> _, cache = forward_propagation_n(X, Y, parameters)
        >>> gradients = backward_propagation_n_buggy(X, Y, cache)
        >>> round(gradient_check_n(parameters, gradients, X, Y, print_msg=False), 4)
        0.2851
    """
    shapes = {key: np.shape(parameters[key]) for key in _LESSON_SHAPES}
    parameters_values, _ = dictionary_to_vector(parameters)
    grad = gradients_to_vector(gradients)
    num_parameters = parameters_values.shape[0]

    J_plus = np.zeros((num_parameters, 1))
    J_minus = np.zeros((num_parameters, 1))
    gradapprox = np.zeros((num_parameters, 1))

    for i in range(num_parameters):
        thetaplus = np.copy(parameters_values)
        thetaplus[i] = thetaplus[i] + epsilon
        J_plus[i], _ = forward_propagation_n(X, Y, vector_to_dictionary(thetaplus, shapes))

        thetaminus = np.copy(parameters_values)
        thetaminus[i] = thetaminus[i] - epsilon
        J_minus[i], _ = forward_propagation_n(X, Y, vector_to_dictionary(thetaminus, shapes))

        gradapprox[i] = (J_plus[i] - J_minus[i]) / (2 * epsilon)

    difference = relative_difference(grad, gradapprox)

    if print_msg:
        if difference > _THRESHOLD:
            print(f"There is a mistake in the backward propagation! difference = {difference}")
        else:
            print(f"Your backward propagation works perfectly fine! difference = {difference}")
    return difference


def gradient_check_n_test_case() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Builds the lesson's test case: 3 examples of 4 features and seeded random parameters.

    Reseeds NumPy's global generator with 1, exactly as the lesson does.

    Returns:
        ``(X, Y, parameters)``: ``X`` of shape (4, 3), the integer labels ``Y = [1, 1, 0]`` of
        shape (3,), and ``parameters`` with the shapes :func:`forward_propagation_n` expects.

    Examples:
        >>> X, Y, parameters = gradient_check_n_test_case()
        >>> X.shape, Y.tolist(), [p.shape for p in parameters.values()]
        ((4, 3), [1, 1, 0], [(5, 4), (5, 1), (3, 5), (3, 1), (1, 3), (1, 1)])
    """
    np.random.seed(1)
    X = np.random.randn(4, 3)
    Y = np.array([1, 1, 0])
    W1 = np.random.randn(5, 4)
    b1 = np.random.randn(5, 1)
    W2 = np.random.randn(3, 5)
    b2 = np.random.randn(3, 1)
    W3 = np.random.randn(1, 3)
    b3 = np.random.randn(1, 1)
    parameters = {"W1": W1, "b1": b1, "W2": W2, "b2": b2, "W3": W3, "b3": b3}
    return X, Y, parameters


# JAX twins: the same costs on jax.numpy, traceable under jit, vmap and grad


def forward_propagation_jax(x: ArrayLike, theta: ArrayLike) -> jax.Array:
    """The JAX twin of :func:`forward_propagation`: ``J(theta) = theta * x``.

    Args:
        x: the input.
        theta: the single parameter.

    Returns:
        The cost as a JAX scalar.

    Examples:
        >>> float(jax.grad(forward_propagation_jax, argnums=1)(2.0, 4.0))
        2.0
    """
    return jnp.multiply(theta, x)


def forward_propagation_n_jax(
    X: ArrayLike, Y: ArrayLike, parameters: Mapping[str, ArrayLike]
) -> jax.Array:
    """The JAX twin of :func:`forward_propagation_n`; returns the cost only, without the cache.

    ReLU is ``jnp.maximum(0, z)``, whose derivative JAX takes as 0.5 at an exact ``z == 0``.
    Run it inside ``with jax.enable_x64(True):`` to match the NumPy cost in float64.

    Args:
        X: inputs, shape ``(4, m)``.
        Y: labels in ``{0, 1}``, shape ``(m,)`` or ``(1, m)``.
        parameters: ``W1, b1, W2, b2, W3, b3`` with the shapes of :func:`forward_propagation_n`.

    Returns:
        The mean cross-entropy as a JAX scalar of shape ``()``.

    Examples:
        >>> X, Y, parameters = gradient_check_n_test_case()
        >>> with jax.enable_x64(True):
        ...     cost = forward_propagation_n_jax(X, Y, parameters)
        ...     grads = jax.grad(forward_propagation_n_jax, argnums=2)(X, Y, parameters)
        >>> cost.shape, round(float(cost), 6), grads["W1"].shape
        ((), 2.407833, (5, 4))
    """
    X = jnp.asarray(X)
    m = X.shape[1]

    Z1 = jnp.dot(parameters["W1"], X) + parameters["b1"]
    A1 = jnp.maximum(0, Z1)
    Z2 = jnp.dot(parameters["W2"], A1) + parameters["b2"]
    A2 = jnp.maximum(0, Z2)
    Z3 = jnp.dot(parameters["W3"], A2) + parameters["b3"]
    A3 = 1 / (1 + jnp.exp(-Z3))

    logprobs = jnp.multiply(-jnp.log(A3), Y) + jnp.multiply(-jnp.log(1 - A3), 1 - Y)
    return 1.0 / m * jnp.sum(logprobs)
