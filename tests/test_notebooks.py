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


def test_notebooks_are_committed_with_their_outputs() -> None:
    # So that a code host shows the results; tools/run_notebooks.py executes and saves them.
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.execution_count is not None for cell in code), (
            f"{path.name}: run python tools/run_notebooks.py {path.name} before committing"
        )
        errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{path.name} was saved with an error: {errors[0].get('evalue')}"


def test_notebooks_leave_inline_plots_on_and_name_jaxcheck_jc() -> None:
    for path in NOTEBOOKS:
        source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
        assert "matplotlib.use(" not in source, f"{path.name} turns off inline plots"
        assert "import jaxcheck as jc" in source, path.name


def test_finding_the_bug_checks_user_code_through_the_port() -> None:
    path = next(p for p in NOTEBOOKS if p.name.startswith("02_"))
    cells = nbformat.read(path, as_version=4).cells
    source = "\n".join(cell.source for cell in cells if cell.cell_type == "code")
    assert "jax_cost" not in source and "jax.numpy" not in source and "models" not in source
    assert "def backward(" in source and "jc.check(forward, backward, params)" in source


@pytest.mark.slow
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
