"""The colabs run top to bottom with tiny settings, and are committed without outputs."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

import run_helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colabs", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, cell.source[:60]


def test_transfer_colab_runs(tmp_path):
    from input_pipeline import datasets
    from input_pipeline.datasets import synthetic

    synthetic.write_tuberculosis(tmp_path / "tb", n_shenzhen=20, n_montgomery=6,
                                 image_size=(40, 36), seed=2)
    data_dir = str(tmp_path / "tfds")
    datasets.prepare("tuberculosis_cxr", manual_dir=tmp_path / "tb", data_dir=data_dir,
                     num_workers=1)
    run_helpers.random_npz(tmp_path / "small.npz", 4)

    nb = nbformat.read(os.path.join(REPO, "colabs", "transfer.ipynb"), as_version=4)
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source = "\n".join([
        f"PRETRAINED = {str(tmp_path / 'small.npz')!r}",
        'DATASET = "tuberculosis_cxr"', 'TRAIN_SPLIT, TEST_SPLIT = "train", "test"',
        f"DATA_DIR = {data_dir!r}", "SHOTS = 2", "STEPS = 3", "IMAGE_SIZE = 32", "BATCH = 8",
        "SEED = 0"])
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": REPO}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs)
    assert "linear probe,   1 per class" in text
    assert "'acc':" in text and "'mean_auc':" in text
