"""What :func:`jaxcheck.check_hvp` found: tallies per output leaf, and the HvpReport."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxcheck._engine.evaluate.products import SUMS, Chunk
from jaxcheck._engine.system.prepare import System
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Status
from jaxcheck.report import LeafReport, Report

__all__ = ["MAX_KINKS", "HvpReport", "_Tally", "_report"]

if TYPE_CHECKING:
    from jaxcheck._engine.doors.product import _Directions, _Product

#: Most kink entries listed per leaf.
MAX_KINKS = 1000


class _Tally:
    """One output leaf's findings over every chunk of directions."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.size = math.prod(shape)
        self.counts = np.zeros(len(Status), np.int64)
        self.sums = dict.fromkeys(SUMS, 0.0)
        self.worst = (-np.inf, 0, 0, float("nan"), float("nan"))  # excess, direction, entry, bp, ad
        self.kinks: set[int] = set()
        self.directions = 0
        self.step = 0.0
        self.rtol = 0.0

    def add(
        self,
        chunk: Chunk,
        i: int,
        rows: np.ndarray,
        n: int,
        classes: np.ndarray,
        judged_disagree: int,
        kink: np.ndarray,
        entries: np.ndarray,
        steps: np.ndarray,
        rtol: float,
    ) -> None:
        """Adds a chunk: the screen's sums and counts, and the classes of the judged entries.

        Flagged entries left unjudged (beyond :data:`MAX_JUDGED`) count as ``backprop`` where
        hvp disagrees with the exact product and ``fd-unreliable`` elsewhere.
        """
        for key, value in zip(SUMS, chunk.sums[i]):
            self.sums[key] += float(value)
        self.counts += np.bincount(classes, minlength=len(Status))
        flagged = int(chunk.flagged_count[i])
        unjudged = flagged - classes.size
        if unjudged:
            wrong = min(unjudged, max(0, int(chunk.disagree_count[i]) - judged_disagree))
            self.counts[vd.BACKPROP] += wrong
            self.counts[vd.FD_UNRELIABLE] += unjudged - wrong
        self.counts[vd.OK] += rows.size * n - flagged
        excess, r, j, bp, ad = chunk.worst[i]
        if excess > self.worst[0]:
            self.worst = (excess, int(rows[r]), j, bp, ad)
        for j in entries[kink][: max(0, MAX_KINKS - len(self.kinks))]:
            self.kinks.add(int(j))
        self.directions += rows.size
        self.step = max(self.step, float(np.max(steps, initial=0.0)))
        self.rtol = rtol

    @property
    def status(self) -> Status:
        codes = np.flatnonzero(self.counts)
        return list(Status)[int(codes[0])] if codes.size else Status.OK

    def difference(self, a: str, b: str) -> float:
        num = math.sqrt(max(self.sums[f"{a}-{b}"], 0.0))
        den = math.sqrt(self.sums[f"{a}2"]) + math.sqrt(self.sums[f"{b}2"])
        if not (math.isfinite(num) and math.isfinite(den)):
            return float("nan")
        if den == 0.0:
            return 0.0 if num == 0.0 else float("inf")
        return num / den


# --------------------------------------------------------------------------- the report


@dataclasses.dataclass(repr=False)  # keep Report's short repr
class HvpReport(Report):
    """A :class:`~jaxcheck.Report` about a Hessian-vector (or Gauss-Newton) product.

    ``backprop`` in the table is the user's ``hvp``; ``autodiff`` the exact product; ``fd``
    finite differences of the gradient.

    Attributes:
        kind: ``"hessian"`` or ``"gauss_newton"``.
        directions: how many directions were checked.
        seed: the seed of the random directions (unused for the full Hessian).
    """

    kind: str = "hessian"
    directions: int = 0
    seed: int = 0

    @property
    def product(self) -> str:
        """The product in words."""
        return "Gauss-Newton product" if self.kind == "gauss_newton" else "Hessian-vector product"

    @property
    def verdict(self) -> str:
        """The verdict in words, one sentence per finding."""
        notes = [leaf.message for leaf in self.leaves.values() if leaf.message]
        if self.failing:
            head = f"{self.product} WRONG in {', '.join(self.failing)}."
        elif self.inconclusive:
            head = (
                f"{self.product} NOT VERIFIED in {', '.join(self.inconclusive)}: hvp and the "
                f"exact product disagree there and finite differences cannot tell which is right."
            )
        elif any(leaf.status == Status.TWIN for leaf in self.leaves.values()):
            head = (
                "hvp agrees with finite differences of the gradient, but the exact product of "
                "the JAX twin does not: fix the twin; hvp is not blamed."
            )
        else:
            head = f"{self.product} correct: hvp agrees with {_witnesses(self.kind)}" + (
                " (notes below)." if notes else "."
            )
        return "\n".join([head, *notes])

    def _header(self) -> str:
        size = sum(x.size for x in self.leaves.values())
        n = len(self.leaves)
        along = (
            f"full Hessian ({self.directions} basis directions)"
            if self.method == "full"
            else f"{self.directions} random directions (seed {self.seed})"
        )
        return (
            f"jaxcheck: {self.product} check along {along}, {size} parameters in {n} "
            f"lea{'f' if n == 1 else 'ves'} ({self.dtype} hvp, {self.twin} JAX twin, cost "
            f"{self.cost:.6g}, twin mismatch {self.cost_mismatch:.1e})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report, saying what was checked."""
        out = super().to_dict()
        out.update(check="hvp", kind=self.kind, directions=self.directions, seed=self.seed)
        return out


def _witnesses(kind: str) -> str:
    if kind == "gauss_newton":
        return "the exact Gauss-Newton product and finite differences of the linearised gradient"
    return "the exact product and finite differences of the gradient"


def _report(
    system: System,
    cost_mismatch: float,
    tallies: list[_Tally],
    product: _Product,
    source: _Directions,
    kind: str,
    start: float,
) -> Report:
    method = "full" if source.full else "directional"
    leaves = {}
    whole = _Tally(())
    for i, (path, tally) in enumerate(zip(system.leaves.paths, tallies)):
        leaves[path] = _leaf(path, tally, product.dtypes[i], method, source, kind)
        for key, value in tally.sums.items():
            whole.sums[key] += value
    dtype = max(
        [np.dtype(v.dtype) for v in system.leaves.values] + list(product.dtypes), key=vd.epsilon
    )
    return HvpReport(
        ok=all(leaf.status.passes for leaf in leaves.values()),
        leaves=leaves,
        difference_fd=whole.difference("bp", "fd"),
        difference_autodiff=whole.difference("bp", "ad"),
        difference_fd_autodiff=whole.difference("fd", "ad"),
        cost_mismatch=cost_mismatch,
        cost=system.cost,
        method=method,
        dtype=str(dtype),
        twin=system.twin_kind,
        seconds=time.perf_counter() - start,
        kind=kind,
        directions=source.count,
        seed=source.seed,
    )


def _leaf(
    path: str, tally: _Tally, dtype: np.dtype, method: str, source: _Directions, kind: str
) -> LeafReport:
    status = tally.status
    s = tally.sums
    ratio = None
    if s["ad2"] > 0 and math.isfinite(s["ad2"]) and math.isfinite(s["bp_ad"]):
        ratio = s["bp_ad"] / s["ad2"]
    factor = None
    if status == Status.BACKPROP and ratio is not None and round(ratio, 2) != 1.0:
        residual2 = s["bp2"] - 2 * ratio * s["bp_ad"] + ratio**2 * s["ad2"]
        if residual2 <= (1e-3) ** 2 * s["bp2"]:
            factor = ratio
    _, direction, entry, bp, ad = tally.worst
    index = tuple(int(j) for j in np.unravel_index(entry, tally.shape)) if tally.shape else ()
    den = math.sqrt(s["fd2"]) + math.sqrt(s["ad2"])
    leaf = LeafReport(
        path=path,
        shape=tuple(tally.shape),
        dtype=str(dtype),
        status=status,
        ok=status.passes,
        difference_fd=tally.difference("bp", "fd"),
        difference_autodiff=tally.difference("bp", "ad"),
        difference_fd_autodiff=tally.difference("fd", "ad"),
        fd_error=math.sqrt(s["err2"]) / den if den > 0 else 0.0,
        ratio=ratio,
        factor=factor,
        worst_index=index,
        worst_backprop=bp,
        worst_autodiff=ad,
        kinks=sorted(
            tuple(int(j) for j in np.unravel_index(k, tally.shape)) if tally.shape else ()
            for k in tally.kinks
        ),
        wrong=int(tally.counts[vd.BACKPROP]),
        checked=tally.directions,
        size=tally.size,
        method=method,
        step=tally.step,
        rtol=tally.rtol,
        batch_size=0,
    )
    where = f"at {list(index)} along direction {direction}"
    if source.full:
        where = f"at H[{path}{list(index)}, {source.column(direction)}]"
    leaf.message = _message(leaf, tally, where, kind)
    return leaf


def _message(leaf: LeafReport, tally: _Tally, where: str, kind: str) -> str:
    path, status = leaf.path, leaf.status
    entries = tally.size * tally.directions
    exact = "the exact Gauss-Newton product" if kind == "gauss_newton" else "the exact product"
    if status == Status.BACKPROP:
        if not math.isfinite(leaf.worst_backprop) and math.isfinite(leaf.worst_autodiff):
            return (
                f"{path}: hvp is {leaf.worst_backprop} {where} where {exact} is "
                f"{leaf.worst_autodiff:.6g}."
            )
        if leaf.factor is not None:
            if abs(leaf.factor + 1) < 1e-3:
                return f"{path}: hvp has the wrong sign (−1.00× {_witnesses(kind)})."
            return f"{path}: hvp is {leaf.factor:.2f}× {_witnesses(kind)}."
        return (
            f"{path}: hvp disagrees with {_witnesses(kind)} at {leaf.wrong} of {entries} entries "
            f"({tally.directions} directions); worst {where}: hvp {leaf.worst_backprop:.6g}, "
            f"exact {leaf.worst_autodiff:.6g}."
        )
    if status == Status.INCONCLUSIVE:
        count = int(tally.counts[vd.INCONCLUSIVE])
        return (
            f"{path}: hvp and {exact} disagree at {count} of {entries} entries (worst {where}: "
            f"hvp {leaf.worst_backprop:.6g}, exact {leaf.worst_autodiff:.6g}) and finite "
            f"differences of the gradient are too imprecise there to say which is right "
            f"(estimated error {leaf.fd_error:.1e}); not judged. Try another eps=."
        )
    if status == Status.TWIN:
        count = int(tally.counts[vd.TWIN])
        return (
            f"{path}: {exact} of the JAX twin disagrees with finite differences of its gradient "
            f"at {count} entries while hvp agrees with them: the twin's second derivatives are "
            f"wrong there (a custom_jvp or custom_vjp rule, stop_gradient), not your hvp."
        )
    if status == Status.KINK:
        count = len(leaf.kinks) or int(tally.counts[vd.KINK])
        return (
            f"{path}: {count} {'entry sits' if count == 1 else 'entries sit'} on a kink of the "
            f"gradient (its one-sided slopes differ: ReLU, max, abs); hvp lies between them "
            f"there, so this is not a bug."
        )
    if status == Status.FD_UNRELIABLE:
        count = int(tally.counts[vd.FD_UNRELIABLE])
        return (
            f"{path}: finite differences of the gradient strayed at {count} entries where hvp "
            f"and {exact} agree (step {leaf.step:.1e}); not a bug."
        )
    return ""
