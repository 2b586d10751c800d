"""The options of a gradient check, validated once into one frozen object.

:func:`jaxcheck.check` and the other entry points build :class:`Options` from their keywords;
every later stage (plan, evaluate, judge, report) reads it whole.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxcheck.errors import InputError

__all__ = ["METHODS", "TWIN_MODES", "Options"]

#: The finite-difference methods.
METHODS = ("full", "sample", "directional")
#: What to do when no JAX twin can be had: judge two-way ("auto") or raise ("required"); or judge
#: two-way without looking for one ("none": a cost that is not NumPy code, e.g. torch).
TWIN_MODES = ("auto", "required", "none")
#: Coordinates per leaf in ``method="sample"`` when ``samples`` is not given.
DEFAULT_SAMPLES = 64
#: Random directions per leaf in ``method="directional"`` when ``directions`` is not given.
DEFAULT_DIRECTIONS = 8


@dataclasses.dataclass(frozen=True)
class Options:
    """How a check runs; see :func:`jaxcheck.check` for each field's meaning."""

    method: str = "full"
    samples: int | None = None
    directions: int | None = None
    eps: float | None = None
    rtol: float | None = None
    batch_size: int | None = None
    seed: int = 0
    memory_budget: int | None = None
    progress: bool | None = None
    devices: Sequence[Any] | None = None
    incremental: bool | None = None
    twin: str = "auto"
    cache: bool | None = None
    compile: bool | None = None
    expected: Mapping[str, str] | tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise InputError(f"method={self.method!r} is not one of {METHODS}.")
        if not isinstance(self.twin, str) or self.twin not in TWIN_MODES:
            raise InputError(f"twin={self.twin!r} is not one of {TWIN_MODES}.")
        for name in ("samples", "directions", "batch_size", "memory_budget"):
            _positive_int(name, getattr(self, name))
        if self.samples is not None and self.method != "sample":
            raise InputError(
                f"samples={self.samples} only applies to method='sample' (got {self.method!r})."
            )
        if self.directions is not None and self.method != "directional":
            raise InputError(
                f"directions={self.directions} only applies to method='directional' "
                f"(got {self.method!r})."
            )
        for name in ("eps", "rtol"):
            value = getattr(self, name)
            _positive_float(name, value)
            if not isinstance(value, (type(None), float, np.floating, numbers.Integral)):
                # a Fraction, say: NumPy would make object arrays of it. Floats and integers stay
                # as given, since NumPy's type promotion may depend on which they are.
                object.__setattr__(self, name, float(value))
        if self.rtol is not None and self.rtol >= 1:
            raise InputError(f"rtol={self.rtol!r}: expected a relative tolerance below 1.")
        if (
            isinstance(self.seed, (bool, np.bool_))
            or not isinstance(self.seed, numbers.Integral)
            or self.seed < 0
        ):
            raise InputError(f"seed={self.seed!r}: expected a non-negative integer.")
        for name in ("progress", "incremental", "cache", "compile"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (bool, np.bool_)):
                raise InputError(f"{name}={value!r}: expected True, False or None.")
        if self.devices is not None:
            devices = self.devices
            if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence):
                raise InputError(f"devices={devices!r}: expected a sequence of jax devices.")
            if not devices:
                raise InputError("devices=[]: expected at least one jax device, or None.")
            if any(not hasattr(d, "platform") for d in devices):
                raise InputError(f"devices={devices!r}: expected jax devices (jax.devices()).")
            object.__setattr__(self, "devices", tuple(devices))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "expected", _expected(self.expected))

    @property
    def expectations(self) -> dict[str, str] | None:
        """``expected`` as a dict: leaf path → ``"derivative"`` or ``"surrogate"``."""
        return None if self.expected is None else dict(self.expected)

    @property
    def samples_per_leaf(self) -> int:
        """Coordinates per leaf in ``method="sample"``."""
        return self.samples or DEFAULT_SAMPLES

    @property
    def directions_per_leaf(self) -> int:
        """Random directions per leaf in ``method="directional"``."""
        return self.directions or DEFAULT_DIRECTIONS


def _expected(value: Any) -> tuple[tuple[str, str], ...] | None:
    """``expected=`` as sorted (path, expectation) pairs; the paths are checked against the
    leaves once the params are known."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
        items = list(value)
    else:
        raise InputError(
            f"expected={value!r}: expected a dict of leaf path -> 'surrogate' (a deliberate "
            f"approximation, e.g. expected={{'W': 'surrogate'}}), or None."
        )
    for key, kind in items:
        if not isinstance(key, str) or not isinstance(kind, str):
            raise InputError(
                f"expected={value!r}: keys must be leaf paths (str) and values 'surrogate' or "
                f"'derivative'."
            )
    return tuple(sorted(items))


def _positive_int(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name}={value!r}: expected a positive integer or None.")


def _positive_float(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{name}={value!r}: expected a positive float or None.")
    try:
        number = float(value)
    except OverflowError:  # an integer or Fraction beyond the largest float
        number = math.inf
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{name}={value!r}: expected a positive, finite float or None.")
