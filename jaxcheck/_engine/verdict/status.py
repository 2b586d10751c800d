"""A leaf's final status, decided in one place from everything the stages found about it.

The order is fixed: the probe codes (the verdict table, entry by entry and along directions)
give a first status; the joint kink test may turn subgradients accepted one entry at a time
into BACKPROP; a leaf that still fails is re-judged by the precision re-run (ROUNDING when the
same backprop run wider agrees with autodiff); and last, a declared approximation
(``expected={"path": "surrogate"}``) turns a failing status into DECLARED, which passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Status, Tolerance
from jaxcheck._engine.verdict.evidence import Evidence
from jaxcheck.errors import InputError

__all__ = [
    "EXPECTATIONS",
    "Decision",
    "JointKinks",
    "LeafRecord",
    "check_expected",
    "decide",
    "leaf_status",
    "rounding_explains",
]

#: What a leaf's backprop is expected to be: the derivative, or a deliberate approximation.
EXPECTATIONS = ("derivative", "surrogate")

#: A wider re-run of one leaf's backprop: ``() -> array in its own dtype``, or None if none.
Wider = Callable[[], "np.ndarray | None"]


@dataclasses.dataclass(frozen=True)
class JointKinks:
    """What the joint test of a leaf's kink entries found.

    Attributes:
        tested: directions tested.
        failed: directions along which backprop·δ left the one-sided differences.
        wrong: flat indices of the entries of the clusters that failed.
    """

    tested: int
    failed: int
    wrong: np.ndarray


@dataclasses.dataclass
class LeafRecord:
    """One leaf through the pipeline: its values, its evidence and its probe codes.

    Attributes:
        path: the leaf's path.
        theta: the parameter (float64).
        backprop: the user's gradient in its own dtype.
        autodiff: the autodiff opinion (flat float64), or None for a two-way check.
        tolerance: how closely the opinions must agree on this leaf.
        evidence: what finite differences said.
        classes: per-entry status codes (see :data:`~jaxcheck._engine.verdict.classify.CODES`).
        direction_classes: per-direction status codes, or None.
        joint: the joint kink test's findings, or None when it did not run on this leaf.
    """

    path: str
    theta: np.ndarray
    backprop: np.ndarray
    autodiff: np.ndarray | None
    tolerance: Tolerance
    evidence: Evidence
    classes: np.ndarray | None = None
    direction_classes: np.ndarray | None = None
    joint: JointKinks | None = None

    @property
    def backprop64(self) -> np.ndarray:
        """The user's gradient, flat, in float64."""
        return self.backprop.astype(np.float64).reshape(-1)


@dataclasses.dataclass(frozen=True)
class Decision:
    """A leaf's final status and what it rests on.

    Attributes:
        status: the final status.
        found: the status the opinions gave before a declared expectation was applied.
        classes: per-entry codes after the joint kink test.
        rounding_difference: for ROUNDING, the classic difference rounding explains.
        expected: the declared expectation (``"surrogate"``), or None.
    """

    status: Status
    found: Status
    classes: np.ndarray
    rounding_difference: float | None = None
    expected: str | None = None


def leaf_status(classes: np.ndarray, direction_classes: np.ndarray | None) -> Status:
    """The most serious status among a leaf's entries and directions.

    Directions speak for the twin (TWIN, FD_UNRELIABLE); whether backprop is wrong is settled
    entry by entry, where every disagreeing entry has been probed.
    """
    code = int(classes.min(initial=vd.OK))
    if direction_classes is not None and direction_classes.size:
        for c in (vd.TWIN, vd.FD_UNRELIABLE, vd.KINK):
            if code > c and np.any(direction_classes == c):
                code = c
                break
    return vd.STATUS_OF[code]


def rounding_explains(
    bp: np.ndarray, wide: np.ndarray, ad: np.ndarray, tol: Tolerance
) -> float | None:
    """The difference rounding explains when the wider re-run ``wide`` agrees with autodiff.

    ``wide`` keeps its own dtype: when the re-run was cast back to a narrow dtype at the end, one
    rounding of that dtype is allowed (|x − fl(x)| ≤ u/2·|x|, u/4 of |a| + |b| in the
    tolerance's terms), else float64's tolerance. Returns None when it does not agree.
    """
    bp = bp.astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(bp)):
        return None
    narrow = vd.epsilon(np.dtype(wide.dtype))
    tol64 = dataclasses.replace(tol, rtol=max(vd.rtol_for(np.dtype(np.float64)), 0.3 * narrow))
    if np.all(vd.backprop_agrees(wide.astype(np.float64).reshape(-1), ad, tol64)):
        return vd.relative_difference(bp, ad)
    return None


def decide(
    record: LeafRecord, *, wider: Wider | None = None, expected: str | None = None
) -> Decision:
    """The final status of one leaf: probe codes → joint kinks → rounding → declared.

    Args:
        record: the leaf, with its probe codes (``classes``, ``direction_classes``).
        wider: the backprop re-run in a wider dtype, asked for only when the leaf fails.
        expected: ``"surrogate"`` when the user declared the leaf's backprop an approximation.
    """
    classes = record.classes
    if classes is None:
        raise ValueError(f"{record.path}: no probe codes to decide from")
    if record.joint is not None and record.joint.wrong.size:
        classes = classes.copy()
        classes[record.joint.wrong] = vd.BACKPROP
    status = leaf_status(classes, record.direction_classes)
    rounding = None
    if not status.passes and record.autodiff is not None and wider is not None:
        wide = wider()
        if wide is not None:
            rounding = rounding_explains(record.backprop, wide, record.autodiff, record.tolerance)
            if rounding is not None:
                status = Status.ROUNDING
    found = status
    if expected == "surrogate" and not status.passes:
        status = Status.DECLARED
    return Decision(status, found, classes, rounding, expected)


def check_expected(expected: Mapping[str, str] | None, paths: Sequence[str]) -> dict[str, str]:
    """``expected`` validated against the leaves: every key a path, every value known.

    Raises:
        InputError: a key that names no leaf (the message lists the leaves), or a value that is
            not one of :data:`EXPECTATIONS`.
    """
    if expected is None:
        return {}
    unknown = [key for key in expected if key not in paths]
    if unknown:
        raise InputError(
            f"expected= names {', '.join(map(repr, unknown))}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not a leaf of params; the leaves are "
            f"{', '.join(map(repr, paths))}."
        )
    for key, value in expected.items():
        if value not in EXPECTATIONS:
            raise InputError(
                f"expected[{key!r}]={value!r} is not one of {EXPECTATIONS} ('surrogate' declares "
                f"a deliberate approximation such as gradient clipping or truncated backprop)."
            )
    return dict(expected)
