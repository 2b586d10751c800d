"""The result of a gradient check: one LeafReport per parameter leaf, and the overall Report.

Reports print as a table, serialise to JSON-ready dicts, render as HTML in Jupyter and plot.
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any

from jaxcheck._engine.verdict.classify import Status

__all__ = ["LeafReport", "Report"]

_STATUS_WORDS = {
    "ok": "correct",
    "backprop": "BACKPROP WRONG",
    "inconclusive": "INCONCLUSIVE",
    "twin": "twin's autodiff wrong",
    "declared": "declared approximation",
    "kink": "correct (kink)",
    "rounding": "correct (rounding)",
    "fd-unreliable": "correct (FD unreliable)",
}


# Row styles of the HTML table, by status: the backprop's failures stand out most.
_ROW_STYLES = {
    "backprop": "background:#fdd;color:#b00;font-weight:bold",
    "inconclusive": "background:#fed;color:#a40;font-weight:bold",
    "rounding": "background:#f4f4f4",
    "twin": "background:#ffd;color:#850",
    "kink": "background:#f4f4f4",
    "fd-unreliable": "background:#f4f4f4",
}


def _two_way_note(error: str | None) -> str:
    note = (
        "Two-way check: backprop was judged against finite differences of your NumPy cost alone "
        "(no jax.grad opinion, no batching). For the third opinion pass jax_cost= (a jax.numpy "
        "version of your cost)"
    )
    if error:
        first = error.strip().splitlines()
        note += ". The port failed with:\n  " + "\n  ".join(first[:6])
    return note + "."


def _fmt(x: float | None, spec: str = ".2e") -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return format(x, spec)


def _json_float(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isfinite(x):
        return float(x)
    return str(x)


@dataclasses.dataclass
class LeafReport:
    """The verdict on one leaf of params.

    Attributes:
        path: the leaf's path, e.g. ``"W1"`` or ``"layers/0/b"``.
        shape: the leaf's shape.
        dtype: dtype of the user's gradient for this leaf.
        status: a :class:`jaxcheck.Status` (a ``str``): ``"ok"``; ``"backprop"`` (the
            hand-written gradient is wrong); ``"inconclusive"`` (backprop and autodiff disagree
            and finite differences are too imprecise to say which is right); ``"twin"``
            (``jax.grad`` of the JAX twin disagrees with finite differences while backprop agrees
            with them); ``"kink"`` (a non-differentiable point was crossed; backprop is a valid
            subgradient there, one entry at a time and jointly); ``"rounding"`` (a
            low-precision backprop whose float64 re-run agrees: the formula is right and
            rounding explains the rest); ``"fd-unreliable"`` (finite differences strayed where
            backprop and autodiff agree: not a bug); ``"declared"`` (backprop differs, and the
            user declared it an approximation with ``expected={path: "surrogate"}``: shown, not
            judged, never failing).
        ok: False when the backprop is judged wrong or the verdict is inconclusive.
        difference_fd: classic difference of backprop vs finite differences (checked probes).
        difference_autodiff: classic difference of backprop vs ``jax.grad`` (every entry).
        difference_fd_autodiff: classic difference of finite differences vs ``jax.grad``.
        fd_error: the estimated error of the finite differences, in the same relative units:
            rounding for every probe, plus truncation (from a second step 2h) where a probe was
            also evaluated at 2h.
        ratio: least-squares k with backprop ≈ k·autodiff (None when autodiff is zero).
        factor: k when backprop *is* k·autodiff (a scaled or sign-flipped gradient, such as
            2.0 for a gradient twice too big); None when the difference is not a factor.
        worst_index: index of the largest disagreement of backprop with autodiff.
        worst_backprop: backprop's value there.
        worst_autodiff: autodiff's value there.
        kinks: indices (tuples) where the one-sided slopes revealed a kink.
        wrong: number of entries (or directions) judged wrong.
        checked: number of probes that finite differences evaluated.
        size: number of entries in the leaf.
        method: ``"full"``, ``"sample"`` or ``"directional"``.
        step: the finite-difference step (the largest used in this leaf).
        rtol: the relative tolerance of backprop vs autodiff for this leaf's dtype.
        batch_size: perturbations per vmapped batch (per device).
        rounding_difference: for status ``"rounding"``, the classic difference of the
            low-precision backprop from autodiff that rounding explains; else None.
        joint: (directions tested, directions failed) of the joint test of the leaf's kinks.
        expected: what the user declared the leaf's backprop to be (``"surrogate"``), or None.
        found: for status ``"declared"``, the status the opinions gave (``"backprop"`` or
            ``"inconclusive"``) before the declaration; else None.
        message: a sentence saying what is wrong, when something is.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    status: Status
    ok: bool
    difference_fd: float
    difference_autodiff: float
    difference_fd_autodiff: float
    fd_error: float
    ratio: float | None
    factor: float | None
    worst_index: tuple[int, ...] | None
    worst_backprop: float | None
    worst_autodiff: float | None
    kinks: list[tuple[int, ...]]
    wrong: int
    checked: int
    size: int
    method: str
    step: float
    rtol: float
    batch_size: int
    rounding_difference: float | None = None
    joint: tuple[int, int] = (0, 0)
    expected: str | None = None
    found: Status | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite floats become strings)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, float) or value is None:
                out[key] = _json_float(value)
        out["status"] = str(self.status)
        out["shape"] = list(self.shape)
        out["worst_index"] = None if self.worst_index is None else list(self.worst_index)
        out["kinks"] = [list(k) for k in self.kinks]
        out["joint"] = list(self.joint)
        out["found"] = None if self.found is None else str(self.found)
        return out


@dataclasses.dataclass
class Report:
    """The result of :func:`jaxcheck.check`.

    Attributes:
        ok: the verdict: True when no leaf's backprop is judged wrong.
        leaves: path → :class:`LeafReport`, in ``jax.tree_util`` order (dict keys sorted).
        difference_fd: classic difference of backprop vs finite differences over all checked
            probes.
        difference_autodiff: classic difference of backprop vs ``jax.grad`` over all entries.
        difference_fd_autodiff: classic difference of finite differences vs ``jax.grad``.
        cost_mismatch: relative difference of the NumPy cost and the JAX twin's cost at θ.
        cost: the NumPy cost at θ.
        method: the method used.
        dtype: the precision of the system under test (lowest among params and gradient).
        twin: how the JAX twin was obtained: ``"given"``, ``"ported"``, or ``"none"`` for a
            two-way check (backprop against finite differences of the NumPy cost alone).
        seconds: wall time of the check.
        twin_error: why there is no twin in a two-way check (the port's error), else None.
        autodiff: False for a two-way check: backprop judged against finite differences alone.
        precision: when the cost computes below float64 inside, where, and the tolerance every
            leaf was judged at; else None.
    """

    ok: bool
    leaves: dict[str, LeafReport]
    difference_fd: float
    difference_autodiff: float
    difference_fd_autodiff: float
    cost_mismatch: float
    cost: float
    method: str
    dtype: str
    twin: str
    seconds: float
    twin_error: str | None = None
    autodiff: bool = True
    precision: str | None = None

    @property
    def failing(self) -> list[str]:
        """Paths of the leaves whose backprop is wrong."""
        return [p for p, leaf in self.leaves.items() if leaf.status == Status.BACKPROP]

    @property
    def inconclusive(self) -> list[str]:
        """Paths of the leaves no opinion could settle (they do not pass either)."""
        return [p for p, leaf in self.leaves.items() if leaf.status == Status.INCONCLUSIVE]

    @property
    def declared(self) -> list[str]:
        """Paths of the leaves whose difference was declared an approximation (not judged)."""
        return [p for p, leaf in self.leaves.items() if leaf.status == Status.DECLARED]

    @property
    def verdict(self) -> str:
        """The verdict in words, one sentence per finding."""
        lines = []
        for leaf in self.leaves.values():
            if leaf.message:
                lines.append(leaf.message)
        if self.precision:
            lines.append(self.precision)
        if self.ok:
            if not self.autodiff:
                head = "Gradient correct: backprop agrees with finite differences."
            else:
                head = "Gradient correct: backprop agrees with autodiff and finite differences."
            if lines:
                head = head.split(" and finite")[0].rstrip(".") + " (notes below)."
            if any(leaf.status == "twin" for leaf in self.leaves.values()):
                head = (
                    "Backprop agrees with finite differences, but jax.grad of the JAX twin does "
                    "not: fix the twin (jax_cost); the backprop is not blamed."
                )
            elif self.declared:
                head = (
                    f"Gradient correct where judged; {', '.join(self.declared)}: approximation "
                    f"declared (expected=), differences shown below, not judged."
                )
            return "\n".join([head, *lines])
        if not self.failing:
            return "\n".join(
                [
                    f"Gradient NOT VERIFIED in {', '.join(self.inconclusive)}: backprop and "
                    f"autodiff disagree there and finite differences cannot tell which is right.",
                    *lines,
                ]
            )
        return "\n".join([f"Gradient WRONG in {', '.join(self.failing)}.", *lines])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report."""
        return {
            "ok": self.ok,
            "failing": self.failing,
            "inconclusive": self.inconclusive,
            "declared": self.declared,
            "difference_fd": _json_float(self.difference_fd),
            "difference_autodiff": _json_float(self.difference_autodiff),
            "difference_fd_autodiff": _json_float(self.difference_fd_autodiff),
            "cost_mismatch": _json_float(self.cost_mismatch),
            "cost": _json_float(self.cost),
            "method": self.method,
            "dtype": self.dtype,
            "twin": self.twin,
            "twin_error": self.twin_error,
            "autodiff": self.autodiff,
            "precision": self.precision,
            "seconds": self.seconds,
            "verdict": self.verdict,
            "leaves": {p: leaf.to_dict() for p, leaf in self.leaves.items()},
        }

    def _rows(self) -> list[list[str]]:
        rows = []
        for leaf in self.leaves.values():
            checked = f"{leaf.checked}" if leaf.method == "full" else f"{leaf.checked}/{leaf.size}"
            if leaf.method == "directional":
                checked = f"{leaf.checked} dir"
            rows.append(
                [
                    leaf.path,
                    "×".join(map(str, leaf.shape)) or "()",
                    checked,
                    _fmt(leaf.difference_fd),
                    _fmt(leaf.difference_autodiff) if self.autodiff else "—",
                    _fmt(leaf.difference_fd_autodiff) if self.autodiff else "—",
                    _fmt(leaf.fd_error),
                    _fmt(leaf.ratio, ".3g")
                    if leaf.status in ("ok", "backprop", "declared")
                    else "—",
                    "—"
                    if leaf.worst_index is None or leaf.status == "ok"
                    else str(tuple(leaf.worst_index)),
                    str(len(leaf.kinks)) if leaf.kinks else "",
                    _STATUS_WORDS.get(str(leaf.status), str(leaf.status)),
                ]
            )
        return rows

    _HEADER = (
        "leaf",
        "shape",
        "checked",
        "bp vs fd",
        "bp vs ad",
        "fd vs ad",
        "fd error",
        "ratio",
        "worst",
        "kinks",
        "status",
    )

    def _header(self) -> str:
        size = sum(x.size for x in self.leaves.values())
        head = (
            f"jaxcheck: {self.method} check of {size} parameters in {len(self.leaves)} "
            f"lea{'f' if len(self.leaves) == 1 else 'ves'} ({self.dtype} system under test, "
        )
        if self.twin == "none":
            return head + f"cost {self.cost:.6g}) — two-way: no JAX twin"
        if not self.autodiff:
            return head + f"{self.twin} JAX twin, cost {self.cost:.6g}) — two-way: no autodiff"
        return head + (
            f"{self.twin} JAX twin, cost {self.cost:.6g}, twin mismatch {self.cost_mismatch:.1e})"
        )

    def __str__(self) -> str:
        rows = [list(self._HEADER), *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADER))]
        lines = [self._header()]
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(
            f"overall: bp vs fd {_fmt(self.difference_fd)}, bp vs ad "
            f"{_fmt(self.difference_autodiff)}, fd vs ad {_fmt(self.difference_fd_autodiff)}"
        )
        lines.append(self.verdict)
        if self.twin == "none":
            lines.append(_two_way_note(self.twin_error))
        elif not self.autodiff:
            lines.append(
                "Two-way check: backprop was judged against finite differences alone (no "
                "independent jax.grad opinion)."
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<jaxcheck.Report ok={self.ok} failing={self.failing}>"

    def _repr_html_(self) -> str:
        """The report as an HTML table for Jupyter: the verdict first, failing leaves in red."""
        cell = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"
        head = "".join(f'<th style="{cell}">{html.escape(h)}</th>' for h in self._HEADER)
        body = []
        for leaf, row in zip(self.leaves.values(), self._rows()):
            style = _ROW_STYLES.get(leaf.status, "")
            cells = "".join(f'<td style="{cell}">{html.escape(c)}</td>' for c in row)
            body.append(
                f'<tr class="jaxcheck-{html.escape(str(leaf.status))}" style="{style}">{cells}</tr>'
            )
        colour = "#070" if self.ok else "#b00"
        verdict = "<br>".join(html.escape(line) for line in self.verdict.splitlines())
        size = sum(x.size for x in self.leaves.values())
        return (
            f'<div class="jaxcheck-report">'
            f'<p style="color:{colour};font-weight:bold">{verdict}</p>'
            f'<table style="border-collapse:collapse;font-family:monospace">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p>overall: bp vs fd {_fmt(self.difference_fd)}, bp vs ad "
            f"{_fmt(self.difference_autodiff)}, fd vs ad {_fmt(self.difference_fd_autodiff)}; "
            f"{html.escape(self.method)} check of {size} parameters in {len(self.leaves)} leaves, "
            f"{html.escape(self.dtype)} system under test, {html.escape(self.twin)} JAX twin, "
            f"cost {self.cost:.6g}, twin mismatch {_fmt(self.cost_mismatch, '.1e')}</p></div>"
        )

    def plot(self, ax: Any = None) -> Any:
        """Plots per-leaf differences against the tolerance; see :mod:`jaxcheck.plotting`."""
        from jaxcheck.plotting import plot_report

        return plot_report(self, ax=ax)
