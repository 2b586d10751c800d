"""Tests of the pictures of a report: the plot, the step sweep, the HTML table."""

from __future__ import annotations

import dataclasses
import re
import sys

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import lesson, plotting

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

RED = to_rgba(plotting._RED)


def _lesson_report(backward):
    X, Y, params = lesson.gradient_check_n_test_case()

    def cost(p):
        return lesson.forward_propagation_n(X, Y, p)

    def grad(p):
        return backward(X, Y, cost(p)[1])

    return jc.check(
        cost, grad, params, jax_cost=lambda p: lesson.forward_propagation_n_jax(X, Y, p)
    )


@pytest.fixture(scope="module")
def buggy() -> jc.Report:
    return _lesson_report(lesson.backward_propagation_n_buggy)


@pytest.fixture(scope="module")
def correct() -> jc.Report:
    return _lesson_report(lesson.backward_propagation_n)


def _ticks(fig: Figure) -> dict[str, tuple[float, ...]]:
    ax = fig.axes[0]
    return {t.get_text(): to_rgba(t.get_color()) for t in ax.get_xticklabels()}


def test_plot_puts_leaves_on_the_x_axis_and_highlights_the_failing(buggy: jc.Report) -> None:
    fig = buggy.plot()
    assert isinstance(fig, Figure)
    ticks = _ticks(fig)
    assert list(ticks) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert {name for name, colour in ticks.items() if colour == RED} == {"W2", "b1"}
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_title() == "Gradient WRONG in b1, W2"
    assert to_rgba(ax.title.get_color()) == RED
    # The failing leaves' markers are red too, and their ratio is written above them.
    for collection in ax.collections[-2:]:
        reds = [i for i, c in enumerate(collection.get_facecolors()) if tuple(c) == RED]
        assert reds == [1, 2]  # b1 and W2, in the order of the params dict
    notes = {t.get_text() for t in ax.texts}
    assert {"2×", "4×"} <= notes


def test_plot_writes_wrong_when_the_bug_is_not_a_scale_factor() -> None:
    params = {"w": np.array([1.0, 2.0, 3.0]), "v": np.array([0.5, -1.0])}

    def cost(p):
        return float(np.sum(p["w"] ** 3) + np.sum(p["v"] ** 2))

    def jax_cost(p):
        return (p["w"] ** 3).sum() + (p["v"] ** 2).sum()

    def grad(p):  # dw reversed (not a multiple of the truth), dv with the wrong sign
        return {"w": (3 * p["w"] ** 2)[::-1], "v": -2 * p["v"]}

    ax = jc.check(cost, grad, params, jax_cost=jax_cost).plot().axes[0]
    notes = [t.get_text() for t in ax.texts if t.get_text().strip() != "0"]
    assert notes == ["wrong", "-1×"]  # leaves in the order of the params dict: w, v


def test_plot_shortens_a_long_list_of_failing_leaves() -> None:
    params = {f"a_rather_long_leaf_name_{i}": np.array([1.0, 2.0]) for i in range(6)}

    def cost(p):
        return float(sum(np.sum(v**2) for v in p.values()))

    def jax_cost(p):
        return sum((v**2).sum() for v in p.values())

    def grad(p):
        return {k: 3 * v for k, v in p.items()}

    ax = jc.check(cost, grad, params, jax_cost=jax_cost).plot().axes[0]
    assert ax.get_title() == "Gradient WRONG in 6 of 6 leaves"


def test_plot_shows_differences_tolerance_and_fd_error(buggy: jc.Report) -> None:
    ax = buggy.plot().axes[0]
    fd, ad = ax.collections[-2:]
    leaves = list(buggy.leaves.values())
    np.testing.assert_allclose(fd.get_offsets()[:, 1], [x.difference_fd for x in leaves])
    np.testing.assert_allclose(ad.get_offsets()[:, 1], [x.difference_autodiff for x in leaves])
    bars = [p.get_y() + p.get_height() for p in ax.containers[0]]
    np.testing.assert_allclose(bars, [x.fd_error for x in leaves])
    tolerance = [seg[0][1] for seg in ax.collections[0].get_segments()]
    np.testing.assert_allclose(tolerance, [x.rtol for x in leaves])
    labels = ax.get_legend_handles_labels()[1]
    assert "tolerance" in labels and "finite-difference error estimate" in labels


def test_plot_of_a_correct_report_has_no_red(correct: jc.Report) -> None:
    fig = correct.plot()
    assert RED not in _ticks(fig).values()
    assert fig.axes[0].get_title() == "Gradient correct"


def test_plot_draws_into_given_axes(buggy: jc.Report) -> None:
    fig = Figure()
    ax = fig.add_subplot()
    assert buggy.plot(ax=ax) is fig
    assert [t.get_text() for t in ax.get_xticklabels()][1] == "b1"


def test_plot_draws_zero_and_nan_at_the_edges(correct: jc.Report) -> None:
    leaves = dict(correct.leaves)
    leaves["W1"] = dataclasses.replace(leaves["W1"], difference_autodiff=0.0, fd_error=0.0)
    leaves["b3"] = dataclasses.replace(leaves["b3"], difference_fd=float("nan"))
    ax = dataclasses.replace(correct, leaves=leaves).plot().axes[0]
    fd, ad = ax.collections[-2:]
    assert ad.get_offsets()[0, 1] == plotting.FLOOR
    assert fd.get_offsets()[-1, 1] == 1.0
    low, high = ax.get_ylim()
    assert low < plotting.FLOOR and high > 1.0


def test_plot_without_matplotlib_says_how_to_install(
    buggy: jc.Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(plotting.MissingDependencyError, match=re.escape('"jaxcheck[plot]"')) as err:
        buggy.plot()
    assert isinstance(err.value, jc.JaxcheckError) and isinstance(err.value, ImportError)
    with pytest.raises(ImportError, match="matplotlib"):
        plotting.plot_step_sweep([1e-3, 1e-2], [1e-6, 1e-5])


def test_step_sweep_is_a_log_log_v_with_its_bottom_marked() -> None:
    steps = np.logspace(-10, -1, 10)
    rounding, truncation = 1e-16 / steps, steps**2
    fig = plotting.plot_step_sweep(steps, rounding + truncation, tolerance=1e-7)
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    labels = ax.get_legend_handles_labels()[1]
    best = steps[np.argmin(rounding + truncation)]
    assert f"best ε ≈ {best:.0e}" in labels and "1e-07" in labels
    assert {"← rounding ∝ u/ε", "truncation ∝ ε² →"} <= {t.get_text() for t in ax.texts}


def test_step_sweep_takes_several_named_curves_and_zeros() -> None:
    steps = [1e-6, 1e-4, 1e-2]
    fig = plotting.plot_step_sweep(steps, {"bp vs fd": [1e-9, 0.0, 1e-5], "fd vs ad": [1, 2, 3]})
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["bp vs fd", "fd vs ad"]
    assert ax.lines[0].get_ydata()[1] == plotting.FLOOR


def test_step_sweep_marks_the_lowest_curve_and_the_default_step() -> None:
    steps = np.logspace(-10, -1, 10)
    v = 1e-16 / steps + steps**2
    flat = np.full_like(steps, 0.3)  # a wrong backprop: flat at the size of its bug
    fig = plotting.plot_step_sweep(steps, {"bp vs fd": flat, "fd vs ad": v}, default_step=6e-6)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert f"best ε ≈ {steps[np.argmin(v)]:.0e}" in labels
    assert "jaxcheck's default step 6.0e-06" in labels


def test_step_sweep_of_jaxcheck_plots() -> None:
    sweep = jc.StepSweep(
        steps=np.logspace(-10, -2, 5),
        difference_fd=np.array([1e-4, 1e-6, 1e-9, 1e-7, 1e-3]),
        difference_fd_autodiff=np.array([1e-4, 1e-6, 1e-9, 1e-7, 1e-3]),
        best_step=1e-6,
        default_step=6e-6,
    )
    ax = sweep.plot().axes[0]
    assert len(ax.lines[0].get_xdata()) == 5


@pytest.mark.parametrize(
    ("steps", "differences", "match"),
    [
        ([1e-3, 0.0], [1.0, 1.0], "positive"),
        ([1e-3, 1e-2], [1.0], "one per step"),
    ],
    ids=["zero-step", "length-mismatch"],
)
def test_step_sweep_rejects_bad_input(steps, differences, match) -> None:
    with pytest.raises(ValueError, match=match):
        plotting.plot_step_sweep(steps, differences)


def test_html_highlights_the_failing_rows(buggy: jc.Report) -> None:
    page = buggy._repr_html_()
    rows = re.findall(r"<tr class=\"jaxcheck-(\w[\w-]*)\" style=\"([^\"]*)\">(.*?)</tr>", page)
    assert len(rows) == 6
    failing = [re.search(r"<td[^>]*>([^<]*)</td>", cells)[1] for status, _, cells in rows]
    highlighted = [name for name, (_, style, _) in zip(failing, rows) if "error-color" in style]
    assert highlighted == ["b1", "W2"]
    assert all(status == "backprop" for status, style, _ in rows if "error-color" in style)
    assert "BACKPROP WRONG" in page and "Gradient WRONG in b1, W2." in page
    assert "2.00×" in page


def test_html_of_a_correct_report_highlights_nothing(correct: jc.Report) -> None:
    page = correct._repr_html_()
    assert "error-color" not in page.split("<table")[1] and "BACKPROP WRONG" not in page
    assert "Gradient correct" in page
