"""Few-shot on multi-label X-ray targets kept multi-label (data.multilabel_shots='per_label').

The real CheXpert builder is prepared from a fake copy (input_pipeline.datasets.synthetic); the
configs come from configs/transfer.py. The draw itself is unit-tested in test_fewshot_subsets.py.
"""

import importlib.util
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import input_pipeline
from input_pipeline import fewshot, xray

import run_helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = 5


def _transfer_config(arg):
    spec = importlib.util.spec_from_file_location("cfg_transfer", os.path.join(REPO, "configs", "transfer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from input_pipeline import datasets
    from input_pipeline.datasets import synthetic

    root = tmp_path_factory.mktemp("chexpert")
    synthetic.write_chexpert(root / "chexpert", n_train=60, n_valid=12, image_size=(40, 36), seed=2)
    data = str(root / "tfds")
    datasets.prepare("chexpert_v1", manual_dir=root / "chexpert", data_dir=data, num_workers=1)
    return data


def _config(data_dir, seed=1, **data):
    c = _transfer_config(f"target=chexpert,shots={SHOTS},seed={seed},pretrained=unused,data_dir={data_dir}")
    c.batch_size, c.eval_batch_size = 4, 4
    c.pp.crop, c.pp.norm = 32, "bit"   # norm "" is resolved by the train loop from the model
    c.data.update(data)
    return c


def _rows(labels):
    """Label rows as sortable tuples (NaN -> -1), sorted: the multiset of a set of examples."""
    return sorted(map(tuple, np.nan_to_num(np.asarray(labels, np.float64), nan=-1.0).tolist()))


def test_transfer_config_of_a_multilabel_target(data_dir):
    c = _config(data_dir)
    assert (c.data.name, c.data.shots, c.data.multilabel_shots, c.pp.kind) == (
        "chexpert_v1", SHOTS, "per_label", "xray")
    assert not c.data.multilabel_force_classification and c.data.eval_splits.to_dict() == {"test": "validation"}


@pytest.mark.parametrize("hosts", [2, 4])
def test_per_label_shots_through_the_pipeline_are_the_same_on_any_host_count(data_dir, hosts):
    config = _config(data_dir)
    single = input_pipeline.get_datasets(config, process_index=0, process_count=1)
    info = single.info
    assert info.multilabel and info.num_classes == 13 and info.label_names == xray.label_names(["chexpert_v1"])
    # The training set is the documented draw on the train split's labels (PA/AP views).
    source_labels = np.stack([ex["label"] for ex in xray.read(
        ["chexpert_v1"], "train", data_dir=data_dir).dataset.as_numpy_iterator()])
    expected = source_labels[fewshot.per_label_k_shot_indices(source_labels, SHOTS, config.seed)]
    n = info.train_size
    assert n == len(expected) >= config.batch_size     # one epoch is a permutation of the set
    steps = -(-n // config.batch_size)
    batches = [next(single.train) for _ in range(steps)]
    labels = np.concatenate([b["label"] for b in batches])
    assert labels.dtype == np.float32 and labels.shape[1] == 13
    assert _rows(labels[:n]) == _rows(expected)
    positives, totals = (labels[:n] == 1).sum(axis=0), (source_labels == 1).sum(axis=0)
    assert (positives >= np.minimum(SHOTS, totals)).all() and (positives >= 1).sum() >= 10
    # The global batches of `hosts` hosts, rows in host order, are the single host's.
    per_host = [input_pipeline.get_datasets(config, process_index=p, process_count=hosts) for p in range(hosts)]
    for batch in batches:
        parts = [next(d.train) for d in per_host]
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
    # Another seed draws another set.
    other = input_pipeline.get_datasets(_config(data_dir, seed=2), process_index=0, process_count=1)
    other_labels = np.concatenate([next(other.train)["label"] for _ in range(steps + 1)])
    assert _rows(other_labels[:other.info.train_size]) != _rows(expected)


def test_per_label_shots_errors_name_the_conflict(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"multilabel_shots 'per_class'; valid: \['single', 'per_label'\]"):
        input_pipeline.get_datasets(_config(data_dir, multilabel_shots="per_class"), process_index=0, process_count=1)
    with pytest.raises(ValueError, match="cannot be combined with data.multilabel_force_classification"):
        input_pipeline.get_datasets(_config(data_dir, multilabel_force_classification=True),
                                    process_index=0, process_count=1)
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        Image.new("RGB", (8, 8)).save(tmp_path / name / "0.png")
    folder = _config(data_dir, name="image_folder", train_dir=str(tmp_path), eval_splits={})
    folder.pp.kind = "bit"
    with pytest.raises(ValueError, match="'per_label' needs a multi-label source"):
        input_pipeline.get_datasets(folder, process_index=0, process_count=1)
    # Without either mode, few-shot on a multi-label target names both.
    with pytest.raises(ValueError, match="multilabel_force_classification=True .* or "
                                         "data.multilabel_shots='per_label'"):
        input_pipeline.get_datasets(_config(data_dir, multilabel_shots="single"), process_index=0, process_count=1)


def test_smoke_run_of_a_multilabel_target_trains_with_bce_and_reports_mean_auc(data_dir, tmp_path):
    from bit_medical import results, train

    # A random BiT-R14x0.5 in the official .npz layout stands in for a pre-trained model; the
    # transfer starts from a new zero head (head_init=zero), so every logit is 0 at step 1.
    run_helpers.random_npz(tmp_path / "small.npz", 2)
    config = _transfer_config(f"target=chexpert,shots={SHOTS},seed=0,smoke=true,data_dir={data_dir},"
                              f"pretrained={tmp_path / 'small.npz'},head_init=zero")
    config.pp.crop, config.pp.norm = 32, "bit"
    config.optim.name, config.log_every, config.total_steps = "sgd", 1, 2
    config.data.eval_splits = {"test": "validation"}   # smoke's "[:32]" needs 32 examples; the fixture has 12
    workdir = str(tmp_path / "run")
    final = train.train_and_evaluate(config, workdir)

    # Zero head: every logit is 0 at step 1, so the masked BCE is log 2 on any labels (softmax
    # cross-entropy over 13 classes would be log 13).
    first = None
    for path in sorted(tf.io.gfile.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "loss" and event.step == 1:
                    first = float(tf.make_ndarray(value.tensor))
    assert first == pytest.approx(math.log(2.0), abs=1e-4)
    test = final["test"]
    aucs = [test[f"auc_class_{i}"] for i in range(13)]
    assert "auc_class_13" not in test
    assert np.isfinite(aucs).sum() >= 3
    assert test["mean_auc"] == pytest.approx(np.nanmean(aucs))
    rows = {r["metric"]: r for r in results.load(os.path.join(workdir, "results.csv"))}
    assert rows["test/mean_auc"]["dataset"] == "chexpert" and rows["test/mean_auc"]["shot"] == f"{SHOTS}_shot"
