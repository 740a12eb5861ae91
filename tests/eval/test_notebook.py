"""notebooks/loss_by_position.ipynb runs top to bottom on a finished (tiny) sweep and draws both plots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "loss_by_position.ipynb"


@pytest.mark.slow  # a notebook kernel, on the subprocess-run sweep
def test_notebook_executes_on_a_finished_sweep(tiny_sweep, monkeypatch) -> None:
    monkeypatch.setenv("SWEEP_DIR", str(tiny_sweep.out))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "6 evaluated points" in text and "e2e/extend-00064" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 2  # loss by position; loss vs context length with the difference to FA
