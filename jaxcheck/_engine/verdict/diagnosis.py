"""The kind of bug behind a wrong gradient, named only when the evidence fits it tightly.

Each kind is a model of the backprop built from the reference (autodiff, or finite differences
in a two-way check): a sign flip, a factor 1/N or N for a dimension N of the data (a mean where a
sum was meant), a transposed square leaf, a missing or extra term c·θ (a regulariser), a
constant offset, two same-shaped leaves swapped, and the same factor 1 + δ in every leaf. A model
fits when the backprop it predicts passes the check's own tolerance at every entry and leaves
almost none of the difference unexplained; a kind with a free constant is named only when no
other model fits as well. Only leaves whose backprop is judged wrong are diagnosed. NumPy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from jaxcheck._engine.verdict.classify import Status, Tolerance

__all__ = [
    "Diagnosis",
    "Dimension",
    "LeafFacts",
    "diagnose",
    "dimensions_of",
    "facts_of",
    "diagnose_leaf",
]

#: A fitted model may leave at most this fraction of ‖backprop − reference‖ unexplained.
UNEXPLAINED = 1e-2
#: A kind with a free constant (offset, regulariser) needs this many entries it explains.
MIN_ENTRIES = 3
#: "A small relative offset": the common factor 1 + δ has |δ| at most this.
SMALL = 0.2
#: A factor N is named only for dimensions of at least this size (a factor 2 is as often the ½
#: of a squared error as a mean over two rows).
MIN_DIMENSION = 3

SIGN = "sign"
MEAN_FOR_SUM = "mean-for-sum"
SUM_FOR_MEAN = "sum-for-mean"
TRANSPOSED = "transposed"
REGULARISER = "regulariser"
OFFSET = "offset"
SWAPPED = "swapped"
COMMON_FACTOR = "common-factor"


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """The kind of bug a leaf's backprop shows, and a sentence saying where to look.

    Attributes:
        kind: ``"sign"``, ``"mean-for-sum"`` (backprop is 1/N of the reference), ``"sum-for-mean"``
            (N times it), ``"transposed"``, ``"regulariser"`` (backprop − reference = c·θ),
            ``"offset"`` (backprop − reference = c), ``"swapped"`` (holds another leaf's
            gradient, and that leaf holds this one's) or ``"common-factor"`` (every failing leaf
            is (1 + δ)× the reference, with one δ).
        sentence: what the evidence says, and where to look.
        value: the constant of the fit: N, c or δ (None for a sign flip, a transpose or a swap).
        other: the other leaf of a swap, else None.
    """

    kind: str
    sentence: str
    value: float | None = None
    other: str | None = None


@dataclasses.dataclass(frozen=True)
class Dimension:
    """A candidate N: a dimension (or size) of an array the cost reads, and that array's shape."""

    size: int
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LeafFacts:
    """What the diagnosis needs of one leaf; arrays are float64 and flat.

    Attributes:
        path: the leaf's path.
        shape: the leaf's shape.
        theta: the parameter's value.
        backprop: the user's gradient.
        reference: autodiff (or finite differences); NaN where unknown.
        status: the leaf's verdict; only ``Status.BACKPROP`` is diagnosed.
        rtol: the check's relative tolerance for this leaf.
        atol: its absolute floor, per entry.
        witness: what the reference is called in a sentence (``"autodiff"``).
    """

    path: str
    shape: tuple[int, ...]
    theta: np.ndarray
    backprop: np.ndarray
    reference: np.ndarray
    status: Status
    rtol: float
    atol: np.ndarray
    witness: str = "autodiff"

    @property
    def known(self) -> np.ndarray:
        return np.isfinite(self.reference)

    @property
    def complete(self) -> bool:
        return bool(np.all(self.known)) and bool(np.all(np.isfinite(self.backprop)))


def dimensions_of(
    data: Iterable[tuple[int, ...]], params: Iterable[tuple[int, ...]]
) -> list[Dimension]:
    """Candidate N for a mean-for-sum: the data's dimensions and sizes that no parameter has.

    A dimension a parameter also has (the input width n_x is a column count of W1) is left out:
    a factor equal to it is as likely an unrelated constant. Sizes below ``MIN_DIMENSION`` are
    left out too.
    """
    taken = {int(d) for shape in params for d in shape}
    out: dict[int, Dimension] = {}
    for shape in data:
        shape = tuple(int(d) for d in shape)
        sizes = list(shape) + ([math.prod(shape)] if len(shape) > 1 else [])
        for n in sizes:
            if n >= MIN_DIMENSION and n not in taken and n not in out:
                out[n] = Dimension(n, shape)
    return sorted(out.values(), key=lambda d: d.size)


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: np.ndarray | float) -> bool:
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.abs(a - b) <= rtol * (np.abs(a) + np.abs(b)) + atol
    return bool(np.all(ok & np.isfinite(a) & np.isfinite(b)))


def _explains(f: LeafFacts, predicted: np.ndarray) -> bool:
    """Whether ``predicted`` (at the known entries) is the backprop, within the check's tolerance.

    The prediction must pass the tolerance of agreement at every entry and leave at most
    ``UNEXPLAINED`` of the difference between backprop and the reference.
    """
    known = f.known
    bp, ref = f.backprop[known], f.reference[known]
    atol = f.atol[known]
    if bp.size == 0 or not _close(bp, predicted, f.rtol, atol):
        return False
    gap = float(np.linalg.norm(bp - ref))
    return gap > 0 and float(np.linalg.norm(bp - predicted)) <= UNEXPLAINED * gap


def _differs(f: LeafFacts, term: np.ndarray) -> int:
    """How many known entries a fitted term changes by more than the tolerance."""
    known = f.known
    ref = f.reference[known]
    atol = f.atol[known]
    with np.errstate(invalid="ignore", over="ignore"):
        return int(np.sum(np.abs(term) > f.rtol * (2 * np.abs(ref) + np.abs(term)) + atol))


def _least_squares(x: np.ndarray, y: np.ndarray) -> float | None:
    """c minimising ‖y − c·x‖, or None when x is zero."""
    xx = float(x @ x)
    return float(x @ y) / xx if xx > 0 and np.isfinite(xx) else None


def _signed(x: float) -> str:
    return f"{x:.4g}".replace("-", "−")


def _ratio(f: LeafFacts) -> float | None:
    k = f.known
    return _least_squares(f.reference[k], f.backprop[k])


def _factors(f: LeafFacts, dimensions: Sequence[Dimension]) -> list[Diagnosis]:
    """A sign flip, or a factor 1/N or N for a dimension of the data."""
    ref = f.reference[f.known]
    found: list[Diagnosis] = []
    r = _ratio(f)
    if r is None:
        return found

    def near(k: float) -> bool:  # a cheap necessary condition before the fit at every entry
        return abs(r - k) <= 0.25 * abs(k)

    if near(-1.0) and _explains(f, -ref):
        found.append(
            Diagnosis(
                SIGN,
                "A sign flip, exactly: look for A − Y written Y − A, or a minus sign dropped or "
                "doubled.",
            )
        )
    seen = set()
    for dim in dimensions:
        n, shape = dim.size, "×".join(map(str, dim.shape))
        for kind, k in ((MEAN_FOR_SUM, 1.0 / n), (SUM_FOR_MEAN, float(n))):
            if (kind, n) in seen or not near(k) or not _explains(f, k * ref):
                continue
            seen.add((kind, n))
            if kind == MEAN_FOR_SUM:
                sentence = (
                    f"Backprop is exactly 1/{n} of {f.witness}, and {n} is a dimension of the "
                    f"data (an array of shape {shape}): backprop divides by {n} where the cost "
                    f"sums (a mean where a sum was meant, or a division by m done twice)."
                )
            else:
                sentence = (
                    f"The factor is exactly {n}, a dimension of the data (an array of shape "
                    f"{shape}): the cost averages over it and backprop does not divide by it (a "
                    f"sum where a mean was meant: a missing / m)."
                )
            found.append(Diagnosis(kind, sentence, float(n)))
    return found


def _transposed(f: LeafFacts) -> Diagnosis | None:
    if len(f.shape) != 2 or f.shape[0] != f.shape[1] or f.shape[0] < 2 or not f.complete:
        return None
    ref_t = f.reference.reshape(f.shape).T.reshape(-1)
    if not _explains(f, ref_t):
        return None
    return Diagnosis(
        TRANSPOSED,
        f"Backprop is the transpose of {f.witness} (a square leaf hides it from a shape check): "
        f"swap the factors of the product (dZ @ A.T against A.T @ dZ) or drop a .T.",
    )


def _constants(f: LeafFacts) -> list[Diagnosis | None]:
    """The models with a free constant: c·θ (a regulariser), an offset c, and a plain factor.

    Each that fits and changes at least ``MIN_ENTRIES`` entries is returned; the plain factor
    (already reported as ``LeafReport.factor``) only competes, it is never a diagnosis: where it
    fits as well, the list holds None for it.
    """
    k = f.known
    bp, ref, theta = f.backprop[k], f.reference[k], f.theta[k]
    diff = bp - ref
    found: list[Diagnosis | None] = []
    c = _least_squares(theta, diff)
    if c is not None and c != 0 and _differs(f, c * theta) >= MIN_ENTRIES:
        if _explains(f, ref + c * theta):
            if c < 0:
                sentence = (
                    f"Backprop lacks a term {-c:.4g}·{f.path} that the cost's gradient has "
                    f"(backprop − {f.witness} = {_signed(c)}·{f.path}): a regulariser such as "
                    f"λ/m·W missing from backprop, or added with too small a coefficient."
                )
            else:
                sentence = (
                    f"Backprop has an extra term {c:.4g}·{f.path} the cost's gradient does not "
                    f"(backprop − {f.witness} = {_signed(c)}·{f.path}): a regulariser in "
                    f"backprop but not in the cost, added twice or with too large a coefficient."
                )
            found.append(Diagnosis(REGULARISER, sentence, c))
    c = float(np.mean(diff)) if diff.size else 0.0
    if c != 0 and _differs(f, np.full(diff.shape, c)) >= MIN_ENTRIES:
        if _explains(f, ref + c):
            found.append(
                Diagnosis(
                    OFFSET,
                    f"Backprop is {f.witness} {'+' if c > 0 else '−'} {abs(c):.4g} at every "
                    f"entry: a constant added to the whole leaf (a stray term, or a broadcast "
                    f"that adds a scalar).",
                    c,
                )
            )
    r = _ratio(f)
    if r is not None and _explains(f, r * ref):
        found.append(None)  # a plain factor fits as well: neither constant can be claimed
    return found


def diagnose_leaf(f: LeafFacts, dimensions: Sequence[Dimension]) -> Diagnosis | None:
    """The one kind of bug that fits a failing leaf, or None (nothing fits, or several do)."""
    if f.status != Status.BACKPROP or not np.all(np.isfinite(f.backprop)):
        return None
    if not np.any(f.known):
        return None
    exact = _factors(f, dimensions)
    t = _transposed(f)
    if t is not None:
        exact.append(t)
    if exact:
        return exact[0] if len(exact) == 1 else None
    free = _constants(f)
    return free[0] if len(free) == 1 else None


def _swap_sentence(a: LeafFacts, b: LeafFacts) -> str:
    return (
        f"{a.path} holds the gradient of {b.path} and {b.path} holds that of {a.path}: the two "
        f"are swapped (check the keys the gradient is returned under)."
    )


def _swaps(facts: Sequence[LeafFacts]) -> dict[str, Diagnosis]:
    """Pairs of failing same-shaped leaves each of which holds the other's gradient."""
    failing = [f for f in facts if f.status == Status.BACKPROP and f.complete]
    partners: dict[str, list[LeafFacts]] = {f.path: [] for f in failing}
    norms = {f.path: (np.linalg.norm(f.backprop), np.linalg.norm(f.reference)) for f in failing}

    def may_hold(a: LeafFacts, b: LeafFacts) -> bool:
        # ‖a.backprop − b.reference‖ is at least the gap of their norms: a cheap necessary test.
        bp, ref = norms[a.path][0], norms[b.path][1]
        return abs(bp - ref) <= a.rtol * (bp + ref) + float(np.linalg.norm(a.atol))

    for i, a in enumerate(failing):
        for b in failing[i + 1 :]:
            if a.shape != b.shape or not (may_hold(a, b) and may_hold(b, a)):
                continue
            # The swapped reference must explain each backprop; the true one must not.
            if (
                _close(a.backprop, b.reference, a.rtol, a.atol)
                and _close(b.backprop, a.reference, b.rtol, b.atol)
                and not _close(a.reference, b.reference, a.rtol, a.atol)
            ):
                partners[a.path].append(b)
                partners[b.path].append(a)
    out: dict[str, Diagnosis] = {}
    by_path = {f.path: f for f in failing}
    for path, found in partners.items():
        if len(found) == 1 and len(partners[found[0].path]) == 1:
            a, b = by_path[path], found[0]
            out[path] = Diagnosis(SWAPPED, _swap_sentence(a, b), other=b.path)
    return out


def _common_factor(facts: Sequence[LeafFacts]) -> Diagnosis | None:
    """One small δ with backprop = (1 + δ)·reference in every failing leaf (at least two)."""
    failing = [f for f in facts if f.status == Status.BACKPROP]
    if len(failing) < 2 or any(not np.all(np.isfinite(f.backprop)) for f in failing):
        return None
    judged = [f for f in facts if f.status in (Status.BACKPROP, Status.OK)]
    ref = np.concatenate([f.reference[f.known] for f in failing])
    bp = np.concatenate([f.backprop[f.known] for f in failing])
    k = _least_squares(ref, bp)
    if k is None or k == 1 or abs(k - 1) > SMALL:
        return None
    for f in judged:
        if not np.any(f.known) or not _close(
            f.backprop[f.known],
            k * f.reference[f.known],
            f.rtol,
            f.atol[f.known],
        ):
            return None
    if not all(_explains(f, k * f.reference[f.known]) for f in failing):
        return None
    paths = ", ".join(f.path for f in failing)
    return Diagnosis(
        COMMON_FACTOR,
        f"Every failing leaf ({paths}) is {k:.6g}× {failing[0].witness}, the same factor "
        f"1 {'+' if k > 1 else '−'} {abs(k - 1):.3g} in all: the cost and the backprop disagree "
        f"about a constant that scales the whole gradient (an epsilon, m against m − 1, a loss "
        f"weight).",
        k - 1,
    )


def diagnose(
    facts: Sequence[LeafFacts], dimensions: Sequence[Dimension]
) -> tuple[dict[str, Diagnosis], Diagnosis | None]:
    """Diagnoses every failing leaf; returns path → diagnosis and the report-level one.

    A leaf whose evidence fits two kinds gets none (a swap and a kind of its own included); a
    common factor, which spans every failing leaf, is the diagnosis of each of them.
    """
    out: dict[str, Diagnosis] = {}
    for f in facts:
        d = diagnose_leaf(f, dimensions)
        if d is not None:
            out[f.path] = d
    swaps = _swaps(facts)
    # A swap and a leaf's own kind both fit: claim neither, for either leaf of the pair.
    ambiguous = {p for p, d in swaps.items() if p in out or d.other in out}
    for p in ambiguous:
        out.pop(p, None)
    out.update({p: d for p, d in swaps.items() if p not in ambiguous})
    common = _common_factor(facts)
    if common is not None:
        for f in facts:
            if f.status == Status.BACKPROP:
                out[f.path] = common
    return out, common


def facts_of(
    path: str,
    theta: np.ndarray,
    backprop: np.ndarray,
    autodiff: np.ndarray | None,
    status: Status,
    tol: Tolerance,
    *,
    coords: np.ndarray | None = None,
    finite: np.ndarray | None = None,
    error: np.ndarray | None = None,
) -> LeafFacts:
    """One leaf's facts; without autodiff (a two-way check) finite differences are the reference.

    In a two-way check the reference is known only at the probed ``coords``, and the tolerance
    there widens by twice the finite differences' ``error``, as their verdict does.
    """
    bp = np.asarray(backprop).astype(np.float64).reshape(-1)
    atol = np.broadcast_to(np.asarray(tol.atol, np.float64), bp.shape).copy()
    if autodiff is not None:
        ref, witness = np.asarray(autodiff, np.float64).reshape(-1), "autodiff"
    else:
        ref, witness = np.full(bp.shape, np.nan), "finite differences"
        if coords is not None and finite is not None and error is not None:
            ref[coords] = finite
            atol[coords] += 2 * error
    return LeafFacts(
        path=path,
        shape=tuple(np.shape(theta)),
        theta=np.asarray(theta, np.float64).reshape(-1),
        backprop=bp,
        reference=ref,
        status=status,
        rtol=tol.rtol,
        atol=atol,
        witness=witness,
    )
