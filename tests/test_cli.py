"""Tests for the ``jaxcheck`` command line, end to end in a subprocess where it matters."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcheck import cli

# A user's project: a two-layer tanh/sigmoid network whose data live at module level, so that
# cost and grad take params alone. The activation comes from a sibling module, as it might.
HELPERS = """\
import numpy as np


def act(z):
    return np.tanh(z)
"""

MODEL = """\
import jax.numpy as jnp
import numpy as np
from helpers import act

# Unseeded on purpose: cost, grad and jax_cost must share one execution of this file.
rng = np.random.default_rng()
X = rng.standard_normal((3, 8))
Y = (rng.random((1, 8)) > 0.5).astype(np.float64)


def _forward(p):
    A1 = act(p["W1"] @ X + p["b1"])
    A2 = 1 / (1 + np.exp(-(p["W2"] @ A1 + p["b2"])))
    return A1, A2


def cost(p):
    return float(np.mean((_forward(p)[1] - Y) ** 2))


def grad(p):
    A1, A2 = _forward(p)
    dZ2 = 2 * (A2 - Y) / X.shape[1] * A2 * (1 - A2)
    dZ1 = (p["W2"].T @ dZ2) * (1 - A1**2)
    return {
        "dW1": dZ1 @ X.T,
        "db1": dZ1.sum(axis=1, keepdims=True),
        "dW2": dZ2 @ A1.T,
        "db2": dZ2.sum(axis=1, keepdims=True),
    }


def grad_buggy(p):
    g = grad(p)
    g["db1"] = 3 * g["db1"]
    return g


def jax_cost(p):
    A1 = jnp.tanh(p["W1"] @ X + p["b1"])
    A2 = 1 / (1 + jnp.exp(-(p["W2"] @ A1 + p["b2"])))
    return jnp.mean((A2 - Y) ** 2)


def wrong_twin(p):
    return 2 * jax_cost(p)


def cost_inplace(p):
    Z = p["W1"] @ X + p["b1"]
    Z[Z < 0] = 0
    return float(np.sum(Z))


ANSWER = 42
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "helpers.py").write_text(HELPERS)
    (root / "model.py").write_text(MODEL)
    (root / "netpkg").mkdir()
    (root / "netpkg" / "__init__.py").write_text("")
    (root / "netpkg" / "net.py").write_text(MODEL)
    rng = np.random.default_rng(1)
    np.savez(
        root / "params.npz",
        W1=rng.standard_normal((4, 3)),
        b1=rng.standard_normal((4, 1)),
        W2=rng.standard_normal((1, 4)),
        b2=rng.standard_normal((1, 1)),
    )
    (root / "corrupt.npz").write_bytes(b"this is not a zip archive")
    np.save(root / "single.npy", np.ones(3))
    return root


def run(*args: str | Path, cwd: Path | None = None, pythonpath: Path | None = None):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "jaxcheck", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=120,
    )


def check_args(project: Path, grad: str = "grad", *extra: str) -> list[str]:
    model = project / "model.py"
    return [
        "check",
        f"{model}:cost",
        "--grad",
        f"{model}:{grad}",
        "--jax-cost",
        f"{model}:jax_cost",
        "--params",
        str(project / "params.npz"),
        "--no-progress",
        *extra,
    ]


# --------------------------------------------------------------------------------------------
# Verdicts: exit 0 for a correct gradient, 1 for a wrong one
# --------------------------------------------------------------------------------------------


def test_correct_gradient_exits_0(project: Path) -> None:
    result = run(*check_args(project))
    assert result.returncode == 0, result.stderr
    assert "Gradient correct" in result.stdout
    assert re.search(r"^b1 .* correct$", result.stdout, re.MULTILINE)


def test_wrong_gradient_exits_1_and_names_the_leaf(project: Path) -> None:
    result = run(*check_args(project, "grad_buggy"))
    assert result.returncode == 1, result.stderr
    assert "Gradient WRONG in b1." in result.stdout
    assert "b1: backprop is 3.00×" in result.stdout


def test_json_report_of_a_wrong_gradient(project: Path) -> None:
    result = run(*check_args(project, "grad_buggy", "--json"))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["failing"] == ["b1"]
    assert report["leaves"]["b1"]["ratio"] == pytest.approx(3.0)


def test_module_specs_from_pythonpath_and_json(project: Path, tmp_path: Path) -> None:
    result = run(
        "check",
        "netpkg.net:cost",
        "--grad",
        "netpkg.net:grad",
        "--jax-cost",
        "netpkg.net:jax_cost",
        "--params",
        project / "params.npz",
        "--method",
        "sample",
        "--samples",
        "3",
        "--json",
        cwd=tmp_path,
        pythonpath=project,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["failing"] == []
    assert report["method"] == "sample"


def test_the_cost_is_ported_when_no_twin_is_given(project: Path) -> None:
    if importlib.util.find_spec("jaxcheck.port") is None:
        pytest.skip("jaxcheck.port is not written yet")
    model = project / "model.py"
    params = project / "params.npz"
    result = run("check", f"{model}:cost", "--grad", f"{model}:grad", "--params", params)
    assert result.returncode == 0, result.stderr
    assert "ported JAX twin" in result.stdout


# --------------------------------------------------------------------------------------------
# Usage errors and unusable input: exit 2, message on stderr
# --------------------------------------------------------------------------------------------


def test_missing_file(project: Path) -> None:
    args = check_args(project)
    args[1] = f"{project / 'nowhere.py'}:cost"
    result = run(*args)
    assert result.returncode == 2
    assert f"no file {project / 'nowhere.py'}" in result.stderr
    assert result.stdout == ""


def test_missing_function_lists_the_functions_defined(project: Path) -> None:
    args = check_args(project)
    args[1] = f"{project / 'model.py'}:cst"
    result = run(*args)
    assert result.returncode == 2
    assert (
        f"jaxcheck: error: no function 'cst' in {project / 'model.py'} "
        "(it defines: cost, cost_inplace, grad, grad_buggy, jax_cost, wrong_twin)"
    ) in result.stderr


def test_missing_module(project: Path) -> None:
    args = check_args(project)
    args[1] = "nosuchpkg.model:cost"
    result = run(*args)
    assert result.returncode == 2
    assert "no module 'nosuchpkg'" in result.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.npz", "no params file"),
        ("corrupt.npz", "cannot read params file"),
        ("single.npy", "holds a single array"),
    ],
    ids=["missing", "corrupt", "npy"],
)
def test_unusable_params_file(project: Path, name: str, message: str) -> None:
    args = check_args(project)
    args[args.index("--params") + 1] = str(project / name)
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert name in result.stderr


def test_unknown_method(project: Path) -> None:
    result = run(*check_args(project, "grad", "--method", "fastest"))
    assert result.returncode == 2
    assert "invalid choice: 'fastest'" in result.stderr


def test_jaxcheck_errors_are_input_problems_not_verdicts(project: Path) -> None:
    args = check_args(project)
    args[args.index("--jax-cost") + 1] = f"{project / 'model.py'}:wrong_twin"
    result = run(*args)
    assert result.returncode == 2
    assert "jaxcheck: error: ReimplementationError: the JAX twin (given)" in result.stderr


def test_port_errors_give_the_command_line_advice(project: Path) -> None:
    model = project / "model.py"
    result = run(
        "check",
        f"{model}:cost_inplace",
        "--grad",
        f"{model}:grad",
        "--params",
        project / "params.npz",
        "--no-progress",
    )
    assert result.returncode == 2
    assert "PortError" in result.stderr and "Z[Z < 0] = 0" in result.stderr
    assert "--jax-cost path/to/file.py:function" in result.stderr


# In-process: argparse and the loaders, without starting another interpreter.


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--samples", "0"], "--samples: expected a positive integer"),
        (["--eps=-1e-6"], "--eps: expected a positive, finite number"),
        (["--rtol", "nan"], "--rtol: expected a positive, finite number"),
        (["--seed=-3"], "--seed: expected an integer >= 0"),
        (["--samples", "4"], "InputError: samples=4 only applies to method='sample'"),
    ],
    ids=["samples", "eps", "rtol", "seed", "samples-without-sample"],
)
def test_bad_option_values(
    project: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert cli.main(check_args(project, "grad", *extra)) == 2
    assert message in capsys.readouterr().err


def test_a_name_that_is_not_a_function(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = check_args(project)
    args[1] = f"{project / 'model.py'}:ANSWER"
    assert cli.main(args) == 2
    assert "'ANSWER' in" in capsys.readouterr().err


def test_sys_path_is_restored(project: Path) -> None:
    before = list(sys.path)
    cli.main(check_args(project, "grad", "--samples", "0"))
    cli.main(check_args(project, "grad", "--method", "sample", "--samples", "2", "--rtol", "1"))
    assert sys.path == before


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert re.match(r"jaxcheck \S+", capsys.readouterr().out)
    assert cli.main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    assert "close over it" in out and "exit status" in out and "ReimplementationError" in out
    assert cli.main([]) == 2


def test_bench_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench"]) == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


def test_demo_runs_the_lesson_and_explains_the_false_alarm() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "The gradient is correct! difference = 2.9" in out
    assert "There is a mistake in the backward propagation! difference = 0.2850931" in out
    assert re.search(r"mistake in the backward propagation! difference = 1\.18\d*e-07", out)
    assert "Gradient WRONG in W2, b1." in out
    assert "W2: backprop is 2.00×" in out and "b1: backprop is 4.00×" in out
    assert "Gradient correct" in out
    explanation = out.split("4. Why")[1]
    assert re.search(r"backprop vs finite\s+differences = 1\.19e-07", explanation)
    assert re.search(r"its\s+verdict\s+is\s+still\s+correct", explanation)
    assert re.search(r"drops\s+to\s+\d\.\d\de-09", explanation)


def test_module_entry_point_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    listed = re.findall(r"^    (\S+)", result.stdout, re.MULTILINE)
    assert listed == ["demo", "check"]
