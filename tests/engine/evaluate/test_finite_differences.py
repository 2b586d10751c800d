"""Batched finite differences: incremental vs from-scratch, batching, memory, several devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import jaxcheck as jc
from jaxcheck import models
from jaxcheck._engine.evaluate import finite_differences as fd
from jaxcheck._engine.evaluate import programs
from jaxcheck._engine.evaluate.plan import plan
from jaxcheck._engine.options import Options
from jaxcheck._engine.system.prepare import prepare


def _prepared(model):
    options = Options()
    system = prepare(model.cost, model.grad, model.params, model.jax_cost, options)
    return system, plan(system.leaves64, system.leaves.paths, options)


def _evaluate(model, *, incremental, batch_size=None, memory_budget=None):
    system, groups = _prepared(model)
    with jax.enable_x64(True):
        return fd.evaluate(
            system.twin,
            system.leaves64,
            [g.probe for g in groups],
            backprop=system.backprop,
            options=Options(
                batch_size=batch_size, memory_budget=memory_budget, incremental=incremental
            ),
            progress=False,
        )


@pytest.mark.parametrize("name", models.names(), ids=models.names())
def test_incremental_evaluation_equals_evaluation_from_scratch(name):
    model = models.make(name)
    value_a, _, grad_a, fast = _evaluate(model, incremental=True)
    value_b, _, grad_b, slow = _evaluate(model, incremental=False)
    assert value_a == value_b
    for a, b in zip(fast, slow):
        scale = max(1.0, float(np.max(np.abs(b.up))))
        np.testing.assert_allclose(a.up, b.up, rtol=0, atol=1e-13 * scale)
        np.testing.assert_allclose(a.down, b.down, rtol=0, atol=1e-13 * scale)


def _first_leaf_probe(system, groups, path):
    index = system.leaves.paths.index(path)
    return next(g.probe for g in groups if g.probe.leaves == (index,))


def test_incremental_evaluation_skips_the_first_product():
    model = models.make("relu_mlp", layers=[40, 30, 5, 1], m=8)
    system, groups = _prepared(model)
    probe = _first_leaf_probe(system, groups, "layers/0/W")
    flops = {}
    with jax.enable_x64(True):
        for incremental in (True, False):
            lowered = fd.lower(
                system.twin,
                system.leaves64,
                [probe],
                with_gradient=False,
                options=Options(batch_size=probe.count, incremental=incremental),
            )
            analysis = lowered.compile().cost_analysis()
            analysis = analysis[0] if isinstance(analysis, list) else analysis
            flops[incremental] = analysis["flops"]
    # from scratch, each of the evaluations (±h, ±2h) redoes the 40→30 product over 8 examples
    evaluations = 4 if probe.double else 2
    assert flops[False] - flops[True] > 0.8 * evaluations * 1200 * 2 * 40 * 30 * 8


def test_an_unfollowable_twin_falls_back_to_evaluation_from_scratch(monkeypatch, caplog):
    model = models.make("tanh_mlp")

    def broken(*args, **kwargs):
        raise NotImplementedError("incremental evaluator cannot follow this twin")

    monkeypatch.setattr(fd, "perturbed_cost", broken)  # sizing a batch
    monkeypatch.setattr(programs, "perturbed_cost", broken)  # the program
    with caplog.at_level("WARNING", logger="jaxcheck"):
        report = jc.check(
            model.cost, model.grad, model.params, jax_cost=model.jax_cost, incremental=True
        )
    assert report.ok
    assert "evaluating every perturbed point from scratch" in caplog.text


def test_batch_size_follows_the_memory_budget_and_bounds_compiled_memory():
    for layers in ([30, 40, 10, 1], [60, 80, 10, 1]):
        model = models.make("relu_mlp", layers=layers, m=16)
        system, groups = _prepared(model)
        probes = [g.probe for g in groups]
        sizes = []
        with jax.enable_x64(True):
            for budget in (2**18, 2**22):
                batches = fd._batches(
                    system.twin, system.leaves64, probes, Options(memory_budget=budget)
                )
                sizes.append(batches.sizes[-1])
                lowered = fd.lower(
                    system.twin, system.leaves64, probes, options=Options(memory_budget=budget)
                )
                # one batch of perturbations at a time: the budget bounds the working memory,
                # whatever the number of parameters
                assert lowered.compile().memory_analysis().temp_size_in_bytes <= budget
        assert sizes[0] < sizes[1]


def test_default_memory_budget_on_cpu():
    assert fd.default_memory_budget(jax.devices("cpu")) == fd.DEFAULT_CPU_BUDGET


def test_progress_bar_counts_batches(capsys):
    model = models.make("logistic_regression")
    report = jc.check(
        model.cost, model.grad, model.params, jax_cost=model.jax_cost, batch_size=1, progress=True
    )
    assert report.ok
    err = capsys.readouterr().err
    assert "jaxcheck" in err and "batch" in err


_SEVERAL_DEVICES = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    import jaxcheck as jc
    from jaxcheck import models

    model = models.make("relu_mlp", layers=[8, 16, 4, 1], m=16)
    bug = model.bugs["bias_grad_1_percent"]
    out = {"devices": jax.device_count()}
    for method in ("full", "sample", "directional"):
        runs = []
        for devices in (jax.devices(), jax.devices()[:1]):
            r = jc.check(model.cost, bug.grad, model.params, jax_cost=model.jax_cost,
                         method=method, batch_size=3, devices=devices)
            runs.append({"failing": r.failing,
                         "fd": [leaf.difference_fd for leaf in r.leaves.values()]})
        out[method] = runs
    print(json.dumps(out))
    """
)


def test_four_devices_give_the_one_device_answer():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop("JAX_PLATFORMS", None)
    result = subprocess.run(
        [sys.executable, "-c", _SEVERAL_DEVICES],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for method in ("full", "sample", "directional"):
        four, one = out[method]
        assert four["failing"] == one["failing"] == ["layers/0/b"]
        np.testing.assert_allclose(four["fd"], one["fd"], rtol=1e-9, atol=1e-15)
