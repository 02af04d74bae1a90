"""The tour notebook (notebooks/tour.ipynb) runs headless top to bottom on the committed extract, as CI runs it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "tour.ipynb"


def test_committed_notebook_has_no_outputs():
    """Outputs are made by running it, never committed (they would go stale and bloat the history)."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)


def test_tour_runs_and_draws_every_rung(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # the notebook finds the extract at ../tests/data from its own folder, and writes its runs below it
    (tmp_path / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, tmp_path / "notebooks" / NOTEBOOK.name)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(REPO / "tests" / "data")
    notebook = nbformat.read(tmp_path / "notebooks" / NOTEBOOK.name, as_version=4)
    began = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path / "notebooks")}}).execute()
    seconds = time.perf_counter() - began
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(output.output_type != "error" for cell in code for output in cell.outputs)
    images = [output for cell in code for output in cell.outputs
              if output.output_type == "display_data" and "image/png" in output.data]
    # real digits, AE, VAE, CVAE, forward noising, DDPM, flow path, flow, latent
    assert len(images) == 9, f"{len(images)} pictures"
    assert sorted(path.name for path in (tmp_path / "notebooks" / "runs" / "tour").iterdir()) == [
        "ae", "cddpm", "cflow", "cvae", "latent", "vae", "vae-spatial"]
    print(f"tour notebook executed in {seconds:.0f} s")
