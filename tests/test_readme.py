"""The README's examples run: its Python blocks in order, and its test file under pytest."""

from __future__ import annotations

import linecache
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_quickstart_has_exactly_two_commands():
    section = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line for block in commands for line in block.strip().splitlines()]
    assert lines == [
        "python3 -m pip install . && python3 -m jaxcheck demo",
        'python3 -m pip install ".[test]" && python3 -m pytest',
    ]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'python3 -m pip install ".[test]"' in ci and "python3 -m pytest" in ci


def test_python_blocks_run_in_order():
    namespace: dict = {"__name__": "readme"}
    ran = 0
    for k, (lang, code) in enumerate(BLOCKS):
        if lang == "python" and not code.startswith("# test_"):
            # As IPython does for a cell: the block's source is registered under its own name,
            # so that jc.port can read it back (a README is no Python file to recompile).
            name = f"<README.md python block {k}>"
            linecache.cache[name] = (len(code), None, code.splitlines(True), name)
            exec(compile(code, name, "exec"), namespace)  # noqa: S102
            ran += 1
    assert ran >= 3


@pytest.mark.parametrize("bug", [False, True], ids=["correct", "buggy"])
def test_the_test_suite_example_passes_and_fails(tmp_path, bug):
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
