"""Executes every notebook in ``notebooks/`` top to bottom, so that none can go stale."""

from __future__ import annotations

import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_name() -> str:
    """A ``python3`` kernel that runs this interpreter (and so this jaxcheck)."""
    pytest.importorskip("ipykernel")
    manager = kernelspec.KernelSpecManager()
    try:
        spec = manager.get_kernel_spec("python3")
    except kernelspec.NoSuchKernel:
        spec = None
    # A "python" argv is replaced by sys.executable when the kernel starts; any other
    # interpreter would run another environment's jaxcheck, so install ours into sys.prefix.
    if spec is None or spec.argv[0] not in ("python", "python3", sys.executable):
        from ipykernel import kernelspec as ipykernel_kernelspec

        ipykernel_kernelspec.install(prefix=sys.prefix, user=False)
    return "python3"


def test_there_are_notebooks() -> None:
    names = [path.name for path in NOTEBOOKS]
    assert "01_the_lesson.ipynb" in names, names


def test_notebooks_are_committed_without_outputs() -> None:
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{path.name}: clear the outputs before committing"
                )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path: pathlib.Path, kernel_name: str, monkeypatch) -> None:
    # Headless, as in Jupyter: the inline backend draws PNGs into the outputs, never a window.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no plot"
