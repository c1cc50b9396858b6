"""Every tutorial notebook runs: each ``tutorials/*.ipynb`` is executed top to bottom with nbclient.

The kernel is this interpreter (a kernelspec written into a temporary ``JUPYTER_PATH`` naming
``sys.executable``, so the notebooks import the camlens under test, ``PYTHONPATH`` included), the working
folder is a temporary one (whatever a notebook writes stays there), and each notebook has one time budget,
``BUDGET`` seconds, for all its cells: the tutorials promise to run on a CPU in under two minutes, and the
budget leaves room for a loaded CI machine. A cell that raises, or a notebook over budget, fails the test.
Notebooks are stored without outputs (``test_stored_without_outputs``), so what a reader sees was computed
by their run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
BUDGET = 300.0  # seconds per notebook, all cells together (the notebooks aim at under 90 s on 2 cores)
KERNEL = "camlens-tests"


def test_tutorials_exist() -> None:
    assert len(NOTEBOOKS) >= 6, f"expected the tutorial notebooks in {TUTORIALS}, found {NOTEBOOKS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    stored = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stored, f"{path.name}: cells {stored} hold outputs; clear them (outputs must come from a run)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "camlens tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    work = tmp_path / "work"
    work.mkdir()
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, kernel_name=KERNEL, resources={"metadata": {"path": str(work)}})
    deadline = time.monotonic() + BUDGET
    with client.setup_kernel():
        for index, cell in enumerate(book.cells):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{path.name}: over its {BUDGET:.0f} s budget before cell {index}"
            client.timeout = max(1, int(remaining))
            client.execute_cell(cell, index)
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
