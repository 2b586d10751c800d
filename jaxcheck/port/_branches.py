"""An ``if`` on a value JAX is tracing, whose branches only assign variables: both run, merged.

``if margin > 0: loss += margin`` cannot choose a branch while JAX traces ``margin``. The
rewritten code (see :mod:`._rewrite`) runs each branch from the same starting values and merges
what they assign with ``where(condition, then, otherwise)``. Each branch reads its inputs through
a ``where`` that cuts them from the gradient where the branch is not taken, so a ``log`` or a
division only valid on the taken side cannot poison the gradient with the NaN of ``0 * inf``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class BranchMergeError(TypeError):
    """The two branches of an if-converted ``if`` give values that ``where`` cannot merge.

    ``line`` is the line of the ``if`` (the message names it).
    """

    line: int | None = None


class _Unbound:
    def __repr__(self) -> str:
        return "<unbound>"


UNBOUND = _Unbound()
_ARRAYS = (np.ndarray, np.generic, jax.Array, int, float, bool, complex)


def condition(test: Any, op: str | None = None, other: Any = None) -> Any:
    """``bool(test)`` when Python can know it; the traced 0-d condition when JAX traces it.

    ``op`` "not", "and" and "or" combine conditions already found (the rewrite keeps Python's
    short circuits: the right side of ``a and b`` is only computed when ``a`` is not false).
    """
    if op == "not":
        return not test if type(test) is bool else jnp.logical_not(test)
    if op in ("and", "or"):
        if type(test) is bool and type(other) is bool:
            return (test and other) if op == "and" else (test or other)
        return (jnp.logical_and if op == "and" else jnp.logical_or)(test, other)
    try:
        return bool(test)
    except jax.errors.ConcretizationTypeError:
        if not isinstance(test, jax.Array) or test.size != 1:
            raise
        return jnp.reshape(test, ()).astype(bool)


class Branches:
    """One run of an if-converted ``if``: its starting values, each branch's, the merge.

    Args:
        test: the traced 0-d condition.
        scope: the function's ``locals()`` before the ``if``.
        assigned: the names either branch assigns, in the order the rewrite packs them.
        containers: those of them assigned into (``dW[:, j] += x``): arrays, copied per branch.
        read: the other local names the branches read.
    """

    def __init__(
        self,
        test: Any,
        scope: dict[str, Any],
        assigned: tuple[str, ...],
        containers: tuple[str, ...],
        read: tuple[str, ...],
        line: int,
    ) -> None:
        self.test = test
        self.assigned = assigned
        self.names = assigned + read
        self.start = [scope.get(name, UNBOUND) for name in self.names]
        self.line = line
        self.containers = frozenset(containers)
        self.entered: dict[bool, list[Any]] = {}
        self.results: dict[bool, tuple[Any, ...]] = {}
        for name in containers:
            value = scope.get(name, UNBOUND)
            if value is UNBOUND or isinstance(value, (np.ndarray, jax.Array)):
                continue
            if type(value) not in (dict, list) or not all(
                isinstance(v, _ARRAYS) for v in _items(value)
            ):
                raise (
                    self._cannot(
                        f"assign into `{name}`, a {type(value).__name__}, which both "
                        f"branches would change (only arrays, and dicts and lists of arrays, "
                        f"are followed)"
                    )
                )

    def enter(self, side: bool) -> tuple[Any, ...]:
        """The values the branch ``side`` starts from: the inputs, guarded for the gradient."""
        count = len(self.assigned)
        values = [
            _guarded(self.test, value, side, assigned=i < count, copy=name in self.containers)
            for i, (name, value) in enumerate(zip(self.names, self.start))
        ]
        self.entered[side] = values
        return tuple(values)

    def leave(self, side: bool, values: tuple[Any, ...]) -> None:
        self.results[side] = values

    def merged(self) -> tuple[Any, ...]:
        """What the names hold after the ``if``: ``where(test, then, otherwise)`` per name."""
        out = []
        for i, name in enumerate(self.names):
            if i >= len(self.assigned):
                out.append(self.start[i])  # only read: as it was
                continue
            then, otherwise = (self._result(side, i) for side in (True, False))
            out.append(self._merge(name, then, otherwise))
        return tuple(out)

    def _result(self, side: bool, i: int) -> Any:
        value = self.results[side][i]
        return self.start[i] if value is self.entered[side][i] else value  # left as it was

    def _merge_container(self, name: str, then: Any, otherwise: Any) -> Any:
        """Two branch copies of a dict or list of arrays, merged item by item into the
        original object (other references to it see the change, as in NumPy)."""
        original = self.start[self.names.index(name)]
        if type(otherwise) is not type(then) or original is UNBOUND or len(then) != len(otherwise):
            raise self._cannot(f"merge `{name}`: the branches change its size")
        keys = list(then) if isinstance(then, dict) else range(len(then))
        merged = [
            self._merge(
                f"{name}[{k!r}]",
                then[k],
                otherwise.get(k, UNBOUND) if isinstance(otherwise, dict) else otherwise[k],
            )
            for k in keys
        ]
        if isinstance(original, dict):
            original.update(zip(keys, merged))
        else:
            original[:] = merged
        return original

    def _merge(self, name: str, then: Any, otherwise: Any) -> Any:
        if name in self.containers and type(then) in (dict, list):
            return self._merge_container(name, then, otherwise)
        if then is otherwise or otherwise is UNBOUND:
            return then
        if then is UNBOUND:
            return otherwise
        if isinstance(then, _ARRAYS) and isinstance(otherwise, _ARRAYS):
            try:
                return jnp.where(self.test, then, otherwise)  # type: ignore[arg-type]
            except (TypeError, ValueError) as err:
                raise (
                    self._cannot(
                        f"merge `{name}`: shapes {np.shape(then)} and {np.shape(otherwise)} ({err})"
                    )
                ) from err
        try:
            if type(then) is type(otherwise) and bool(then == otherwise):
                return then
        except Exception:  # noqa: BLE001, S110 - values that do not compare: not the same
            pass
        kinds = (
            f"two {type(then).__name__}s that differ"
            if type(then) is type(otherwise)
            else f"a {type(then).__name__} and a {type(otherwise).__name__}"
        )
        raise self._cannot(
            f"merge `{name}`: the branches give {kinds}, and only numbers and "
            f"arrays (and dicts and lists of arrays assigned into) merge"
        )

    def _cannot(self, what: str) -> BranchMergeError:
        error = BranchMergeError(self._why(what))
        error.line = self.line
        return error

    def _why(self, what: str) -> str:
        return (
            f"The `if` on line {self.line} depends on a value computed from the parameters. "
            f"jaxcheck computes both branches of such an `if` and merges the variables they "
            f"assign with `np.where(condition, a, b)`, but it cannot {what}. Compute both "
            f"values yourself and choose with `np.where`."
        )


def _items(container: dict[Any, Any] | list[Any]) -> list[Any]:
    return list(container.values()) if isinstance(container, dict) else container


def _guarded(test: Any, value: Any, side: bool, *, assigned: bool, copy: bool = False) -> Any:
    """``value`` as branch ``side`` reads it: its gradient kept only where that branch is taken.

    A NumPy array a branch assigns to becomes a JAX array, so that it changes by rebinding,
    never in place (the other branch must start from it unchanged).
    """
    if isinstance(value, np.ndarray):
        return jnp.asarray(value) if assigned else value
    if copy and type(value) is dict:  # a copy per branch, merged back into the original
        return {k: _guarded(test, v, side, assigned=True) for k, v in value.items()}
    if copy and type(value) is list:
        return [_guarded(test, v, side, assigned=True) for v in value]
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.inexact):
        frozen = jax.lax.stop_gradient(value)
        return jnp.where(test, value, frozen) if side else jnp.where(test, frozen, value)
    return value
