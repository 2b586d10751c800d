"""Tests for the benchmark harness in ``benchmarks/``: ``--quick`` runs end to end, in-process.

Its tables and JSON hold every row, the small-model table's wrappers of the same NumPy code agree
with the tools' verdicts, and compilations are counted. Speed is a benchmark matter, not a test
matter: nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench  # noqa: E402
import measure  # noqa: E402
import small  # noqa: E402
import tables  # noqa: E402

from jaxcheck import models  # noqa: E402

# The whole module takes a minute or more: the small-model table runs child processes.
pytestmark = pytest.mark.slow

TORCH = pytest.mark.skipif(small.tool_missing("torch") is not None, reason="torch not installed")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict]:
    path = tmp_path_factory.mktemp("bench") / "b.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = bench.main(["--quick", "--json", str(path)])
    return code, stdout.getvalue(), json.loads(path.read_text())


def test_quick_exits_zero(quick):
    code, _, out = quick
    assert code == 0, out["problems"]
    assert out["sanity_ok"] is True
    assert out["problems"] == []
    assert out["complete"] is True


def test_table_has_the_columns(quick):
    _, text, _ = quick
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells == list(bench.COLUMNS)
    for name in (
        "seconds (steady)",
        "first call s (incl. compile)",
        "speed-up vs loop (steady)",
        "speed-up vs loop (first call)",
        "FD-equiv. rate / matmul rate",
        "XLA compiles (first / steady)",
    ):
        assert name in cells


def test_rows_cover_the_loop_and_every_method(quick):
    _, _, out = quick
    measured = [row for row in out["rows"] if not row["skipped"]]
    methods = {row["method"].split(" (")[0] for row in measured}
    assert {"classic loop", "full", "sample", "directional"} <= methods
    for row in measured:
        assert row["seconds"] > 0
        assert row["fd_flops"] > 0
        if row["method"] != bench.LOOP_METHOD:
            assert row["first_seconds"] > 0
            assert row["ok"] is True, row
            assert row["verdict"] == "ok"


def test_brute_force_is_timed_or_says_why(quick):
    _, text, out = quick
    (row,) = [r for r in out["rows"] if r["method"] == "full (brute force)"]
    if measure.check_accepts("incremental"):
        assert out["brute_force_skipped"] is None
        assert row["ok"] is True and row["seconds"] > 0
    else:
        assert "incremental=" in out["brute_force_skipped"]
        assert row["skipped"] == out["brute_force_skipped"]
        assert f"full (brute force) not timed: {row['skipped']}" in text


def test_first_calls_are_counted_through_jax_monitoring(quick):
    _, _, out = quick
    methods = {row["method"]: row for row in out["rows"]}
    # mlp-tiny's full check is evaluated with NumPy (traced, nothing compiled); brute force,
    # asked for by hand, is always compiled
    assert methods["full"]["compilations_first"]["traces"] >= 1
    brute = methods["full (brute force)"]["compilations_first"]
    assert brute["compiles"] + brute["cache_hits"] >= 1 and brute["traces"] >= 1


def test_planted_bugs_are_caught_and_localised(quick):
    _, text, out = quick
    assert {r["method"] for r in out["bugs"]} == {"sample", "directional"}
    for row in out["bugs"]:
        assert row["ok"] is False
        assert row["caught"] is True
        assert row["failing"] == ["layers/0/b"]
    assert "Sanity: ok" in text


def test_lesson_cold_start_is_reported(quick):
    _, _, out = quick
    lesson = out["lesson"]
    assert lesson["ok"] is True
    assert lesson["check_seconds"] > 0 and lesson["import_seconds"] > 0
    assert sorted(lesson["buggy_failing"]) == ["W2", "b1"]


def test_machine_and_matmul_rate_are_reported(quick):
    _, _, out = quick
    assert out["machine"]["device_count"] >= 1
    assert out["matmul"]["gflops_median"] > 0


def test_small_table_has_every_scenario_and_tool(quick):
    _, text, out = quick
    table = out["small"]
    assert table["models"] == ["tanh-49"]
    assert table["params"] == {"tanh-49": 49}
    measured = [tool for tool in small.TOOLS if tool not in table["missing"]]
    assert {"jaxcheck", "check_grads", "classic"} <= set(measured)
    for key in small.SCENARIOS:
        (row,) = table["cells"][key].values()
        assert set(row) == set(measured), key
        assert all(seconds > 0 for seconds in row.values())
    assert "| scenario" in text and "jaxcheck / torch" in text
    for goal in small.GOALS:
        assert goal[2] in text


def test_small_table_tools_agree_on_the_verdicts(quick):
    _, _, out = quick
    sanity = out["small"]["sanity"]
    assert {r["tool"] for r in sanity} == set(small.TOOLS) - set(out["small"]["missing"])
    for row in sanity:
        assert row["bug_caught"] is True, row
        if row["tool"] != "classic":  # the classic threshold may cry wolf
            assert row["correct_ok"] is True, row


def test_goals_are_reported_not_enforced(quick):
    _, text, out = quick
    goals = out["small"]["goals"]
    assert [g["scenario"] for g in goals] == [key for key, _, _ in small.GOALS]
    for goal in goals:
        if "torch" in out["small"]["missing"]:
            assert goal["met"] is None
        else:
            assert goal["ratio"] > 0 and isinstance(goal["met"], bool)
            assert ("PASS" if goal["met"] else "FAIL") in text


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "--quick" in help_text and "--small" in help_text


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--methods", "loop,fast"], "fast"),
        (["--small-models", "tanh-49,resnet"], "resnet"),
        (["--small", "--no-small"], "not allowed"),
        (["--pytest-checks", "-1"], "pytest-checks"),
    ],
    ids=["method", "small-model", "small-and-no-small", "pytest-checks"],
)
def test_usage_errors(capsys, argv, word):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    assert word in capsys.readouterr().err


def test_the_script_runs_from_another_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--small" in done.stdout


@pytest.mark.parametrize("module", [bench, measure, small, tables], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_fd_equivalent_flops_counts_the_downstream_matmuls():
    # 2-3-1 MLP, m=4: layer 0 costs 2*4*(2*3 + 3*1) = 72 per forward, layer 1 costs 24.
    probes = {"layers/0/W": 6, "layers/0/b": 3, "layers/1/W": 3, "layers/1/b": 1}
    assert measure.fd_equivalent_flops([2, 3, 1], 4, probes) == 2 * 9 * 72 + 2 * 4 * 24


def test_classic_loop_matches_the_backprop():
    model = models.make("relu_mlp", layers=[5, 4, 1], m=6, seed=1)
    result = measure.classic_loop(model.cost, model.grad, model.params)
    assert result.checked == result.total == 29
    assert result.difference < 1e-6
    subset = measure.classic_loop(model.cost, model.grad, model.params, np.array([0, 7, 28]))
    assert subset.checked == 3 and subset.total == 29
    assert subset.chunk_sizes == [1, 1, 1]
    assert subset.seconds == pytest.approx(sum(subset.chunk_seconds))
    assert subset.extrapolated_seconds == pytest.approx(29 * sorted(subset.chunk_seconds)[1])


def test_counting_compilations_sees_a_new_program_and_not_a_cached_one():
    program = jax.jit(lambda x: x * 3.0 + 1.0)
    with measure.counting_compilations() as first:
        program(np.ones(3, np.float32)).block_until_ready()
    with measure.counting_compilations() as again:
        program(np.ones(3, np.float32)).block_until_ready()
    assert first.compiles + first.cache_hits == 1 and first.traces == 1
    assert again.compiles == again.cache_hits == again.traces == 0


def test_cache_directory_is_set_inside_the_block_and_restored(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXCHECK_CACHE_DIR", "/somewhere/else")
    with measure.cache_directory() as fresh:
        assert os.environ["JAXCHECK_CACHE_DIR"] == fresh
        assert Path(fresh).is_dir() and not any(Path(fresh).iterdir())
    assert not Path(fresh).exists()
    with measure.cache_directory(tmp_path) as given:
        assert given == str(tmp_path)
    assert os.environ["JAXCHECK_CACHE_DIR"] == "/somewhere/else"


def test_quick_leaves_the_environment_as_found(quick):
    _, _, out = quick
    assert out["cache_dir"] == "new, empty"
    assert "jaxcheck-bench-" not in os.environ.get("JAXCHECK_CACHE_DIR", "")


@pytest.mark.parametrize(
    "tool",
    ["jaxcheck", pytest.param("torch", marks=TORCH), "check_grads", "classic"],
)
@pytest.mark.parametrize("name", ["tanh-49", "conv1d-59"])
def test_each_tool_passes_the_backprop_and_catches_the_bug(tool, name):
    spec = small.SMALL_MODELS[name]
    model = spec.make(seed=3)
    check = {
        "jaxcheck": small.check_jaxcheck,
        "torch": small.check_torch,
        "check_grads": small.check_grads_jax,
        "classic": small.check_classic,
    }[tool]
    if tool != "classic":  # the classic threshold may cry wolf
        assert check(model, model.grad) is True
    assert check(model, model.bugs[spec.bug].grad) is False


def test_small_models_have_the_advertised_sizes():
    for name, spec in small.SMALL_MODELS.items():
        params = small.Flat(spec.make(seed=0).params).theta.size
        assert name.endswith(f"-{params}")


def test_table_says_when_torch_is_not_installed():
    out = {
        "models": ["tanh-49"],
        "params": {"tanh-49": 49},
        "missing": {"torch": "torch not installed"},
        "twin": "port",
        "repeats": 1,
        "rounds": 1,
        "pytest_checks": 2,
        "cells": {"first": {"tanh-49": {"jaxcheck": 0.5, "check_grads": 0.1, "classic": 0.004}}},
        "details": {"inprocess": {}, "fresh": {}, "pytest": {}},
        "sanity": [],
        "cache_env": {},
    }
    text = small.table_text(out)
    row = next(line for line in text.splitlines() if line.startswith("| first check"))
    assert "torch not installed" in row
    assert "n/a (torch not measured)" in text
    assert all(goal["met"] is None for goal in small.goals(out))
