"""The three-way gradient check of a NumPy cost and its hand-written gradient.

:func:`check` returns a :class:`~jaxcheck.Report`; :func:`assert_gradients` raises on a wrong one.
Both prepare the system under test (:mod:`jaxcheck._engine.system.prepare`) and run the pipeline
(:mod:`jaxcheck._engine.doors.pipeline`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxcheck._engine.doors.door import door, passing
from jaxcheck._engine.doors.pipeline import run
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.order import in_user_order
from jaxcheck._engine.system.prepare import prepare
from jaxcheck.report import Report

__all__ = ["assert_gradients", "check"]


@door("check")
def check(
    cost: Callable,
    grad: Callable | None,
    params: Any,
    *,
    jax_cost: Callable | None = None,
    method: str = "full",
    samples: int | None = None,
    directions: int | None = None,
    eps: float | None = None,
    rtol: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    memory_budget: int | None = None,
    progress: bool | None = None,
    devices: Sequence[Any] | None = None,
    incremental: bool | None = None,
    twin: str = "auto",
    cache: bool | None = None,
    compile: bool | None = None,
    expected: Mapping[str, str] | None = None,
) -> Report:
    """Checks a hand-written gradient three ways and says who is wrong, leaf by leaf.

    The user's NumPy ``cost`` and ``grad`` are the system under test. A JAX twin of the cost
    (``jax_cost``, or ``jc.port(cost)``) gives two more opinions: central finite differences,
    evaluated for all perturbed parameter vectors at once (vmapped, in batches), and
    ``jax.grad``. All JAX work runs in float64 under ``jax.enable_x64(True)``; the global JAX
    config is left as found and the user's arrays are never modified.

    ``cost`` is called twice and ``grad`` twice at θ (two calls catch randomness such as
    unfrozen dropout), each once more at float64 copies of θ when the system is narrower than
    float64, and the twin is traced once. A two-way check (no twin) also calls ``cost`` at every
    perturbed point.

    A NumPy cost that computes in float32 inside (a ``.astype(np.float32)`` where the params
    flow, or a loss cast to float32) is judged at float32's precision against the same formula
    run in float64; ``report.precision`` says where and at which tolerance.

    Args:
        cost: ``params -> float`` in NumPy (or a tuple whose first item is the float). With
            ``grad=None``: ``params -> (loss, grads)``, as course solvers' ``loss`` functions
            return them.
        grad: ``params -> gradient``: a pytree shaped like params, or a dict keyed like params
            or by ``"d" + name`` (extra keys such as ``dZ1`` are ignored); ``None`` when ``cost``
            returns the gradient with the loss.
        params: a pytree (dicts, lists, tuples) of floating-point NumPy arrays.
        jax_cost: the JAX twin of ``cost``; ``None`` ports ``cost`` with :func:`jaxcheck.port`.
        method: ``"full"`` (every coordinate), ``"sample"`` (at most ``samples`` coordinates per
            leaf, stratified and seeded) or ``"directional"`` (``directions`` random unit
            directions per leaf). Backprop is compared with ``jax.grad`` on every entry in every
            method, and every entry where they disagree gets finite differences of its own, so
            the methods never contradict each other; they differ in how much of the twin's
            gradient finite differences confirm.
        samples: coordinates per leaf for ``method="sample"`` (default 64).
        directions: directions per leaf for ``method="directional"`` (default 8).
        eps: the finite-difference step. ``None`` picks ∛u·max(1, |θᵢ|) per coordinate; a
            float is used exactly as given.
        rtol: relative tolerance of backprop vs autodiff; ``None`` picks it from the epsilon of
            the less precise of each gradient leaf and its parameter (float64: 1e-7, float32:
            ≈1e-3, float16 and bfloat16: 1e-2).
        batch_size: perturbations per vmapped batch and device; ``None`` fits a batch into
            ``memory_budget``.
        seed: a non-negative integer seeding the sampled coordinates and random directions.
        memory_budget: bytes one batch may use per device; ``None``: a quarter of an
            accelerator's memory, or 64 MiB on a CPU.
        progress: show a progress bar over batches on stderr; ``None``: only on a terminal.
        devices: devices to split the perturbations over; ``None``: all of ``jax.devices()``.
        incremental: evaluate large leaves incrementally (one slab per perturbation);
            ``None``: from 64 entries up; ``False``: every perturbed point from scratch.
        twin: ``"auto"``: when ``cost`` cannot be ported and no ``jax_cost`` is given, judge
            two-way (backprop against finite differences of the NumPy cost) and say so;
            ``"required"``: raise the :class:`~jaxcheck.PortError` instead (for CI);
            ``"none"``: judge two-way without trying to port ``cost``.
        cache: keep compiled programs on disk, so a fresh process re-running the same check
            compiles nothing (``$JAXCHECK_CACHE_DIR``, else ``~/.cache/jaxcheck``); ``None``:
            on unless the environment sets ``JAXCHECK_NO_CACHE=1``.
        compile: ``True`` compiles one program for the check; ``None`` (default) evaluates
            small checks with NumPy instead, one call per operation of the traced twin, which
            takes less time than compiling them; ``False`` does so whatever the size.
        expected: leaf path → ``"surrogate"`` for a backprop that is a deliberate approximation
            (gradient clipping, truncated backprop through time): the leaf's difference and
            factor are still reported, its status is ``"declared"`` instead of failing, and it
            never fails the check. A leaf that agrees keeps its own status. A path that names no
            leaf is an :class:`~jaxcheck.InputError`.

    Returns:
        The :class:`~jaxcheck.Report`; ``report.ok`` is the verdict.

    Raises:
        InputError: bad params, gradient, cost or options (the message names the leaf).
        UserCodeError: cost, grad or jax_cost raised (the message names the line).
        NondeterminismError: cost or grad give different values for the same params.
        ReimplementationError: the twin's cost differs from the NumPy cost at θ.
        PortError: ``cost`` cannot be ported and ``twin="required"``.

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> X = np.array([[1.0, 2.0], [3.0, 4.0]])
        >>> params = {"w": np.array([0.5, -0.25])}
        >>> cost = lambda p: float(np.sum(np.tanh(X @ p["w"]) ** 2))
        >>> def grad(p):
        ...     t = np.tanh(X @ p["w"])
        ...     return {"w": X.T @ (2 * t * (1 - t**2))}
        >>> jc.check(cost, grad, params).ok
        True
        >>> jc.check(cost, lambda p: {"w": 3 * grad(p)["w"]}, params).failing
        ['w']
    """
    start = time.perf_counter()
    options = Options(
        method=method,
        samples=samples,
        directions=directions,
        eps=eps,
        rtol=rtol,
        batch_size=batch_size,
        seed=seed,
        memory_budget=memory_budget,
        progress=progress,
        devices=devices,
        incremental=incremental,
        twin=twin,
        cache=cache,
        compile=compile,
        expected=expected,
    )
    system = prepare(cost, grad, params, jax_cost, options)
    report = run(system, options, start=start)
    report.leaves = in_user_order(report.leaves, params)  # jax sorted dict keys; the user did not
    return report


@door("assert_gradients", check)
def assert_gradients(cost: Callable, grad: Callable | None, params: Any, **options: Any) -> Report:
    """Like :func:`check`, but raises :class:`jaxcheck.GradientError` when backprop is wrong.

    Args:
        cost: ``params -> float`` in NumPy (``params -> (loss, grads)`` with ``grad=None``).
        grad: ``params -> gradient`` in NumPy, or None.
        params: a pytree of float arrays.
        **options: the keyword options of :func:`check`.

    Returns:
        The :class:`~jaxcheck.Report` when the gradient is correct.

    Raises:
        GradientError: an ``AssertionError`` whose message is the report's table; also for an
            inconclusive check, which verifies nothing.

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> params = {"w": np.array([1.0, 2.0])}
        >>> cost = lambda p: float(np.sum(p["w"] ** 3))
        >>> jc.assert_gradients(cost, lambda p: {"w": 3 * p["w"] ** 2}, params).ok
        True
        >>> try:
        ...     jc.assert_gradients(cost, lambda p: {"w": 2 * p["w"]}, params)
        ... except AssertionError as err:
        ...     print(type(err).__name__, err.report.failing)
        GradientError ['w']
    """
    return passing(check(cost, grad, params, **options))
