"""The colabs run top to bottom with tiny settings, and are committed without outputs."""

import glob
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

import run_helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_MARK = '"-m", "pip"'  # in the cell that installs bit_medical
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


def _set_parameters(nb, **values):
    """Replaces the notebook's `parameters` cell with ``NAME = repr(value)`` lines."""
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source = "\n".join(f"{k} = {v!r}" for k, v in values.items())


def _execute(nb):
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": REPO}}).execute()
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_install_cell_is_real(path):
    """No placeholder URL: the notebook installs the clone it sits in, or says what to run."""
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "your-fork" not in text and not re.search(r"github\.com/<", text)
    install = [c.source for c in nb.cells if c.cell_type == "code" and INSTALL_MARK in c.source]
    assert len(install) == 1 and '"pip", "install", "-q", "-e", clone' in install[0]


def test_install_cell_outside_a_clone_names_the_command(tmp_path):
    """Where bit_medical is not importable and no clone is around, the cell stops with the
    command to run (-S: without site-packages, where the test environment installed it)."""
    nb = nbformat.read(os.path.join(REPO, "colabs", "xray_fewshot.ipynb"), as_version=4)
    install = next(c.source for c in nb.cells if c.cell_type == "code" and INSTALL_MARK in c.source)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", install], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "set CLONE above" in proc.stderr and "pip install -e PATH_TO_CLONE" in proc.stderr


# Run after the setup cell: from there on, importing this project fails.
_BLOCK_PROJECT = """
import sys
class _NoProject:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("bit_medical", "input_pipeline"):
            raise ImportError(f"the consuming cells must not import {name}")
for _name in [m for m in sys.modules if m.split(".")[0] in ("bit_medical", "input_pipeline")]:
    del sys.modules[_name]
sys.meta_path.insert(0, _NoProject())
"""


def test_use_checkpoint_colab_gives_bit_medicals_logits(tmp_path):
    import jax.numpy as jnp
    import numpy as np

    import bit_medical

    nb = nbformat.read(os.path.join(REPO, "colabs", "use_checkpoint.ipynb"), as_version=4)
    _set_parameters(nb, EXPORT="", DEMO_DIR=str(tmp_path), BATCH=3)
    setup = [i for i, c in enumerate(nb.cells) if "export.save(" in c.source]
    assert len(setup) == 1
    consuming = nb.cells[setup[0] + 1:]
    assert not any("bit_medical" in c.source or "input_pipeline" in c.source
                   for c in consuming if c.cell_type == "code")
    nb.cells.insert(setup[0] + 1, nbformat.v4.new_code_cell(_BLOCK_PROJECT))
    out = tmp_path / "outputs.npz"
    nb.cells.append(nbformat.v4.new_code_cell(
        f"np.savez({str(out)!r}, images=np.asarray(images), logits=np.asarray(out), "
        "features=feats)"))
    text = _execute(nb)
    assert "features (3, 1024)" in text and "image 2:" in text

    saved = np.load(out)
    model, variables = bit_medical.load_model(str(tmp_path / "export"))  # its trained head
    images = jnp.asarray(saved["images"])
    np.testing.assert_allclose(saved["logits"], model.apply(variables, images),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(saved["features"],
                               model.apply(variables, images, pre_logits=True),
                               rtol=1e-4, atol=1e-4)


def test_xray_fewshot_colab_runs_and_reports(tmp_path):
    from bit_medical import results
    from input_pipeline import datasets
    from input_pipeline.datasets import synthetic

    synthetic.write_tuberculosis(tmp_path / "tb", n_shenzhen=20, n_montgomery=6,
                                image_size=(40, 36), seed=2)
    data_dir = str(tmp_path / "tfds")
    datasets.prepare("tuberculosis_cxr", manual_dir=tmp_path / "tb", data_dir=data_dir,
                     config="full", num_workers=1)
    run_helpers.random_npz(tmp_path / "small.npz", 4)
    runs = tmp_path / "runs"

    nb = nbformat.read(os.path.join(REPO, "colabs", "xray_fewshot.ipynb"), as_version=4)
    _set_parameters(
        nb, PRETRAINED=str(tmp_path / "small.npz"), TARGET="tuberculosis", SHOTS=[1, 5],
        SEEDS=[0, 1], DATA_DIR=data_dir, RUNS=str(runs), PAPER_MODELS=["imagenet21k_bit50x1"],
        OVERRIDES={"data.builder_config": "full", "pp.resize": 36, "pp.crop": 32, "pp.norm": "bit",
                   "total_steps": 2, "batch_size": 8, "eval_batch_size": 8, "log_every": 1,
                   "checkpoint_every": 2})
    nb.cells.append(nbformat.v4.new_code_cell(
        "print('legend:', [t.get_text() for t in fig.axes[0].get_legend().get_texts()])"))
    text = _execute(nb)

    csvs = sorted(glob.glob(str(runs / "tuberculosis_full" / "*" / "*_shot" / "seed_*" /
                                "results.csv")))
    assert [os.path.relpath(p, runs).split(os.sep)[2:4] for p in csvs] == [
        ["1_shot", "seed_0"], ["1_shot", "seed_1"], ["5_shot", "seed_0"], ["5_shot", "seed_1"]]
    rows = results.load(csvs)
    assert results.table(rows, "test/acc") in text  # the metrics shown are the runs'
    assert "'imagenet21k_bit50x1 (paper)'" in text  # the paper's curve beside the runs'
    with open(runs / "tuberculosis_full_vs_paper.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (runs / "report" / "report.md").exists() and "report:" in text
