"""``x[mask]`` with a mask JAX is tracing: kept as the whole array and the mask.

The size of ``x[mask]`` depends on values JAX does not know while it traces, so the port keeps
the selection in the shape of ``x``. What code does with a selection follows it: elementwise
arithmetic and NumPy ufuncs (``np.exp(-x[m])``) apply to the whole array, an assignment with
the same mask (``z[m] = ...``) becomes ``where(mask, ..., z)``, and reductions
(``np.sum(x[x > 0])``, ``.mean()``, ``np.max``) become masked reductions. The elements left out
reach the result only through a ``where``, and are cut from the gradient where they are
selected, so a ``log`` or a division that is only valid on the selected elements cannot poison
the gradient with the NaN of ``0 * inf``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# NumPy reductions a selection supports, by name.
REDUCTIONS = frozenset({"sum", "mean", "max", "amax", "min", "amin", "prod", "any", "all"})
# NumPy functions that are not ufuncs but work elementwise.
ELEMENTWISE = frozenset({"clip", "where", "nan_to_num", "round", "around", "real", "imag"})


class MaskedSelectionError(TypeError):
    """``x[mask]`` (a mask JAX traces) used in a way the port cannot follow."""


class Masked:
    """The selection ``array[mask]`` kept as ``array`` (same shape) and ``mask``.

    ``mask`` covers the leading dimensions of ``array``: the selection has the shape
    ``(count, *array.shape[mask.ndim:])``.
    """

    __array_ufunc__ = None  # NumPy arrays and scalars defer their operators to ours

    def __init__(self, full: Any, mask: Any) -> None:
        self.full = full
        self.mask = mask

    @classmethod
    def select(cls, array: jax.Array, mask: jax.Array) -> Masked:
        """``array[mask]``, the left-out elements cut from the gradient."""
        if jnp.issubdtype(array.dtype, jnp.inexact):
            array = jnp.where(expand(mask, array), array, jax.lax.stop_gradient(array))
        return cls(array, mask)

    # ---- what a selection knows --------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return jnp.ndim(self.full) - self.mask.ndim + 1

    @property
    def dtype(self) -> Any:
        return jnp.result_type(self.full)

    @property
    def size(self) -> jax.Array:
        """The number of selected elements, a traced number (NumPy's ``x[m].size``)."""
        return jnp.sum(self.mask) * _rest_size(self)

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise MaskedSelectionError(_unsupported("turned into a NumPy array"))

    def __bool__(self) -> bool:
        raise MaskedSelectionError(_unsupported("used as a truth value"))

    def __len__(self) -> int:
        raise MaskedSelectionError(_unsupported("given to len()"))

    def __iter__(self) -> Any:
        raise MaskedSelectionError(_unsupported("iterated over"))

    def __getitem__(self, index: Any) -> Any:
        raise MaskedSelectionError(_unsupported("indexed again"))

    @property
    def shape(self) -> Any:
        raise MaskedSelectionError(_unsupported("asked for its shape (it depends on the mask)"))

    @property
    def T(self) -> Any:  # noqa: N802 - NumPy's name
        raise MaskedSelectionError(_unsupported("transposed"))

    # ---- elementwise -------------------------------------------------------------------------

    def apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Masked:
        """``fn`` applied elementwise to selections of this mask and to broadcastable values."""
        full = [self.operand(a) for a in args]
        return Masked(fn(*full, **{k: self.operand(v) for k, v in kwargs.items()}), self.mask)

    def operand(self, value: Any) -> Any:
        """What ``value`` stands for next to this selection, in the shape of the whole array."""
        if isinstance(value, Masked):
            if value.mask is not self.mask:
                raise MaskedSelectionError(
                    _unsupported(
                        "combined with a selection by another mask (compute the mask "
                        "once, `m = x > 0`, and use `m` in both)"
                    )
                )
            return value.full
        if np.ndim(value) > jnp.ndim(self.full) - self.mask.ndim:
            raise MaskedSelectionError(
                _unsupported("combined with an array of another shape than the selection")
            )
        return value

    def _binary(self, op: Callable[[Any, Any], Any], other: Any, reflected: bool) -> Any:
        if isinstance(other, (list, tuple, dict, set, str)):
            return NotImplemented
        if reflected:
            return self.apply(lambda a, b: op(b, a), self, other)
        return self.apply(op, self, other)

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Masked:
        return Masked(jnp.asarray(self.full).astype(dtype), self.mask)

    def copy(self) -> Masked:
        return self

    # ---- reductions --------------------------------------------------------------------------

    def reduce(self, name: str, axis: Any = None, **kwargs: Any) -> Any:
        """``np.<name>(x[mask], axis=axis)``, over the selected elements only."""
        if kwargs:
            raise MaskedSelectionError(
                _unsupported(f"reduced with {', '.join(sorted(kwargs))}= (only axis= is followed)")
            )
        name = {"amax": "max", "amin": "min"}.get(name, name)
        lead = tuple(range(self.mask.ndim))
        if axis is None:
            axes: tuple[int, ...] = tuple(range(jnp.ndim(self.full)))
        elif axis in (0, -self.ndim):
            axes = lead
        elif isinstance(axis, int) and -self.ndim < axis < self.ndim:
            inner = (axis % self.ndim) - 1 + self.mask.ndim
            return Masked(getattr(jnp, name)(self.full, axis=inner), self.mask)
        else:
            raise MaskedSelectionError(_unsupported(f"reduced along axis={axis!r}"))
        mask = expand(self.mask, self.full)
        full = jnp.asarray(self.full)
        if name == "mean":
            count = jnp.sum(self.mask) * (_rest_size(self) if axis is None else 1)
            return jnp.sum(jnp.where(mask, full, 0), axis=axes) / count
        fill = _identity(name, full.dtype)
        return getattr(jnp, name)(jnp.where(mask, full, fill), axis=axes)

    def sum(self, axis: Any = None, **kwargs: Any) -> Any:
        return self.reduce("sum", axis, **kwargs)

    def mean(self, axis: Any = None, **kwargs: Any) -> Any:
        return self.reduce("mean", axis, **kwargs)

    def max(self, axis: Any = None, **kwargs: Any) -> Any:
        return self.reduce("max", axis, **kwargs)

    def min(self, axis: Any = None, **kwargs: Any) -> Any:
        return self.reduce("min", axis, **kwargs)

    def prod(self, axis: Any = None, **kwargs: Any) -> Any:
        return self.reduce("prod", axis, **kwargs)

    def any(self, axis: Any = None, **kwargs: Any) -> Any:
        return self.reduce("any", axis, **kwargs)

    def all(self, axis: Any = None, **kwargs: Any) -> Any:
        return self.reduce("all", axis, **kwargs)


def _binary(op: Callable[[Any, Any], Any]) -> tuple[Any, Any]:
    def forward(self: Masked, other: Any) -> Any:
        return self._binary(op, other, False)

    def reflected(self: Masked, other: Any) -> Any:
        return self._binary(op, other, True)

    return forward, reflected


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    _forward, _reflected = _binary(_op)
    setattr(Masked, f"__{_name}__", _forward)
    setattr(Masked, f"__r{_name}__", _reflected)
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(Masked, f"__{_name}__", _binary(getattr(operator, _name))[0])


def _unary(op: Callable[[Any], Any]) -> Callable[[Masked], Masked]:
    def unary(self: Masked) -> Masked:
        return self.apply(op, self)

    return unary


for _name in ("neg", "pos", "abs", "invert"):
    setattr(Masked, f"__{_name}__", _unary(getattr(operator, _name)))
Masked.__hash__ = None  # type: ignore[assignment] # __eq__ is elementwise, as NumPy's


def expand(mask: Any, array: Any) -> Any:
    return jnp.reshape(mask, mask.shape + (1,) * (jnp.ndim(array) - mask.ndim))


def _rest_size(selection: Masked) -> int:
    return int(np.prod(jnp.shape(selection.full)[selection.mask.ndim :], dtype=np.int64))


def _identity(name: str, dtype: Any) -> Any:
    if name == "sum":
        return 0
    if name == "prod":
        return 1
    if name in ("any", "all"):
        return name == "all"
    big = jnp.inf if jnp.issubdtype(dtype, jnp.inexact) else jnp.iinfo(dtype).max
    return -big if name == "max" else big


def _unsupported(what: str) -> str:
    return (
        f"A selection `x[mask]` with a mask computed from the parameters is {what}. The port "
        f"follows such selections through elementwise arithmetic, NumPy's elementwise "
        f"functions, an assignment with the same mask (`z[m] = f(x[m])`) and sum, mean, max, "
        f"min and prod; keep the shape otherwise: `np.where(mask, x, 0)` in place of `x[mask]`."
    )


def call(entry: tuple[Any, Any, str], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A NumPy call given a selection: an elementwise function or a reduction of it."""
    original, counterpart, name = entry
    if name in REDUCTIONS and args and isinstance(args[0], Masked):
        rest = dict(kwargs)
        if len(args) > 2:
            raise MaskedSelectionError(_unsupported(f"given to np.{name} with more arguments"))
        axis = args[1] if len(args) == 2 else rest.pop("axis", None)
        return args[0].reduce(name, axis, **rest)
    if isinstance(original, np.ufunc) or name in ELEMENTWISE:
        first = next(a for a in (*args, *kwargs.values()) if isinstance(a, Masked))
        return first.apply(counterpart, *args, **kwargs)
    raise MaskedSelectionError(_unsupported(f"given to `numpy.{name}`"))


def has_masked(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return any(isinstance(a, Masked) for a in args) or any(
        isinstance(v, Masked) for v in kwargs.values()
    )
