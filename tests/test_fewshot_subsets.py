"""Few-shot subsets, the validation carve, the single-label filter and oversampling.

Unit checks against the reference's procedures written out from finetune.py's description, and
end-to-end checks through get_datasets on generated image folders (one flat colour per file,
so every preprocessed image identifies its file).
"""

import collections
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

import input_pipeline
from input_pipeline import fewshot


def _colour(i):
    return (17 + 23 * i) % 256, (101 + 59 * i) % 256, (200 + 31 * i) % 256


def _write_folder(root, counts):
    """counts: class -> n images (flat colours); returns {colour: label}."""
    ids, i = {}, 0
    for label, name in enumerate(sorted(counts)):
        os.makedirs(root / name)
        for j in range(counts[name]):
            Image.new("RGB", (8, 6), _colour(i)).save(root / name / f"{j:03d}.png")
            ids[_colour(i)] = label
            i += 1
    return ids


def _config(train_dir, *, batch=8, seed=0, **overrides):
    data = dict(name="image_folder", data_dir=None, train_split="train", eval_splits={}, valid_ratio=0.0,
                valid_seed=0, train_dir=str(train_dir), val_dir="", shots=0, oversample=False,
                multilabel_force_classification=False, skip_corrupt=False, views=None,
                label_set="intersection", shuffle_buffer=100)
    data.update(overrides)
    return ml_collections.ConfigDict(dict(seed=seed, batch_size=batch, eval_batch_size=batch, data=data,
                                          pp=dict(kind="bit", resize=8, crop=8, norm="bit")))


def _colours(images):
    assert images.dtype == np.uint8
    return [tuple(int(v) for v in np.rint(m)) for m in images.mean(axis=(1, 2))]


def _stream(config, steps, *, hosts=1):
    """Colours of the first `steps` global batches, rows in global order, over `hosts` hosts."""
    per_host = [input_pipeline.get_datasets(config, process_index=p, process_count=hosts) for p in range(hosts)]
    out = []
    for _ in range(steps):
        for d in per_host:
            out.extend(_colours(next(d.train)["image"]))
    return out, per_host[0].info


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    root = tmp_path_factory.mktemp("balanced")
    return root, _write_folder(root, {"a": 6, "b": 7, "c": 5, "d": 6})   # 24 images


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    root = tmp_path_factory.mktemp("imbalanced")
    return root, _write_folder(root, {"major": 20, "minor": 4})


# ----------------------------------------------------------------------------- unit


def test_k_shot_indices_follow_the_reference_procedure():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 1, 0])
    # The reference (finetune.py): per class, shuffle that class's indices with one RandomState,
    # keep the first k, concatenate, shuffle the result with the same generator.
    rng = np.random.RandomState(5)
    expected = []
    for cl in range(3):
        idx = np.flatnonzero(labels == cl)
        rng.shuffle(idx)
        expected.append(idx[:2])
    expected = np.concatenate(expected)
    rng.shuffle(expected)
    np.testing.assert_array_equal(fewshot.k_shot_indices(labels, 2, seed=5, num_classes=3), expected)


def test_k_shot_counts_per_class_and_short_classes():
    labels = np.repeat(np.arange(4), [10, 3, 7, 1])
    idx = fewshot.k_shot_indices(labels, 5, seed=0, num_classes=4)
    assert collections.Counter(labels[idx].tolist()) == {0: 5, 1: 3, 2: 5, 3: 1}
    assert len(set(idx.tolist())) == len(idx)
    assert not np.array_equal(np.sort(idx), np.sort(fewshot.k_shot_indices(labels, 5, seed=1, num_classes=4)))
    with pytest.raises(ValueError, match="shots must be positive"):
        fewshot.k_shot_indices(labels, 0, seed=0, num_classes=4)


def test_carve_validation_matches_reference_split():
    train, valid = fewshot.carve_validation(10, 0.3, valid_seed=7)
    order = np.arange(10)
    np.random.RandomState(7).shuffle(order)
    np.testing.assert_array_equal(train, order[:7])    # int(10 * 0.7) == 7
    np.testing.assert_array_equal(valid, order[7:])
    with pytest.raises(ValueError, match="valid_ratio"):
        fewshot.carve_validation(10, 1.0, 0)


def test_single_label_subset_keeps_exactly_one_positive_nan_as_zero():
    nan = np.nan
    labels = np.array([[1, 0, 0], [1, 1, 0], [nan, 1, nan], [0, 0, 0], [nan, nan, nan], [0, 0, 1]])
    keep, cls = fewshot.single_label_subset(labels)
    assert keep.tolist() == [0, 2, 5] and cls.tolist() == [0, 1, 2]


def test_inverse_frequency_weights_balance_the_classes():
    labels = np.array([0] * 8 + [1] * 2 + [2] * 1)
    w = fewshot.inverse_frequency_weights(labels, 4)
    np.testing.assert_allclose(w[:8], 11 / 8)
    mass = np.bincount(labels, weights=w) / w.sum()
    np.testing.assert_allclose(mass, [1 / 3] * 3)


# ----------------------------------------------------------------------------- through get_datasets


def test_k_shot_training_set_has_k_per_class_and_covers_it_each_epoch(balanced):
    root, ids = balanced
    stream, info = _stream(_config(root, shots=2, batch=4), steps=4)     # 8 examples = 2 epochs
    assert info.train_size == 8
    chosen = set(stream)
    assert collections.Counter(ids[c] for c in chosen) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert sorted(stream[:8]) == sorted(chosen) and sorted(stream[8:]) == sorted(chosen)


def test_k_shot_images_are_the_same_for_any_host_count_and_batch_size(balanced):
    root, _ = balanced
    one_host, _ = _stream(_config(root, shots=3, batch=4), steps=3)
    three_hosts, _ = _stream(_config(root, shots=3, batch=12), steps=1, hosts=3)
    assert set(one_host) == set(three_hosts) and len(set(one_host)) == 12
    other_seed, _ = _stream(_config(root, shots=3, batch=12, seed=1), steps=1)
    assert set(other_seed) != set(one_host)


def test_k_shot_smaller_than_batch_is_sampled_with_replacement(balanced):
    root, ids = balanced
    stream, info = _stream(_config(root, shots=1, batch=16), steps=6)
    assert info.train_size == 4
    chosen = set(stream)
    assert len(chosen) == 4 and sorted(ids[c] for c in chosen) == [0, 1, 2, 3]
    counts = collections.Counter(stream)
    # Independent draws, not epochs of a permutation (which would give exactly 24 of 96 each).
    assert sorted(counts.values()) != [24] * 4
    assert min(counts.values()) > 10


def test_oversampling_balances_classes_by_inverse_frequency(imbalanced):
    root, ids = imbalanced
    stream, _ = _stream(_config(root, oversample=True, batch=8), steps=50)        # 400 draws
    minor = sum(ids[c] for c in stream) / len(stream)
    assert 0.42 < minor < 0.58          # 1/2 expected; binomial sd 0.025
    assert len(set(stream)) == 24       # within a class, every image gets drawn
    plain, _ = _stream(_config(root, oversample=False, batch=8), steps=30)   # 10 epochs of 24
    assert sum(ids[c] for c in plain) / len(plain) == pytest.approx(4 / 24)


def test_oversampling_is_ignored_for_few_shot_sets(imbalanced):
    root, ids = imbalanced
    stream, info = _stream(_config(root, oversample=True, shots=4, batch=8), steps=3)   # 8 = 3 epochs
    assert info.train_size == 8
    assert sorted(stream[:8]) == sorted(stream[8:16]) == sorted(stream[16:])          # permutations
    assert collections.Counter(ids[c] for c in stream[:8]) == {0: 4, 1: 4}


def test_oversampled_stream_resumes_exactly(imbalanced):
    root, _ = imbalanced
    config = _config(root, oversample=True, batch=8)
    full, _ = _stream(config, steps=5)
    resumed = input_pipeline.get_datasets(config, start_step=3, process_index=0, process_count=1).train
    assert _colours(next(resumed)["image"]) + _colours(next(resumed)["image"]) == full[24:40]
