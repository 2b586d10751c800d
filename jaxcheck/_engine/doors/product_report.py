"""What :func:`jaxcheck.check_hvp` found: tallies per output leaf, and the HvpReport."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from jaxcheck._engine.evaluate.products import SUMS, Chunk, ProductSpec
from jaxcheck._engine.system.prepare import System
from jaxcheck._engine.verdict import classify as vd
from jaxcheck._engine.verdict.classify import Status
from jaxcheck.report import LeafReport, Report, Voice

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
        # The screen's sums, and bp², ad² over the probes that have finite differences.
        self.sums = dict.fromkeys((*SUMS, "fdbp2", "fdad2"), 0.0)
        self.worst = (-np.inf, 0, 0, float("nan"), float("nan"))  # excess, direction, entry, bp, ad
        self.kinks: set[int] = set()
        self.probe_kinks = False  # the probe w crossed a kink where nothing else was flagged
        self.finite_differences = False  # whether any were taken (else their differences: NaN)
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
        self.finite_differences = True
        for key, value in zip(SUMS, chunk.sums[i]):
            self.sums[key] += float(value)
        self.sums["fdbp2"] += float(chunk.sums[i][0])
        self.sums["fdad2"] += float(chunk.sums[i][1])
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

    def add_exact(
        self,
        rows: np.ndarray,
        bp: np.ndarray,
        ad: np.ndarray,
        excess: np.ndarray,
        steps: np.ndarray,
        rtol: float,
    ) -> None:
        """Adds directions judged against the exact product alone (``excess``: how far each
        entry is beyond tolerance): agreeing entries are ``ok``, the others ``backprop``."""
        if rows.size == 0:
            return
        agree = excess <= 0
        self.counts[vd.OK] += int(np.sum(agree))
        self.counts[vd.BACKPROP] += int(np.sum(~agree))
        with np.errstate(invalid="ignore", over="ignore"):
            for key, value in (("bp2", bp * bp), ("ad2", ad * ad), ("bp_ad", bp * ad)):
                self.sums[key] += float(np.sum(value))
            self.sums["bp-ad"] += float(np.sum((bp - ad) ** 2))
        if excess.size:
            r, j = np.unravel_index(int(np.argmax(excess)), excess.shape)
            if excess[r, j] > self.worst[0]:
                self.worst = (float(excess[r, j]), int(rows[r]), int(j), bp[r, j], ad[r, j])
        self.directions += rows.size
        self.step = max(self.step, float(np.max(steps, initial=0.0)))
        self.rtol = rtol

    def add_probe(
        self, bp: np.ndarray, ad: np.ndarray, fd: np.ndarray, err: np.ndarray, kinks: np.ndarray
    ) -> None:
        """Adds the finite differences along a probe direction that is not one of the check's
        (its entries are not counted; they enter the differences with finite differences), and
        the entries where it crossed a kink of the gradient."""
        self.finite_differences = True
        if kinks.size:
            self.probe_kinks = True
            for j in kinks[: max(0, MAX_KINKS - len(self.kinks))]:
                self.kinks.add(int(j))
        with np.errstate(invalid="ignore", over="ignore"):
            for key, value in (
                ("fdbp2", bp * bp),
                ("fdad2", ad * ad),
                ("fd2", fd * fd),
                ("bp-fd", (bp - fd) ** 2),
                ("fd-ad", (fd - ad) ** 2),
                ("err2", err * err),
            ):
                self.sums[key] += float(np.sum(value))

    @property
    def status(self) -> Status:
        codes = np.flatnonzero(self.counts)
        code = int(codes[0]) if codes.size else vd.OK
        if self.probe_kinks:
            code = min(code, vd.KINK)
        return list(Status)[code]

    def difference(self, a: str, b: str) -> float:
        """The classic relative difference of two opinions, over the probes both were taken on
        (finite differences: only where they were)."""
        prefix = "fd" if "fd" in (a, b) else ""
        if prefix and not self.finite_differences:
            return float("nan")
        norms = [self.sums["fd2" if x == "fd" else f"{prefix}{x}2"] for x in (a, b)]
        num = math.sqrt(max(self.sums[f"{a}-{b}"], 0.0))
        den = math.sqrt(norms[0]) + math.sqrt(norms[1])
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
        directions: how many directions were checked (each leaf along every one of them).
        seed: the seed of the random directions (and of their norms and the probe ``w``).
        title: the product in words (``"Hessian-vector product"``).
        noun: the user's function in sentences (``"hvp"``).
        reference: the exact product in words.
        finite_differences: what the finite differences are of, in words (None: not taken).
        nonlinear: the leaves where the product failed the linearity test.
    """

    check_name: ClassVar[str | None] = "hvp"

    kind: str = "hessian"
    directions: int = 0
    seed: int = 0
    title: str = "Hessian-vector product"
    noun: str = "hvp"
    reference: str = "the exact product"
    finite_differences: str | None = "finite differences of the gradient"
    nonlinear: list[str] = dataclasses.field(default_factory=list)

    @property
    def witnesses(self) -> str:
        """The references the product is judged against, in words."""
        return " and ".join(w for w in (self.reference, self.finite_differences) if w)

    @property
    def product(self) -> str:
        """The product in words."""
        return self.title

    @property
    def verdict(self) -> str:
        """The verdict in words, one sentence per finding."""
        notes = [leaf.message for leaf in self.leaves.values() if leaf.message]
        voice = Voice(self.title, self.noun, self.reference, self.finite_differences, "the twin")
        return "\n".join([self._head(notes, voice), *notes])

    def _header(self) -> str:
        along = (
            f"full Hessian ({self.directions} basis directions)"
            if self.method == "full"
            else f"{self.directions} random directions (seed {self.seed})"
        )
        return (
            f"jaxcheck: {self.title} check along {along}, {self._extent('parameters')} "
            f"({self.dtype} {self.noun}, {self.twin} JAX twin, "
            f"cost {self.cost:.6g}, twin mismatch {self.cost_mismatch:.1e})"
        )


def _report(
    system: System,
    cost_mismatch: float,
    tallies: list[_Tally],
    product: _Product,
    source: _Directions,
    spec: ProductSpec,
    findings: dict[str, str],
    start: float,
) -> HvpReport:
    method = "full" if source.full else "directional"
    leaves = {}
    whole = _Tally(())
    for i, (path, tally) in enumerate(zip(system.leaves.paths, tallies)):
        leaf = _leaf(path, tally, product.dtypes[i], method, source, spec)
        if path in findings:
            # Not linear in v: wrong whatever the directions say (the true product is linear).
            leaf.status, leaf.ok = Status.BACKPROP, False
            if leaf.message:
                leaf.message = f"{leaf.message.rstrip('.')}; and {findings[path]}"
            else:
                leaf.message = f"{path}: {findings[path]}"
        leaves[path] = leaf
        for key, value in tally.sums.items():
            whole.sums[key] += value
        whole.finite_differences |= tally.finite_differences
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
        kind=spec.kind,
        directions=source.count,
        seed=source.seed,
        title=spec.title,
        noun=spec.noun,
        reference=spec.exact,
        finite_differences=spec.finite_differences,
        nonlinear=[p for p in system.leaves.paths if p in findings],
    )


def _leaf(
    path: str, tally: _Tally, dtype: np.dtype, method: str, source: _Directions, spec: ProductSpec
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
    den = math.sqrt(s["fd2"]) + math.sqrt(s["fdad2"])
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
        worst_backprop=float(bp),
        worst_autodiff=float(ad),
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
    leaf.message = _message(leaf, tally, where, spec)
    return leaf


#: The sentence of each status that is not the user's fault, filled from the leaf, the tally
#: and the specification; a BACKPROP leaf gets the most specific of :func:`_wrong`'s sentences.
_SENTENCES = {
    Status.INCONCLUSIVE: (
        "{path}: {noun} and {exact} disagree at {count} of {entries} entries (worst {where}: "
        "{noun} {bp:.6g}, exact {ad:.6g}) and {fd} are too imprecise there to say which is right "
        "(estimated error {fd_error:.1e}); not judged. Try another eps=."
    ),
    Status.TWIN: (
        "{path}: {exact} of the JAX twin disagrees with {fd} at {count} entries while {noun} "
        "agrees with them: the twin's second derivatives are wrong there (a custom_jvp or "
        "custom_vjp rule, stop_gradient), not your {noun}."
    ),
    Status.KINK: (
        "{path}: {count} {sit} on a kink of the gradient (its one-sided slopes differ: ReLU, max, "
        "abs); {noun} lies between them there, so this is not a bug."
    ),
    Status.FD_UNRELIABLE: (
        "{path}: {fd} strayed at {count} entries where {noun} and {exact} agree (step "
        "{step:.1e}); not a bug."
    ),
}
#: The verdict class counted in each status's sentence.
_COUNTED = {
    Status.INCONCLUSIVE: vd.INCONCLUSIVE,
    Status.TWIN: vd.TWIN,
    Status.KINK: vd.KINK,
    Status.FD_UNRELIABLE: vd.FD_UNRELIABLE,
}


def _message(leaf: LeafReport, tally: _Tally, where: str, spec: ProductSpec) -> str:
    entries = tally.size * tally.directions
    if leaf.status == Status.BACKPROP:
        return _wrong(leaf, tally, where, spec, entries)
    if leaf.status not in _SENTENCES:
        return ""
    count = int(tally.counts[_COUNTED[leaf.status]])
    if leaf.status == Status.KINK:
        count = len(leaf.kinks) or count
    return _SENTENCES[leaf.status].format(
        path=leaf.path,
        noun=spec.noun,
        exact=spec.exact,
        fd=spec.finite_differences,
        count=count,
        entries=entries,
        where=where,
        bp=leaf.worst_backprop,
        ad=leaf.worst_autodiff,
        fd_error=leaf.fd_error,
        step=leaf.step,
        sit="entry sits" if count == 1 else "entries sit",
    )


def _wrong(leaf: LeafReport, tally: _Tally, where: str, spec: ProductSpec, entries: int) -> str:
    """The sentence of a leaf where the user's product is wrong: a value, a factor, or a count."""
    path, noun = leaf.path, spec.noun
    _, _, _, bp, ad = tally.worst
    if not math.isfinite(bp) and math.isfinite(ad):
        return f"{path}: {noun} is {float(bp)} {where} where {spec.exact} is {float(ad):.6g}."
    if leaf.factor is not None:
        if abs(leaf.factor + 1) < 1e-3:
            return f"{path}: {noun} has the wrong sign (−1.00× {spec.witnesses})."
        return f"{path}: {noun} is {leaf.factor:.2f}× {spec.witnesses}."
    return (
        f"{path}: {noun} disagrees with {spec.witnesses} at {leaf.wrong} of {entries} entries "
        f"({tally.directions} directions); worst {where}: {noun} {leaf.worst_backprop:.6g}, "
        f"exact {leaf.worst_autodiff:.6g}."
    )
