"""Compiled programs: reused across closures of the same code, never stale.

The disk cache has its own tests, in test_compile_cache.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck._engine.evaluate import compile_cache


def _regression(seed: int, n: int = 5, m: int = 12):
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(m, n)), rng.normal(size=m)
    params = {"w": rng.normal(size=n), "b": np.array(0.3)}

    def cost(p):
        r = np.tanh(X @ p["w"] + p["b"]) - y
        return float(np.mean(r**2))

    def grad(p):
        t = np.tanh(X @ p["w"] + p["b"])
        d = 2 * (t - y) * (1 - t**2) / m
        return {"w": X.T @ d, "b": np.sum(d)}

    return cost, grad, params, X


def test_two_closures_with_other_data_share_one_program_and_get_their_own_verdicts():
    cost_a, grad_a, params_a, _ = _regression(1)
    cost_b, grad_b, params_b, _ = _regression(2)
    # compile=True: small checks are otherwise evaluated with NumPy, compiling nothing at all
    jc.check(cost_a, grad_a, params_a, compile=True)  # compiles for this code and these shapes
    before = compile_cache.stats["compiled"] + compile_cache.stats["loaded"]
    good = jc.check(cost_b, grad_b, params_b, compile=True)
    wrong = lambda p: {**grad_b(p), "b": 2 * grad_b(p)["b"]}  # noqa: E731
    bad = jc.check(cost_b, wrong, params_b, compile=True)
    after = compile_cache.stats["compiled"] + compile_cache.stats["loaded"]
    assert after == before  # other data, same code and shapes: not one compilation
    assert good.ok and good.cost == pytest.approx(cost_b(params_b))
    assert bad.failing == ["b"] and bad.leaves["b"].factor == pytest.approx(2.0)


@pytest.mark.parametrize("compile", [None, True], ids=["numpy", "compiled"])
def test_data_changed_in_place_or_rebound_is_seen_by_the_next_check(compile):
    cost, grad, params, X = _regression(3)
    assert jc.check(cost, grad, params, compile=compile).ok
    frozen = X.copy()
    X += 0.5  # in place: cost and grad both see the new data, so the check still passes
    report = jc.check(cost, grad, params, compile=compile)
    assert report.ok and report.cost == pytest.approx(cost(params))

    # grad keeps the old data while cost sees the new: now the gradient is wrong
    def stale_grad(p, X=frozen):
        t = np.tanh(X @ p["w"] + p["b"])
        y = np.tanh(frozen @ p["w"] + p["b"])  # any function of the old data
        return {"w": X.T @ (t - y + 1.0) / 12, "b": np.sum(t) / 12}

    assert not jc.check(cost, stale_grad, params, compile=compile).ok
