"""From evaluations to verdicts: the opinions per probe, their refinement, and a status per leaf.

Every entry is judged backprop vs autodiff; finite differences decide where those two disagree
(every method probes each disagreeing entry itself, so the verdict never depends on the method)
and check the twin where they agree. Entries accepted one at a time as subgradients at a kink
are then tested jointly (:mod:`jaxcheck._engine.verdict.kinks`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxcheck._engine.evaluate.finite_differences import Evaluation, Probe
from jaxcheck._engine.evaluate.plan import Group, coordinate_probes, default_step
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Opinions, Tolerance

__all__ = [
    "Evidence",
    "MAX_REFINE",
    "Rounding",
    "add_double",
    "classes_of",
    "collect",
    "difference_opinions",
    "leaf_tolerance",
    "refinement",
]

#: Most entries per leaf re-evaluated (at ±h and ±2h) to settle a disagreement or find kinks.
MAX_REFINE = 4096

#: Evaluates probe groups: ``(groups, double_steps) -> evaluations``, bound to the twin or the
#: NumPy cost by the caller.
Evaluator = Callable[[Sequence[Probe]], list[Evaluation]]

#: How values differenced by the opinion builders round: ``(up, down, h_total) -> error``.
Rounding = Callable[[Any, Any, Any], Any]


@dataclasses.dataclass
class Evidence:
    """What finite differences said about one leaf.

    Attributes:
        coords: flat indices of the entries with coordinate opinions, ascending.
        op: the opinions at ``coords``.
        refined: True where the entry was also evaluated at 2h.
        directions: opinions along random directions (directional method), or None.
        directions_refined: True where a direction was also evaluated at 2h.
        step: the largest step used in this leaf.
        batch_size: perturbations per vmapped batch.
        seed: the seed of the random directions.
    """

    coords: np.ndarray
    op: Opinions | None
    refined: np.ndarray
    directions: Opinions | None = None
    directions_refined: np.ndarray | None = None
    step: float = 0.0
    batch_size: int = 0
    seed: int = 0


def _opinions(
    bp: np.ndarray,
    ad: np.ndarray,
    ev: Evaluation,
    value: float,
    rows: np.ndarray,
) -> tuple[Opinions, np.ndarray]:
    up, down = ev.up[rows], ev.down[rows]
    s_up, s_down = ev.step_up[rows], ev.step_down[rows]
    rounding = functools.partial(vd.rounding_error, unit=ev.unit)
    op = difference_opinions(bp, ad, up, down, s_up, s_down, value, rounding)
    refined = np.zeros(rows.size, bool)
    if ev.up2 is not None:
        assert ev.down2 is not None  # both sides at 2h, or neither
        up2, down2 = ev.up2[rows], ev.down2[rows]
        add_double(
            op, difference_opinions(bp, ad, up2, down2, 2 * s_up, 2 * s_down, value, rounding)
        )
        refined[:] = True
    return op, refined


def difference_opinions(
    bp: np.ndarray,
    ad: np.ndarray,
    up: Any,
    down: Any,
    s_up: Any,
    s_down: Any,
    value: Any,
    rounding: Rounding,
) -> Opinions:
    """The opinions on some probes from the values at θ + s_up and θ − s_down.

    The one opinion builder of every door: ``check`` differences values of the cost,
    ``check_hvp`` values of the gradient (``value`` is the value at θ).

    Args:
        bp: the user's value per probe.
        ad: autodiff's value per probe.
        up: the values at θ + s_up.
        down: the values at θ − s_down.
        s_up: the steps up.
        s_down: the steps down.
        value: the value at θ.
        rounding: ``(up, down, h_total) -> error``, how the values round.

    Returns:
        The opinions, with the rounding error of the central difference as its only error
        (:func:`add_double` adds the truncation error).
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        finite = (up - down) / (s_up + s_down)
        slope_up = (up - value) / s_up
        slope_down = (value - down) / s_down
    error = rounding(up, down, s_up + s_down)
    return Opinions(
        bp,
        ad,
        finite,
        slope_up,
        slope_down,
        error.copy(),
        error,
        4 * error,
        np.zeros(np.size(error), bool),
    )


def add_double(op: Opinions, double: Opinions) -> None:
    """Truncation error, one-sided slopes and kinks from a second evaluation at 2h (in place).

    Args:
        op: the opinions at the steps h, completed here.
        double: :func:`difference_opinions` of the same probes at the steps 2h.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        # Richardson would divide by 3 for a smooth function (cost or gradient); undivided, the
        # change between h and 2h also bounds noise that does not scale like h² (a quantised or
        # tabulated cost, a gradient summing terms that cancel). Decided once, for every door.
        truncation = np.abs(double.finite - op.finite)
    op.error = op.rounding + truncation + double.rounding
    # Where the function has a kink (ReLU², max) or a jump (ReLU, abs) within θ ± 2h, the gap
    # between the one-sided slopes does not grow with the step as it does where it is smooth.
    op.kink = vd.kinks(op.slope_up, op.slope_down, double.slope_up, double.slope_down, op.rounding)
    op.slope_error = (
        np.maximum(np.abs(double.slope_up - op.slope_up), np.abs(double.slope_down - op.slope_down))
        + 4 * op.rounding
        + 2 * double.rounding
    )


def _take(op: Opinions, rows: np.ndarray) -> Opinions:
    return Opinions(*(getattr(op, f.name)[rows] for f in dataclasses.fields(Opinions)))


def _merge(
    old: Opinions | None,
    old_coords: np.ndarray,
    old_refined: np.ndarray,
    new: Opinions,
    new_coords: np.ndarray,
    new_refined: np.ndarray,
) -> tuple[Opinions, np.ndarray, np.ndarray]:
    """Coordinate opinions of both, the new ones winning where both have an entry."""
    if old is None or old_coords.size == 0:
        order = np.argsort(new_coords, kind="stable")
        return _take(new, order), new_coords[order], new_refined[order]
    keep = ~np.isin(old_coords, new_coords)
    coords = np.concatenate([old_coords[keep], new_coords])
    order = np.argsort(coords, kind="stable")
    fields = {}
    for f in dataclasses.fields(Opinions):
        fields[f.name] = np.concatenate([getattr(old, f.name)[keep], getattr(new, f.name)])[order]
    refined = np.concatenate([old_refined[keep], new_refined])[order]
    return Opinions(**fields), coords[order], refined


def collect(
    groups: Sequence[Group],
    evaluations: Sequence[Evaluation],
    value: float,
    backprop: Sequence[np.ndarray],
    gradient: Sequence[np.ndarray] | None,
    evidence: list[Evidence],
) -> None:
    """Adds the opinions of evaluated probe groups to each leaf's evidence (in place)."""
    for group, ev in zip(groups, evaluations):
        probe = group.probe
        n = probe.count
        owners, local = group.owner[:n], group.local[:n]
        if probe.kind == "direction":
            i = probe.leaves[0]
            e = evidence[i]
            rows = np.arange(n)
            if e.directions is None:
                along_bp, along_ad = ev.projected_backprop, ev.projected_autodiff
                assert along_bp is not None and along_ad is not None  # a direction's projections
                e.directions, e.directions_refined = _opinions(along_bp, along_ad, ev, value, rows)
            else:  # a re-evaluation at 2h of some directions
                assert e.directions_refined is not None  # set with e.directions
                picked = local
                d = e.directions
                sub = _take(d, picked)
                rounding = functools.partial(vd.rounding_error, unit=ev.unit)
                double = difference_opinions(
                    sub.backprop,
                    sub.autodiff,
                    ev.up,
                    ev.down,
                    ev.step_up,
                    ev.step_down,
                    value,
                    rounding,
                )
                add_double(sub, double)
                for f in ("error", "kink", "slope_error"):
                    getattr(d, f)[picked] = getattr(sub, f)
                e.directions_refined[picked] = True
            e.step = max(e.step, float(probe.step))
            e.seed = probe.seed
            e.batch_size = max(e.batch_size, ev.batch_size)
            continue
        for i in np.unique(owners):
            rows = np.flatnonzero(owners == i)
            idx = local[rows]
            # Padding repeats the first probe: keep each entry once.
            idx, first = np.unique(idx, return_index=True)
            rows = rows[first]
            bp = backprop[i].astype(np.float64).reshape(-1)[idx]
            ad = gradient[i].reshape(-1)[idx] if gradient is not None else bp
            op, refined = _opinions(bp, ad, ev, value, rows)
            e = evidence[i]
            e.op, e.coords, e.refined = _merge(e.op, e.coords, e.refined, op, idx, refined)
            e.step = max(e.step, float(np.max(ev.step_up[rows], initial=0.0)))
            e.batch_size = max(e.batch_size, ev.batch_size)


def leaf_tolerance(
    dtype: np.dtype,
    theta: np.ndarray,
    autodiff: np.ndarray | None,
    cost: float,
    eps: float | None,
    rtol: float | None,
) -> Tolerance:
    """The tolerance for one leaf: its dtype's rtol and a floor from the leaf's own noise.

    The absolute floor of each entry is the larger of a small fraction of the leaf's own largest
    derivative and the rounding error of a finite difference there (≈ 256·u·|J| / 2h): below it
    no opinion can be confirmed, and a leaf whose true gradient is zero (dead units, a bias before
    batch norm) passes with rounding-level garbage in its backprop. Other leaves do not matter.
    """
    rtol = vd.rtol_for(dtype) if rtol is None else float(rtol)
    ad = np.asarray(autodiff, np.float64).reshape(-1) if autodiff is not None else np.zeros(0)
    finite = ad[np.isfinite(ad)]
    scale = float(np.max(np.abs(finite), initial=0.0))
    x = theta.reshape(-1)
    h = default_step(x) if eps is None else np.full(x.shape, float(eps))
    noise = vd.rounding(abs(cost), 2 * h)
    atol = np.maximum(rtol * vd.ATOL_FRACTION * scale, noise)
    return Tolerance(
        rtol=rtol,
        atol=atol,
        fd_rtol=vd.FD_RTOL,
        fd_atol=vd.FD_RTOL * vd.ATOL_FRACTION * scale,
        scale=scale,
    )


def _at(tol: Tolerance, rows: np.ndarray) -> Tolerance:
    atol = np.asarray(tol.atol)[rows] if np.ndim(tol.atol) else tol.atol
    return dataclasses.replace(tol, atol=atol)


def refinement(
    evidence: Sequence[Evidence],
    backprop: Sequence[np.ndarray],
    gradient: Sequence[np.ndarray] | None,
    tolerances: Sequence[Tolerance],
    leaves: Sequence[np.ndarray],
    paths: Sequence[str],
    eps: float | None,
    *,
    group_small: bool = True,
) -> list[Group]:
    """Probe groups that settle what the first pass left open.

    Every entry where backprop and autodiff disagree gets its own coordinate opinion at ±h and
    ±2h (also when the method did not probe it, so no method can contradict another), and so
    does every probed coordinate whose finite difference is suspicious but was evaluated at h
    only; suspicious directions are re-evaluated at 2h.
    """
    chosen: dict[int, np.ndarray] = {}
    direction_groups = []
    for i, e in enumerate(evidence):
        tol = tolerances[i]
        bp = backprop[i].astype(np.float64).reshape(-1)
        want = []
        excess = np.zeros(0)
        if gradient is not None:
            ad = gradient[i].reshape(-1)
            agree = vd.backprop_agrees(bp, ad, tol)
            covered = np.zeros(bp.size, bool)
            covered[e.coords[e.refined]] = True
            want.append(np.flatnonzero(~agree & ~covered))
            with np.errstate(invalid="ignore", over="ignore"):
                excess = np.nan_to_num(np.abs(bp - ad), nan=np.inf)
        if e.op is not None:
            suspicious = vd.suspicious(e.op, _at(tol, e.coords)) & ~e.refined
            want.append(e.coords[suspicious])
        picked = np.unique(np.concatenate(want)) if want else np.zeros(0, np.int64)
        if picked.size > MAX_REFINE:
            if excess.size:
                picked = picked[np.argsort(-excess[picked], kind="stable")[:MAX_REFINE]]
            picked = np.sort(picked[:MAX_REFINE])
        if picked.size:
            chosen[i] = picked
        d = e.directions
        if d is not None:
            assert e.directions_refined is not None  # set with e.directions
            tol_d = dataclasses.replace(tol, atol=float(np.max(tol.atol, initial=0.0)))
            bad = np.flatnonzero(vd.suspicious(d, tol_d) & ~e.directions_refined)
            if bad.size:
                probe = Probe((i,), "direction", bad.size, step=2 * e.step, seed=e.seed, ids=bad)
                direction_groups.append(Group(probe, np.full(bad.size, i), bad))
    groups = coordinate_probes(
        leaves, paths, chosen, eps, double=True, pad=True, group_small=group_small
    )
    return groups + direction_groups


def classes_of(
    evidence: Evidence, bp: np.ndarray, ad: np.ndarray | None, tol: Tolerance
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-entry and per-direction status codes of one leaf."""
    autodiff = ad is not None
    if ad is not None:
        classes = np.where(vd.backprop_agrees(bp, ad, tol), vd.OK, vd.BACKPROP).astype(np.int8)
    else:
        classes = np.full(bp.shape, vd.OK, np.int8)
    if evidence.op is not None:
        classes[evidence.coords] = vd.classify(
            evidence.op, _at(tol, evidence.coords), autodiff=autodiff
        )
    direction_classes = None
    if evidence.directions is not None:
        tol_d = dataclasses.replace(tol, atol=float(np.max(tol.atol, initial=0.0)))
        direction_classes = vd.classify(evidence.directions, tol_d, autodiff=autodiff)
    return classes, direction_classes
