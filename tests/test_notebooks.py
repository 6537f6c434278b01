"""The notebooks run top to bottom (small settings) so they never rot."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
  monkeypatch.setenv("CL_JAX_NOTEBOOK_STEPS", "4")
  monkeypatch.setenv("CL_JAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("CL_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  with open(os.path.join(ROOT, "notebooks", name)) as f:
    nb = nbformat.read(f, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "kNN top-1" in outputs
  assert os.path.exists(tmp_path / "run" / "augmentations.png")
  assert any(f.startswith("tsne") for f in os.listdir(tmp_path / "run" / "eval"))
