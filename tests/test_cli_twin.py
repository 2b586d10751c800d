"""The command line's --twin flag, and error lines that read as prose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxcheck import cli

MODEL = """
import numpy as np

X = np.linspace(-1.0, 1.0, 6).reshape(2, 3)


def cost(p):
    return float(np.sum(np.tanh(p["w"] @ X) ** 2))


def grad(p):
    t = np.tanh(p["w"] @ X)
    return {"w": (2 * t * (1 - t**2)) @ X.T}


def _hinge_term(z):  # a branch that returns, on a value computed from the parameters: no port
    if z > 0:
        return z
    return 0.0


def hinge(p):
    return float(sum(_hinge_term(z) for z in (p["w"] @ X).ravel()))


def hinge_grad(p):
    return {"w": (((p["w"] @ X) > 0) * 1.0) @ X.T}
"""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(MODEL, encoding="utf-8")
    np.savez(tmp_path / "params.npz", w=np.array([[0.3, -0.7]]))
    return tmp_path


def _args(root: Path, cost: str, grad: str, *extra: str) -> list[str]:
    model = root / "model.py"
    params = str(root / "params.npz")
    return ["check", f"{model}:{cost}", "--grad", f"{model}:{grad}", "--params", params, *extra]


@pytest.mark.parametrize(
    "twin, expected", [("auto", "ported"), ("none", "none")], ids=["auto", "none"]
)
def test_twin_flag_chooses_the_opinions(model: Path, capsys, twin: str, expected: str) -> None:
    code = cli.main(_args(model, "cost", "grad", "--twin", twin, "--json", "--no-progress"))
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] is True
    assert report["twin"] == expected and report["autodiff"] is (expected != "none")


def test_twin_required_stops_where_the_port_cannot_follow(model: Path, capsys) -> None:
    argv = _args(model, "hinge", "hinge_grad", "--twin", "required", "--no-progress")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "if z > 0" in err and "--jax-cost" in err


def test_without_required_the_same_code_is_checked_two_way(model: Path, capsys) -> None:
    assert cli.main(_args(model, "hinge", "hinge_grad", "--no-progress")) == 0
    out = capsys.readouterr().out
    assert "two-way: no JAX twin" in out and "bp vs ad —" in out


@pytest.mark.parametrize(
    "argv, line",
    [
        (["check"], "are required: COST, --params; see jaxcheck check --help"),
        (
            ["check", "m.py:f", "--params", "p.npz", "--twin", "maybe"],
            "'none'); see jaxcheck check --help",
        ),
    ],
    ids=["missing", "bad-choice"],
)
def test_a_usage_error_reads_as_one_sentence(argv, line, capsys) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert line in err, err
