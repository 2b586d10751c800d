"""Tests for the ``jaxcheck`` command line, end to end in a subprocess where it matters."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import jaxcheck
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


def cost_and_grad(p):
    return cost(p), grad(p)


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

# A one-parameter model that prints everywhere and exits in various ways.
SINE = """\
import os
import sys

import jax.numpy as jnp
import numpy as np

X = np.array([0.5, -1.0, 2.0])
print("printed at import")
os.write(1, b"written to file descriptor 1 at import\\n")


def cost(p):
    print("printed in cost")
    return float(np.sum(np.sin(X * p["w"])))


def grad(p):
    print("printed in grad")
    return {"w": X * np.cos(X * p["w"])}


def jax_cost(p):
    print("printed in jax_cost")
    return jnp.sum(jnp.sin(X * p["w"]))


def cost_exits(p):
    sys.exit(0)


def _give_up():
    raise SystemExit(1)


def grad_exits(p):
    _give_up()


def grad_quits(p):
    exit()


def twin_exits(p):
    sys.exit("the twin gave up")
"""

# Nested parameters, saved as layers/0/W, layers/0/b, layers/1/W, layers/1/b.
NESTED = """\
import jax.numpy as jnp
import numpy as np

X = np.linspace(-1.0, 1.0, 6).reshape(2, 3)


def _activations(p, xp):
    A = [X]
    for layer in p["layers"]:
        A.append(xp.tanh(layer["W"] @ A[-1] + layer["b"]))
    return A


def cost(p):
    return float(np.sum(_activations(p, np)[-1] ** 2))


def jax_cost(p):
    return jnp.sum(_activations(p, jnp)[-1] ** 2)


def grad(p):
    A = _activations(p, np)
    dA = 2 * A[-1]
    grads = []
    for i in reversed(range(len(p["layers"]))):
        dZ = dA * (1 - A[i + 1] ** 2)
        grads.append({"W": dZ @ A[i].T, "b": dZ.sum(axis=1, keepdims=True)})
        dA = p["layers"][i]["W"].T @ dZ
    return {"layers": grads[::-1]}
"""

# One dense layer for check-layer: forward(x, w, b) -> (out, cache), backward(dout, cache).
LAYER = """\
import numpy as np


def forward(x, w, b):
    out = np.tanh(x @ w + b)
    return out, (x, w, out)


def backward(dout, cache):
    x, w, out = cache
    dz = dout * (1 - out**2)
    return dz @ w.T, x.T @ dz, dz.sum(axis=0)


def backward_buggy(dout, cache):
    dx, dw, db = backward(dout, cache)
    return dx, 2 * dw, db
"""

# A model that imports the standard statistics module and a sibling module of its own.
STATISTICAL = """\
import statistics

import jax.numpy as jnp
import numpy as np
from helpers import act

X = np.array([0.5, -1.0, 2.0])
SCALE = statistics.fmean([1.0, 3.0])


def cost(p):
    return float(SCALE * np.sum(act(X * p["w"])))


def grad(p):
    return {"w": SCALE * X * (1 - np.tanh(X * p["w"]) ** 2)}


def jax_cost(p):
    return SCALE * jnp.sum(jnp.tanh(X * p["w"]))
"""

# What the installed `jaxcheck` script does; unlike python -m, it keeps the cwd off sys.path.
SCRIPT = """\
import sys

from jaxcheck.cli import main

sys.exit(main())
"""


def write_project(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def shadows(*modules: str) -> dict[str, str]:
    """Files named like standard modules that break any run that imports them."""
    return {
        f"{m}.py": f"raise RuntimeError('the user file {m}.py was imported')\n" for m in modules
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_project(
        tmp_path_factory.mktemp("project"),
        {
            "helpers.py": HELPERS,
            "model.py": MODEL,
            "netpkg/__init__.py": "",
            "netpkg/net.py": MODEL,
            "sine.py": SINE,
            "exit_at_import.py": "import sys\n\nsys.exit(0)\n",
            "nested.py": NESTED,
            "layer.py": LAYER,
        },
    )
    rng = np.random.default_rng(1)
    np.savez(
        root / "params.npz",
        W1=rng.standard_normal((4, 3)),
        b1=rng.standard_normal((4, 1)),
        W2=rng.standard_normal((1, 4)),
        b2=rng.standard_normal((1, 1)),
    )
    np.savez(root / "w.npz", w=np.array([0.3, -0.7, 1.1]))
    nested = {
        "layers/0/W": rng.standard_normal((3, 2)),
        "layers/0/b": rng.standard_normal((3, 1)),
        "layers/1/W": rng.standard_normal((1, 3)),
        "layers/1/b": rng.standard_normal((1, 1)),
    }
    np.savez(root / "nested.npz", **nested)
    (root / "corrupt.npz").write_bytes(b"this is not a zip archive")
    np.save(root / "single.npy", np.ones(3))
    return root


def run(
    *args: str | Path,
    cwd: Path | None = None,
    pythonpath: Path | None = None,
    script: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m jaxcheck ARGS``, or ``python SCRIPT ARGS`` (the installed-script way)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    command = [str(script)] if script is not None else ["-m", "jaxcheck"]
    return subprocess.run(
        [sys.executable, *command, *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=120,
    )


def here(capsys: pytest.CaptureFixture[str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs ``jaxcheck ARGS`` in this process: what ``run`` gives, without starting Python and JAX.

    For the tests of what the command says and returns; those of the process itself use ``run``.
    """
    capsys.readouterr()
    code = cli.main(list(map(str, args)))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["jaxcheck", *map(str, args)], code, out, err)


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


def sine_args(project: Path, cost: str = "cost", grad: str = "grad", twin: str = "jax_cost"):
    sine = project / "sine.py"
    return [
        "check",
        f"{sine}:{cost}",
        "--grad",
        f"{sine}:{grad}",
        "--jax-cost",
        f"{sine}:{twin}",
        "--params",
        str(project / "w.npz"),
        "--no-progress",
    ]


def one_json_object(text: str) -> dict[str, Any]:
    """Parses ``text`` as exactly one JSON object (json.loads rejects anything after it)."""
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


def raising(error: BaseException):
    def check(*args: Any, **kwargs: Any) -> Any:
        raise error

    return check


class FakeReport:
    """Stands in for jaxcheck.Report where only the command line's plumbing is tested."""

    def __init__(self, ok: bool, verdict: str = "") -> None:
        self.ok = ok
        self.verdict = verdict or f"fake report, ok={ok}"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failing": [] if self.ok else ["w"], "verdict": self.verdict}

    def __str__(self) -> str:
        return self.verdict


# --------------------------------------------------------------------------------------------
# Verdicts: exit 0 for a correct gradient, 1 for a wrong one
# --------------------------------------------------------------------------------------------


def test_correct_gradient_exits_0(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = here(capsys, *check_args(project))
    assert result.returncode == 0, result.stderr
    assert "Gradient correct" in result.stdout
    assert re.search(r"^b1 .* correct$", result.stdout, re.MULTILINE)


def test_wrong_gradient_exits_1_and_names_the_leaf(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = here(capsys, *check_args(project, "grad_buggy"))
    assert result.returncode == 1, result.stderr
    assert "Gradient WRONG in b1." in result.stdout
    assert "b1: backprop is 3.00×" in result.stdout


def test_json_report_of_a_wrong_gradient(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = here(capsys, *check_args(project, "grad_buggy", "--json"))
    assert result.returncode == 1, result.stderr
    report = one_json_object(result.stdout)
    assert report["ok"] is False
    assert report["exit_code"] == 1
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
    report = one_json_object(result.stdout)
    assert report["ok"] is True
    assert report["exit_code"] == 0
    assert report["failing"] == []
    assert report["method"] == "sample"


def test_the_cost_is_ported_when_no_twin_is_given(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("jaxcheck.port") is None:
        pytest.skip("jaxcheck.port is not written yet")
    model = project / "model.py"
    params = project / "params.npz"
    result = here(capsys, "check", f"{model}:cost", "--grad", f"{model}:grad", "--params", params)
    assert result.returncode == 0, result.stderr
    assert "ported JAX twin" in result.stdout


# --------------------------------------------------------------------------------------------
# --json: standard output holds the one JSON object and nothing else
# --------------------------------------------------------------------------------------------


def test_json_stdout_holds_only_the_report_whatever_the_user_prints(project: Path) -> None:
    result = run(*sine_args(project), "--json")
    assert result.returncode == 0, result.stderr
    assert one_json_object(result.stdout)["ok"] is True
    for printed in ("at import", "file descriptor 1", "in cost", "in grad", "in jax_cost"):
        assert printed in result.stderr


def test_what_the_user_prints_stays_on_stdout_without_json(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(sine_args(project)) == 0
    out = capsys.readouterr().out
    assert "printed in cost" in out and "Gradient correct" in out


@pytest.mark.parametrize(
    ("change", "code", "kind", "words"),
    [
        ({"cost": "nowhere"}, 2, "UsageError", "no file"),
        ({"extra": ["--method", "fastest"]}, 2, "UsageError", "invalid choice: 'fastest'"),
        ({"twin": "wrong_twin"}, 2, "ReimplementationError", "does not compute the NumPy cost"),
        ({"check": RuntimeError("boom")}, 3, "RuntimeError", "crashed with RuntimeError: boom"),
        ({"check": KeyboardInterrupt()}, 130, "KeyboardInterrupt", "interrupted"),
    ],
    ids=["usage", "argparse", "jaxcheck-error", "crash", "ctrl-c"],
)
def test_json_on_every_exit(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    code: int,
    kind: str,
    words: str,
) -> None:
    args = check_args(project, "grad", *change.get("extra", []), "--json")
    if "cost" in change:
        args[1] = f"{project / change['cost']}.py:cost"
    if "twin" in change:
        args[args.index("--jax-cost") + 1] = f"{project / 'model.py'}:{change['twin']}"
    if "check" in change:
        monkeypatch.setattr(cli, "run_check", raising(change["check"]))
    assert cli.main(args) == code
    captured = capsys.readouterr()
    result = one_json_object(captured.out)
    assert result["ok"] is None and result["exit_code"] == code
    assert set(result["error"]) == {"class", "message", "hint"}
    assert result["error"]["class"] == kind
    assert words in result["error"]["message"]
    assert words in captured.err


def test_the_json_schema_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    assert '"exit_code"' in out and '"error": {"class"' in out and "130" in out


# --------------------------------------------------------------------------------------------
# The user's code may not decide the exit status
# --------------------------------------------------------------------------------------------


def test_an_exit_at_import_is_a_usage_error_not_a_verdict(project: Path) -> None:
    args = check_args(project)
    args[1] = f"{project / 'exit_at_import.py'}:cost"
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert "importing" in result.stderr and "exit_at_import.py" in result.stderr
    assert (
        "sys.exit(0)" in result.stderr
        and "would claim that the gradient is correct" in result.stderr
    )
    assert result.stdout == ""


def test_exit_in_grad_is_a_usage_error_with_json(project: Path) -> None:
    result = run(*sine_args(project, grad="grad_quits"), "--json")
    assert result.returncode == 2, result.stderr
    report = one_json_object(result.stdout)
    assert report["exit_code"] == 2
    assert "grad_quits" in report["error"]["message"] and "exit()" in report["error"]["message"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cost": "cost_exits"}, ["cost_exits", "sys.exit(0)", "code 0"]),
        ({"grad": "grad_exits"}, ["grad_exits", "in _give_up", "raise SystemExit(1)"]),
        ({"twin": "twin_exits"}, ["twin_exits", "'the twin gave up'"]),
    ],
    ids=["cost", "grad", "jax_cost"],
)
def test_an_exit_inside_the_functions_is_a_usage_error(
    project: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str], words: list[str]
) -> None:
    assert cli.main(sine_args(project, **change)) == 2
    err = capsys.readouterr().err
    assert "sine.py" in err
    for word in words:
        assert word in err


# --------------------------------------------------------------------------------------------
# User files named like standard modules
# --------------------------------------------------------------------------------------------


def test_stdlib_namesakes_in_the_cwd_and_beside_the_model(tmp_path: Path) -> None:
    namesakes = shadows("random", "copy", "types", "statistics")
    cwd = write_project(tmp_path / "cwd", namesakes)
    model = write_project(
        tmp_path / "model", {**namesakes, "helpers.py": HELPERS, "stats.py": STATISTICAL}
    )
    np.savez(model / "w.npz", w=np.array([0.3, -0.7, 1.1]))
    script = write_project(tmp_path / "bin", {"jaxcheck_script.py": SCRIPT}) / "jaxcheck_script.py"
    stats = "../model/stats.py"
    result = run(
        "check",
        f"{stats}:cost",
        "--grad",
        f"{stats}:grad",
        "--jax-cost",
        f"{stats}:jax_cost",
        "--params",
        "../model/w.npz",
        cwd=cwd,
        script=script,
    )
    assert result.returncode == 0, result.stderr
    assert "Gradient correct" in result.stdout


def test_python_m_keeps_the_cwd_importable_but_behind_the_stdlib(tmp_path: Path) -> None:
    cwd = write_project(
        tmp_path, {**shadows("statistics"), "helpers.py": HELPERS, "stats.py": STATISTICAL}
    )
    np.savez(cwd / "w.npz", w=np.array([0.3, -0.7, 1.1]))
    result = run(
        "check", "stats:cost", "--grad", "stats:grad", "--params", "w.npz", "--json", cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    assert one_json_object(result.stdout)["ok"] is True


def test_python_m_from_a_folder_with_namesakes_of_modules_numpy_imports(tmp_path: Path) -> None:
    # python -m puts the cwd first on sys.path and imports jaxcheck, numpy with it, before
    # jaxcheck/__main__.py runs. (A types.py or functools.py there breaks runpy itself, before
    # any jaxcheck code runs: no package can help with those.)
    cwd = write_project(tmp_path, shadows("random", "copy"))
    result = run("demo", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "Gradient correct" in result.stdout
    assert "the user file" not in result.stderr


def test_importing_a_namesake_says_the_standard_module_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(
        tmp_path,
        {
            "random.py": "def shuffled_rows(x):\n    return x\n",
            "model.py": "from random import shuffled_rows\n\n\ndef cost(p):\n    return 0.0\n",
        },
    )
    model = tmp_path / "model.py"
    args = ["check", f"{model}:cost", "--grad", f"{model}:cost", "--params", "p.npz"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "ImportError: cannot import name 'shuffled_rows'" in err
    assert "holds random.py, named like standard modules" in err


# --------------------------------------------------------------------------------------------
# Usage errors and unusable input: exit 2, message on stderr
# --------------------------------------------------------------------------------------------


def test_missing_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = check_args(project)
    args[1] = f"{project / 'nowhere.py'}:cost"
    result = here(capsys, *args)
    assert result.returncode == 2
    assert f"no file {project / 'nowhere.py'}" in result.stderr
    assert result.stdout == ""


def test_missing_function_lists_the_functions_defined(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = check_args(project)
    args[1] = f"{project / 'model.py'}:cst"
    assert cli.main(args) == 2
    assert (
        f"jaxcheck: error: no function 'cst' in {project / 'model.py'} (it defines: cost, "
        "cost_and_grad, cost_inplace, grad, grad_buggy, jax_cost, wrong_twin)"
    ) in capsys.readouterr().err


def test_missing_module(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = check_args(project)
    args[1] = "nosuchpkg.model:cost"
    assert cli.main(args) == 2
    assert "no module 'nosuchpkg'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.npz", "no params file"),
        ("corrupt.npz", "cannot read params file"),
        ("single.npy", "holds a single array"),
    ],
    ids=["missing", "corrupt", "npy"],
)
def test_unusable_params_file(
    project: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    args = check_args(project)
    args[args.index("--params") + 1] = str(project / name)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and name in err


def test_unknown_method(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(check_args(project, "grad", "--method", "fastest")) == 2
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_jaxcheck_errors_are_input_problems_not_verdicts(project: Path) -> None:
    args = check_args(project)
    args[args.index("--jax-cost") + 1] = f"{project / 'model.py'}:wrong_twin"
    result = run(*args)
    assert result.returncode == 2
    assert "jaxcheck: error: ReimplementationError: the JAX twin (given)" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_reports_advice_is_said_the_command_lines_way(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    advice = "Two-way check. For the third opinion pass jax_cost= (a jax.numpy version)."
    monkeypatch.setattr(cli, "run_check", lambda *args, **options: FakeReport(True, advice))
    assert cli.main(check_args(project)) == 0
    out = capsys.readouterr().out
    assert "pass --jax-cost FILE:function (a jax.numpy version)" in out
    assert cli.main([*check_args(project), "--json"]) == 0
    assert one_json_object(capsys.readouterr().out)["verdict"] == advice


def test_a_closed_stdout_keeps_the_verdict(project: Path) -> None:
    command = [sys.executable, "-m", "jaxcheck", *check_args(project)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.close()  # the reader is gone before jaxcheck writes (| head -0)
        err = process.stderr.read().decode()
        assert process.wait(timeout=120) == 0, err
    assert "Traceback" not in err


def with_hint(error: jaxcheck.JaxcheckError, hint: str) -> jaxcheck.JaxcheckError:
    error.hint = hint  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "hint", "absent"),
    [
        (
            with_hint(jaxcheck.PortError("cannot port cost. Pass jax_cost=."), "Pass jax_cost=."),
            "--jax-cost FILE:function",
            "jax_cost=",
        ),
        (
            with_hint(jaxcheck.InputError("grad lacks 'W1'."), "Return every leaf."),
            "Return every leaf.",
            "--jax-cost",
        ),
        (
            jaxcheck.ReimplementationError("twin differs; pass a correct jax_cost= to jc.check."),
            "--jax-cost FILE:function",
            "Traceback",
        ),
    ],
    ids=["port-hint", "input-hint", "text-fallback"],
)
def test_hints_are_said_the_command_lines_way(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: jaxcheck.JaxcheckError,
    hint: str,
    absent: str,
) -> None:
    monkeypatch.setattr(cli, "run_check", raising(error))
    assert cli.main([*check_args(project), "--json"]) == 2
    captured = capsys.readouterr()
    result = one_json_object(captured.out)["error"]
    assert result["class"] == type(error).__name__
    assert hint in result["hint"]
    assert captured.err.startswith(f"jaxcheck: error: {type(error).__name__}: ")
    assert captured.err.count("\n") == 1, "one paragraph, no traceback"
    assert hint in captured.err and absent not in captured.err


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


def test_crash_and_interrupt_exit_3_and_130(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "run_check", raising(ValueError("internal")))
    assert cli.main(check_args(project)) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "check crashed with ValueError: internal" in err
    monkeypatch.setattr(cli, "run_check", raising(KeyboardInterrupt()))
    assert cli.main(check_args(project)) == 130
    assert "interrupted" in capsys.readouterr().err


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
# Nested params, and COST returning (loss, grads)
# --------------------------------------------------------------------------------------------


def test_nested_params_from_slashed_names(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nested = project / "nested.py"
    args = ["check", f"{nested}:cost", "--grad", f"{nested}:grad", "--jax-cost"]
    args += [f"{nested}:jax_cost", "--params", str(project / "nested.npz"), "--json"]
    assert cli.main(args) == 0
    report = one_json_object(capsys.readouterr().out)
    assert set(report["leaves"]) == {"layers/0/W", "layers/0/b", "layers/1/W", "layers/1/b"}


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", "a/b"], "holds both 'a' and 'a/b'"),
        (["a/b", "a"], "holds both 'a' and 'a/b'"),
        (["layers/0/W", "layers/2/W"], "layers/0, layers/2 must count 0, 1, 2"),
        (["layers/00/W"], "without gaps or leading zeros"),
        (["a//b"], "empty level"),
    ],
    ids=["array-then-group", "group-then-array", "gap", "leading-zero", "empty"],
)
def test_inconsistent_nested_names(
    project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    names: list[str],
    message: str,
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **{name: np.ones(2) for name in names})
    args = check_args(project)
    args[args.index("--params") + 1] = str(path)
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_without_grad_cost_returns_loss_and_grads(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = {}

    def fake_check(cost: Any, grad: Any, params: Any, **options: Any) -> FakeReport:
        seen.update(cost=cost, grad=grad, params=params)
        return FakeReport(ok=False)

    monkeypatch.setattr(cli, "run_check", fake_check)
    args = check_args(project, "grad")
    del args[2:4]  # --grad GRAD
    args[1] = f"{project / 'model.py'}:cost_and_grad"
    assert cli.main(args) == 1
    assert seen["grad"] is None and seen["cost"].__name__ == "cost_and_grad"
    assert sorted(seen["params"]) == ["W1", "W2", "b1", "b2"]
    assert "fake report, ok=False" in capsys.readouterr().out


def test_without_grad_end_to_end(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = check_args(project, "grad", "--json")
    del args[2:4]
    args[1] = f"{project / 'model.py'}:cost_and_grad"
    assert cli.main(args) == 0, capsys.readouterr().err
    assert one_json_object(capsys.readouterr().out)["ok"] is True


# --------------------------------------------------------------------------------------------
# check-layer
# --------------------------------------------------------------------------------------------


@pytest.fixture
def layer_files(project: Path, tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal(2)
    np.savez(tmp_path / "named.npz", b=b, x=x, w=w)  # not in forward's order
    np.savez(tmp_path / "numbered.npz", arg2=b, arg0=x, arg1=w)
    np.save(tmp_path / "dout.npy", rng.standard_normal((4, 2)))
    return {"layer": project / "layer.py", "dir": tmp_path}


def layer_args(files: dict[str, Path], args: str = "named.npz", *extra: str) -> list[str]:
    layer = files["layer"]
    return [
        "check-layer",
        f"{layer}:forward",
        f"{layer}:backward",
        "--args",
        str(files["dir"] / args),
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def fake_check_layer(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def check_layer(forward: Any, backward: Any, *args: Any, **options: Any) -> FakeReport:
        calls.append({"forward": forward, "backward": backward, "args": args, **options})
        return FakeReport(ok=len(calls) == 1)

    monkeypatch.setattr(jaxcheck, "check_layer", check_layer, raising=False)
    return calls


@pytest.mark.parametrize("archive", ["named.npz", "numbered.npz"])
def test_check_layer_passes_the_arguments_in_order(
    layer_files: dict[str, Path],
    fake_check_layer: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    archive: str,
) -> None:
    dout = str(layer_files["dir"] / "dout.npy")
    extra = ["--dout", dout, "--wrt", "x,w", "--method", "sample", "--json"]
    assert cli.main(layer_args(layer_files, archive, *extra)) == 0
    assert one_json_object(capsys.readouterr().out)["exit_code"] == 0
    (call,) = fake_check_layer
    assert [a.shape for a in call["args"]] == [(4, 3), (3, 2), (2,)]
    assert call["dout"].shape == (4, 2) and call["wrt"] == ("x", "w")
    assert call["method"] == "sample" and call["forward"].__name__ == "forward"
    assert cli.main(layer_args(layer_files, archive)) == 1
    assert fake_check_layer[1]["dout"] is None and fake_check_layer[1]["wrt"] is None


@pytest.mark.parametrize(
    ("names", "extra", "message"),
    [
        (["x", "bias"], [], "['bias'], which are not parameters of forward (x, w, b)"),
        (["x", "b"], [], "lacks ['w']"),
        (["arg0", "arg2"], [], "not ['arg1']"),
        (["x", "w"], ["--wrt", "x,v"], "['v'] are not parameters of forward"),
    ],
    ids=["unknown-name", "gap-in-names", "gap-in-numbers", "unknown-wrt"],
)
def test_check_layer_argument_errors(
    layer_files: dict[str, Path],
    fake_check_layer: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    names: list[str],
    extra: list[str],
    message: str,
) -> None:
    np.savez(layer_files["dir"] / "bad.npz", **{name: np.ones(2) for name in names})
    assert cli.main(layer_args(layer_files, "bad.npz", *extra)) == 2
    assert message in capsys.readouterr().err
    assert fake_check_layer == []


@pytest.mark.parametrize(("backward", "code"), [("backward", 0), ("backward_buggy", 1)])
def test_check_layer_end_to_end(
    layer_files: dict[str, Path], capsys: pytest.CaptureFixture[str], backward: str, code: int
) -> None:
    args = layer_args(layer_files, "named.npz", "--json")
    args[2] = f"{layer_files['layer']}:{backward}"
    assert cli.main(args) == code, capsys.readouterr().err
    report = one_json_object(capsys.readouterr().out)
    assert report["exit_code"] == code
    assert report["failing"] == ([] if code == 0 else ["w"])


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
    assert "Gradient WRONG in b1, W2." in out
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
    assert listed == ["demo", "check", "check-layer", "cache"]
    assert "bench" not in result.stdout


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    result = here(capsys, "--help")  # the same help in this process (the one above is slow)
    assert result.returncode == 0
    listed = re.findall(r"^    (\S+)", result.stdout, re.MULTILINE)
    assert listed == ["demo", "check", "check-layer", "cache"]
    assert "bench" not in result.stdout
