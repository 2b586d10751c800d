"""The HTML report says everything the text report says, and reads in light and dark themes."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

import jaxcheck as jc

X = np.random.default_rng(0).normal(size=(4, 3))


def _cost(p):
    return float(np.sum(np.tanh(X @ p["w"] + p["b"]) ** 2))


def _grad(p, scale=1.0):
    t = np.tanh(X @ p["w"] + p["b"])
    dz = 2 * t * (1 - t**2)
    return {"w": X.T @ dz * scale, "b": np.sum(dz, keepdims=True)}


def _half_square(z):  # a branch that returns, on a value of the params: the port cannot follow
    if z > 0:
        return z**2
    return 0.5 * z**2


def _branchy_cost(p):
    return float(sum(_half_square(z) for z in X @ p["w"] + p["b"]))


def _branchy_grad(p):
    z = X @ p["w"] + p["b"]
    dz = np.where(z > 0, 2 * z, z)
    return {"w": X.T @ dz, "b": np.sum(dz, keepdims=True)}


PARAMS = {"w": np.array([0.3, -0.2, 0.1]), "b": np.array([0.05])}


def _offset_regression():
    """float32 regression on features near 1e4: the residual cancels, the formula is right."""
    rng = np.random.default_rng(0)
    features = (1e4 + rng.normal(size=(3, 64))).astype(np.float32)
    W = np.array([[0.5, -0.2, 0.3]], np.float32)
    Y = (W.astype(np.float64) @ features + 1.0 + 1e-1 * rng.normal(size=(1, 64))).astype(np.float32)

    def cost(p):
        return np.mean((p["W"] @ features + p["b"] - Y) ** 2) / 2

    def grad(p):
        r = p["W"] @ features + p["b"] - Y
        return {"W": r @ features.T / 64, "b": np.sum(r, axis=1, keepdims=True) / 64}

    return cost, grad, {"W": W, "b": np.array([[1.0]], np.float32)}


REPORTS = {
    "correct": lambda: jc.check(_cost, _grad, PARAMS),
    "buggy": lambda: jc.check(_cost, lambda p: _grad(p, 3.0), PARAMS),
    "two-way": lambda: jc.check(_branchy_cost, _branchy_grad, PARAMS),
    "rounding": lambda: jc.check(*_offset_regression()),
}


@pytest.fixture(scope="module", params=sorted(REPORTS))
def report(request) -> jc.Report:
    return REPORTS[request.param]()


def _visible_text(page: str) -> str:
    text = re.sub(r"<[^>]+>", " ", page)
    return " ".join(html.unescape(text).split())


def _table_line(line: str, report: jc.Report) -> bool:
    return line.startswith(("leaf  ", "----")) or line.split("  ")[0] in report.leaves


def test_every_sentence_of_the_text_is_in_the_html(report: jc.Report) -> None:
    page = _visible_text(report._repr_html_())
    text = str(report).splitlines()
    checked = 0
    for line in text:
        if _table_line(line, report):
            continue
        assert " ".join(line.split()) in page, line
        checked += 1
    assert checked >= 3
    for leaf in report.leaves.values():  # and every table row, cell by cell
        assert leaf.path in page and str(leaf.checked) in page


def test_the_two_way_banner_and_the_ports_line_are_in_the_html() -> None:
    report = REPORTS["two-way"]()
    assert report.twin == "none" and report.ok
    page = _visible_text(report._repr_html_())
    assert "two-way: no JAX twin" in page
    assert "if z > 0" in page  # the line the port stopped at
    assert "jax_cost=" in page  # and the way to the third opinion
    for what in ("none JAX twin", "bp vs ad nan", "nan", "1 leaves"):
        assert what not in page and what not in str(report), what
    assert "bp vs ad —" in str(report)


def test_the_html_uses_colours_that_read_in_both_themes() -> None:
    page = REPORTS["buggy"]()._repr_html_()
    assert "#fdd" not in page and "background:#f" not in page  # no light-only backgrounds
    assert "var(--jp-error-color1" in page and "rgba(" in page
    assert 'class="jaxcheck-backprop"' in page and "color:inherit" in page


def test_a_rounding_note_is_in_the_html() -> None:
    report = REPORTS["rounding"]()
    statuses = {str(leaf.status) for leaf in report.leaves.values()}
    assert "rounding" in statuses, str(report)
    assert "jaxcheck-rounding" in report._repr_html_()


def test_any_status_and_a_diagnosis_render_from_their_values() -> None:
    report = REPORTS["buggy"]()
    report.leaves["w"].status = "declared"  # a status this module has no words for: its value
    assert "declared" in _visible_text(report._repr_html_())
    flipped = jc.check(_cost, lambda p: _grad(p, -1.0), PARAMS)  # a sign error is diagnosed
    sentence = flipped.leaves["w"].diagnosis.sentence
    assert flipped.leaves["w"].diagnosis.kind == "sign"
    assert sentence in str(flipped) and sentence in _visible_text(flipped._repr_html_())


def _softplus_rule():
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    softplus.defvjp(lambda x: (softplus(x), x), lambda x, g: (g * jax.nn.sigmoid(-x),))  # bug
    return softplus


def _hvp(p, v):
    t = np.tanh(X @ p["w"] + p["b"])
    dz = 2 * (1 - t**2) * (1 - 3 * t**2) * (X @ v["w"] + v["b"])
    return {"w": X.T @ dz, "b": 2 * np.sum(dz, keepdims=True)}  # bug: 2 *


@pytest.mark.parametrize("door", ["rule", "hvp"])
def test_the_other_doors_reports_say_the_same_in_html(door: str) -> None:
    if door == "rule":
        report = jc.check_rule(_softplus_rule(), np.linspace(-2.0, 2.0, 5))  # two-way: no reference
    else:
        report = jc.check_hvp(_cost, _hvp, PARAMS)
    assert not report.ok
    page = _visible_text(report._repr_html_())
    for line in str(report).splitlines():
        if not _table_line(line, report):
            assert " ".join(line.split()) in page, line
