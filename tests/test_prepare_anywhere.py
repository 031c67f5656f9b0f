"""A builder prepares with parallel image decoding from wherever TFDS users call it: an unguarded
script, standard input and a notebook (each in its own process), as `tfds.builder(...)` is called."""

import json
import os
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_VALID = 10, 3

# What a TFDS user writes, no `if __name__ == "__main__":` guard; it records which threads
# decoded the images, so the test sees that the parallel path ran.
SCRIPT = """\
import json
import threading

import tensorflow_datasets as tfds

import input_pipeline.datasets  # registers the X-ray builders with TFDS
from input_pipeline import imaging

decoders = set()
decode = imaging.process_image


def recording(task):
    decoders.add(threading.current_thread().name)
    return decode(task)


imaging.process_image = recording
builder = tfds.builder("chexpert_v1", config="full", data_dir={data!r}, num_workers=2)
builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir={manual!r}))
print("RESULT", json.dumps({{"splits": {{s: i.num_examples for s, i in builder.info.splits.items()}},
                            "decoders": sorted(decoders)}}))
"""


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    """A tiny CheXpert source and the image paths each split should hold."""
    root = tmp_path_factory.mktemp("chexpert")
    fx = fixtures.write_chexpert(root, n_train=N_TRAIN, n_valid=N_VALID, image_size=(24, 20), seed=3)
    return root, {split: len(fx.kept(split)) for split in ("train", "validation")}


def _env():
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=REPO + (os.pathsep + path if path else ""))


def _result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, output[-3000:]
    return json.loads(lines[0][len("RESULT "):])


def _check(result: dict, expected: dict) -> None:
    assert result["splits"] == expected == {"train": N_TRAIN, "validation": N_VALID}
    # Every image was decoded by the two pool threads, none in the calling thread.
    assert result["decoders"] and all(name.startswith("xray-image") for name in result["decoders"])


def test_unguarded_script(chexpert, tmp_path):
    manual, expected = chexpert
    script = tmp_path / "prepare_chexpert.py"
    script.write_text(SCRIPT.format(data=str(tmp_path / "data"), manual=str(manual)))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(_result(proc.stdout), expected)


def test_standard_input(chexpert, tmp_path):
    manual, expected = chexpert
    proc = subprocess.run([sys.executable, "-"], cwd=tmp_path, env=_env(),
                          input=SCRIPT.format(data=str(tmp_path / "data"), manual=str(manual)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(_result(proc.stdout), expected)


def test_notebook(chexpert, tmp_path, monkeypatch):
    manual, expected = chexpert
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # the kernel inherits it
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SCRIPT.format(data=str(tmp_path / "data"), manual=str(manual)))]
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    _check(_result("".join(o.get("text", "") for o in nb.cells[0].outputs)), expected)
