"""examples/quickstart.ipynb runs top to bottom (on the tiny random Llama: LAZYLLM_NOTEBOOK_MODEL=tiny) and draws
the kept-tokens-per-layer bar chart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import missing, need

import lazyllm

nbformat = need("nbformat")
nbclient = need("nbclient")
need("ipykernel")
need("matplotlib")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def _kernel_name() -> str:
    """The python3 kernel, whose spec ipykernel provides (`python -m ipykernel install --user` is never needed)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        missing("no python3 Jupyter kernel spec: run `python -m ipykernel install --user`")
    return "python3"


def test_quickstart_notebook_runs_on_a_tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYLLM_NOTEBOOK_MODEL", "tiny")
    # The kernel is a separate process: make this checkout importable there even when lazyllm is not installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=_kernel_name(),
        timeout=120,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "LlamaForCausalLM: 8 layers, prompt of 2100 tokens" in text
    assert f"prefill: pruned, schedule {lazyllm.LazyConfig.preset('default', 8).describe()}" in text
    assert "patched: False | same answer as the baseline: True" in text

    plot_cells = [cell for cell in code if "kept_per_layer" in cell.source and "plt" in cell.source]
    assert len(plot_cells) == 1
    images = [output for output in plot_cells[0].outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1
