"""The result of a gradient check: one LeafReport per parameter leaf, and the overall Report.

Reports print as a table, serialise to JSON-ready dicts, render as HTML in Jupyter and plot.
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any, ClassVar, NamedTuple

from jaxcheck._engine.verdict.classify import Status
from jaxcheck._engine.verdict.diagnosis import Diagnosis

__all__ = ["LeafReport", "Report", "Voice"]

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


# Colours of the HTML report, by status. Translucent backgrounds over the page's own colours
# and JupyterLab's theme variables (with fallbacks) read in light and dark themes alike.
_RED = "var(--jp-error-color1,#d32f2f)"
_AMBER = "var(--jp-warn-color1,#e65100)"
_GREEN = "var(--jp-success-color1,#43a047)"
_ROW_STYLES = {
    "backprop": f"background:rgba(229,57,53,0.18);color:{_RED};font-weight:bold",
    "inconclusive": f"background:rgba(251,140,0,0.18);color:{_AMBER};font-weight:bold",
    "twin": f"background:rgba(251,192,45,0.18);color:{_AMBER}",
}
_QUIET_ROW = "background:rgba(127,127,127,0.10)"  # a pass with a note: rounding, kink, ...


def _two_way_note(error: str | None) -> str:
    # The port's error carries the advice of the door that asked for it (check_layer's).
    layer = error is not None and "jax_forward=" in error
    twin = "jax_forward= (a jax.numpy version of forward)" if layer else "jax_cost= (a jax.numpy"
    note = (
        "Two-way check: backprop was judged against finite differences of your NumPy cost alone "
        f"(no jax.grad opinion, no batching). For the third opinion pass {twin}"
        + ("" if layer else " version of your cost)")
    )
    if error:
        first = error.strip().splitlines()
        note += ". The port failed with:\n  " + "\n  ".join(first[:6])
    return note if note.endswith(".") else note + "."


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
        diagnosis: the kind of bug, when the evidence fits one tightly (a
            :class:`~jaxcheck._engine.verdict.diagnosis.Diagnosis` with ``kind`` such as
            ``"swapped"``, ``"mean-for-sum"``, ``"sign"``, ``"transposed"``, ``"regulariser"``,
            ``"offset"``, ``"common-factor"``, and a ``sentence``); None when none does.
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
    diagnosis: Diagnosis | None = None

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


class Voice(NamedTuple):
    """How a door's verdict names what it judges and its references (:meth:`Report._head`).

    Attributes:
        title: what opens the verdict: ``"Hessian-vector product"``, ``"The custom rule of f
            is"``.
        it: the user's function inside a sentence: ``"hvp"``, ``"the rule"``.
        reference: the exact opinion, or None where there is none: ``"the exact product"``.
        fd: the finite differences, or None where there are none.
        fix: what to fix when only the reference is wrong: ``"the twin"``.
    """

    title: str
    it: str
    reference: str | None
    fd: str | None
    fix: str


@dataclasses.dataclass
class Report:
    """The result of :func:`jaxcheck.check`.

    Attributes:
        ok: the verdict: True when no leaf's backprop is judged wrong.
        leaves: path → :class:`LeafReport`, in the user's order (dict insertion order, a
            layer's arguments, an object's ``attributes``).
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
        diagnosis: a diagnosis that spans leaves (``"common-factor"``: every failing leaf is
            (1 + δ)× autodiff with one δ), else None.
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
    diagnosis: Diagnosis | None = None
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
        if self.diagnosis is not None:
            lines.append(self.diagnosis.sentence)
        return "\n".join([f"Gradient WRONG in {', '.join(self.failing)}.", *lines])

    def _head(self, notes: list[str], voice: Voice) -> str:
        """The first sentence of a verdict in a door's own words (``check_hvp``, ``check_rule``).

        Args:
            notes: the sentences that follow it.
            voice: what the door calls what it judges and its references.
        """
        if self.failing:
            return f"{voice.title} WRONG in {', '.join(self.failing)}."
        if self.inconclusive:
            return (
                f"{voice.title} NOT VERIFIED in {', '.join(self.inconclusive)}: {voice.it} and "
                f"{voice.reference} disagree there and finite differences cannot tell which is "
                f"right."
            )
        if any(leaf.status == Status.TWIN for leaf in self.leaves.values()):
            reference = voice.reference or "the reference"
            reference = reference[:1].upper() + reference[1:]
            return (
                f"{reference} disagrees with {voice.fd} where {voice.it} agrees with them: fix "
                f"{voice.fix}; {voice.it} is not blamed."
            )
        witnesses = " and ".join(w for w in (voice.reference, voice.fd) if w)
        return f"{voice.title} correct: it agrees with {witnesses}" + (
            " (notes below)." if notes else "."
        )

    #: The door that made the report, in its JSON (``"hvp"``, ``"rule"``); None for a gradient.
    check_name: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the whole report.

        A report of another door adds ``"check"`` (the door) and its own fields: what was
        checked (``kind``, ``directions``, ``seed``, ...).
        """
        out = {
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
            "diagnosis": None if self.diagnosis is None else dataclasses.asdict(self.diagnosis),
            "precision": self.precision,
            "seconds": self.seconds,
            "verdict": self.verdict,
            "leaves": {p: leaf.to_dict() for p, leaf in self.leaves.items()},
        }
        if self.check_name is not None:
            out["check"] = self.check_name
            own = {f.name for f in dataclasses.fields(Report)}
            for field in dataclasses.fields(self):
                if field.name not in own:
                    value = getattr(self, field.name)
                    out[field.name] = list(value) if isinstance(value, (list, tuple)) else value
        return out

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

    def _extent(self, unit: str) -> str:
        """What was checked, counted: ``"47 parameters in 4 leaves"``."""
        size, n = sum(x.size for x in self.leaves.values()), len(self.leaves)
        return f"{size} {unit} in {n} lea{'f' if n == 1 else 'ves'}"

    def _header(self) -> str:
        head = (
            f"jaxcheck: {self.method} check of {self._extent('parameters')} ({self.dtype} "
            f"system under test, "
        )
        if self.twin == "none":
            return head + f"cost {self.cost:.6g}) — two-way: no JAX twin"
        if not self.autodiff:
            return head + f"{self.twin} JAX twin, cost {self.cost:.6g}) — two-way: no autodiff"
        return head + (
            f"{self.twin} JAX twin, cost {self.cost:.6g}, twin mismatch {self.cost_mismatch:.1e})"
        )

    def _overall(self) -> str:
        """The overall differences; an opinion the check did not form is a dash, never nan."""
        ad = self.autodiff
        return (
            f"overall: bp vs fd {_fmt(self.difference_fd)}, "
            f"bp vs ad {_fmt(self.difference_autodiff if ad else None)}, "
            f"fd vs ad {_fmt(self.difference_fd_autodiff if ad else None)}"
        )

    def __str__(self) -> str:
        rows = [list(self._HEADER), *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADER))]
        lines = [self._header()]
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(self._overall())
        lines.append(self.verdict)
        lines.extend(self._closing_notes())
        return "\n".join(lines)

    def _closing_notes(self) -> list[str]:
        """The notes after the verdict: how a two-way check was judged."""
        if self.twin == "none":
            return [_two_way_note(self.twin_error)]
        if not self.autodiff:
            return [
                "Two-way check: backprop was judged against finite differences alone (no "
                "independent jax.grad opinion)."
            ]
        return []

    def __repr__(self) -> str:
        return f"<jaxcheck.Report ok={self.ok} failing={self.failing}>"

    def _repr_html_(self) -> str:
        """The report as HTML for Jupyter: everything the text says, the table in between.

        The header line, the verdict and every note below the table come from ``str(self)``
        itself, so that the HTML and the text of a report (of any subclass) say the same things.
        """
        text = str(self).splitlines()
        header, tail = text[0], text[len(self.leaves) + 3 :]
        return _html_page(header, self._HEADER, self._table_rows(), tail, ok=self.ok)

    def _table_rows(self) -> list[tuple[str, list[str]]]:
        return [(str(leaf.status), row) for leaf, row in zip(self.leaves.values(), self._rows())]

    def plot(self, ax: Any = None) -> Any:
        """Plots per-leaf differences against the tolerance; see :mod:`jaxcheck.plotting`."""
        from jaxcheck.plotting import plot_report

        return plot_report(self, ax=ax)


def _status_style(status: str) -> str:
    if status in _ROW_STYLES:
        return _ROW_STYLES[status]
    return "" if status == "ok" else _QUIET_ROW


def _html_page(
    header: str,
    columns: tuple[str, ...],
    rows: list[tuple[str, list[str]]],
    tail: list[str],
    *,
    ok: bool,
) -> str:
    """Renders a report's parts as one HTML block that reads in light and dark themes.

    Args:
        header: the report's first line (what was checked; a two-way check says so).
        columns: the table's column names.
        rows: (status, cells) per leaf.
        tail: the text report's lines after the table: overall, verdict, notes.
        ok: the verdict, which colours the verdict's first line.

    Returns:
        The HTML, with inline styles only (Jupyter's sanitizer keeps them).
    """
    esc = html.escape
    cell = "padding:2px 8px;text-align:left;border-bottom:1px solid rgba(127,127,127,0.35)"
    head = "".join(f'<th style="{cell}">{esc(c)}</th>' for c in columns)
    body = "".join(
        f'<tr class="jaxcheck-{esc(status)}" style="{_status_style(status)}">'
        + "".join(f'<td style="{cell}">{esc(c)}</td>' for c in cells)
        + "</tr>"
        for status, cells in rows
    )
    two_way = "two-way" in header
    banner = "border-left:4px solid " + (_AMBER if two_way else "rgba(127,127,127,0.5)")
    parts = [
        '<div class="jaxcheck-report" style="color:inherit;background:transparent;'
        'font-family:var(--jp-content-font-family,sans-serif);line-height:1.4">',
        f'<p style="{banner};padding:2px 8px;margin:4px 0;'
        f'{"font-weight:bold;color:" + _AMBER if two_way else "opacity:0.85"}">{esc(header)}</p>',
    ]
    overall, verdict, notes = (tail[0] if tail else ""), tail[1:2], tail[2:]
    colour = _GREEN if ok else _RED
    parts += [
        f'<p style="color:{colour};font-weight:bold;margin:4px 0">{esc(v)}</p>' for v in verdict
    ]
    parts.append(_notes_html(notes))
    parts.append(
        '<table style="border-collapse:collapse;font-family:var(--jp-code-font-family,monospace);'
        f'color:inherit;background:transparent"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )
    parts.append(f'<p style="opacity:0.85;margin:4px 0">{esc(overall)}</p></div>')
    return "".join(parts)


def _notes_html(lines: list[str]) -> str:
    """The notes below the verdict: sentences as a list, indented lines (a port's error) as code."""
    out: list[str] = []
    code: list[str] = []

    def flush() -> None:
        if code:
            out.append(
                '<pre style="margin:2px 0 2px 16px;padding:4px 8px;background:rgba(127,127,127,'
                f'0.12);color:inherit;white-space:pre-wrap">{html.escape(chr(10).join(code))}</pre>'
            )
            code.clear()

    for line in lines:
        if line.startswith(" "):
            code.append(line[2:] if line.startswith("  ") else line[1:])
            continue
        flush()
        out.append(f'<p style="margin:2px 0">{html.escape(line)}</p>')
    flush()
    return "".join(out)
