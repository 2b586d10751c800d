"""Verdict integrity, many small leaves: one bug among hundreds of leaves is found, and
the small leaves compile as one program.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import jaxcheck as jc


def many_leaves(n_layers, size, seed=0):
    rng = np.random.default_rng(seed)
    params = [
        {"w": 0.5 * rng.normal(size=(size,)), "b": 0.1 * rng.normal(size=(size,))}
        for _ in range(n_layers)
    ]

    def cost(p):
        return float(sum(np.sum(np.tanh(layer["w"] + layer["b"])) for layer in p))

    def grad(p):
        out = []
        for layer in p:
            d = 1 - np.tanh(layer["w"] + layer["b"]) ** 2
            out.append({"w": d, "b": d.copy()})
        return out

    return cost, grad, params


def test_300_small_leaves_full_check_finds_the_one_bug():
    cost, grad, params = many_leaves(150, 1)

    def wrong(p):
        g = grad(p)
        g[77]["b"] = 1.01 * g[77]["b"]
        return g

    start = time.perf_counter()
    assert jc.check(cost, grad, params).ok
    report = jc.check(cost, wrong, params)
    assert report.failing == ["77/b"]
    assert len(report.leaves) == 300
    assert time.perf_counter() - start < 60


_MANY_LEAVES_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from integrity.test_many_leaves import many_leaves
    import jaxcheck as jc
    cost, grad, params = many_leaves(150, 16)
    start = time.perf_counter()
    report = jc.check(cost, grad, params, method={method!r})
    assert report.ok and len(report.leaves) == 300, report
    print("seconds", time.perf_counter() - start)
    """
)


@pytest.mark.slow
# sample with 16-entry leaves is full mode's program; directional once grew one per leaf
@pytest.mark.parametrize("method", ["full", "directional"])
def test_300_leaves_of_16_compile_in_reasonable_time(method, tmp_path):
    # A fresh process with the disk cache off, so the compile is measured: one program for the
    # small leaves, not one per leaf.
    import os

    env = dict(os.environ, JAXCHECK_NO_CACHE="1")
    script = _MANY_LEAVES_SCRIPT.format(
        tests=str(__import__("pathlib").Path(__file__).parents[1]), method=method
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"method={method}: 300 leaves of 16 entries took over 120 s")
    assert out.returncode == 0, out.stderr[-2000:]
