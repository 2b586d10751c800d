"""The zoo's front door: build any of its models by name.

Each family module holds its builders; this one maps names to them and checks the options.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxcheck.models._base import Model
from jaxcheck.models._batchnorm import batchnorm
from jaxcheck.models._conv import conv1d
from jaxcheck.models._dropout import dropout_lesson
from jaxcheck.models._linear import logistic_regression, softmax_regression
from jaxcheck.models._mlp import l2_mlp, relu_mlp, tanh_mlp

_BUILDERS: dict[str, Callable[..., Model]] = {
    builder.__name__: builder
    for builder in (
        logistic_regression,
        softmax_regression,
        tanh_mlp,
        l2_mlp,
        relu_mlp,
        conv1d,
        batchnorm,
        dropout_lesson,
    )
}


def names() -> list[str]:
    """Lists the names :func:`make` accepts, sorted.

    Returns:
        The model names, e.g. ``["batchnorm", "conv1d", ...]``.
    """
    return sorted(_BUILDERS)


def make(name: str, *, seed: int = 0, dtype: Any = np.float64, **sizes: Any) -> Model:
    """Builds a fresh model of the zoo: data, parameters, backprop, JAX twin and bugs.

    Every call draws new arrays from ``np.random.default_rng(seed)``, so the same arguments give
    equal but independent models (mutating one does not touch another).

    Models and their options (see each builder's docstring for the architecture and its bugs):

    - ``logistic_regression``: ``n_x=4, m=10``
    - ``softmax_regression``: ``n_x=4, n_classes=3, m=10``
    - ``tanh_mlp``: ``n_x=3, n_h=4, n_y=2, m=6``
    - ``l2_mlp``: ``n_x=3, n_h1=4, n_h2=3, m=8, lambd=0.7``
    - ``relu_mlp``: ``layers=(4, 5, 3, 1), m=16`` (nested params ``{"layers": [{"W", "b"}, ...]}``)
    - ``conv1d``: ``m=4, c_in=2, length=8, c_out=3, kernel_size=3, n_y=2``
    - ``batchnorm``: ``n_x=3, n_h=4, n_y=2, m=8``
    - ``dropout_lesson``: ``m=3, keep_prob=0.8, frozen=True`` (lesson style: ``cost`` returns
      ``(cost, cache)``, ``grad`` returns a ``"d" + name`` dict)

    Args:
        name: One of :func:`names`.
        seed: Seed of the generator the data, the parameters and any dropout masks come from.
        dtype: ``np.float64`` or ``np.float32``; the data and the parameters are in it, so the
            NumPy cost and backprop compute in it.
        **sizes: The model's options above; the defaults are small, so that every model checks
            quickly.

    Returns:
        The :class:`Model`.

    Raises:
        ValueError: For an unknown name, an unsupported dtype, or sizes the model cannot take.
        TypeError: For an option the model does not have.

    Examples:
        >>> from jaxcheck import models
        >>> model = models.make("tanh_mlp", seed=0, n_h=5)
        >>> sorted(model.params)
        ['W1', 'W2', 'W3', 'b1', 'b2', 'b3']
        >>> model.grad(model.params)["W2"].shape
        (5, 5)
        >>> bug = model.bugs["transposed_weight"]
        >>> bug.description
        'backprop through the square W2 multiplies by W2 instead of W2.T'
        >>> sorted(bug.leaves)
        ['W1', 'b1']
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: dtype must be float32 or float64, got {dtype}")
    options = list(inspect.signature(builder).parameters)[2:]
    unknown = sorted(set(sizes) - set(options))
    if unknown:
        raise TypeError(
            f"{name} has no option {', '.join(unknown)}; its options are {', '.join(options)}"
        )
    return builder(np.random.default_rng(seed), dtype.type, **sizes)
