"""jc.check over the model zoo: every correct backprop passes, every bug is found and localised,
with the hand-written twin and with the ported one, in float64 and float32."""

from __future__ import annotations

import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import models

CASES = [(name, bug) for name in models.names() for bug in [None, *models.make(name).bugs]]


@pytest.mark.parametrize("twin", ["given", "ported"])
@pytest.mark.parametrize("name, bug", CASES, ids=[f"{n}-{b or 'correct'}" for n, b in CASES])
def test_zoo_verdicts(name, bug, twin):
    model = models.make(name)
    grad = model.grad if bug is None else model.bugs[bug].grad
    expected = [] if bug is None else sorted(model.bugs[bug].leaves)
    kwargs = {"jax_cost": model.jax_cost} if twin == "given" else {}
    report = jc.check(model.cost, grad, model.params, **kwargs)
    assert report.twin == twin
    assert sorted(report.failing) == expected, str(report)
    assert report.ok == (bug is None)
    for path in expected:
        assert report.leaves[path].message.startswith(f"{path}: backprop")


@pytest.mark.parametrize("name", models.names(), ids=models.names())
def test_zoo_float32_correct_passes_and_bugs_are_found(name):
    model = models.make(name, dtype=np.float32)
    report = jc.check(model.cost, model.grad, model.params, jax_cost=model.jax_cost)
    assert report.ok, str(report)
    assert report.dtype == "float32"
    for bug in model.bugs.values():
        found = jc.check(model.cost, bug.grad, model.params, jax_cost=model.jax_cost)
        assert sorted(found.failing) == sorted(bug.leaves), (bug.name, str(found))


def test_dropout_with_frozen_masks_is_checked():
    frozen = models.make("dropout_lesson")
    assert jc.check(frozen.cost, frozen.grad, frozen.params).ok
    bug = frozen.bugs["mask_not_applied_in_backward"]
    assert sorted(jc.check(frozen.cost, bug.grad, frozen.params).failing) == sorted(bug.leaves)
