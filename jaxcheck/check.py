"""The three-way gradient check: backprop vs finite differences vs ``jax.grad``, per leaf.

:func:`check` returns a :class:`~jaxcheck.Report`; :func:`assert_gradients` raises on a wrong one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from . import finite_differences as fdiff
from . import verdict as vd
from ._tree import Leaves, flatten_params, match_gradient, scalar_cost
from .errors import (
    GradientError,
    InputError,
    JaxcheckError,
    NondeterminismError,
    ReimplementationError,
)
from .report import LeafReport, Report

__all__ = ["METHODS", "assert_gradients", "check", "prepare", "default_step"]

#: The finite-difference methods ``check`` accepts.
METHODS = ("full", "sample", "directional")
#: Coordinates per leaf in ``method="sample"`` when ``samples`` is not given.
DEFAULT_SAMPLES = 64
#: Random directions per leaf in ``method="directional"`` when ``directions`` is not given.
DEFAULT_DIRECTIONS = 8
#: Most probes per leaf re-evaluated at step 2h to estimate truncation error and find kinks.
MAX_REFINE = 4096
#: Relative difference of the cost between two identical NumPy calls that counts as randomness.
NONDETERMINISM_RTOL = 1e-12
#: Relative mismatch of the NumPy cost and the JAX twin's cost tolerated, by itemsize.
COST_RTOL_BY_ITEMSIZE = {8: 1e-9, 4: 1e-4, 2: 1e-2}

_U64 = float(np.finfo(np.float64).eps)


def default_step(theta: np.ndarray) -> np.ndarray:
    """The default central-difference step per coordinate: ∛u · max(1, |θᵢ|) in float64.

    The cube root of machine epsilon balances truncation error (∝ h²) against rounding error
    (∝ u/h) of a central difference.

    Examples:
        >>> import numpy as np
        >>> default_step(np.array([0.5, -10.0]))
        array([6.05545445e-06, 6.05545445e-05])
    """
    return np.cbrt(_U64) * np.maximum(1.0, np.abs(np.asarray(theta, np.float64)))


@dataclasses.dataclass
class Prepared:
    """The system under test evaluated at θ, validated, and its JAX twin (internal)."""

    leaves: Leaves
    leaves64: list[np.ndarray]
    backprop: list[np.ndarray]
    cost: float
    twin: Callable
    twin_kind: str
    twin_cost: float
    cost_mismatch: float
    dtype: np.dtype


def _options(
    method: str,
    samples: int | None,
    directions: int | None,
    eps: float | None,
    rtol: float | None,
    batch_size: int | None,
    memory_budget: int | None,
) -> None:
    if method not in METHODS:
        raise InputError(f"method={method!r} is not one of {METHODS}.")

    def positive_int(name: str, value: Any) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
        ):
            raise InputError(f"{name}={value!r}: expected a positive integer or None.")

    positive_int("samples", samples)
    positive_int("directions", directions)
    positive_int("batch_size", batch_size)
    positive_int("memory_budget", memory_budget)
    if samples is not None and method != "sample":
        raise InputError(f"samples={samples} only applies to method='sample' (got {method!r}).")
    if directions is not None and method != "directional":
        raise InputError(
            f"directions={directions} only applies to method='directional' (got {method!r})."
        )
    for name, value in (("eps", eps), ("rtol", rtol)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise InputError(f"{name}={value!r}: expected a positive float or None.")
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{name}={value!r}: expected a positive, finite float or None.")


def _call_user(fn: Callable, params: Any, name: str) -> Any:
    try:
        return fn(params)
    except JaxcheckError:
        raise
    except Exception as err:
        text = str(err).rstrip(".")
        if isinstance(err, TypeError) and "positional argument" in text:
            advice = (
                f"jaxcheck calls {name} with params alone; wrap the data in a closure, e.g. "
                f"lambda p: {name}(X, Y, p)."
            )
        elif isinstance(err, KeyError) and isinstance(params, dict):
            advice = (
                f"params has the keys {sorted(map(str, params))}; {name} looked up "
                f"{err.args[0]!r}, which it does not hold."
            )
        else:
            advice = f"The error is in {name} itself; its traceback is chained above."
        raise InputError(f"{name}(params) raised {type(err).__name__}: {text}. {advice}") from err


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.abs(a - b) <= NONDETERMINISM_RTOL * np.maximum(np.abs(a), np.abs(b))
    return bool(np.all(close | both_nan | (a == b)))


_FREEZE_ADVICE = (
    "A gradient check needs cost and grad to be pure functions of params. If the forward pass "
    "draws random numbers (dropout, noise, sampling), draw them once outside the cost and close "
    "over them, e.g. masks = [rng.random(A.shape) < keep_prob ...]; cost = lambda p: "
    "forward(X, Y, p, masks), grad = lambda p: backward(X, Y, p, masks). With frozen masks the "
    "check is valid; switch dropout back on for training."
)


def prepare(
    cost: Callable,
    grad: Callable,
    params: Any,
    *,
    jax_cost: Callable | None = None,
) -> Prepared:
    """Validates the inputs, runs the system under test at θ and obtains the twin (internal).

    Raises:
        InputError, NondeterminismError, ReimplementationError, PortError: see :func:`check`.
    """
    for name, fn in (("cost", cost), ("grad", grad)):
        if not callable(fn):
            raise InputError(f"{name} must be callable params -> ..., got {type(fn).__name__}.")
    if jax_cost is not None and not callable(jax_cost):
        raise InputError(f"jax_cost must be callable or None, got {type(jax_cost).__name__}.")
    leaves = flatten_params(params)

    value = scalar_cost(_call_user(cost, leaves.fresh(), "cost"))
    again = scalar_cost(_call_user(cost, leaves.fresh(), "cost"))
    if not _same(np.array(value), np.array(again)):
        raise NondeterminismError(
            f"cost(params) returned {value!r} and then {again!r} for the same params. "
            + _FREEZE_ADVICE
        )
    backprop = match_gradient(_call_user(grad, leaves.fresh(), "grad"), leaves)
    second = match_gradient(_call_user(grad, leaves.fresh(), "grad"), leaves)
    for path, a, b in zip(leaves.paths, backprop, second):
        if not _same(a, b):
            raise NondeterminismError(
                f"grad(params) returned different values for leaf {path!r} on two calls with "
                f"the same params. " + _FREEZE_ADVICE
            )
    dtype = min(
        [np.dtype(v.dtype) for v in leaves.values] + [np.dtype(g.dtype) for g in backprop],
        key=lambda d: d.itemsize,
    )

    if jax_cost is None:
        from .port import port

        twin, twin_kind = port(cost), "ported"
    else:
        twin, twin_kind = jax_cost, "given"
    leaves64 = [v.astype(np.float64) for v in leaves.values]
    with jax.enable_x64(True):
        twin_cost = _twin_value(twin, twin_kind, leaves, leaves64)
    denom = max(abs(value), abs(twin_cost))
    mismatch = 0.0 if denom == 0 else abs(value - twin_cost) / denom
    limit = COST_RTOL_BY_ITEMSIZE.get(dtype.itemsize, 1e-2)
    if not mismatch <= limit:
        raise ReimplementationError(
            f"the JAX twin ({twin_kind}) does not compute the NumPy cost: cost(params) = "
            f"{value!r} but jax_cost(params) = {twin_cost!r} in float64 (relative mismatch "
            f"{mismatch:.2e}, tolerated {limit:.0e} for a {dtype} system under test). "
            f"Every gradient opinion from the twin would be about another function, so nothing "
            f"was judged. Make jax_cost compute the same cost as cost."
        )
    return Prepared(leaves, leaves64, backprop, value, twin, twin_kind, twin_cost, mismatch, dtype)


@functools.lru_cache(maxsize=64)
def _jitted_value(twin: Callable) -> Callable:
    return jax.jit(lambda params: fdiff.scalar_of(twin(params)))


def _twin_value(twin: Callable, kind: str, leaves: Leaves, leaves64: list[np.ndarray]) -> float:
    params = leaves.unflatten(list(leaves64))
    try:
        out = _jitted_value(twin)(params)
    except JaxcheckError:
        raise
    except Exception as err:
        raise InputError(
            f"jax_cost(params) raised {type(err).__name__}: {err}. The JAX twin must take the "
            f"params pytree (as jax arrays) and return the scalar cost."
        ) from err
    result = float(out)
    if not np.isfinite(result):
        raise ReimplementationError(
            f"the JAX twin ({kind}) returned {result} at params while the NumPy cost is finite."
        )
    return result


def _coordinate_probe(
    index: int, theta: np.ndarray, coords: np.ndarray, eps: float | None, scale: float = 1.0
) -> fdiff.LeafProbe:
    x = theta.reshape(-1)[coords]
    h = scale * (default_step(x) if eps is None else np.full(x.shape, float(eps)))
    up = (x + h) - x
    down = x - (x - h)
    return fdiff.LeafProbe(index, "coordinate", len(coords), coords, up, down)


def _direction_step(theta: np.ndarray, eps: float | None) -> float:
    if eps is not None:
        return float(eps)
    rms = float(np.sqrt(np.mean(np.square(theta)))) if theta.size else 0.0
    return float(np.cbrt(_U64) * max(1.0, rms))


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    edges = np.linspace(0, n, k + 1).astype(np.int64)
    return np.sort(rng.integers(edges[:-1], edges[1:]))


def _bucket(n: int) -> int:
    return max(8, 1 << (int(n) - 1).bit_length())


def _take_padded(a: np.ndarray, idx: np.ndarray, size: int) -> np.ndarray:
    out = a[idx]
    if size > len(out):
        out = np.concatenate([out, np.repeat(out[:1], size - len(out), axis=0)])
    return out


@dataclasses.dataclass
class _LeafWork:
    index: int
    probe: fdiff.LeafProbe
    evaluation: fdiff.Evaluation | None = None
    opinions: vd.Opinions | None = None


def check(
    cost: Callable,
    grad: Callable,
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
) -> Report:
    """Checks a hand-written gradient three ways and says who is wrong, leaf by leaf.

    The user's NumPy ``cost`` and ``grad`` are the system under test. A JAX twin of the cost
    (``jax_cost``, or ``jc.port(cost)``) gives two more opinions: central finite differences,
    evaluated for all perturbed parameter vectors at once (vmapped per leaf, in batches), and
    ``jax.grad``. All JAX work runs in float64 under ``jax.enable_x64(True)``; the global JAX
    config is left as found and the user's arrays are never modified.

    Args:
        cost: ``params -> float`` in NumPy (or a tuple whose first item is the float).
        grad: ``params -> gradient``: a pytree shaped like params, or a dict keyed like params
            or by ``"d" + name`` (extra keys such as ``dZ1`` are ignored).
        params: a pytree (dicts, lists, tuples) of floating-point NumPy arrays.
        jax_cost: the JAX twin of ``cost``; ``None`` ports ``cost`` with :func:`jaxcheck.port`.
        method: ``"full"`` (every coordinate), ``"sample"`` (at most ``samples`` coordinates per
            leaf, stratified and seeded) or ``"directional"`` (``directions`` random unit
            directions per leaf). Backprop is compared with ``jax.grad`` on every entry in
            every method; finite differences check the twin's gradient on the probes.
        samples: coordinates per leaf for ``method="sample"`` (default 64).
        directions: directions per leaf for ``method="directional"`` (default 8).
        eps: the finite-difference step. ``None`` picks ∛u·max(1, |θᵢ|) per coordinate; a
            float is used exactly as given.
        rtol: relative tolerance of backprop vs autodiff; ``None`` picks it from the dtype of
            the backprop gradient or of its parameter, whichever is less precise (float64:
            1e-7, float32: 1e-3, float16: 5e-2).
        batch_size: perturbations per vmapped batch and device; ``None`` fits a batch into
            ``memory_budget``.
        seed: seeds the sampled coordinates and the random directions.
        memory_budget: bytes one batch may use per device; ``None``: a quarter of an
            accelerator's memory, or 512 MiB on a CPU.
        progress: show a progress bar over batches on stderr; ``None``: only on a terminal.
        devices: devices to split the perturbations over; ``None``: all of ``jax.devices()``.

    Returns:
        The :class:`~jaxcheck.Report`; ``report.ok`` is the verdict.

    Raises:
        InputError: bad params, gradient, cost or options (the message names the leaf).
        NondeterminismError: cost or grad give different values for the same params.
        ReimplementationError: the twin's cost differs from the NumPy cost at θ.
        PortError: ``jax_cost`` was not given and ``cost`` cannot be ported.

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
    _options(method, samples, directions, eps, rtol, batch_size, memory_budget)
    prep = prepare(cost, grad, params, jax_cost=jax_cost)
    leaves = prep.leaves
    with jax.enable_x64(True):
        works = _probes(prep, method, samples, directions, eps, seed)
        try:
            value, gradient, evals = fdiff.evaluate(
                prep.twin,
                leaves.treedef,
                prep.leaves64,
                [w.probe for w in works],
                backprop=prep.backprop,
                batch_size=batch_size,
                memory_budget=memory_budget,
                progress=progress,
                devices=devices,
            )
        except JaxcheckError:
            raise
        except Exception as err:
            raise InputError(
                f"the JAX twin ({prep.twin_kind}) ran at params but failed under jax.vmap or "
                f"jax.grad: {type(err).__name__}: {err}. jax_cost must be a pure jax.numpy "
                f"function of params that vmap and grad can trace (no Python control flow on "
                f"values, no callbacks into NumPy)."
            ) from err
        probed = [w for w in works if w.probe.count > 0]
        for work, ev in zip(probed, evals):
            work.evaluation = ev
        scale = max((float(np.max(np.abs(g))) for g in gradient if g.size), default=0.0)
        # A leaf is judged at the lower precision of the parameter and its gradient: a float64
        # gradient computed from float32 parameters is only as good as float32.
        tolerances = [
            vd.tolerance_for(
                min(np.dtype(b.dtype), np.dtype(v.dtype), key=lambda d: d.itemsize),
                scale if np.isfinite(scale) else 0.0,
                rtol,
            )
            for b, v in zip(prep.backprop, leaves.values)
        ]
        for work in probed:
            work.opinions = _opinions(work, value, gradient, prep.backprop)
        _refine(prep, probed, value, tolerances, batch_size, memory_budget, devices)
    reports = {}
    for i, path in enumerate(leaves.paths):
        work = next((w for w in probed if w.index == i), None)
        reports[path] = _leaf_report(path, prep, i, gradient[i], tolerances[i], work, method)
    bp_all = [b.astype(np.float64).ravel() for b in prep.backprop]
    ad_all = [g.ravel() for g in gradient]
    bp_probe = np.concatenate([w.opinions.backprop for w in probed] or [np.empty(0)])
    fd_probe = np.concatenate([w.opinions.finite for w in probed] or [np.empty(0)])
    ad_probe = np.concatenate([w.opinions.autodiff for w in probed] or [np.empty(0)])
    ok = not any(r.status == "backprop" for r in reports.values())
    return Report(
        ok=ok,
        leaves=reports,
        difference_fd=vd.relative_difference(bp_probe, fd_probe),
        difference_autodiff=vd.relative_difference(np.concatenate(bp_all), np.concatenate(ad_all)),
        difference_fd_autodiff=vd.relative_difference(fd_probe, ad_probe),
        cost_mismatch=prep.cost_mismatch,
        cost=prep.cost,
        method=method,
        dtype=str(prep.dtype),
        twin=prep.twin_kind,
        seconds=time.perf_counter() - start,
    )


def _probes(
    prep: Prepared,
    method: str,
    samples: int | None,
    directions: int | None,
    eps: float | None,
    seed: int,
) -> list[_LeafWork]:
    works = []
    for i, theta in enumerate(prep.leaves64):
        n = theta.size
        if method == "directional":
            count = directions or DEFAULT_DIRECTIONS
            step = _direction_step(theta, eps)
            probe = fdiff.LeafProbe(
                i, "direction", count if n else 0, ids=np.arange(count), step=step, seed=seed + i
            )
        else:
            if method == "full":
                coords = np.arange(n)
            else:
                rng = np.random.default_rng([seed, i])
                coords = _sample(n, samples or DEFAULT_SAMPLES, rng)
            probe = _coordinate_probe(i, theta, coords, eps)
        works.append(_LeafWork(i, probe))
    return works


def _opinions(
    work: _LeafWork, value: float, gradient: list[np.ndarray], backprop: list[np.ndarray]
) -> vd.Opinions:
    ev, probe = work.evaluation, work.probe
    h_total = ev.step_up + ev.step_down
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        finite = (ev.up - ev.down) / h_total
        slope_up = (ev.up - value) / ev.step_up
        slope_down = (value - ev.down) / ev.step_down
    if probe.kind == "coordinate":
        bp = backprop[work.index].astype(np.float64).reshape(-1)[probe.coords]
        ad = gradient[work.index].reshape(-1)[probe.coords]
    else:
        bp, ad = ev.projected_backprop, ev.projected_autodiff
    rounding = vd.rounding_error(ev.up, ev.down, h_total)
    n = probe.count
    return vd.Opinions(
        backprop=bp,
        autodiff=ad,
        finite=finite,
        slope_up=slope_up,
        slope_down=slope_down,
        error=rounding.copy(),
        rounding=rounding,
        slope_error=4 * rounding,
        kink=np.zeros(n, bool),
        refined=np.zeros(n, bool),
    )


def _refine(
    prep: Prepared,
    probed: list[_LeafWork],
    value: float,
    tolerances: list[vd.Tolerance],
    batch_size: int | None,
    memory_budget: int | None,
    devices: Sequence[Any] | None,
) -> None:
    """Re-evaluates suspicious probes at step 2h: truncation error, Richardson, kinks."""
    plans = []
    for work in probed:
        op = work.opinions
        picked = np.flatnonzero(vd.suspicious(op, tolerances[work.index]))
        if picked.size == 0:
            continue
        if picked.size > MAX_REFINE:
            excess = np.abs(op.finite - op.autodiff) + np.abs(op.backprop - op.autodiff)
            excess = np.nan_to_num(excess, nan=np.inf)
            picked = np.sort(picked[np.argsort(-excess[picked])[:MAX_REFINE]])
        size = _bucket(picked.size)
        probe = work.probe
        if probe.kind == "coordinate":
            coords = _take_padded(probe.coords, picked, size)
            theta = prep.leaves64[work.index]
            x = theta.reshape(-1)[coords]
            # The doubled step: (θ + h) − θ plus θ − (θ − h) is 2h as represented.
            h = work.evaluation.step_up + work.evaluation.step_down
            h = _take_padded(h, picked, size)
            new = fdiff.LeafProbe(work.index, "coordinate", size, coords, (x + h) - x, x - (x - h))
        else:
            ids = _take_padded(probe.ids, picked, size)
            new = fdiff.LeafProbe(
                work.index, "direction", size, ids=ids, step=2 * probe.step, seed=probe.seed
            )
        plans.append((work, picked, new))
    if not plans:
        return
    _, _, evals = fdiff.evaluate(
        prep.twin,
        prep.leaves.treedef,
        prep.leaves64,
        [new for _, _, new in plans],
        backprop=prep.backprop,
        with_gradient=False,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=False,
        devices=devices,
    )
    for (work, picked, _), ev in zip(plans, evals):
        k = picked.size
        up, down = ev.up[:k], ev.down[:k]
        s_up, s_down = ev.step_up[:k], ev.step_down[:k]
        op = work.opinions
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            finite_2h = (up - down) / (s_up + s_down)
            slope_up_2h = (up - value) / s_up
            slope_down_2h = (value - down) / s_down
            truncation = np.abs(finite_2h - op.finite[picked]) / 3
        rounding_2h = vd.rounding_error(up, down, s_up + s_down)
        op.error[picked] = op.rounding[picked] + truncation + rounding_2h
        op.kink[picked] = vd.kinks(
            op.slope_up[picked],
            op.slope_down[picked],
            slope_up_2h,
            slope_down_2h,
            op.rounding[picked],
        )
        op.slope_error[picked] = (
            np.maximum(
                np.abs(slope_up_2h - op.slope_up[picked]),
                np.abs(slope_down_2h - op.slope_down[picked]),
            )
            + 4 * op.rounding[picked]
            + 2 * rounding_2h
        )
        op.refined[picked] = True


def _index(shape: tuple[int, ...], flat: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(flat), shape)) if shape else ()


def _leaf_report(
    path: str,
    prep: Prepared,
    i: int,
    autodiff: np.ndarray,
    tol: vd.Tolerance,
    work: _LeafWork | None,
    method: str,
) -> LeafReport:
    theta = prep.leaves64[i]
    shape = theta.shape
    bp = prep.backprop[i].astype(np.float64).ravel()
    ad = autodiff.ravel()
    n = bp.size
    agree = vd.backprop_agrees(bp, ad, tol)
    classes = np.where(agree, vd.OK, vd.BACKPROP).astype(np.int8)
    kinks: list[tuple[int, ...]] = []
    op = work.opinions if work is not None else None
    probe_classes = None
    if op is not None:
        probe_classes = vd.classify(op, tol)
        if work.probe.kind == "coordinate":
            classes[work.probe.coords] = probe_classes
            kinks = [_index(shape, c) for c in work.probe.coords[op.kink]]
        elif not agree.all():
            # Directions cannot say which entry sits on a kink; if every direction that
            # disagrees is explained by a kink, the disagreeing entries are kinks too.
            directional_bad = probe_classes == vd.BACKPROP
            if (probe_classes == vd.KINK).any() and not directional_bad.any():
                classes[~agree] = vd.KINK
        if work.probe.kind == "direction":
            classes = np.minimum(classes, probe_classes.min(initial=vd.OK))
    status_code = int(classes.min(initial=vd.OK))
    status = vd.STATUSES[status_code]
    with np.errstate(invalid="ignore", over="ignore"):
        excess = np.abs(bp - ad) - (tol.rtol * (np.abs(bp) + np.abs(ad)) + tol.atol)
    excess = np.nan_to_num(excess, nan=np.inf, posinf=np.inf)
    worst = int(np.argmax(excess)) if n else None
    ad_norm2 = float(ad @ ad) if n else 0.0
    ratio = None
    if ad_norm2 > 0 and np.isfinite(ad_norm2) and np.all(np.isfinite(bp)):
        ratio = float(bp @ ad) / ad_norm2
    if op is not None:
        finite, ad_p, bp_p = op.finite, op.autodiff, op.backprop
        diff_fd = vd.relative_difference(bp_p, finite)
        diff_fd_ad = vd.relative_difference(finite, ad_p)
        denom = np.linalg.norm(finite) + np.linalg.norm(ad_p)
        fd_error = float(np.linalg.norm(op.error) / denom) if denom > 0 else 0.0
        checked = work.probe.count
        step = (
            float(np.max(work.evaluation.step_up, initial=0.0))
            if work.probe.kind == "coordinate"
            else work.probe.step
        )
        batch = work.evaluation.batch_size
    else:
        diff_fd = diff_fd_ad = fd_error = 0.0
        checked, step, batch = 0, 0.0, 0
    leaf = LeafReport(
        path=path,
        shape=tuple(shape),
        dtype=str(prep.backprop[i].dtype),
        status=status,
        ok=status != "backprop",
        difference_fd=diff_fd,
        difference_autodiff=vd.relative_difference(bp, ad),
        difference_fd_autodiff=diff_fd_ad,
        fd_error=fd_error,
        ratio=ratio,
        worst_index=None if worst is None else _index(shape, worst),
        worst_backprop=None if worst is None else float(bp[worst]),
        worst_autodiff=None if worst is None else float(ad[worst]),
        kinks=kinks,
        wrong=int(np.sum(classes == vd.BACKPROP)),
        checked=checked,
        size=n,
        method=method,
        eps=step,
        tolerance=tol.rtol,
        batch_size=batch,
    )
    leaf.message = _message(leaf, bp, ad, classes, op, probe_classes, work)
    return leaf


def _message(
    leaf: LeafReport,
    bp: np.ndarray,
    ad: np.ndarray,
    classes: np.ndarray,
    op: vd.Opinions | None,
    probe_classes: np.ndarray | None,
    work: _LeafWork | None,
) -> str:
    path, n = leaf.path, leaf.size
    if leaf.status == "backprop":
        bad = int(np.sum(~np.isfinite(bp)))
        if bad:
            first = _index(leaf.shape, int(np.flatnonzero(~np.isfinite(bp))[0]))
            return (
                f"{path}: backprop has {bad} NaN/inf entr{'y' if bad == 1 else 'ies'} "
                f"(first at {first}) where autodiff and finite differences are finite."
            )
        witnesses = "autodiff and finite differences"
        if op is not None and probe_classes is not None and leaf.method == "directional":
            witnesses = "autodiff (and finite differences along random directions)"
        if leaf.method == "sample" and leaf.checked < n:
            witnesses = f"autodiff (finite differences agree on the {leaf.checked} sampled)"
        ad_norm = float(np.linalg.norm(ad))
        if ad_norm <= (leaf.tolerance * 1e-2) * max(1e-300, np.max(np.abs(ad), initial=0.0)):
            ad_norm = 0.0
        if leaf.ratio is not None and ad_norm > 0 and round(leaf.ratio, 2) != 1.0:
            residual = float(np.linalg.norm(bp - leaf.ratio * ad))
            if residual <= 1e-3 * float(np.linalg.norm(bp)) + 1e-300:
                r = leaf.ratio
                if abs(r + 1) < 1e-3:
                    return f"{path}: backprop has the wrong sign (−1.00× {witnesses})."
                return f"{path}: backprop is {r:.2f}× {witnesses}."
        count = int(np.sum(classes == 0))
        w = leaf.worst_index
        return (
            f"{path}: backprop disagrees with {witnesses} at {count} of {n} entries; worst at "
            f"{w}: backprop {leaf.worst_backprop:.6g}, autodiff {leaf.worst_autodiff:.6g}."
        )
    if leaf.status == "twin":
        count = int(np.sum(classes == 1))
        return (
            f"{path}: jax.grad of the JAX twin disagrees with finite differences at {count} "
            f"entr{'y' if count == 1 else 'ies'} while backprop agrees with finite "
            f"differences: the twin's gradient is wrong there (a custom_jvp, stop_gradient or "
            f"non-differentiable op in jax_cost), not your backprop."
        )
    if leaf.status == "kink":
        count = len(leaf.kinks) or int(np.sum(classes == 2))
        return (
            f"{path}: {count} entr{'y sits' if count == 1 else 'ies sit'} on a kink (the "
            f"one-sided slopes differ: ReLU at 0, max, abs); backprop is a valid subgradient "
            f"there, so this is not a bug."
        )
    if leaf.status == "fd-unreliable":
        count = int(np.sum(classes == 3))
        return (
            f"{path}: finite differences strayed at {count} entr{'y' if count == 1 else 'ies'} "
            f"where backprop and autodiff agree (step {leaf.eps:.1e}); the step is too large or "
            f"too small there. Not a bug."
        )
    return ""


def assert_gradients(cost: Callable, grad: Callable, params: Any, **options: Any) -> Report:
    """Like :func:`check`, but raises :class:`jaxcheck.GradientError` when backprop is wrong.

    Args:
        cost: ``params -> float`` in NumPy.
        grad: ``params -> gradient`` in NumPy.
        params: a pytree of float arrays.
        **options: the keyword options of :func:`check`.

    Returns:
        The :class:`~jaxcheck.Report` when the gradient is correct.

    Raises:
        GradientError: an ``AssertionError`` whose message is the report's table.

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
