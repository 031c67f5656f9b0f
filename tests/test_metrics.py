"""bit_medical.metrics against scikit-learn called independently here."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from bit_medical import metrics


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _single_label_case(n, c, seed):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, c, size=n)
    # Informative but imperfect scores, so every metric lies strictly between 0 and 1.
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    return labels, _softmax(logits).astype(np.float32)


def _expected_keys(c):
    keys = {"acc", "mean_auc", "mean_average_precision"}
    for i in range(c):
        keys |= {f"auc_class_{i}", f"average_precision_class_{i}", f"precision_{i}",
                 f"recall_{i}", f"f1_{i}"}
    return keys


def _check_class(out, i, y_true, score, y_pred):
    assert out[f"auc_class_{i}"] == pytest.approx(skm.roc_auc_score(y_true, score), abs=1e-12)
    assert out[f"average_precision_class_{i}"] == pytest.approx(
        skm.average_precision_score(y_true, score), abs=1e-12)
    assert out[f"precision_{i}"] == pytest.approx(
        skm.precision_score(y_true, y_pred, zero_division=0), abs=1e-12)
    assert out[f"recall_{i}"] == pytest.approx(
        skm.recall_score(y_true, y_pred, zero_division=0), abs=1e-12)
    assert out[f"f1_{i}"] == pytest.approx(skm.f1_score(y_true, y_pred, zero_division=0), abs=1e-12)


@pytest.mark.parametrize("n,c,seed", [(300, 5, 0), (120, 2, 1), (500, 10, 2)])
def test_single_label_equals_sklearn(n, c, seed):
    labels, probs = _single_label_case(n, c, seed)
    out = metrics.compute(labels, probs)
    assert set(out) == _expected_keys(c)
    pred = probs.argmax(axis=1)
    assert out["acc"] == pytest.approx(skm.accuracy_score(labels, pred), abs=1e-12)
    for i in range(c):
        _check_class(out, i, (labels == i).astype(int), probs[:, i], (pred == i).astype(int))
    # Every class is present and informative, so every per-class value is defined.
    assert out["mean_auc"] == pytest.approx(
        np.mean([skm.roc_auc_score(labels == i, probs[:, i]) for i in range(c)]), abs=1e-12)
    assert out["mean_average_precision"] == pytest.approx(
        np.mean([skm.average_precision_score(labels == i, probs[:, i]) for i in range(c)]),
        abs=1e-12)
    # Multi-class one-vs-rest macro AUC of scikit-learn is the same mean.
    if c > 2:
        assert out["mean_auc"] == pytest.approx(
            skm.roc_auc_score(labels, probs / probs.sum(1, keepdims=True), multi_class="ovr"),
            abs=1e-6)
    assert all(isinstance(v, float) for v in out.values())


def test_single_label_absent_class_is_nan_and_left_out_of_means():
    labels, probs = _single_label_case(200, 4, 3)
    labels[labels == 2] = 0  # class 2 never occurs: its one-vs-rest has no positive
    out = metrics.compute(labels, probs)
    assert math.isnan(out["auc_class_2"]) and math.isnan(out["average_precision_class_2"])
    defined = [0, 1, 3]
    assert out["mean_auc"] == pytest.approx(
        np.mean([skm.roc_auc_score(labels == i, probs[:, i]) for i in defined]), abs=1e-12)
    assert out["mean_average_precision"] == pytest.approx(
        np.mean([skm.average_precision_score(labels == i, probs[:, i]) for i in defined]),
        abs=1e-12)
    # Precision etc. of the absent class stay defined (scikit-learn's value, 0 here).
    pred = probs.argmax(1)
    assert out["precision_2"] == skm.precision_score(labels == 2, pred == 2, zero_division=0)


def _multilabel_case(seed):
    rng = np.random.RandomState(seed)
    n, c = 400, 7
    labels = (rng.rand(n, c) < 0.3).astype(np.float32)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, c)) + 2 * (labels - 0.5))))
    labels[rng.rand(n, c) < 0.2] = np.nan  # unknown entries everywhere
    labels[:, 4] = np.where(np.isnan(labels[:, 4]), np.nan, 0.0)  # no positive
    labels[:, 5] = np.where(np.isnan(labels[:, 5]), np.nan, 1.0)  # no negative
    labels[:, 6] = np.nan  # no known label at all
    return labels, probs.astype(np.float32)


def test_multilabel_with_nan_equals_sklearn_on_known_entries():
    labels, probs = _multilabel_case(0)
    out = metrics.compute(labels, probs)
    assert set(out) == _expected_keys(7)
    known = ~np.isnan(labels)
    pred = (probs > 0.5).astype(int)
    assert out["acc"] == pytest.approx(
        skm.accuracy_score(labels[known].astype(int), pred[known]), abs=1e-12)
    for i in range(4):
        m = known[:, i]
        _check_class(out, i, labels[m, i].astype(int), probs[m, i], pred[m, i])
    # Degenerate classes: AUC and AP undefined.
    for i in (4, 5, 6):
        assert math.isnan(out[f"auc_class_{i}"]), i
        assert math.isnan(out[f"average_precision_class_{i}"]), i
    # Known labels but all of one kind: thresholded metrics are still scikit-learn's.
    for i in (4, 5):
        m = known[:, i]
        assert out[f"recall_{i}"] == skm.recall_score(
            labels[m, i].astype(int), pred[m, i], zero_division=0)
        assert out[f"f1_{i}"] == skm.f1_score(labels[m, i].astype(int), pred[m, i],
                                              zero_division=0)
    # No known label: nothing is defined.
    for name in ("precision_6", "recall_6", "f1_6"):
        assert math.isnan(out[name]), name
    # Means over the four defined classes only.
    ok = [i for i in range(4)]
    assert out["mean_auc"] == pytest.approx(np.mean(
        [skm.roc_auc_score(labels[known[:, i], i], probs[known[:, i], i]) for i in ok]),
        abs=1e-12)
    assert out["mean_average_precision"] == pytest.approx(np.mean(
        [skm.average_precision_score(labels[known[:, i], i], probs[known[:, i], i]) for i in ok]),
        abs=1e-12)


def test_multilabel_without_nan_acc_is_elementwise_like_the_reference():
    rng = np.random.RandomState(5)
    labels = (rng.rand(50, 3) < 0.5).astype(np.float32)
    probs = rng.rand(50, 3).astype(np.float32)
    out = metrics.compute(labels, probs)
    # The reference: ((probs > 0.5) == labels).mean() over every entry.
    assert out["acc"] == pytest.approx(float(((probs > 0.5) == labels).mean()), abs=1e-12)


def test_threshold_is_strict():
    labels = np.array([[1.0], [0.0], [1.0], [0.0]], np.float32)
    probs = np.array([[0.5], [0.2], [0.9], [0.7]], np.float32)
    out = metrics.compute(labels, probs)
    # 0.5 is a negative prediction: preds [0, 0, 1, 1] against [1, 0, 1, 0].
    assert out["acc"] == 0.5
    assert out["precision_0"] == 0.5 and out["recall_0"] == 0.5


def test_all_classes_undefined_gives_nan_means():
    labels = np.zeros((4, 2), np.float32)
    probs = np.full((4, 2), 0.1, np.float32)
    out = metrics.compute(labels, probs)
    assert math.isnan(out["mean_auc"]) and math.isnan(out["mean_average_precision"])
    assert out["acc"] == 1.0


def test_multilabel_flag_overrides_inference():
    labels, probs = _single_label_case(40, 3, 7)
    with pytest.raises(ValueError, match="multi-label labels must have the shape"):
        metrics.compute(labels, probs, multilabel=True)
    onehot = np.eye(3, dtype=np.float32)[labels]
    with pytest.raises(ValueError, match=r"single-label labels must be \[N\]"):
        metrics.compute(onehot, probs, multilabel=False)


@pytest.mark.parametrize(
    "labels,probs,match",
    [
        (np.array([0, 1]), np.array([0.2, 0.8]), r"probs must be \[N, num_classes\]"),
        (np.array([0, 1, 1]), np.array([[0.2, 0.8], [0.5, 0.5]]), r"\(2,\) class indices"),
        (np.array([0, 2]), np.array([[0.2, 0.8], [0.5, 0.5]]), r"\[0, 2\)"),
        (np.array([0.0, 1.0]), np.array([[0.2, 0.8], [0.5, 0.5]]), "must be integers"),
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]]), "not logits"),
        (np.array([0, 1]), np.array([[np.nan, 1.0], [0.5, 0.5]]), "NaN/inf"),
        (np.array([[0.0, 2.0]]), np.array([[0.2, 0.8]]), "must be 0, 1 or NaN"),
        (np.array([[0.0, -1.0]]), np.array([[0.2, 0.8]]), "uncertain"),
        (np.array([[0, 1]]), np.array([[0.2, 0.8]]), "must be float"),
        (np.zeros((0,), int), np.zeros((0, 3)), "empty"),
    ],
)
def test_bad_input_gives_clear_error(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        metrics.compute(labels, probs)


def test_with_prefix_gives_paper_names():
    labels, probs = _single_label_case(30, 2, 4)
    out = metrics.with_prefix(metrics.compute(labels, probs))
    for name in ("test/acc", "test/mean_auc", "test/mean_average_precision",
                 "test/average_precision_class_0", "test/f1_0", "test/recall_0"):
        assert name in out
    assert metrics.with_prefix({"acc": 1.0}, "val") == {"val/acc": 1.0}
    with pytest.raises(ValueError, match="split"):
        metrics.with_prefix({"acc": 1.0}, "a/b")
