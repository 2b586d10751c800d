"""Executes the notebooks in ``notebooks/`` and saves them with their outputs.

Usage: ``python tools/run_notebooks.py [NOTEBOOK ...]`` (default: every notebook). The outputs
are kept small and stable: no execution timestamps, no widget state, numbered cells, and
``--check`` fails (without writing) when a notebook's saved outputs are missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 600


def execute(path: Path, kernel_name: str = "python3") -> nbformat.NotebookNode:
    """Runs ``path`` top to bottom in a fresh kernel, in its own directory; returns it run."""
    notebook = nbformat.read(path, as_version=4)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return notebook


def tidy(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drops what changes from run to run and says nothing: timings, widget state, ids' noise."""
    notebook.metadata.pop("widgets", None)
    count = 0
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        for output in cell.outputs:
            if "execution_count" in output:
                output["execution_count"] = count
            output.get("metadata", {}).pop("execution", None)
            # A progress bar's carriage returns leave only noise behind.
            if output.get("name") == "stderr" and "\r" in output.get("text", ""):
                output["text"] = output["text"].rsplit("\r", 1)[-1]
    return notebook


def has_outputs(notebook: nbformat.NotebookNode) -> bool:
    """Whether every code cell has been executed (and saved with what it showed)."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    return all(c.execution_count is not None for c in code)


def main(argv: list[str] | None = None) -> int:
    """Runs and saves the notebooks; with ``--check``, only reports those saved without outputs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=sorted(NOTEBOOKS.glob("*.ipynb")))
    parser.add_argument("--check", action="store_true", help="fail if any lacks its outputs")
    args = parser.parse_args(argv)
    if args.check:
        missing = [p for p in args.paths if not has_outputs(nbformat.read(p, as_version=4))]
        for path in missing:
            print(f"{path}: saved without outputs; run python tools/run_notebooks.py {path}")
        return 1 if missing else 0
    for path in args.paths:
        print(f"running {path.name} ...", flush=True)
        nbformat.write(tidy(execute(path)), path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
