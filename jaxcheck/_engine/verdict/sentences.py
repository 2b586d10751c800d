"""One leaf's findings as a :class:`~jaxcheck.LeafReport`: the facts, then a sentence about them.

The facts (status, ratio, factor, worst index, counts) are fields; the message is written from
those fields, never the other way round.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Status, Tolerance
from jaxcheck._engine.verdict.evidence import Evidence
from jaxcheck._engine.verdict.status import Decision, LeafRecord
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
    record: LeafRecord, decision: Decision, method: str, *, noun: str = "backprop"
) -> LeafReport:
    """Builds the :class:`LeafReport` of one leaf from its record and its final status.

    ``noun`` names the gradient under test in the message: ``"backprop"``, or ``"rule"`` (said
    "the rule") for a custom differentiation rule.
    """
    shape = tuple(record.theta.shape)
    tol, status, classes = record.tolerance, decision.status, decision.classes
    bp = record.backprop64
    two_way = record.autodiff is None
    evidence = record.evidence
    op = evidence.op
    ad = record.autodiff if record.autodiff is not None else np.full(bp.shape, np.nan)
    if two_way and op is not None:
        # Without autodiff, the finite differences stand in for it where they were taken.
        ad[evidence.coords] = op.finite
    worst = _worst(bp, ad, tol, two_way)
    ratio = None
    known = np.isfinite(ad)
    ad_known, bp_known = ad[known], bp[known]
    ad_norm2 = float(ad_known @ ad_known) if ad_known.size else 0.0
    if ad_norm2 > 0 and np.isfinite(ad_norm2) and np.all(np.isfinite(bp_known)):
        ratio = float(bp_known @ ad_known) / ad_norm2
    blamed = decision.found == Status.BACKPROP
    factor = _factor(bp_known, ad_known, ratio, tol) if blamed else None
    checked, diff_fd, diff_fd_ad, fd_error = _probed(evidence, two_way)
    joint = (0, 0) if record.joint is None else (record.joint.tested, record.joint.failed)
    leaf = LeafReport(
        path=record.path,
        shape=shape,
        dtype=str(record.backprop.dtype),
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
        kinks=[] if op is None else [_index(shape, c) for c in evidence.coords[op.kink]],
        wrong=int(np.sum(classes == vd.BACKPROP)),
        checked=checked,
        size=bp.size,
        method=method,
        step=evidence.step,
        rtol=tol.rtol,
        batch_size=evidence.batch_size,
        rounding_difference=decision.rounding_difference,
        joint=joint,
        expected=decision.expected,
        found=decision.found if status == Status.DECLARED else None,
    )
    who = noun if noun == "backprop" else f"the {noun}"
    facts = _Facts(bp, ad, classes, record.direction_classes, two_way, who)
    leaf.message = _message(leaf, facts)
    return leaf


def _worst(bp: np.ndarray, ad: np.ndarray, tol: Tolerance, two_way: bool) -> int | None:
    """The entry whose disagreement most exceeds the tolerance."""
    excess = vd.excess(bp, ad, tol.rtol, tol.atol)
    excess = np.where(np.isnan(ad) & two_way, -np.inf, np.nan_to_num(excess, nan=np.inf))
    worst = int(np.argmax(excess)) if bp.size and np.isfinite(excess).any() else None
    if worst is None and bp.size and not two_way:
        worst = int(np.argmax(excess))
    return worst


def _probed(evidence: Evidence, two_way: bool) -> tuple[int, float, float, float]:
    """Probes checked, backprop vs FD, FD vs autodiff, and FD's relative error estimate."""
    finite_parts, ad_parts, bp_parts, errors = [], [], [], []
    for o in (evidence.op, evidence.directions):
        if o is not None:
            finite_parts.append(o.finite)
            ad_parts.append(o.autodiff if not two_way else o.finite)
            bp_parts.append(o.backprop)
            errors.append(o.error)
    checked = int(sum(p.size for p in finite_parts))
    if not finite_parts:
        return checked, 0.0, 0.0, 0.0
    finite, ad_p, bp_p, error = (
        np.concatenate(x) for x in (finite_parts, ad_parts, bp_parts, errors)
    )
    diff_fd = vd.relative_difference(bp_p, finite)
    diff_fd_ad = 0.0 if two_way else vd.relative_difference(finite, ad_p)
    denom = np.linalg.norm(finite) + (0.0 if two_way else np.linalg.norm(ad_p))
    fd_error = float(np.linalg.norm(error) / denom) if denom > 0 else 0.0
    return checked, diff_fd, diff_fd_ad, fd_error


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


@dataclasses.dataclass(frozen=True)
class _Facts:
    """What a sentence reads besides the LeafReport's fields."""

    bp: np.ndarray
    ad: np.ndarray
    classes: np.ndarray
    direction_classes: np.ndarray | None
    two_way: bool
    who: str = "backprop"  # the gradient under test: "backprop", "the rule", "the backward"


def _message(leaf: LeafReport, facts: _Facts) -> str:
    """The sentence about a leaf: ``"path: ..."``, or "" when there is nothing to say."""
    if leaf.status == Status.DECLARED:
        found = leaf.found if leaf.found is not None else Status.BACKPROP
        return (
            f"{leaf.path}: approximation declared (expected={leaf.expected!r}), so not judged; "
            f"the difference it makes: {_body(found, leaf, facts)}"
        )
    body = _body(leaf.status, leaf, facts)
    return f"{leaf.path}: {body}" if body else ""


def _body(status: Status, leaf: LeafReport, facts: _Facts) -> str:
    classes, direction_classes = facts.classes, facts.direction_classes
    if status == Status.BACKPROP:
        return _backprop(leaf, facts)
    if status == Status.INCONCLUSIVE:
        count = int(np.sum(classes == vd.INCONCLUSIVE))
        return (
            f"backprop and autodiff disagree at {count} "
            f"{_plural(count, 'entry', 'entries')} (worst at {leaf.worst_index}: backprop "
            f"{leaf.worst_backprop:.6g}, autodiff {leaf.worst_autodiff:.6g}) and finite "
            f"differences are too imprecise there to say which is right (estimated error "
            f"{leaf.fd_error:.1e}); not judged. Try another eps=, or check the twin's "
            f"jax.grad (a custom rule, stop_gradient or rounding in jax_cost)."
        )
    if status in _PROBE_NOTES:
        count = _count(classes, direction_classes, vd.CODES[status])
        probes = _plural(count, "probe", "probes")
        return _PROBE_NOTES[status].format(count=count, probes=probes, step=leaf.step)
    if status == Status.KINK:
        count = len(leaf.kinks) or int(np.sum(classes == vd.KINK))
        joint = ""
        if leaf.joint[0]:
            joint = f", and jointly along {leaf.joint[0]} directions spanning the kinks"
        return (
            f"{count} {_plural(count, 'entry sits', 'entries sit')} on a kink (the "
            f"one-sided slopes differ: ReLU at 0, max, abs); backprop is a valid subgradient "
            f"there{joint}, so this is not a bug."
        )
    if status == Status.ROUNDING:
        return (
            f"correct formula; {leaf.dtype} rounding in your backprop explains a "
            f"difference of {leaf.rounding_difference:.2e} from autodiff (the same backprop run "
            f"at {'np.longdouble' if leaf.dtype == 'float64' else 'float64'} parameters agrees "
            f"with autodiff)."
        )
    return ""


#: The sentences about probes that speak for the twin or the differences, not the backprop.
_PROBE_NOTES = {
    Status.TWIN: (
        "jax.grad of the JAX twin disagrees with finite differences at {count} {probes} while "
        "backprop agrees with finite differences: the twin's gradient is wrong there (a "
        "custom_jvp, stop_gradient, round or another non-differentiable op in jax_cost), not "
        "your backprop."
    ),
    Status.FD_UNRELIABLE: (
        "finite differences strayed at {count} {probes} where backprop and autodiff agree (step "
        "{step:.1e}); the step is too large or too small there. Not a bug."
    ),
}


def _count(classes: np.ndarray, direction_classes: np.ndarray | None, code: int) -> int:
    """Entries with ``code``, or directions with it where those are more."""
    count = int(np.sum(classes == code))
    if direction_classes is not None:
        count = max(count, int(np.sum(direction_classes == code)))
    return count


def _backprop(leaf: LeafReport, facts: _Facts) -> str:
    bp, ad, classes, two_way, who = facts.bp, facts.ad, facts.classes, facts.two_way, facts.who
    n = leaf.size
    bad = ~np.isfinite(bp) & (np.isfinite(ad) | two_way)
    if bad.any():
        first = _index(leaf.shape, int(np.flatnonzero(bad)[0]))
        kinds = sorted({"NaN" if np.isnan(v) else "infinite" for v in bp[bad]})
        return (
            f"{who} has {int(bad.sum())} {' and '.join(kinds)} "
            f"{_plural(int(bad.sum()), 'entry', 'entries')} (first at {first}) where "
            f"{'finite differences are' if two_way else 'autodiff and finite differences are'}"
            f" finite."
        )
    if leaf.joint[1]:
        tested, failed = leaf.joint
        count = len(leaf.kinks) or int(np.sum(classes == vd.BACKPROP))
        return (
            f"{who} is not a subgradient at the {count} entries on kinks taken "
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
            return f"{who} has the wrong sign (−1.00× {witnesses})."
        return f"{who} is {leaf.factor:.2f}× {witnesses}."
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
        f"{who} disagrees with {witnesses} at {count} of {n} entries; worst at "
        f"{w}: {who} {leaf.worst_backprop:.6g}, {other} {value:.6g}."
    )
