"""The three-way gradient check: plan → evaluate → judge → report.

:func:`check` returns a :class:`~jaxcheck.Report`; :func:`assert_gradients` raises on a wrong one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from . import verdict as vd
from .errors import GradientError, InputError, JaxcheckError, PortError
from .finite_differences import Evaluation, evaluate
from .judge import Evidence, classes_of, collect, leaf_status, leaf_tolerance, refinement
from .kinks import joint_kink_test
from .numpy_differences import evaluate_numpy
from .options import Options
from .plan import Group, plan
from .report import Report
from .summary import leaf_report
from .system import System, check_twin, prepare
from .verdict import Status

__all__ = ["assert_gradients", "check", "run"]


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
            accelerator's memory, or 512 MiB on a CPU.
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
        devices=None if devices is None else tuple(devices),
        incremental=incremental,
        twin=twin,
        cache=cache,
    )
    system = prepare(cost, grad, params, jax_cost, options)
    return run(system, options, start=start)


class _Evaluator:
    """Evaluates probe groups on the twin (batched) or, two-way, on the NumPy cost."""

    def __init__(self, system: System, options: Options) -> None:
        self.system, self.options = system, options
        self.checked = False

    def __call__(
        self, groups: Sequence[Group], *, with_gradient: bool, progress: bool | None = False
    ) -> tuple[float, list[np.ndarray] | None, list[Evaluation]]:
        system, o = self.system, self.options
        first = not self.checked
        if system.twin is None:
            value, evals = evaluate_numpy(
                system.cost_fn,
                system.leaves,
                system.leaves64,
                groups,
                backprop=system.backprop,
                progress=progress,
            )
            return value, None, evals
        try:
            value, terms, gradient, evals = evaluate(
                system.twin,
                system.leaves64,
                [g.probe for g in groups],
                backprop=system.backprop,
                with_gradient=with_gradient,
                batch_size=o.batch_size,
                memory_budget=o.memory_budget,
                progress=progress,
                devices=o.devices,
                incremental=o.incremental,
                cache=o.cache,
            )
        except JaxcheckError:
            raise
        except jax.errors.JaxRuntimeError:
            raise
        except Exception as err:
            if system.twin.kind == "ported" and o.twin == "auto":
                # A twin that runs at θ but not under vmap/grad: judge two-way instead.
                system.twin_error = PortError(
                    f"the ported twin ran at params but failed under jax.vmap or jax.grad: "
                    f"{type(err).__name__}: {err}"
                )
                system.twin = None
                return self(groups, with_gradient=with_gradient, progress=progress)
            raise InputError(
                f"the JAX twin ({system.twin_kind}) ran at params but failed under jax.vmap or "
                f"jax.grad: {type(err).__name__}: {err}. jax_cost must be a pure jax.numpy "
                f"function of params that vmap and grad can trace (no Python control flow on "
                f"values, no callbacks into NumPy).",
                hint="pass a jax_cost that jax.vmap and jax.grad can trace",
            ) from err
        if first:
            # The twin must compute the NumPy cost, or every opinion from it is void.
            check_twin(system, value, terms)
            self.checked = True
        return value, gradient, evals


def run(system: System, options: Options, *, start: float | None = None) -> Report:
    """Plans, evaluates and judges a prepared system under test; returns the report."""
    start = time.perf_counter() if start is None else start
    leaves, paths = system.leaves64, system.leaves.paths
    evaluator = _Evaluator(system, options)
    with jax.enable_x64(True):
        groups = plan(leaves, paths, options)
        value, gradient, evals = evaluator(groups, with_gradient=True, progress=options.progress)
        if gradient is None:
            gradient = system.reference  # an autodiff opinion from outside JAX, if any
        if not system.autodiff:
            gradient = None  # the twin's jax.grad is the rule under test: not a witness
        evidence = [Evidence(np.zeros(0, np.int64), None, np.zeros(0, bool)) for _ in leaves]
        collect(groups, evals, value, system.backprop, gradient, evidence)
        tolerances = [
            leaf_tolerance(
                _judged_dtype(system, i),
                leaves[i],
                None if gradient is None else gradient[i],
                value,
                options.eps,
                options.rtol,
            )
            for i in range(len(leaves))
        ]
        more = refinement(
            evidence,
            system.backprop,
            gradient,
            tolerances,
            leaves,
            paths,
            options.eps,
            group_small=options.incremental is not True,
        )
        if more:
            _, _, evals = evaluator(more, with_gradient=False)
            collect(more, evals, value, system.backprop, gradient, evidence)
        judged = [
            _classes(system, i, gradient, evidence[i], tolerances[i]) for i in range(len(leaves))
        ]
        _joint_kinks(system, judged, evidence, tolerances, value, options, evaluator)
    reports = {}
    for i, path in enumerate(paths):
        classes, direction_classes, bp_used = judged[i]
        status = leaf_status(classes, direction_classes)
        status, rounding = _precision(system, i, gradient, status, tolerances[i])
        reports[path] = leaf_report(
            path,
            leaves[i],
            system.backprop[i],
            None if gradient is None else gradient[i],
            classes,
            direction_classes,
            status,
            evidence[i],
            tolerances[i],
            options.method,
            rounding_difference=rounding,
        )
    return _report(system, options, reports, evidence, gradient, start)


def _judged_dtype(system: System, i: int) -> np.dtype:
    return max(
        np.dtype(system.backprop[i].dtype), np.dtype(system.leaves.values[i].dtype), key=vd.epsilon
    )


def _classes(
    system: System, i: int, gradient: list[np.ndarray] | None, e: Evidence, tol: vd.Tolerance
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    bp = system.backprop[i].astype(np.float64).reshape(-1)
    ad = None if gradient is None else gradient[i].reshape(-1)
    classes, direction_classes = classes_of(e, bp, ad, tol)
    return classes, direction_classes, bp


def _joint_kinks(
    system: System,
    judged: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    evidence: list[Evidence],
    tolerances: list[vd.Tolerance],
    value: float,
    options: Options,
    evaluator: _Evaluator,
) -> None:
    """Tests the subgradients accepted at kinks jointly; failing clusters become BACKPROP."""
    joint_kink_test(
        lambda groups: evaluator(groups, with_gradient=False)[2],
        system.leaves64,
        system.backprop,
        [c for c, _, _ in judged],
        evidence,
        tolerances,
        value,
        options.seed,
    )


def _precision(
    system: System,
    i: int,
    gradient: list[np.ndarray] | None,
    status: Status,
    tol: vd.Tolerance,
) -> tuple[Status, float | None]:
    """The fourth opinion: a narrow backprop re-run at float64 separates rounding from formula.

    A leaf judged wrong (or inconclusive) in its own dtype whose float64 re-run agrees with
    autodiff has a correct formula: rounding in the user's low-precision arrays explains the
    difference, and the leaf passes with status ``rounding``.
    """
    if status.passes or system.backprop64 is None or gradient is None:
        return status, None
    bp = system.backprop[i].astype(np.float64).reshape(-1)
    bp64 = system.backprop64[i].astype(np.float64).reshape(-1)
    ad = gradient[i].reshape(-1)
    if not np.all(np.isfinite(bp)):
        return status, None
    # float64's tolerance, or one rounding of the re-run's own dtype if it was cast back at the
    # end (|x − fl(x)| ≤ u/2·|x|, which is u/4 of |a| + |b| in the tolerance's terms).
    narrow = vd.epsilon(np.dtype(system.backprop64[i].dtype))
    tol64 = vd.Tolerance(
        rtol=max(vd.rtol_for(np.dtype(np.float64)), 0.3 * narrow),
        atol=tol.atol,
        fd_rtol=tol.fd_rtol,
        fd_atol=tol.fd_atol,
        scale=tol.scale,
    )
    if np.all(vd.backprop_agrees(bp64, ad, tol64)):
        return Status.ROUNDING, vd.relative_difference(bp, ad)
    return status, None


def _report(
    system: System,
    options: Options,
    reports: dict,
    evidence: list[Evidence],
    gradient: list[np.ndarray] | None,
    start: float,
) -> Report:
    def probed(field: str) -> np.ndarray:
        parts = []
        for e in evidence:
            for op in (e.op, e.directions):
                if op is not None:
                    parts.append(getattr(op, field))
        return np.concatenate(parts) if parts else np.empty(0)

    bp_probe, fd_probe = probed("backprop"), probed("finite")
    bp_all = np.concatenate([b.astype(np.float64).ravel() for b in system.backprop])
    if gradient is None:
        diff_ad = diff_fd_ad = float("nan")
    else:
        ad_all = np.concatenate([g.ravel() for g in gradient])
        diff_ad = vd.relative_difference(bp_all, ad_all)
        diff_fd_ad = vd.relative_difference(fd_probe, probed("autodiff"))
    ok = all(leaf.status.passes for leaf in reports.values())
    return Report(
        ok=ok,
        leaves=reports,
        difference_fd=vd.relative_difference(bp_probe, fd_probe),
        difference_autodiff=diff_ad,
        difference_fd_autodiff=diff_fd_ad,
        cost_mismatch=system.cost_mismatch,
        cost=system.cost,
        method=options.method,
        dtype=str(system.dtype),
        twin=system.twin_kind,
        seconds=time.perf_counter() - start,
        twin_error=None if system.twin_error is None else str(system.twin_error),
        autodiff=gradient is not None,
    )


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
    report = check(cost, grad, params, **options)
    if not report.ok:
        raise GradientError(str(report), report)
    return report
