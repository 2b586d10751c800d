"""The system under test of :func:`jaxcheck.check_layer`: a layer's forward and backward.

``_Layer`` turns ``forward(*args)``/``backward(dout, cache)`` into a cost, a gradient and a JAX
twin over the checked arguments, with fresh copies of everything else on every call.
"""

from __future__ import annotations

import copy
import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxcheck._engine.doors.object import describe, is_float_array
from jaxcheck._engine.system.arguments import argument_names
from jaxcheck.errors import (
    InputError,
    JaxcheckError,
    NondeterminismError,
    user_code_error,
)

__all__ = ["JAX_FORWARD_HINT", "Layer", "require_callable"]


JAX_FORWARD_HINT = "pass jax_forward= (forward written with jax.numpy, the same arguments)"
_OUTPUT_ADVICE = (
    "forward must return out, or a tuple whose last item is the cache: (out, cache), or "
    "(out1, out2, cache) for several outputs"
)


class Layer:
    """One layer under test: its arguments, which of them are checked, and the probe's findings."""

    def __init__(
        self,
        forward: Callable[..., Any],
        backward: Callable[..., Any],
        args: tuple[Any, ...],
        wrt: Any,
        forward_kwargs: Mapping[str, Any] | None,
    ) -> None:
        self.forward, self.backward, self.args = forward, backward, args
        if forward_kwargs is not None and not isinstance(forward_kwargs, Mapping):
            raise InputError(
                f"forward_kwargs must be a dict of keyword arguments for forward, got "
                f"{type(forward_kwargs).__name__}."
            )
        self.kwargs = dict(forward_kwargs or {})
        self.names = argument_names(forward, len(args))
        self.signature = f"forward({', '.join(self.names)})"
        _bind(forward, args, self.kwargs, self.signature)
        self.floating = [i for i, a in enumerate(args) if is_float_array(a)]
        if not self.floating:
            described = ", ".join(f"{n}: {describe(a)}" for n, a in zip(self.names, args))
            raise InputError(
                f"none of the arguments of {self.signature} is a floating-point NumPy array "
                f"({described or 'no arguments'}); check_layer checks the gradients of float "
                f"arrays, e.g. x = np.asarray(x, dtype=np.float64)."
            )
        self.checked = self._select(wrt)
        self.params = {self.names[i]: args[i] for i in self.checked}
        self.has_cache = True
        self.douts: list[np.ndarray] = []

    # ---- which arguments ---------------------------------------------------------------------

    def _select(self, wrt: Any) -> list[int]:
        if wrt is None:
            return list(self.floating)
        items = [wrt] if isinstance(wrt, (str, numbers.Integral)) else wrt
        try:
            items = list(items)
        except TypeError:
            raise InputError(
                f"wrt={wrt!r}: expected argument names or positions, e.g. wrt=['x', 'w'] or "
                f"wrt=[0, 1]."
            ) from None
        if not items:
            raise InputError("wrt=[] selects no argument; leave wrt=None to check all of them.")
        chosen: list[int] = []
        for item in items:
            index = self._index(item)
            if index in chosen:
                raise InputError(f"wrt={wrt!r} names {self.names[index]!r} twice.")
            chosen.append(index)
        return sorted(chosen)

    def _index(self, item: Any) -> int:
        names = ", ".join(self.names)
        if isinstance(item, str):
            if item not in self.names:
                raise InputError(
                    f"wrt names {item!r}, which is not an argument of {self.signature}; "
                    f"expected one of {names}."
                )
            index = self.names.index(item)
        elif isinstance(item, numbers.Integral) and not isinstance(item, (bool, np.bool_)):
            index = int(item)
            if not 0 <= index < len(self.args):
                raise InputError(
                    f"wrt names position {index}, but {self.signature} was given "
                    f"{len(self.args)} argument(s): positions 0 to {len(self.args) - 1}."
                )
        else:
            raise InputError(
                f"wrt holds {item!r}; expected argument names (str) or positions (int)."
            )
        if index not in self.floating:
            raise InputError(
                f"wrt names {self.names[index]!r} (argument {index}), which is "
                f"{describe(self.args[index])}; only floating-point NumPy arrays can be checked."
            )
        return index

    # ---- calling the user's code -------------------------------------------------------------

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """forward's arguments: the checked ones from params, private copies of the rest."""
        out = []
        for i, arg in enumerate(self.args):
            if i in self.checked:
                out.append(params[self.names[i]])
            else:
                out.append(_private_copy(arg))
        return out

    def keywords(self) -> dict[str, Any]:
        return {k: _private_copy(v) for k, v in self.kwargs.items()}

    def outputs(self, result: Any) -> tuple[Any, ...]:
        return tuple(result[:-1]) if self.has_cache else (result,)

    def run_backward(self, result: Any) -> Any:
        douts = [d.copy() for d in self.douts]
        if self.has_cache:
            return self.backward(*douts, result[-1])
        return self.backward(*douts)

    def probe(self, dout: Any, seed: int) -> None:
        """Runs forward and backward once at the given arguments; validates what comes back."""
        params = {k: v.copy() for k, v in self.params.items()}
        result = self._forward(params)
        if isinstance(result, (tuple, list)):
            if len(result) < 2:
                raise InputError(
                    f"{self.signature} returned a {type(result).__name__} of length "
                    f"{len(result)}; {_OUTPUT_ADVICE}."
                )
            self.has_cache = True
        else:
            self.has_cache = False
            if _positional_count(self.backward) == 2:
                raise InputError(
                    f"{self.signature} returned {describe(result)} and no cache, but backward "
                    f"takes two arguments (dout, cache); {_OUTPUT_ADVICE}."
                )
        outs = [self._output(i, o) for i, o in enumerate(self.outputs(result))]
        again = [np.asarray(o) for o in self.outputs(self._forward(params))]
        for i, (a, b) in enumerate(zip(outs, again)):
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                raise NondeterminismError(
                    f"{self.signature} returned different outputs{'' if len(outs) == 1 else f' (output {i})'} "  # noqa: E501
                    f"on two calls with the same arguments: randomness inside forward, such as "
                    f"dropout drawing a fresh mask. Seed it inside forward (e.g. "
                    f"dropout_param={{'mode': 'train', 'p': 0.5, 'seed': 0}}), or draw the mask "
                    f"outside and pass it in; then the check is valid."
                )
        self.douts = self._douts(dout, outs, seed)
        self.gradients(self._backward(result))

    def _forward(self, params: Mapping[str, Any]) -> Any:
        try:
            return self.forward(*self.arguments(params), **self.keywords())
        except JaxcheckError:
            raise
        except Exception as err:
            raise user_code_error(err, self.signature) from err

    def _backward(self, result: Any) -> Any:
        try:
            return self.run_backward(result)
        except JaxcheckError:
            raise
        except Exception as err:
            call = "backward(dout, cache)" if self.has_cache else "backward(dout)"
            raise user_code_error(err, call) from err

    def _output(self, i: int, out: Any) -> np.ndarray:
        what = f"{self.signature} output" + (f" {i}" if self.has_cache and i else "")
        if isinstance(out, (np.ndarray, np.generic, float)):
            arr = np.asarray(out)
            if np.issubdtype(arr.dtype, np.floating):
                if not np.all(np.isfinite(arr)):
                    bad = tuple(int(j) for j in np.argwhere(~np.isfinite(arr))[0])
                    raise InputError(
                        f"{what} holds a non-finite value ({arr[bad]!r} at index {bad}) at the "
                        f"given arguments; gradients can only be checked where the output is "
                        f"finite."
                    )
                return arr
        raise InputError(f"{what} is {describe(out)}; expected a float array. {_OUTPUT_ADVICE}.")

    def _douts(self, dout: Any, outs: list[np.ndarray], seed: int) -> list[np.ndarray]:
        if dout is None:
            rng = np.random.default_rng(seed)
            return [rng.standard_normal(o.shape).astype(o.dtype) for o in outs]
        if len(outs) == 1:
            given = [dout[0]] if isinstance(dout, (tuple, list)) and len(dout) == 1 else [dout]
        elif isinstance(dout, (tuple, list)) and len(dout) == len(outs):
            given = list(dout)
        else:
            raise InputError(
                f"forward has {len(outs)} outputs, so dout must be a tuple of {len(outs)} arrays "
                f"shaped like them ({', '.join(str(o.shape) for o in outs)}); got "
                f"{describe(dout)}."
            )
        douts = []
        for i, (d, o) in enumerate(zip(given, outs)):
            name = "dout" if len(outs) == 1 else f"dout[{i}]"
            try:
                arr = np.array(d, dtype=None, copy=True)
            except Exception as err:  # noqa: BLE001 - anything unconvertible is bad input
                raise InputError(f"{name} could not be read as an array ({err}).") from err
            if not np.issubdtype(arr.dtype, np.floating):
                raise InputError(f"{name} has dtype {arr.dtype}; expected a float array.")
            if arr.shape != o.shape:
                raise InputError(
                    f"{name} has shape {arr.shape}; expected {o.shape}, the shape of forward's "
                    f"output."
                )
            if not np.all(np.isfinite(arr)):
                raise InputError(f"{name} holds non-finite values; expected a finite array.")
            douts.append(arr)
        return douts

    def gradients(self, back: Any) -> dict[str, np.ndarray]:
        """Lines backward's return up with the checked arguments; clear errors when it cannot."""
        expected = ", ".join("d" + self.names[i] for i in self.floating)
        call = "backward(dout, cache)" if self.has_cache else "backward(dout)"
        found: dict[int, tuple[Any, str]] = {}  # argument index -> (gradient, where it came)
        if isinstance(back, Mapping):
            for i in self.checked:
                name = self.names[i]
                if name in back:
                    found[i] = (back[name], f"key {name!r}")
                elif "d" + name in back:
                    found[i] = (back["d" + name], f"key {'d' + name!r}")
                else:
                    raise InputError(
                        f"{call} returned a dict with keys {sorted(map(str, back))} but none for "
                        f"{name!r} (looked for {name!r} and {'d' + name!r})."
                    )
        elif isinstance(back, (tuple, list)):
            order = self.floating if len(back) == len(self.floating) else self.checked
            if len(back) != len(order):
                kinds = ", ".join(describe(g) for g in back)
                if len(self.floating) == 1:
                    wanted = f"one array, d{self.names[self.floating[0]]}"
                else:
                    wanted = (
                        f"{len(self.floating)} gradients ({expected}), one per floating-point "
                        f"argument of {self.signature}, in order"
                    )
                raise InputError(
                    f"{call} returned a {type(back).__name__} of {len(back)} item(s) ({kinds}); "
                    f"expected {wanted}."
                )
            for k, i in enumerate(order):
                if i in self.checked:
                    found[i] = (back[k], f"item {k} of {len(back)}")
        elif len(self.checked) == 1:
            found[self.checked[0]] = (back, "its only return value")
        else:
            raise InputError(
                f"{call} returned {describe(back)}; expected a tuple of "
                f"{len(self.floating)} gradients ({expected}), one per floating-point argument "
                f"of {self.signature}, in order."
            )
        grads = {}
        for i, (g, where) in found.items():
            name, arg = self.names[i], self.args[i]
            if not isinstance(g, (np.ndarray, np.generic, float, int)) or isinstance(g, bool):
                raise InputError(
                    f"{call} returned {describe(g)} as the gradient of {name!r} ({where}); "
                    f"expected a float array of shape {arg.shape}."
                )
            arr = np.asarray(g)
            if arr.shape != arg.shape:
                raise InputError(
                    f"{call} returned a gradient of shape {arr.shape} for {name!r} ({where}), "
                    f"whose shape is {arg.shape}; backward returns the gradients of forward's "
                    f"floating-point arguments ({', '.join(self.names[j] for j in self.floating)})"
                    f" in that order, each shaped like its argument."
                )
            grads[name] = arr
        return grads

    # ---- the functions jc.check gets ---------------------------------------------------------

    def cost(self) -> Callable[[Mapping[str, Any]], Any]:
        """``params -> sum(dout * out)`` in NumPy; ported, it is the JAX twin."""
        forward, arguments, keywords, outputs = (
            self.forward,
            self.arguments,
            self.keywords,
            self.outputs,
        )
        douts = [d.astype(np.float64) for d in self.douts]

        def cost(params: Mapping[str, Any]) -> Any:
            # Kept plain (no helpers doing NumPy): jc.port re-executes this body on jax.numpy.
            result = forward(*arguments(params), **keywords())
            total = 0.0
            for d, out in zip(douts, outputs(result)):
                total = total + np.sum(d * out)
            return total

        # Port errors name the function they were porting: name it for what it computes.
        cost.__qualname__ = f"check_layer.<sum(dout * {getattr(forward, '__name__', 'forward')})>"
        return cost

    def grad(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``params -> {name: gradient}``: forward for a fresh cache, then backward."""
        return self.gradients(self._backward(self._forward(params)))

    def jax_cost(self, jax_forward: Callable[..., Any]) -> Callable[[Mapping[str, Any]], Any]:
        """The twin from a given JAX forward: ``sum(dout * jax_forward(*args))``."""
        import jax.numpy as jnp

        douts = [d.astype(np.float64) for d in self.douts]
        count = len(douts)

        def jax_cost(params: Mapping[str, Any]) -> Any:
            result = jax_forward(*self.arguments(params), **self.keywords())
            if not isinstance(result, (tuple, list)):
                outs = (result,)
            elif len(result) in (count, count + 1):
                outs = tuple(result)[:count]
            else:
                raise InputError(
                    f"jax_forward returned a {type(result).__name__} of {len(result)} items; "
                    f"expected forward's {count} output(s), optionally followed by a cache."
                )
            return sum(jnp.sum(jnp.asarray(d) * out) for d, out in zip(douts, outs))

        return jax_cost


# --------------------------------------------------------------------------------------------


def require_callable(name: str, fn: Any) -> None:
    if not callable(fn):
        raise InputError(f"{name} must be callable, got {type(fn).__name__}.")


def _private_copy(value: Any) -> Any:
    """A copy the user's code may change freely (``bn_param["running_mean"] = ...``)."""
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - what cannot be copied is passed as it is
        return value


def _bind(forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict, name: str) -> None:
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        raise InputError(
            f"forward{signature} cannot be called with {len(args)} positional argument(s)"
            f"{' and ' + ', '.join(kwargs) if kwargs else ''}: {err}. Pass forward's arguments "
            f"after backward, in order: jc.check_layer(forward, backward, x, w, b)."
        ) from None


def _positional_count(fn: Callable[..., Any]) -> int | None:
    """How many positional parameters ``fn`` requires, or None when unknown or variadic."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return sum(1 for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty)
