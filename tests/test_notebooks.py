"""The notebooks run top to bottom (small settings) so they never rot."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# notebook -> (texts its outputs must contain, files it must write in the workdir)
EXPECTED = {
    "quickstart.ipynb": (("kNN top-1",), ("augmentations.png",)),
    "zero_shot.ipynb": (("zero-shot top-1", "zero-shot top-1 on unseen compositions"),
                        ("zero_shot_predictions.png", "retrievals.png")),
    "open_vocab_segmentation.ipynb": (("miou", "pixel_acc", 'prompt "a red circle"'),
                                      ("segmentation_predictions.png", "prompt_masks.png")),
    # Needs the test extra's torch and open_clip (the CLIP part); without them it draws 2 figures, not 5.
    "pretrained.ipynb": (("kNN top-1", "patch similarity maps", "text tower: max relative difference",
                          "zero-shot top-1", "dense readout: (8, 4, 4, 64)"),
                         ("vit_patch_similarity.png", "vit_patch_pca.png", "clip_zero_shot.png",
                          "clip_prompt_similarity.png", "clip_dense_prompt.png")),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes(name, tmp_path, monkeypatch):
  monkeypatch.setenv("CL_JAX_NOTEBOOK_STEPS", "4")
  monkeypatch.setenv("CL_JAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("CL_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  with open(os.path.join(ROOT, "notebooks", name)) as f:
    nb = nbformat.read(f, as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  texts, files = EXPECTED[name]
  for text in texts:
    assert text in outputs, text
  for f in files:
    assert os.path.exists(tmp_path / "run" / f), f
  if name == "quickstart.ipynb":
    assert any(f.startswith("tsne") for f in os.listdir(tmp_path / "run" / "eval"))
  else:  # the figures were drawn inline too
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])) >= 4
