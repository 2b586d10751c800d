"""Pictures of a gradient check: per-leaf differences against their tolerances, and step sweeps.

matplotlib is optional (``pip install "jaxcheck[plot]"``); it is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxcheck.errors import MissingDependencyError

if TYPE_CHECKING:
    from jaxcheck.report import Report

__all__ = ["FLOOR", "MissingDependencyError", "plot_report", "plot_step_sweep"]

#: Where a difference of exactly zero is drawn on the log scale (the seed formula is never above 1).
FLOOR = 1e-17

# The seed formula ‖a − b‖ / (‖a‖ + ‖b‖) is at most 1; NaN (a non-finite gradient) is drawn there.
_CEILING = 1.0
_RED = "#c00000"
_AMBER = "#b06000"
_GREEN = "#007000"
_FD_COLOUR = "tab:blue"
_AD_COLOUR = "tab:green"


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise MissingDependencyError(
            'jaxcheck plots need matplotlib, which is not installed: pip install "jaxcheck[plot]" '
            "(or pip install matplotlib). The report itself needs no plot: print(report) shows "
            "the same numbers as a table."
        ) from err
    return plt


def _new_axes(plt: Any, ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """Returns (figure, axes), drawing into ``ax`` when given.

    A new figure is made with pyplot (so that Jupyter's inline backend can render it) and then
    closed in pyplot: it is shown once when it is a cell's value, and never accumulates.
    """
    if ax is not None:
        return ax.figure, ax
    fig = plt.figure(figsize=figsize)
    plt.close(fig)
    return fig, fig.add_subplot()


def _visible(values: Any) -> np.ndarray:
    """Values for a log axis: zero and below at :data:`FLOOR`, NaN and inf at the ceiling."""
    x = np.asarray(values, dtype=np.float64)
    x = np.where(np.isfinite(x), x, _CEILING)
    return np.maximum(x, FLOOR)


def _title(report: Report) -> tuple[str, str]:
    if not report.ok:
        names = ", ".join(report.failing)
        if len(names) > 60:
            names = f"{len(report.failing)} of {len(report.leaves)} leaves"
        return f"Gradient WRONG in {names}", _RED
    if any(leaf.status == "twin" for leaf in report.leaves.values()):
        return "Backprop correct; jax.grad of the JAX twin is wrong", _AMBER
    return "Gradient correct", _GREEN


def _annotation(leaf: Any) -> str:
    if leaf.status == "backprop":
        # The factor is set only when backprop is that multiple of autodiff (2× too big, wrong
        # sign); otherwise the ratio is just a least-squares fit and says nothing.
        return "wrong" if leaf.factor is None else f"{leaf.factor:.3g}×"
    names = {
        "twin": "twin wrong",
        "kink": "kink",
        "fd-unreliable": "FD unreliable",
        "rounding": "rounding",
        "inconclusive": "inconclusive",
        "declared": "declared",
    }
    return names.get(leaf.status, "")


def plot_report(report: Report, ax: Any = None) -> Any:
    """Draws a report: per leaf, backprop's differences from both opinions, on a log scale.

    For every leaf (on the x axis, in params order) it marks the classic relative difference of
    backprop against finite differences (circles) and against ``jax.grad`` (squares), the leaf's
    tolerance (dashed) and the estimated error of the finite differences (grey bar: below it,
    backprop vs finite differences cannot tell right from wrong). Leaves whose backprop is wrong
    are shaded, their markers and labels red, and annotated with the ratio backprop/autodiff when
    backprop is a multiple of autodiff (``2×`` for a gradient twice too big, ``-1×`` for a sign
    error), else with "wrong". Other findings (kink, FD unreliable, twin wrong) are
    annotated too. A difference of exactly zero is drawn at :data:`FLOOR`. The title is the verdict.

    Usually called as ``report.plot()``.

    Args:
        report: the :class:`~jaxcheck.Report` of :func:`jaxcheck.check`.
        ax: matplotlib axes to draw into; ``None`` makes a new figure. The new figure is not left
            open in pyplot: it renders when it is a Jupyter cell's value; in a script, save it
            with ``fig.savefig(...)``, or pass ``ax`` from ``plt.subplots()`` to use ``plt.show()``.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        MissingDependencyError: matplotlib is not installed (a :class:`jaxcheck.JaxcheckError`
            and an ``ImportError``).

    Examples:
        >>> import numpy as np
        >>> import jaxcheck as jc
        >>> params = {"w": np.array([1.0, 2.0]), "b": np.array([0.5])}
        >>> cost = lambda p: float(np.sum(p["w"] ** 3) + np.sum(p["b"] ** 2))
        >>> twin = lambda p: (p["w"] ** 3).sum() + (p["b"] ** 2).sum()
        >>> grad = lambda p: {"w": 3 * p["w"] ** 2, "b": 4 * p["b"]}  # db is 2x too big
        >>> fig = jc.check(cost, grad, params, jax_cost=twin).plot()
        >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]  # in the order of params
        ['w', 'b']
        >>> fig.axes[0].get_title()
        'Gradient WRONG in b'
    """
    plt = _pyplot()
    leaves = list(report.leaves.values())
    n = len(leaves)
    fig, ax = _new_axes(plt, ax, (min(16.0, max(6.0, 1.0 * n + 2.5)), 4.8))
    failing = np.array([leaf.status == "backprop" for leaf in leaves], dtype=bool)
    _draw_differences(ax, leaves, failing)
    _draw_leaf_axis(ax, leaves)
    _draw_titles(fig, ax, report, failing)
    return fig


def _draw_differences(ax: Any, leaves: list[Any], failing: np.ndarray) -> None:
    """The markers: differences from both opinions, the tolerance, the FD error estimate."""
    x = np.arange(len(leaves), dtype=np.float64)
    fd = _visible([leaf.difference_fd for leaf in leaves])
    ad = _visible([leaf.difference_autodiff for leaf in leaves])
    fd_error = _visible([leaf.fd_error for leaf in leaves])
    tolerance = _visible([leaf.rtol for leaf in leaves])

    for i in np.flatnonzero(failing).tolist():
        ax.axvspan(i - 0.5, i + 0.5, color=_RED, alpha=0.08, linewidth=0)
    ax.bar(
        x,
        fd_error - FLOOR,
        bottom=FLOOR,
        width=0.7,
        color="0.85",
        edgecolor="0.6",
        linewidth=0.5,
        label="finite-difference error estimate",
        zorder=1,
    )
    ax.hlines(
        tolerance,
        x - 0.42,
        x + 0.42,
        colors="0.2",
        linestyles="--",
        linewidth=1.2,
        label="tolerance",
        zorder=2,
    )
    opinions = (
        (-0.12, fd, "o", 52, _FD_COLOUR, "backprop vs finite differences"),
        (0.12, ad, "s", 46, _AD_COLOUR, "backprop vs autodiff"),
    )
    for shift, values, marker, size, colour, label in opinions:
        ax.scatter(
            x + shift,
            values,
            marker=marker,
            s=size,
            c=list(np.where(failing, _RED, colour)),
            edgecolors="k",
            linewidths=0.5,
            label=label,
            zorder=3,
        )
    ax.axhline(FLOOR, color="0.6", linestyle=":", linewidth=0.8, zorder=0)
    ax.text(
        0.005,
        FLOOR,
        " 0",
        color="0.4",
        fontsize=8,
        va="bottom",
        transform=ax.get_yaxis_transform(),
    )


def _draw_leaf_axis(ax: Any, leaves: list[Any]) -> None:
    """The log scale, one tick per leaf (red when wrong), and each leaf's finding above it."""
    n = len(leaves)
    x = np.arange(n, dtype=np.float64)
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 10, _CEILING * 30)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xticks(x)
    labels = [leaf.path for leaf in leaves]
    rotate = n > 8 or max((len(s) for s in labels), default=0) > 8
    ax.set_xticklabels(labels, rotation=40 if rotate else 0, ha="right" if rotate else "center")
    for tick, leaf in zip(ax.get_xticklabels(), leaves):
        if leaf.status == "backprop":
            tick.set_color(_RED)
            tick.set_fontweight("bold")
        elif leaf.status == "twin":
            tick.set_color(_AMBER)
    for i, leaf in enumerate(leaves):
        note = _annotation(leaf)
        if note:
            ax.annotate(
                note,
                (i, _CEILING * 3),
                ha="center",
                va="center",
                fontsize=9,
                color=_RED if leaf.status == "backprop" else _AMBER,
                fontweight="bold" if leaf.status == "backprop" else "normal",
            )


def _draw_titles(fig: Any, ax: Any, report: Report, failing: np.ndarray) -> None:
    """The verdict as the title, the overall differences in the corner, the legend."""
    leaves = list(report.leaves.values())
    ax.set_ylabel("relative difference  ‖a − b‖ / (‖a‖ + ‖b‖)")
    ax.set_xlabel("leaf")
    title, colour = _title(report)
    ax.set_title(title, color=colour, fontweight="bold")
    total = sum(leaf.size for leaf in leaves)
    fig.text(
        0.99,
        0.01,
        f"{report.method} check of {total} parameters ({report.dtype}); overall bp vs fd "
        f"{report.difference_fd:.2e}, bp vs ad "
        + (f"{report.difference_autodiff:.2e}" if report.autodiff else "—"),
        ha="right",
        va="bottom",
        fontsize=7,
        color="0.4",
    )
    handles, names = ax.get_legend_handles_labels()
    if failing.any():
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor=_RED, alpha=0.25, label="backprop wrong"))
        names.append("backprop wrong")
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", which="major", alpha=0.25)
    fig.tight_layout()


def plot_step_sweep(
    steps: Any,
    differences: Any,
    ax: Any = None,
    *,
    label: str = "backprop vs finite differences",
    title: str | None = "Error of central differences against the step ε",
    xlabel: str = "step ε",
    ylabel: str = "relative difference",
    tolerance: float | None = None,
    default_step: float | None = None,
    guides: bool = True,
) -> Any:
    """Draws the V of a finite-difference error against the step, log-log.

    On the right the error is truncation (∝ ε²: the step is too coarse), on the left rounding
    (∝ u/ε: ``J(θ+ε) − J(θ−ε)`` cancels to a few significant digits). The best step, at the
    bottom of the V of the curve that reaches lowest, is marked. Takes plain arrays, e.g.
    ``report.difference_fd`` of ``jc.check(..., eps=e)`` over a ``np.logspace`` of steps, or
    those of :func:`jaxcheck.step_sweep` (whose ``plot()`` calls this).

    When backprop is wrong, backprop vs finite differences stays flat at the size of the bug;
    finite differences vs autodiff still draws the V, and it is that curve's bottom that is
    marked.

    Args:
        steps: the steps ε, positive, 1-D.
        differences: the differences at those steps, 1-D (one curve), or a mapping
            ``label -> 1-D array`` (one curve each). Zeros are drawn at :data:`FLOOR`.
        ax: matplotlib axes to draw into; ``None`` makes a new figure (see :func:`plot_report`).
        label: the legend entry of a single curve.
        title: the axes title; ``None`` for none.
        xlabel: the x axis label.
        ylabel: the y axis label.
        tolerance: draws a horizontal line there (e.g. the lesson's 1e-7 threshold).
        default_step: draws a vertical line there (jaxcheck's default step, ∛u for |θ| ≤ 1).
        guides: draws the slopes of pure rounding (−1) and pure truncation (+2) error.

    Returns:
        The matplotlib ``Figure``.

    Raises:
        MissingDependencyError: matplotlib is not installed.
        ValueError: steps are not positive, or a curve's length differs from the steps'.

    Examples:
        >>> import numpy as np
        >>> steps = np.logspace(-12, -1, 12)
        >>> f, x = np.sin, 1.0
        >>> exact = np.cos(x)
        >>> error = [abs((f(x + h) - f(x - h)) / (2 * h) - exact) / abs(exact) for h in steps]
        >>> fig = plot_step_sweep(steps, error, tolerance=1e-7)
        >>> fig.axes[0].get_xscale(), fig.axes[0].get_yscale()
        ('log', 'log')
    """
    h = np.asarray(steps, dtype=np.float64).reshape(-1)
    if h.size == 0 or not np.all(np.isfinite(h) & (h > 0)):
        raise ValueError(f"steps must be positive and finite, got {steps!r}.")
    curves = (
        {str(k): v for k, v in differences.items()}
        if isinstance(differences, Mapping)
        else {label: differences}
    )
    values = {}
    for name, curve in curves.items():
        d = np.asarray(curve, dtype=np.float64).reshape(-1)
        if d.shape != h.shape:
            raise ValueError(
                f"curve {name!r} has {d.size} values for {h.size} steps; give one per step."
            )
        values[name] = d
    plt = _pyplot()
    fig, ax = _new_axes(plt, ax, (8.6, 4.4))
    order = np.argsort(h)
    h = h[order]
    for name, d in values.items():
        ax.plot(h, _visible(d[order]), marker="o", markersize=4, label=name)

    first = min((_visible(d[order]) for d in values.values()), key=np.min)
    best = int(np.argmin(first))
    ax.plot(
        h[best],
        first[best],
        marker="*",
        markersize=15,
        color="gold",
        markeredgecolor="k",
        linestyle="none",
        label=f"best ε ≈ {h[best]:.0e}",
        zorder=4,
    )
    if guides and 0 < best < h.size - 1:
        # Each guide goes through the typical (median) point of its side of the V.
        left, right = h[: best + 1], h[best:]
        rounding = np.median(first[:best] * h[:best]) / left
        truncation = np.median(first[best + 1 :] / h[best + 1 :] ** 2) * right**2
        ax.plot(left, rounding, color="0.5", linestyle=":", linewidth=1)
        ax.plot(right, truncation, color="0.5", linestyle=":", linewidth=1)
        note = {"xycoords": "axes fraction", "fontsize": 8, "color": "0.35", "va": "bottom"}
        ax.annotate("← rounding ∝ u/ε", (0.02, 0.03), **note)
        ax.annotate("truncation ∝ ε² →", (0.98, 0.03), ha="right", **note)
    if tolerance is not None:
        ax.axhline(tolerance, color="k", linestyle="--", linewidth=1, label=f"{tolerance:g}")
    if default_step is not None:
        ax.axvline(
            default_step,
            color="0.3",
            linestyle="-.",
            linewidth=1,
            label=f"jaxcheck's default step {default_step:.1e}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(which="major", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
