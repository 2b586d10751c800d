"""Tests for the benchmark: ``--quick`` runs end to end, its tables and JSON hold every row.

Speed is a benchmark matter, not a test matter: nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from jaxcheck import bench, models


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
    ):
        assert name in cells


def test_rows_cover_the_loop_and_every_method(quick):
    _, _, out = quick
    methods = {row["method"].split(" (")[0] for row in out["rows"]}
    assert {"classic loop", "full", "sample", "directional"} <= methods
    for row in out["rows"]:
        assert row["seconds"] > 0
        assert row["fd_flops"] > 0
        if row["method"] != "classic loop (NumPy)":
            assert row["first_seconds"] > 0
            assert row["ok"] is True, row
            assert row["verdict"] == "ok"


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


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--help"])
    assert exit_.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_unknown_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--methods", "loop,fast"])
    assert exit_.value.code == 2
    assert "fast" in capsys.readouterr().err


def test_fd_equivalent_flops_counts_the_downstream_matmuls():
    # 2-3-1 MLP, m=4: layer 0 costs 2*4*(2*3 + 3*1) = 72 per forward, layer 1 costs 24.
    probes = {"layers/0/W": 6, "layers/0/b": 3, "layers/1/W": 3, "layers/1/b": 1}
    assert bench.fd_equivalent_flops([2, 3, 1], 4, probes) == 2 * 9 * 72 + 2 * 4 * 24


def test_classic_loop_matches_the_backprop():
    model = models.make("relu_mlp", layers=[5, 4, 1], m=6, seed=1)
    result = bench.classic_loop(model.cost, model.grad, model.params)
    assert result.checked == result.total == 29
    assert result.difference < 1e-6
    subset = bench.classic_loop(model.cost, model.grad, model.params, np.array([0, 7, 28]))
    assert subset.checked == 3 and subset.total == 29
    assert subset.chunk_sizes == [1, 1, 1]
    assert subset.seconds == pytest.approx(sum(subset.chunk_seconds))
    assert subset.extrapolated_seconds == pytest.approx(29 * sorted(subset.chunk_seconds)[1])
