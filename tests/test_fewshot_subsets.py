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


def _multi_hot(n=300, seed=0):
    """[n, 8] labels: label i positive with probability 0.4 / 2**i (rare to common), 20% unknown
    (NaN); label 7's only 'positives' are NaN (it has none); some rows have no positive at all."""
    rng = np.random.default_rng(seed)
    rates = 0.4 / 2.0 ** np.arange(8)[::-1] * 8
    labels = (rng.random((n, 8)) < np.minimum(rates, 0.5)).astype(np.float64)
    labels[rng.random((n, 8)) < 0.2] = np.nan
    labels[:, 7] = np.where(labels[:, 7] == 1, np.nan, labels[:, 7])
    return labels


def _per_label_reference(labels, shots, seed):
    """The documented draw, written out: rarest label first, each adds its unchosen positives
    (shuffled) until it has `shots`, counting positives brought by earlier picks; final shuffle."""
    rng = np.random.RandomState(seed)
    positive = np.nan_to_num(labels, nan=0.0) == 1
    order = sorted(range(labels.shape[1]), key=lambda c: (positive[:, c].sum(), c))
    chosen = []
    for c in order:
        have = sum(positive[i, c] for i in chosen)
        if have >= shots:
            continue
        candidates = np.array([i for i in np.flatnonzero(positive[:, c]) if i not in chosen], np.int64)
        rng.shuffle(candidates)
        chosen.extend(candidates[:shots - have].tolist())
    chosen = np.array(chosen, np.int64)
    rng.shuffle(chosen)
    return chosen


@pytest.mark.parametrize("shots", [1, 5, 10])
def test_per_label_k_shot_gives_every_label_k_positives(shots):
    labels = _multi_hot()
    idx = fewshot.per_label_k_shot_indices(labels, shots, seed=3)
    np.testing.assert_array_equal(idx, _per_label_reference(labels, shots, seed=3))
    assert len(set(idx.tolist())) == len(idx)
    positive = labels == 1
    totals, got = positive.sum(axis=0), positive[idx].sum(axis=0)
    assert (got >= np.minimum(shots, totals)).all(), (got, totals)
    assert got[7] == 0 and totals[7] == 0             # NaN never counts as a positive
    assert positive[idx].any(axis=1).all()            # every drawn image is some label's positive
    assert len(idx) <= shots * 7                      # at most k images per label that has positives
    # Counting positives across labels makes the set smaller than k per label drawn separately.
    assert shots == 1 or len(idx) < shots * 7


def test_per_label_k_shot_depends_only_on_labels_and_seed(caplog):
    labels = _multi_hot(seed=1)
    a = fewshot.per_label_k_shot_indices(labels, 5, seed=0)
    np.testing.assert_array_equal(a, fewshot.per_label_k_shot_indices(labels.copy(), 5, seed=0))
    b = fewshot.per_label_k_shot_indices(labels, 5, seed=1)
    assert set(a.tolist()) != set(b.tolist())
    # Short labels contribute every positive they have, with a warning naming them.
    few = np.array([[1, 0], [1, np.nan], [0, 1], [1, 0], [np.nan, 0]])
    with caplog.at_level("WARNING"):
        idx = fewshot.per_label_k_shot_indices(few, 2, seed=0)
    # Label 1 (rarer) takes its one positive, image 2; label 0 two of its positives 0, 1, 3.
    assert len(idx) == 3 and 2 in idx and set(idx.tolist()) - {2} <= {0, 1, 3}
    assert (few[idx] == 1).sum(axis=0).tolist() == [2, 1]
    assert "(1, 1)" in caplog.text
    with pytest.raises(ValueError, match="shots must be positive"):
        fewshot.per_label_k_shot_indices(labels, 0, seed=0)
    with pytest.raises(ValueError, match=r"\[examples, labels\]"):
        fewshot.per_label_k_shot_indices(labels[:, 0], 1, seed=0)


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
