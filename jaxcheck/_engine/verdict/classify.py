"""Tolerances, finite-difference error estimates and the three-way verdict, per coordinate.

Three opinions of each derivative meet here: backprop (the user's), autodiff (``jax.grad`` of
the twin) and finite differences (of the twin). Two that agree outvote the third.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

__all__ = [
    "FD_RTOL",
    "FD_USEFUL",
    "KINK_RATIO",
    "ROUNDING_SAFETY",
    "CODES",
    "STATUS_OF",
    "Opinions",
    "Status",
    "Tolerance",
    "classify",
    "epsilon",
    "excess",
    "relative_difference",
    "U64",
    "rounding",
    "rounding_error",
    "rtol_for",
    "tolerance_excess",
    "backprop_agrees",
    "close",
    "decisive_two_way",
    "kinks",
    "suspicious",
]


class Status(str, enum.Enum):
    """The verdict on a leaf (or one probe of it), from the most to the least serious.

    Only ``BACKPROP`` blames the user's gradient; ``INCONCLUSIVE`` says no opinion could be
    trusted to decide, so the check does not pass either.
    """

    #: The hand-written gradient is wrong.
    BACKPROP = "backprop"
    #: backprop and autodiff disagree and finite differences cannot tell which is right.
    INCONCLUSIVE = "inconclusive"
    #: ``jax.grad`` of the twin disagrees with finite differences, which agree with backprop.
    TWIN = "twin"
    #: backprop differs, and the user declared it an approximation (``expected=``): not judged.
    DECLARED = "declared"
    #: A non-differentiable point; backprop is a valid (one-sided) subgradient there.
    KINK = "kink"
    #: The formula is right (its float64 re-run agrees); low-precision rounding explains the rest.
    ROUNDING = "rounding"
    #: Finite differences strayed where backprop and autodiff agree: not a bug.
    FD_UNRELIABLE = "fd-unreliable"
    #: All opinions agree.
    OK = "ok"

    __hash__ = str.__hash__  # so that "ok" and Status.OK are one key in a dict or set

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def rank(self) -> int:
        """Position from the most serious (0) to the least."""
        return _ORDER.index(self)

    @property
    def passes(self) -> bool:
        """Whether a leaf with this status passes the check."""
        return self not in (Status.BACKPROP, Status.INCONCLUSIVE)


_ORDER = list(Status)
#: Probe class codes (int8 arrays), in the order of :class:`Status`.
CODES = {status: code for code, status in enumerate(_ORDER)}
#: The status of each probe class code.
STATUS_OF = tuple(_ORDER)
BACKPROP, INCONCLUSIVE, TWIN, DECLARED, KINK, ROUNDING, FD_UNRELIABLE, OK = range(len(_ORDER))

#: Relative tolerance on backprop vs autodiff for float64 (and wider) gradients.
RTOL_FLOAT64 = 1e-7
#: For narrower floats, rtol grows with the dtype's own epsilon from 1e-3 for float32 ...
RTOL_FLOAT32 = 1e-3
#: ... but never more than 1%: a derivative that far off is a formula error, not rounding, in a
#: well-conditioned model (and where rounding really is that large, the float64 re-run says so).
RTOL_CAP = 1e-2
#: The absolute floor is this fraction of rtol times the largest |∂J/∂θ| of the leaf itself.
ATOL_FRACTION = 1e-2
#: Relative tolerance of finite differences (always float64) against autodiff.
FD_RTOL = 1e-6
#: Finite differences whose estimated error exceeds this fraction of the derivative are too
#: imprecise to vouch for either opinion (a step far too large or too small).
FD_USEFUL = 1e-2
#: Safety factor c on the rounding error of a float64 cost, c·u·|J|. The true error is u times
#: the sum of the magnitudes of every intermediate term, which long sums and log(1 − a) near
#: a → 1 make tens to hundreds of times u·|J| (the lesson's network measures about 130).
ROUNDING_SAFETY = 256.0
#: One-sided slope gap at h over the gap at 2h: 1/2 where the cost is smooth, 1 at a kink.
KINK_RATIO = 0.8
#: When all three opinions disagree, the one finite differences sit this many times closer to
#: is believed; otherwise the probe is inconclusive.
CLOSER = 10.0

#: float64's machine epsilon (the rounding unit of every twin evaluation).
U64 = float(np.finfo(np.float64).eps)
_U32 = float(np.finfo(np.float32).eps)


def rtol_for(dtype: np.dtype) -> float:
    """The relative tolerance for a gradient of ``dtype``, from the dtype's own epsilon.

    float64 and wider: 1e-7; narrower floats: 1e-3 × their epsilon over float32's, at most
    1e-2 (float32: 1e-3; float16, bfloat16: 1e-2).

    Examples:
        >>> import numpy as np
        >>> rtol_for(np.dtype(np.float64))
        1e-07
        >>> rtol_for(np.dtype(np.float32))
        0.001
        >>> rtol_for(np.dtype(np.float16))
        0.01
        >>> rtol_for(np.dtype(np.longdouble))
        1e-07
    """
    eps = epsilon(dtype)
    if eps <= U64:
        return RTOL_FLOAT64
    return float(min(RTOL_CAP, RTOL_FLOAT32 * eps / _U32))


def epsilon(dtype: np.dtype) -> float:
    """The machine epsilon of a floating dtype (NumPy's or an ml_dtypes one such as bfloat16)."""
    try:
        return float(np.finfo(dtype).eps)
    except (TypeError, ValueError):  # bfloat16 and other ml_dtypes
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).eps)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How closely two opinions must agree on one leaf.

    Attributes:
        rtol: relative tolerance of backprop against autodiff.
        atol: absolute floor of backprop against autodiff, per entry or one for the leaf.
        fd_rtol: relative tolerance of finite differences against autodiff.
        fd_atol: absolute floor for finite differences.
        scale: the largest |∂J/∂θ| of the leaf (autodiff).
    """

    rtol: float
    atol: np.ndarray | float
    fd_rtol: float
    fd_atol: float
    scale: float


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The classic relative difference ‖a − b‖₂ / (‖a‖₂ + ‖b‖₂); 0 when both are zero.

    Examples:
        >>> import numpy as np
        >>> relative_difference(np.array([2.0]), np.array([1.0]))
        0.333...
        >>> relative_difference(np.zeros(3), np.zeros(3))
        0.0
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        num = float(np.linalg.norm(a - b))
        den = float(np.linalg.norm(a) + np.linalg.norm(b))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    if not np.isfinite(den) or not np.isfinite(num):
        return float("nan") if np.isnan(num) or np.isnan(den) else float("inf")
    return num / den


def rounding(magnitude: Any, h_total: Any, unit: float = U64) -> Any:
    """The one rounding-error formula: ``c·u·|J| / h`` for cost values of size ``|J|``.

    The error of a difference of two cost values of magnitude ``|J|`` computed with rounding
    unit ``u``, divided by the step ``h_total`` (``1.0`` for the difference itself); ``c`` is
    :data:`ROUNDING_SAFETY`.

    Examples:
        >>> float(rounding(1.0, 1.0)) == ROUNDING_SAFETY * U64
        True
    """
    return ROUNDING_SAFETY * unit * magnitude / h_total


def rounding_error(j_up: Any, j_down: Any, h_total: Any, unit: float = U64, xp: Any = np) -> Any:
    """Rounding error of a difference quotient ``(J_up − J_down) / h_total``.

    ``unit`` is the rounding unit the cost values were computed in (float64's by default);
    ``xp`` is ``numpy`` or ``jax.numpy``.
    """
    return rounding(xp.maximum(xp.abs(j_up), xp.abs(j_down)), h_total, unit)


@dataclasses.dataclass
class Opinions:
    """The three opinions on the probes of one leaf (coordinates or directions).

    Attributes:
        backprop: the user's value per probe.
        autodiff: ``jax.grad``'s value per probe.
        finite: central difference per probe.
        slope_up: one-sided slope ``(J(θ+h) − J(θ)) / h``.
        slope_down: one-sided slope ``(J(θ) − J(θ−h)) / h``.
        error: estimated error of ``finite`` (rounding, plus truncation where refined).
        rounding: estimated rounding error of ``finite``.
        slope_error: estimated error of the one-sided slopes (first order in h, plus rounding).
        kink: True where the one-sided slopes reveal a crossed non-differentiable point.
    """

    backprop: np.ndarray
    autodiff: np.ndarray
    finite: np.ndarray
    slope_up: np.ndarray
    slope_down: np.ndarray
    error: np.ndarray
    rounding: np.ndarray
    slope_error: np.ndarray
    kink: np.ndarray


def excess(a: Any, b: Any, rtol: Any, atol: Any, xp: Any = np) -> Any:
    """How far ``|a − b|`` exceeds the tolerance ``rtol·(|a| + |b|) + atol`` (≤ 0: within it).

    ``xp`` is ``numpy`` or ``jax.numpy`` (for a screen computed on the device).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return xp.abs(a - b) - (rtol * (xp.abs(a) + xp.abs(b)) + atol)


def close(a: Any, b: Any, rtol: Any, atol: Any, xp: Any = np) -> Any:
    """``|a − b| ≤ rtol·(|a| + |b|) + atol``, elementwise; NaN and inf are never close.

    ``xp`` is ``numpy`` or ``jax.numpy``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        out = xp.abs(a - b) <= rtol * (xp.abs(a) + xp.abs(b)) + atol
    return out & xp.isfinite(a) & xp.isfinite(b)


def tolerance_excess(a: Any, b: Any, rtol: Any, atol: Any, xp: Any = np) -> Any:
    """How far ``|a − b|`` exceeds ``rtol·(|a| + |b|) + atol`` (≤ 0: :func:`close` when both
    are finite); +inf where the excess is NaN. ``xp`` is ``numpy`` or ``jax.numpy``."""
    gap = excess(a, b, rtol, atol, xp)
    return xp.where(xp.isnan(gap), xp.inf, gap)


def backprop_agrees(bp: np.ndarray, ad: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Where backprop agrees with autodiff (NaN and inf never agree)."""
    return close(bp, ad, tol.rtol, tol.atol)


def suspicious(op: Opinions, tol: Tolerance) -> np.ndarray:
    """Probes whose verdict depends on finite differences being trustworthy there."""
    fd_ok = close(op.finite, op.autodiff, tol.fd_rtol, tol.fd_atol + op.rounding)
    return ~backprop_agrees(op.backprop, op.autodiff, tol) | ~fd_ok


def classify(op: Opinions, tol: Tolerance, *, autodiff: bool = True) -> np.ndarray:
    """Classifies each probe; returns :class:`Status` codes (int8, see ``CODES``).

    - backprop ≈ autodiff: OK when finite differences agree within their estimated error,
      KINK at a kink, FD_UNRELIABLE when they stray beyond it or their error is too large;
    - backprop ≠ autodiff, at a kink, between the one-sided slopes: KINK (a valid subgradient);
    - backprop ≈ finite differences ≠ autodiff: TWIN (jax.grad of the twin is wrong there);
    - finite differences ≈ autodiff ≠ backprop, precise enough to tell them apart: BACKPROP;
    - all three apart: the opinion finite differences sit far closer to wins, else INCONCLUSIVE;
    - a non-finite backprop where autodiff is finite: always BACKPROP.

    With ``autodiff=False`` (no JAX twin: two-way check) ``op.autodiff`` is ignored and backprop
    is judged against finite differences alone.
    """
    bp, fd = op.backprop, op.finite
    ad = op.autodiff if autodiff else fd
    err = op.error
    bp_ad = backprop_agrees(bp, ad, tol)
    fd_ad = close(fd, ad, tol.fd_rtol, tol.fd_atol + err)
    with np.errstate(invalid="ignore", over="ignore"):
        # ... and what the rounding floor allows where the derivative itself is about zero.
        precise = err <= FD_USEFUL * (np.abs(fd) + np.abs(ad) + ATOL_FRACTION * tol.scale) + (
            4 * tol.atol
        )
        # Finite differences can tell backprop from autodiff only where their error is well
        # below the gap between the two.
        separates = 2 * err < np.abs(bp - ad)
        decisive = precise & separates
        bp_fd = close(bp, fd, max(tol.rtol, tol.fd_rtol), tol.atol + err)
        to_bp, to_ad = np.abs(fd - bp), np.abs(fd - ad)
    margin = op.slope_error + tol.atol + tol.rtol * np.abs(bp)
    lo = np.minimum(op.slope_up, op.slope_down) - margin
    hi = np.maximum(op.slope_up, op.slope_down) + margin
    with np.errstate(invalid="ignore"):
        subgradient = op.kink & (bp >= lo) & (bp <= hi)
        # At a kink whose one-sided slopes are known well, a value outside both is wrong.
        slopes_sure = op.slope_error <= FD_USEFUL * (
            np.abs(op.slope_up) + np.abs(op.slope_down) + ATOL_FRACTION * tol.scale
        ) + 4 * np.asarray(tol.atol)
        outside = op.kink & ~subgradient & slopes_sure & np.isfinite(bp)
    out = np.full(bp.shape, INCONCLUSIVE, dtype=np.int8)
    if not autodiff:
        # Finite differences are the only reference: within the dtype's tolerance plus their
        # own error of them is agreement, beyond it (when they can tell) a bug.
        with np.errstate(invalid="ignore", over="ignore"):
            near = close(bp, fd, tol.rtol, tol.atol + 2 * err)
        out[near & precise] = OK
        out[~near & decisive_two_way(bp, fd, err, precise)] = BACKPROP
        out[op.kink & subgradient] = KINK
        out[outside] = BACKPROP
        out[~np.isfinite(bp) & np.isfinite(fd)] = BACKPROP
        return out
    out[bp_ad] = FD_UNRELIABLE
    out[bp_ad & fd_ad & precise] = OK
    out[bp_ad & op.kink] = KINK
    disagree = ~bp_ad & ~subgradient
    out[~bp_ad & subgradient] = KINK
    # Where backprop and autodiff disagree, finite differences side with the one they lie within
    # their own error of (the tolerances of agreement are too coarse to tell two opinions a
    # few 1e-7 apart). Blaming the twin only needs them to separate the two; blaming the
    # user's backprop also needs them precise.
    with np.errstate(invalid="ignore", over="ignore"):
        near_ad = to_ad <= err + tol.fd_atol
        near_bp = to_bp <= err + tol.fd_atol
    out[disagree & near_ad & decisive] = BACKPROP
    out[disagree & bp_fd & ~fd_ad & separates] = TWIN
    out[disagree & near_bp & ~near_ad & separates] = TWIN
    apart = disagree & ~near_ad & ~near_bp
    with np.errstate(invalid="ignore"):
        out[apart & precise & (CLOSER * to_ad < to_bp)] = BACKPROP
        out[apart & separates & (CLOSER * to_bp < to_ad)] = TWIN
    out[~bp_ad & outside] = BACKPROP
    out[~np.isfinite(bp) & np.isfinite(ad)] = BACKPROP
    return out


def decisive_two_way(
    bp: np.ndarray, fd: np.ndarray, err: np.ndarray, precise: np.ndarray
) -> np.ndarray:
    """Where finite differences alone are precise enough to call backprop wrong."""
    with np.errstate(invalid="ignore", over="ignore"):
        return precise & (2 * err < np.abs(bp - fd))


def kinks(
    slope_up: np.ndarray,
    slope_down: np.ndarray,
    slope_up_2h: np.ndarray,
    slope_down_2h: np.ndarray,
    rounding: np.ndarray,
) -> np.ndarray:
    """Where the one-sided slopes disagree the way a crossed kink makes them.

    Where the cost is smooth the gap between the one-sided slopes grows like the step
    (``h·J''``), so doubling the step doubles it; across a kink (ReLU at 0, max, abs) the gap is
    the jump in slope and stays put. The gap must also stand clear of rounding.
    """
    gap = np.abs(slope_up - slope_down)
    gap_2h = np.abs(slope_up_2h - slope_down_2h)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (gap > 8 * rounding) & (gap > KINK_RATIO * gap_2h)
