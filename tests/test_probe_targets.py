"""Probe targets bring their own data and preprocessing: inter-domain probes in real tiny runs.

An X-ray pre-training (pp.kind 'xray') probes a natural-image TFDS set standing in for CIFAR-10,
and a natural-image pre-training (pp.kind 'bit') probes the X-ray builder tuberculosis_cxr.
Before probes owned their pp, the first sent RGB images through the X-ray transform and failed.
"""

import numpy as np
import pytest

from bit_medical import experiment, train

import run_helpers
from run_helpers import config as _xray_config

# Three classes of flat, well-separated colours with a little noise: frozen random features
# separate them, so a 2-shot ridge probe classifies every test image.
_COLOURS = np.array([[20, 20, 200], [200, 30, 30], [40, 220, 60]], np.uint8)


@pytest.fixture(scope="module")
def natural_dir(tmp_path_factory):
    """A TFDS data_dir with 'bitmed_colours' (32 x 32 RGB, train 24 / test 12, 3 classes)."""
    data_dir = str(tmp_path_factory.mktemp("natural_tfds"))
    rng = np.random.default_rng(0)
    labels = np.arange(36) % 3
    noise = rng.integers(-10, 11, (36, 32, 32, 3))
    images = np.clip(_COLOURS[labels][:, None, None, :].astype(int) + noise, 0, 255).astype(np.uint8)
    run_helpers.store_tfds(data_dir, "bitmed_colours", images, labels,
                           {"train": (0, 24), "test": (24, 36)}, ["b", "r", "g"])
    return data_dir


def _probe(name, data_dir, **data):
    return experiment.probe_target(name, "train", "test", data_dir=data_dir, pp=dict(kind="bit", resize=32, crop=32),
                                   **data)


def test_xray_pretraining_probes_a_natural_target(data_dir, natural_dir, tmp_path):
    config = _xray_config(data_dir, total_steps=2, checkpoint_every=2)
    assert config.pp.kind == "xray"
    config.probe.targets = {"colours": _probe("bitmed_colours", natural_dir)}
    config.probe.shots = (1, 2)
    final = train.train_and_evaluate(config, str(tmp_path))
    probe = final["probe"]
    assert set(probe) == {"probe/colours/1shot", "probe/colours/2shot"}
    assert probe["probe/colours/2shot"] == 1.0


def test_natural_pretraining_probes_an_xray_target(data_dir, natural_dir, tmp_path):
    config = experiment.base()
    config.update(model="BiT-R14x0.5", batch_size=8, eval_batch_size=8, total_steps=2, log_every=1,
                  eval_every=0, checkpoint_every=2)
    config.data.update(name="bitmed_colours", eval_splits={})
    config.data.data_dir = natural_dir
    config.pp.update(kind="bit", resize=32, crop=32, norm="bit")
    config.optim.name = "sgd"
    config.probe.targets = {"tb": _probe("tuberculosis_cxr", data_dir, builder_config="full")}
    config.probe.shots = (1,)
    final = train.train_and_evaluate(config, str(tmp_path))
    assert set(final["probe"]) == {"probe/tb/1shot"}
    # The fixture's test split: 6 of its 32 images (85/15 per folder: 24 - 20 and 8 - 6), each once.
    correct = final["probe"]["probe/tb/1shot"] * 6
    assert 0 <= correct <= 6 and correct == pytest.approx(round(correct), abs=1e-5)
