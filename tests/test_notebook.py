"""notebooks/quickstart.ipynb runs top to bottom on a CPU, as CI runs it (papermill).

Only the Colab-only cells (install, Drive, upload widget) are skipped, by the COLAB parameter; a
few training steps on the small synthetic set keep it to a minute or two. The executed notebook
must show the training curves and evaluation figures inline and a prediction for the picture.
"""

import ast
import json
import pathlib

import nbformat
import papermill
import pytest

# Trains in subprocesses or starts a server: not in the fast tier.
pytestmark = pytest.mark.e2e

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path):
  executed = tmp_path / "executed.ipynb"
  workdir = tmp_path / "run"
  papermill.execute_notebook(
    str(NOTEBOOK),
    str(executed),
    cwd=str(REPO),
    kernel_name="python3",
    progress_bar=False,
    parameters={
      "COLAB": False,
      "WORKDIR": str(workdir),
      "DATA_DIR": str(tmp_path / "tfds"),
      "DATASET_CONFIG": "small",
      "TRAIN_STEPS": 12,
    },
  )
  results = json.loads((workdir / "results.json").read_text())
  assert results["steps"] == 12 and results["test"]["num_examples"] == 224

  cells = nbformat.read(executed, as_version=4).cells
  outputs = [output for cell in cells if cell.cell_type == "code" for output in cell.outputs]
  images = [output for output in outputs if "image/png" in output.get("data", {})]
  # Curves (1 figure), accuracy vs train count and confusions (2), one annotated picture (1).
  assert len(images) == 4, [output.get("data", {}).keys() for output in outputs]
  text = "".join(output.get("text", "") for output in outputs)
  assert "kept: " in text and "jax " in text and "numpy " in text
  assert "test top-1" in text
  # The prediction of the picture taken from the test split, named after its true character.
  picture = next(workdir.glob("notebook/pictures/*.png"))
  (line,) = [line for line in text.splitlines() if line.startswith(f"{picture.name} [(")]
  answer = ast.literal_eval(line[len(picture.name) + 1 :])  # [(name, probability)] * 3, best first.
  names = json.loads((workdir / "class_names.json").read_text())
  assert len(answer) == 3 and all(name in names for name, _ in answer)
  probabilities = [p for _, p in answer]
  assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.001
  assert (workdir / "notebook" / "predictions" / f"{picture.name}.png").is_file()
