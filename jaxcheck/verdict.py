"""Tolerances, finite-difference error estimates and the three-way verdict, per coordinate.

Three opinions of each derivative meet here: backprop (the user's), autodiff (``jax.grad`` of
the twin) and finite differences (of the twin). Two that agree outvote the third.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "FD_RTOL",
    "FD_USEFUL",
    "KINK_RATIO",
    "ROUNDING_SAFETY",
    "STATUSES",
    "Opinions",
    "Tolerance",
    "classify",
    "rounding_error",
    "relative_difference",
    "tolerance_for",
]

#: Leaf statuses, from the most to the least serious.
STATUSES = ("backprop", "twin", "kink", "fd-unreliable", "ok")

# Probe classes (internal codes); their order matches STATUSES.
BACKPROP, TWIN, KINK, FD_UNRELIABLE, OK = range(5)

#: Relative tolerance on backprop vs autodiff, by the itemsize of the backprop gradient.
RTOL_BY_ITEMSIZE = {8: 1e-7, 4: 1e-3, 2: 5e-2}
#: The absolute floor is this fraction of rtol times the largest |∂J/∂θ| of the whole model, so a
#: leaf whose true gradient is zero is judged against the scale of the whole gradient.
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

_U64 = float(np.finfo(np.float64).eps)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How closely two opinions must agree.

    Attributes:
        rtol: relative tolerance of backprop against autodiff (by the gradient's dtype).
        atol: absolute floor, ``rtol · ATOL_FRACTION · scale``.
        fd_rtol: relative tolerance of finite differences against autodiff.
        fd_atol: absolute floor for finite differences.
        scale: the largest |∂J/∂θ| of the whole model (autodiff), the gradient's scale.
    """

    rtol: float
    atol: float
    fd_rtol: float
    fd_atol: float
    scale: float


def tolerance_for(dtype: np.dtype, scale: float, rtol: float | None = None) -> Tolerance:
    """The tolerance for a backprop gradient of ``dtype`` whose model-wide scale is ``scale``.

    Args:
        dtype: dtype of the user's gradient leaf (float64, float32, float16, bfloat16).
        scale: largest absolute gradient entry of the whole model.
        rtol: overrides the dtype's relative tolerance.

    Returns:
        The :class:`Tolerance`.

    Examples:
        >>> import numpy as np
        >>> tolerance_for(np.dtype(np.float64), 1.0).rtol
        1e-07
        >>> tolerance_for(np.dtype(np.float32), 1.0).rtol
        0.001
    """
    if rtol is None:
        rtol = RTOL_BY_ITEMSIZE.get(np.dtype(dtype).itemsize, 5e-2)
    scale = float(scale) if np.isfinite(scale) else 0.0
    return Tolerance(
        rtol=float(rtol),
        atol=float(rtol) * ATOL_FRACTION * scale,
        fd_rtol=FD_RTOL,
        fd_atol=FD_RTOL * ATOL_FRACTION * scale,
        scale=scale,
    )


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


def rounding_error(j_up: np.ndarray, j_down: np.ndarray, h_total: np.ndarray) -> np.ndarray:
    """Rounding error of a float64 difference quotient ``(J_up − J_down) / h_total``."""
    mags = np.maximum(np.abs(j_up), np.abs(j_down))
    return ROUNDING_SAFETY * _U64 * mags / h_total


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
        refined: True where the probe was also evaluated at step 2h.
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
    refined: np.ndarray


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: np.ndarray | float) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs(a - b) <= rtol * (np.abs(a) + np.abs(b)) + atol


def backprop_agrees(bp: np.ndarray, ad: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Where backprop agrees with autodiff (NaN and inf never agree)."""
    return _close(bp, ad, tol.rtol, tol.atol)


def suspicious(op: Opinions, tol: Tolerance) -> np.ndarray:
    """Probes whose verdict depends on finite differences being trustworthy there."""
    fd_ok = _close(op.finite, op.autodiff, tol.fd_rtol, tol.fd_atol + op.rounding)
    return ~backprop_agrees(op.backprop, op.autodiff, tol) | ~fd_ok


def classify(op: Opinions, tol: Tolerance) -> np.ndarray:
    """Classifies each probe: BACKPROP, TWIN, KINK, FD_UNRELIABLE or OK (internal codes).

    - backprop ≈ autodiff: OK when finite differences agree within their estimated error,
      KINK at a kink, FD_UNRELIABLE when they stray beyond it or their error is too large;
    - backprop ≠ autodiff, at a kink, between the one-sided slopes: KINK (a valid subgradient);
    - backprop ≈ finite differences ≠ autodiff: TWIN (jax.grad of the twin is wrong there);
    - otherwise: BACKPROP.
    """
    bp, ad, fd = op.backprop, op.autodiff, op.finite
    bp_ad = backprop_agrees(bp, ad, tol)
    fd_ad = _close(fd, ad, tol.fd_rtol, tol.fd_atol + op.error)
    # Finite differences whose own error estimate is too large cannot vouch for anything.
    with np.errstate(invalid="ignore"):
        precise = op.error <= FD_USEFUL * (np.abs(fd) + np.abs(ad) + ATOL_FRACTION * tol.scale)
    bp_fd = _close(bp, fd, max(tol.rtol, tol.fd_rtol), tol.atol + op.error)
    margin = op.slope_error + tol.atol + tol.rtol * np.abs(bp)
    lo = np.minimum(op.slope_up, op.slope_down) - margin
    hi = np.maximum(op.slope_up, op.slope_down) + margin
    with np.errstate(invalid="ignore"):
        subgradient = op.kink & (bp >= lo) & (bp <= hi)
    out = np.full(bp.shape, BACKPROP, dtype=np.int8)
    out[bp_ad] = FD_UNRELIABLE
    out[bp_ad & fd_ad & precise] = OK
    out[bp_ad & op.kink] = KINK
    out[~bp_ad & subgradient] = KINK
    out[~bp_ad & ~subgradient & bp_fd & ~fd_ad & precise] = TWIN
    return out


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
