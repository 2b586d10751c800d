"""The README's examples run: each Python block alone, printing what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import linecache
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", TEXT, flags=re.S)
PROGRAMS = [
    (k, code)
    for k, (lang, code) in enumerate(BLOCKS)
    if lang == "python" and not code.startswith("# test_")
]


def test_the_readme_is_read_in_minutes() -> None:
    assert len(TEXT.encode("utf-8")) <= 16 * 1024
    assert 'matplotlib.use("Agg")' not in TEXT  # it would turn off inline plots in Jupyter
    for column in ("checked", "bp vs fd", "bp vs ad", "fd vs ad", "fd error", "ratio", "worst"):
        assert f"| `{column}` |" in TEXT, f"the legend lacks {column}"


def test_quickstart_has_exactly_two_commands() -> None:
    section = TEXT.split("## Quickstart", 1)[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line for block in commands for line in block.strip().splitlines()]
    assert lines == [
        "python3 -m pip install . && python3 -m jaxcheck demo",
        'python3 -m pip install ".[test]" && python3 -m pytest -n auto -m "not slow"',
    ]


def _run_alone(k: int, code: str) -> str:
    """Runs one block in a namespace of its own, as `python block.py` would; returns stdout."""
    # As IPython does for a cell: the block's source is registered under its own name, so that
    # jc.port can read it back (a README is no Python file to recompile).
    name = f"<README.md python block {k}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec"), {"__name__": "__main__"})  # noqa: S102
    return out.getvalue()


@pytest.mark.parametrize("k, code", PROGRAMS, ids=[f"block{k}" for k, _ in PROGRAMS])
def test_each_python_block_runs_alone_and_prints_what_it_shows(k: int, code: str) -> None:
    pytest.importorskip("matplotlib")
    assert re.search(r"^import |^from ", code, flags=re.M), "a block brings its own imports"
    printed = _run_alone(k, code)
    assert printed.strip(), "a block prints what it shows"
    for expected in re.findall(r"^print\(.*\)  # (.+)$", code, flags=re.M):
        assert expected in printed, (expected, printed)
    following = TEXT.split(code, 1)[1].lstrip()
    if following.startswith("```text\n"):  # the output shown below the block
        _same_report(following.split("\n", 1)[1].split("```")[0], printed)


def _table(text: str) -> list[tuple[str, str]]:
    """(leaf, status) per row of a printed report's table."""
    lines = text.strip().splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("overall:"))
    return [(line.split()[0], line.split("  ")[-1].strip()) for line in lines[3:end]]


def _same_report(shown: str, printed: str) -> None:
    """The same leaves, statuses and sentences (the digits may differ from platform to platform)."""
    assert _table(shown) == _table(printed)
    verdict = shown.strip().split("\noverall:", 1)[1].split("\n", 1)[1]
    assert verdict in printed


def test_the_first_screen_is_the_lessons_ported_check() -> None:
    import jaxcheck as jc
    from jaxcheck import lesson

    X, Y, params = lesson.gradient_check_n_test_case()

    def cost(p):
        return lesson.forward_propagation_n(X, Y, p)

    def grad(p):
        return lesson.backward_propagation_n_buggy(X, Y, cost(p)[1])

    report = jc.check(cost, grad, params)
    shown = TEXT.split("```text\n", 1)[1].split("```")[0]
    assert shown.splitlines()[0] == str(report).splitlines()[0]
    _same_report(shown, str(report))


@pytest.mark.slow
@pytest.mark.parametrize("bug", [False, True], ids=["correct", "buggy"])
def test_the_test_suite_example_passes_and_fails(tmp_path: Path, bug: bool) -> None:
    (code,) = [c for lang, c in BLOCKS if lang == "python" and c.startswith("# test_")]
    if bug:
        code = code.replace("2 * np.tanh", "3 * np.tanh")
    (tmp_path / "test_my_layer.py").write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    if bug:
        assert result.returncode == 1, result.stdout
        assert "1 failed" in result.stdout
        assert "w: backprop is 1.50×" in result.stdout
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 passed" in result.stdout
