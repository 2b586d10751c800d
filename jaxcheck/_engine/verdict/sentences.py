"""One leaf's findings as a :class:`~jaxcheck.LeafReport`: the facts, then a sentence about them.

The facts (status, ratio, factor, worst index, counts) are fields; the message is written from
those fields, never the other way round.
"""

from __future__ import annotations

import numpy as np

from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Status, Tolerance
from jaxcheck._engine.verdict.evidence import Evidence
from jaxcheck.report import LeafReport

__all__ = ["leaf_report"]

#: backprop is called k·autodiff when the rest, ‖bp − k·ad‖, is below this fraction of ‖bp‖.
FACTOR_RESIDUAL = 1e-3


def _index(shape: tuple[int, ...], flat: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(flat), shape)) if shape else ()


def _factor(bp: np.ndarray, ad: np.ndarray, ratio: float | None, tol: Tolerance) -> float | None:
    """k when backprop is k·autodiff (k ≠ 1), else None."""
    if ratio is None or round(ratio, 2) == 1.0:
        return None
    ad_norm = float(np.linalg.norm(ad))
    if ad_norm <= (tol.rtol * vd.ATOL_FRACTION) * max(1e-300, float(np.max(np.abs(ad)))):
        return None
    residual = float(np.linalg.norm(bp - ratio * ad))
    return ratio if residual <= FACTOR_RESIDUAL * float(np.linalg.norm(bp)) + 1e-300 else None


def leaf_report(
    path: str,
    theta: np.ndarray,
    backprop: np.ndarray,
    autodiff: np.ndarray | None,
    classes: np.ndarray,
    direction_classes: np.ndarray | None,
    status: Status,
    evidence: Evidence,
    tol: Tolerance,
    method: str,
    *,
    rounding_difference: float | None = None,
    noun: str = "backprop",
) -> LeafReport:
    """Builds the :class:`LeafReport` of one leaf from its classes and opinions.

    ``noun`` names the gradient under test in the message: ``"backprop"``, or ``"rule"`` (said
    "the rule") for a custom differentiation rule.
    """
    shape = tuple(theta.shape)
    bp = backprop.astype(np.float64).ravel()
    two_way = autodiff is None
    ad = autodiff.ravel() if autodiff is not None else np.full(bp.shape, np.nan)
    op, d = evidence.op, evidence.directions
    if two_way:
        # Without autodiff, the finite differences stand in for it where they were taken.
        ad = np.full(bp.shape, np.nan)
        if op is not None:
            ad[evidence.coords] = op.finite
    with np.errstate(invalid="ignore", over="ignore"):
        excess = np.abs(bp - ad) - (tol.rtol * (np.abs(bp) + np.abs(ad)) + tol.atol)
    excess = np.where(np.isnan(ad) & two_way, -np.inf, np.nan_to_num(excess, nan=np.inf))
    worst = int(np.argmax(excess)) if bp.size and np.isfinite(excess).any() else None
    if worst is None and bp.size and not two_way:
        worst = int(np.argmax(excess))
    ratio = None
    known = np.isfinite(ad)
    ad_known, bp_known = ad[known], bp[known]
    ad_norm2 = float(ad_known @ ad_known) if ad_known.size else 0.0
    if ad_norm2 > 0 and np.isfinite(ad_norm2) and np.all(np.isfinite(bp_known)):
        ratio = float(bp_known @ ad_known) / ad_norm2
    factor = _factor(bp_known, ad_known, ratio, tol) if status == Status.BACKPROP else None
    finite_parts, ad_parts, bp_parts, errors = [], [], [], []
    for o in (op, d):
        if o is not None:
            finite_parts.append(o.finite)
            ad_parts.append(o.autodiff if not two_way else o.finite)
            bp_parts.append(o.backprop)
            errors.append(o.error)
    checked = int(sum(p.size for p in finite_parts))
    if finite_parts:
        finite, ad_p, bp_p, error = (
            np.concatenate(x) for x in (finite_parts, ad_parts, bp_parts, errors)
        )
        diff_fd = vd.relative_difference(bp_p, finite)
        diff_fd_ad = 0.0 if two_way else vd.relative_difference(finite, ad_p)
        denom = np.linalg.norm(finite) + (0.0 if two_way else np.linalg.norm(ad_p))
        fd_error = float(np.linalg.norm(error) / denom) if denom > 0 else 0.0
    else:
        diff_fd = diff_fd_ad = fd_error = 0.0
    kinks = [] if op is None else [_index(shape, c) for c in evidence.coords[op.kink]]
    leaf = LeafReport(
        path=path,
        shape=shape,
        dtype=str(backprop.dtype),
        status=status,
        ok=status.passes,
        difference_fd=diff_fd,
        difference_autodiff=float("nan") if two_way else vd.relative_difference(bp, ad),
        difference_fd_autodiff=diff_fd_ad,
        fd_error=fd_error,
        ratio=ratio,
        factor=factor,
        worst_index=None if worst is None else _index(shape, worst),
        worst_backprop=None if worst is None else float(bp[worst]),
        worst_autodiff=None if worst is None or two_way else float(ad[worst]),
        kinks=kinks,
        wrong=int(np.sum(classes == vd.BACKPROP)),
        checked=checked,
        size=bp.size,
        method=method,
        step=evidence.step,
        rtol=tol.rtol,
        batch_size=evidence.batch_size,
        rounding_difference=rounding_difference,
        joint=evidence.joint,
    )
    leaf.message = _message(leaf, bp, ad, classes, direction_classes, two_way, noun)
    return leaf


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def _message(
    leaf: LeafReport,
    bp: np.ndarray,
    ad: np.ndarray,
    classes: np.ndarray,
    direction_classes: np.ndarray | None,
    two_way: bool,
    noun: str,
) -> str:
    # The gradient under test in sentences: "backprop", or "the rule" when noun is "rule".
    who = noun if noun == "backprop" else f"the {noun}"
    path, n = leaf.path, leaf.size
    status = leaf.status
    if status == Status.BACKPROP:
        bad = ~np.isfinite(bp) & (np.isfinite(ad) | two_way)
        if bad.any():
            first = _index(leaf.shape, int(np.flatnonzero(bad)[0]))
            kinds = sorted({"NaN" if np.isnan(v) else "infinite" for v in bp[bad]})
            return (
                f"{path}: {who} has {int(bad.sum())} {' and '.join(kinds)} "
                f"{_plural(int(bad.sum()), 'entry', 'entries')} (first at {first}) where "
                f"{'finite differences are' if two_way else 'autodiff and finite differences are'}"
                f" finite."
            )
        if leaf.joint[1]:
            tested, failed = leaf.joint
            count = len(leaf.kinks) or int(np.sum(classes == vd.BACKPROP))
            return (
                f"{path}: {who} is not a subgradient at the {count} entries on kinks taken "
                f"together: each one alone lies between its one-sided slopes, but along "
                f"{failed} of {tested} joint directions {who}·d falls outside the one-sided "
                f"directional derivatives (tied entries of a max share one gradient: send it to "
                f"one of them, not to every one)."
            )
        witnesses = "finite differences" if two_way else "autodiff and finite differences"
        if leaf.method == "directional" and not two_way:
            witnesses = "autodiff (finite differences confirm it on the disagreeing entries)"
        if leaf.method == "sample" and leaf.checked < n and not two_way:
            witnesses = "autodiff (finite differences confirm it on the disagreeing entries)"
        if leaf.factor is not None:
            if abs(leaf.factor + 1) < 1e-3:
                return f"{path}: {who} has the wrong sign (−1.00× {witnesses})."
            return f"{path}: {who} is {leaf.factor:.2f}× {witnesses}."
        count = int(np.sum(classes == vd.BACKPROP))
        w = leaf.worst_index
        other = "finite differences" if two_way else "autodiff"
        value = (
            leaf.worst_autodiff
            if not two_way
            else float(ad[np.ravel_multi_index(w, leaf.shape)])
            if w
            else float("nan")
        )
        return (
            f"{path}: {who} disagrees with {witnesses} at {count} of {n} entries; worst at "
            f"{w}: {who} {leaf.worst_backprop:.6g}, {other} {value:.6g}."
        )
    if status == Status.INCONCLUSIVE:
        count = int(np.sum(classes == vd.INCONCLUSIVE))
        return (
            f"{path}: {who} and autodiff disagree at {count} "
            f"{_plural(count, 'entry', 'entries')} (worst at {leaf.worst_index}: {who} "
            f"{leaf.worst_backprop:.6g}, autodiff {leaf.worst_autodiff:.6g}) and finite "
            f"differences are too imprecise there to say which is right (estimated error "
            f"{leaf.fd_error:.1e}); not judged. Try another eps=, or check the twin's "
            f"jax.grad (a custom rule, stop_gradient or rounding in jax_cost)."
        )
    if status == Status.TWIN:
        count = int(np.sum(classes == vd.TWIN))
        if direction_classes is not None:
            count = max(count, int(np.sum(direction_classes == vd.TWIN)))
        return (
            f"{path}: jax.grad of the JAX twin disagrees with finite differences at {count} "
            f"{_plural(count, 'probe', 'probes')} while {who} agrees with finite "
            f"differences: the twin's gradient is wrong there (a custom_jvp, stop_gradient, "
            f"round or another non-differentiable op in jax_cost), not your {noun}."
        )
    if status == Status.KINK:
        count = len(leaf.kinks) or int(np.sum(classes == vd.KINK))
        joint = ""
        if leaf.joint[0]:
            joint = f", and jointly along {leaf.joint[0]} directions spanning the kinks"
        return (
            f"{path}: {count} {_plural(count, 'entry sits', 'entries sit')} on a kink (the "
            f"one-sided slopes differ: ReLU at 0, max, abs); {who} is a valid subgradient "
            f"there{joint}, so this is not a bug."
        )
    if status == Status.ROUNDING:
        return (
            f"{path}: correct formula; {leaf.dtype} rounding in your {noun} explains a "
            f"difference of {leaf.rounding_difference:.2e} from autodiff (the same {noun} run "
            f"at {'np.longdouble' if leaf.dtype == 'float64' else 'float64'} parameters agrees "
            f"with autodiff)."
        )
    if status == Status.FD_UNRELIABLE:
        count = int(np.sum(classes == vd.FD_UNRELIABLE))
        if direction_classes is not None:
            count = max(count, int(np.sum(direction_classes == vd.FD_UNRELIABLE)))
        return (
            f"{path}: finite differences strayed at {count} {_plural(count, 'probe', 'probes')} "
            f"where {who} and autodiff agree (step {leaf.step:.1e}); the step is too large or "
            f"too small there. Not a bug."
        )
    return ""
