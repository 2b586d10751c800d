"""Checks a custom ``torch.autograd.Function`` three ways (needs PyTorch: ``pip install torch``).

Its backward is the system under test, judged against finite differences of its forward and
autograd of a reference forward, by the same engine and verdict as :func:`jaxcheck.check`.
Importing this module does not import torch; checking does.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxcheck._engine.doors.door import door
from jaxcheck._engine.doors.pipeline import run
from jaxcheck._engine.doors.rule import RuleReport, reference_gap, rule_options
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.arguments import argument_names
from jaxcheck._engine.system.prepare import prepare
from jaxcheck._engine.verdict.classify import epsilon
from jaxcheck.errors import (
    InputError,
    JaxcheckError,
    MissingDependencyError,
    ReimplementationError,
    user_code_error,
)
from jaxcheck.report import Report

__all__ = ["check"]


@door("jaxcheck.torch.check", Options)
def check(
    fn: Callable,
    *inputs: Any,
    reference: Callable | None = None,
    expected: str = "derivative",
    seed: int = 0,
    **options: Any,
) -> Report:
    """Checks a custom ``torch.autograd.Function``'s backward, input by input.

    A seeded random cotangent ``ct`` shaped like the output turns the check into a scalar one:
    the checked gradient is ∂(ct·fn)/∂inputs. Its opinions:

    - **backprop**: ``torch.autograd.grad((ct * fn(*inputs)).sum(), inputs)``, which runs the
      Function's backward, in the inputs' own dtype (a float32 backward is judged at float32
      tolerance, and re-run at float64 to tell rounding from a wrong formula);
    - **finite differences** of ``(ct * fn(*inputs)).sum()`` with the inputs in float64: the
      forward never runs the backward;
    - **autodiff**: torch autograd of ``(ct * reference(*inputs)).sum()`` in float64 when
      ``reference=`` (the same forward written with plain torch operations) is given; without
      it the check is two-way.

    Args:
        fn: the function to check, usually ``MyFunction.apply``.
        *inputs: its inputs. Floating-point tensors are checked (only those with
            ``requires_grad=True`` when any has it), each judged at its dtype's precision
            (float64, float32, float16, bfloat16; float8 tensors are refused); anything else
            is passed through. Every call gets fresh copies of the tensors, so a forward that
            writes into its inputs changes neither them nor what the reference sees.
        reference: the same function without the custom backward, ``reference(*inputs)``.
        expected: ``"derivative"``, or ``"surrogate"`` for a backward that is deliberately not
            the derivative (a straight-through estimator): reported, never failed.
        seed: a non-negative integer seeding the cotangent.
        **options: the keyword options of :func:`jaxcheck.check` (``method``, ``samples``,
            ``directions``, ``eps``, ``rtol``, ...), with the same meaning.

    Returns:
        A :class:`~jaxcheck.Report` whose leaves are named by the forward's parameters (``"x"``,
        ``"weight"``); ``backprop`` in it is the Function's backward.

    Raises:
        MissingDependencyError: torch is not installed.
        InputError: no floating-point tensor among the inputs, or a bad option.
        UserCodeError: the forward, the backward or the reference raised.
        ReimplementationError: the reference computes another function.

    Examples:
        >>> import pytest
        >>> torch = pytest.importorskip("torch")  # the example needs PyTorch
        >>> import jaxcheck.torch
        >>> class Cube(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         ctx.save_for_backward(x)
        ...         return x**3
        ...
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         (x,) = ctx.saved_tensors
        ...         return 2 * g * x**2  # should be 3 * g * x**2
        >>> x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
        >>> report = jaxcheck.torch.check(Cube.apply, x, reference=lambda x: x**3)
        >>> report.failing, round(report.leaves["x"].factor, 2)
        (['x'], 0.67)
    """
    torch = _torch()
    start = time.perf_counter()
    if not callable(fn):
        raise InputError(f"fn must be callable (e.g. MyFunction.apply), got {type(fn).__name__}.")
    opts = _options(reference, expected, seed, options)
    name = _function_name(torch, fn)
    inputs_ = _Inputs(torch, fn, inputs)
    out = _call(torch, fn, inputs_.rebuild(inputs_.params), f"{name}(*inputs)")
    cotangent = _Cotangent(torch, out, opts.seed)
    external = None
    if reference is not None:
        _compare_reference(torch, fn, reference, inputs_, name)
        external = _autograd(torch, reference, inputs_, cotangent, "reference", _as64(inputs_))
    system = prepare(
        _cost(torch, fn, inputs_, cotangent, name),
        lambda params: _autograd(torch, fn, inputs_, cotangent, f"{name} (backward)", params),
        inputs_.params,
        None,
        opts,
        reference=external,  # torch autograd of the reference: the autodiff opinion
    )
    report = run(system, opts, start=start, noun="backward")
    return RuleReport.from_report(
        report,
        subject=f"the backward of {name}",
        witness="torch autograd of the reference" if reference is not None else None,
        expected=expected,
        seed=opts.seed,
        static=inputs_.static,
        twin="torch",
        noun="backward",
    )


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise MissingDependencyError(
            "jaxcheck.torch needs PyTorch, which is not installed: pip install torch (or pip "
            'install "jaxcheck[torch]"). jaxcheck.check_rule checks custom rules of JAX '
            "functions without it."
        ) from err
    return torch


def _options(reference: Any, expected: Any, seed: int, options: dict[str, Any]) -> Options:
    # No JAX twin: the forward is torch code (finite differences call it, in float64).
    given = rule_options("jaxcheck.torch.check", reference, expected, seed, options)
    return dataclasses.replace(given, twin="none")


#: The tensor dtypes checked, as NumPy knows them (bfloat16 through ml_dtypes, which JAX ships).
_CHECKED = ("float64", "float32", "float16", "bfloat16")


def _np_dtype(torch_dtype: Any) -> np.dtype:
    """NumPy's dtype for a torch floating-point dtype (``torch.bfloat16`` included)."""
    name = str(torch_dtype).removeprefix("torch.")
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _to_numpy(torch: Any, t: Any) -> np.ndarray:
    """A tensor's values as a NumPy array of the same dtype (torch has no bfloat16 for NumPy)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(_np_dtype(t.dtype))
    return t.numpy()


def _from_numpy(torch: Any, a: Any) -> Any:
    """A new tensor holding a copy of ``a``, in its dtype."""
    a = np.array(a)
    if a.dtype == _np_dtype(torch.bfloat16):
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(a)


def _function_name(torch: Any, fn: Callable) -> str:
    cls = _function_class(torch, fn)
    if cls is not None:
        return f"{cls.__name__}.apply"
    name = getattr(fn, "__name__", None)
    return name if name and name != "<lambda>" else "fn"


def _function_class(torch: Any, fn: Callable) -> type[Any] | None:
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        return owner
    return None


def _names(torch: Any, fn: Callable, count: int) -> list[str]:
    """The forward's parameter names: ``forward(ctx, x, w)`` gives ``["x", "w"]``."""
    cls = _function_class(torch, fn)
    if cls is None:
        return argument_names(fn, count)
    parameters = list(inspect.signature(cls.forward).parameters.values())
    # A forward with a separate setup_context takes no ctx.
    with_ctx = getattr(cls, "setup_context", None) is getattr(
        torch.autograd.Function, "setup_context", None
    )
    if with_ctx and parameters:
        parameters = parameters[1:]

    def forward(*args: Any) -> None: ...

    forward.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return argument_names(forward, count)


class _Inputs:
    """The inputs split into checked float tensors (``params``, NumPy) and the rest."""

    def __init__(self, torch: Any, fn: Callable, inputs: Sequence[Any]) -> None:
        names = _names(torch, fn, len(inputs))
        floats = [
            isinstance(x, torch.Tensor) and x.is_floating_point() and not x.is_complex()
            for x in inputs
        ]
        if any(f and x.requires_grad for f, x in zip(floats, inputs)):
            floats = [f and x.requires_grad for f, x in zip(floats, inputs)]
        self.inputs, self.torch = list(inputs), torch
        self.positions = {n: i for n, i, f in zip(names, range(len(inputs)), floats) if f}
        self.static = [n for n, f in zip(names, floats) if not f]
        self.devices = {n: inputs[i].device for n, i in self.positions.items()}
        if not self.positions:
            raise InputError(
                f"none of the {len(inputs)} inputs is a floating-point tensor, so there is no "
                f"derivative to check."
            )
        for n, i in self.positions.items():
            kind = str(inputs[i].dtype).removeprefix("torch.")
            if kind not in _CHECKED:
                raise InputError(
                    f"input {n!r} is a torch.{kind} tensor; jaxcheck.torch checks "
                    f"{', '.join(_CHECKED)} tensors, each judged at its own precision.",
                    hint=f"pass {n}.to(torch.float32) (or float64), and the same to reference",
                )
        self.params = {n: _to_numpy(torch, inputs[i]).copy() for n, i in self.positions.items()}

    def rebuild(self, params: Any, *, grad: bool = False) -> tuple[list[Any], list[Any]]:
        """The inputs with the checked tensors made from ``params``; and those tensors."""
        # Tensors passed through are cloned: a forward that writes into its inputs changes
        # neither the user's tensors nor what the next call (the reference's) sees.
        out = [x.clone() if isinstance(x, self.torch.Tensor) else x for x in self.inputs]
        leaves = []
        for n, i in self.positions.items():
            t = _from_numpy(self.torch, params[n]).to(self.devices[n])
            if grad:
                t.requires_grad_(True)
            out[i] = t
            leaves.append(t)
        return out, leaves


def _call(torch: Any, fn: Callable, built: tuple[list[Any], list[Any]], what: str) -> Any:
    args, _ = built
    try:
        with torch.no_grad():
            return fn(*args)
    except JaxcheckError:
        raise
    except Exception as err:
        raise user_code_error(err, what) from err


def _outputs(torch: Any, out: Any) -> list[Any]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return list(out)
    raise InputError(f"fn returned {type(out).__name__}; expected a tensor or a tuple of tensors.")


class _Cotangent:
    """A seeded standard-normal cotangent per floating-point output, exact in its dtype."""

    def __init__(self, torch: Any, out: Any, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x7E1])
        self.values: list[np.ndarray | None] = []
        for o in _outputs(torch, out):
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                dtype = _np_dtype(o.dtype)
                ct = rng.standard_normal(tuple(o.shape)).astype(dtype).astype(np.float64)
                self.values.append(ct)
            else:
                self.values.append(None)
        if all(v is None for v in self.values):
            raise InputError("fn returned no floating-point tensor: nothing to differentiate.")

    def dot(self, torch: Any, out: Any) -> Any:
        """``sum(ct * out)`` as a float64 torch scalar (differentiable)."""
        total = None
        for ct, o in zip(self.values, _outputs(torch, out)):
            if ct is not None:
                term = (torch.from_numpy(ct).to(o.device) * o.double()).sum()
                total = term if total is None else total + term
        return total


def _cost(torch: Any, fn: Callable, inputs: _Inputs, cotangent: _Cotangent, name: str) -> Callable:
    """``params -> sum(ct * fn(*inputs))``, as a NumPy scalar of the output's dtype (so that
    finite differences know the precision the forward computed in)."""

    def cost(params: Any) -> Any:
        out = _call(torch, fn, inputs.rebuild(params), f"{name}(*inputs)")
        first = _outputs(torch, out)[0]
        dtype = _np_dtype(first.dtype)
        value = float(cotangent.dot(torch, out))
        floating = np.issubdtype(dtype, np.floating) or dtype == _np_dtype(torch.bfloat16)
        return np.asarray(value, dtype if floating else np.float64)

    return cost


def _autograd(
    torch: Any,
    fn: Callable,
    inputs: _Inputs,
    cotangent: _Cotangent,
    what: str,
    params: Any,
) -> dict[str, np.ndarray]:
    """``∂ sum(ct * fn(*inputs)) / ∂inputs`` by torch autograd, in the dtype of ``params``."""
    args, leaves = inputs.rebuild(params, grad=True)
    try:
        with torch.enable_grad():
            total = cotangent.dot(torch, fn(*args))
            grads = torch.autograd.grad(total, leaves, allow_unused=True)
    except JaxcheckError:
        raise
    except Exception as err:
        raise user_code_error(err, what) from err
    out = {}
    for n, leaf, g in zip(inputs.positions, leaves, grads):
        g = torch.zeros_like(leaf) if g is None else g
        out[n] = _to_numpy(torch, g)
    return out


def _as64(inputs: _Inputs) -> dict[str, np.ndarray]:
    return {n: np.asarray(v, np.float64) for n, v in inputs.params.items()}


def _compare_reference(
    torch: Any, fn: Callable, reference: Callable, inputs: _Inputs, name: str
) -> None:
    """Raises unless ``reference`` computes ``fn``'s values at the float64 inputs."""
    # Each gets inputs of its own: a forward that writes into its inputs in place must not
    # hand the reference the values it wrote.
    got = _outputs(torch, _call(torch, fn, inputs.rebuild(_as64(inputs)), f"{name}(*inputs)"))
    want = _outputs(
        torch, _call(torch, reference, inputs.rebuild(_as64(inputs)), "reference(*inputs)")
    )
    if len(got) != len(want) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(got, want)):
        raise InputError(
            f"reference(*inputs) returns shapes {[tuple(b.shape) for b in want]} but {name} "
            f"returns {[tuple(a.shape) for a in got]}; the reference must be the same forward "
            f"without the custom backward."
        )
    for k, (a, b) in enumerate(zip(got, want)):
        if not a.is_floating_point():
            continue
        a64, b64 = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
        u = max(
            epsilon(_np_dtype(a.dtype)),
            epsilon(_np_dtype(b.dtype)),
        )
        rtol, at = reference_gap(a64, b64, u)
        if at is not None:
            raise ReimplementationError(
                f"reference(*inputs) does not compute {name}: at output {k}{list(at)} the "
                f"function gives {a64[at]!r} and the reference {b64[at]!r} (float64 inputs; "
                f"tolerated {rtol:.0e} of the largest entry). Its autograd would be the "
                f"derivative of another function, so nothing was judged.",
                hint="pass as reference the same forward written with plain torch operations",
            )
