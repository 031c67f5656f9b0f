"""Evaluation metrics of a transfer run, as the reference computes them, with scikit-learn.

``compute(labels, probs)`` takes the whole evaluation set at once (labels and predicted
probabilities gathered on the host) and returns a flat ``{name: float}`` dict. Names carry no
split prefix; ``with_prefix(metrics, "test")`` gives the names of the paper's CSVs
(``test/acc``, ``test/mean_auc``, ``test/average_precision_class_0``, ``test/f1_0``, ...).

Definitions (the reference is ``log_eval`` in the official ``finetune.py``):

Single-label (``labels`` int ``[N]``, ``probs`` softmax ``[N, C]``)
    * ``acc``: top-1 accuracy, ``mean(argmax(probs) == labels)`` (first index wins a tie).
    * per class ``i``, one-vs-rest with ``y_true = labels == i``:
      ``auc_class_i = roc_auc_score(y_true, probs[:, i])``,
      ``average_precision_class_i = average_precision_score(y_true, probs[:, i])``;
      ``precision_i``, ``recall_i``, ``f1_i`` = ``precision_score`` / ``recall_score`` /
      ``f1_score`` (``average="binary"``, ``zero_division=0``) of ``y_true`` against
      ``argmax(probs) == i``.

Multi-label (``labels`` float ``[N, C]`` in {0, 1, NaN}, NaN = unknown; ``probs`` sigmoid)
    * predictions are ``probs > 0.5`` (strict, as the reference).
    * ``acc``: element-wise accuracy of those predictions over the *known* entries.
    * per class ``i``, the rows whose label is NaN are dropped first, then AUC, AP,
      precision, recall and F1 as above on ``labels[:, i]`` against ``probs[:, i]`` and
      ``probs[:, i] > 0.5``.

Both
    * ``mean_auc`` / ``mean_average_precision``: mean over the classes whose value is
      defined (NaN classes left out, as the reference's ``np.nanmean``); NaN if none is.
    * A class whose known labels have no positive or no negative has undefined AUC and AP:
      both are NaN and left out of the means. A class with no known label at all also gets
      NaN precision, recall and F1.

Where this differs from the reference, on degenerate inputs only:
    * AP of a class with no positive (or no negative) is NaN here; the reference calls
      scikit-learn, which returns 0.0 (no positive, with a warning) or 1.0 (no negative), and
      those values then enter its ``mean_average_precision``. AUC is NaN in both (the
      reference catches scikit-learn's ValueError).
    * Multi-label ``acc`` masks unknown entries; the reference's ``(y_pred == y_true).mean()``
      counts every NaN entry as an error. The two agree when no label is NaN.
    * The reference passes ``zero_division="warn"``, which scikit-learn resolves to 0.0 with a
      warning; here 0 is explicit, so the values are the same without the warning.
    * A class with no known label makes the reference raise; here it gives NaN.
    * The reference logs per-class AUC as ``AUC_class_i``; this module names it
      ``auc_class_i`` (not a column of the paper's published CSVs).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

# A prediction counts as positive above this probability (multi-label), as in the reference.
MULTILABEL_THRESHOLD = 0.5


def compute(
    labels: np.ndarray, probs: np.ndarray, *, multilabel: bool | None = None
) -> dict[str, float]:
    """Returns acc, mean_auc, mean_average_precision and per-class AUC/AP/precision/recall/F1.

    Args:
      labels: int class indices ``[N]`` (single-label), or float multi-hot ``[N, C]`` with NaN
        for unknown entries (multi-label).
      probs: predicted probabilities ``[N, C]``: softmax (single-label) or sigmoid
        (multi-label), all in [0, 1].
      multilabel: which definitions to use; ``None`` infers it from ``labels.ndim == 2``.

    Returns:
      ``{"acc", "mean_auc", "mean_average_precision", "auc_class_{i}",
      "average_precision_class_{i}", "precision_{i}", "recall_{i}", "f1_{i}"}`` as Python
      floats (see the module docstring for each definition). Undefined values are NaN.

    Raises:
      ValueError: shapes, dtypes or values that do not fit the task, naming the argument.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    if multilabel is None:
        multilabel = labels.ndim == 2
    _validate(labels, probs, multilabel)
    num_classes = probs.shape[1]

    if multilabel:
        known = ~np.isnan(labels)
        positive = labels == 1
        pred = probs > MULTILABEL_THRESHOLD
        n_known = int(known.sum())
        acc = float((pred == positive)[known].sum() / n_known) if n_known else float("nan")
        columns = [
            (positive[known[:, i], i], probs[known[:, i], i], pred[known[:, i], i])
            for i in range(num_classes)
        ]
    else:
        pred_class = probs.argmax(axis=1)
        acc = float(np.mean(pred_class == labels))
        columns = [(labels == i, probs[:, i], pred_class == i) for i in range(num_classes)]

    out: dict[str, float] = {"acc": acc}
    aucs, aps = [], []
    per_class: dict[str, float] = {}
    for i, (y_true, score, y_pred) in enumerate(columns):
        auc, ap = _ranking_metrics(y_true, score)
        aucs.append(auc)
        aps.append(ap)
        per_class[f"auc_class_{i}"] = auc
        per_class[f"average_precision_class_{i}"] = ap
        precision, recall, f1 = _threshold_metrics(y_true, y_pred)
        per_class[f"precision_{i}"] = precision
        per_class[f"recall_{i}"] = recall
        per_class[f"f1_{i}"] = f1
    out["mean_auc"] = _nanmean(aucs)
    out["mean_average_precision"] = _nanmean(aps)
    out.update(per_class)
    return out


def with_prefix(metrics: dict[str, float], split: str = "test") -> dict[str, float]:
    """Returns ``metrics`` with every name prefixed ``f"{split}/"`` (the paper's ``test/acc``)."""
    if not split or "/" in split:
        raise ValueError(f"split must be a non-empty name without '/', got {split!r}")
    return {f"{split}/{name}": value for name, value in metrics.items()}


def _validate(labels: np.ndarray, probs: np.ndarray, multilabel: bool) -> None:
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, num_classes], got shape {probs.shape}")
    n, num_classes = probs.shape
    if n == 0 or num_classes == 0:
        raise ValueError(f"probs is empty (shape {probs.shape}); nothing to evaluate")
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probs must be floating point probabilities, got dtype {probs.dtype}")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"probs has {int((~np.isfinite(probs)).sum())} NaN/inf entries")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"probs must be probabilities in [0, 1] (softmax or sigmoid outputs, not logits); "
            f"got values in [{probs.min():g}, {probs.max():g}]"
        )
    if multilabel:
        if labels.shape != probs.shape:
            raise ValueError(
                f"multi-label labels must have the shape of probs {probs.shape}, "
                f"got {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.floating):
            raise ValueError(
                f"multi-label labels must be float (0, 1, NaN = unknown), got dtype {labels.dtype}"
            )
        known = labels[~np.isnan(labels)]
        bad = known[(known != 0) & (known != 1)]
        if bad.size:
            raise ValueError(
                f"multi-label labels must be 0, 1 or NaN; found {bad.size} other values, "
                f"e.g. {bad[0]!r} (map uncertain labels before evaluating)"
            )
    else:
        if labels.shape != (n,):
            raise ValueError(
                f"single-label labels must be [N] = ({n},) class indices, got shape "
                f"{labels.shape} (pass multilabel=True for multi-hot labels)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"single-label labels must be integers, got dtype {labels.dtype}")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"single-label labels must lie in [0, {num_classes}) for probs with "
                f"{num_classes} classes; got values in [{labels.min()}, {labels.max()}]"
            )


def _ranking_metrics(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """AUC and AP of one class, NaN when its known labels are all of one kind (or absent)."""
    n_pos = int(y_true.sum())
    if n_pos == 0 or n_pos == y_true.size:
        return float("nan"), float("nan")
    auc = float(skm.roc_auc_score(y_true, score))
    ap = float(skm.average_precision_score(y_true, score, pos_label=1))
    return auc, ap


def _threshold_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """Binary precision, recall and F1 of one class; NaN when it has no known label."""
    if y_true.size == 0:
        return float("nan"), float("nan"), float("nan")
    y_true = y_true.astype(np.int64)
    y_pred = y_pred.astype(np.int64)
    kwargs = dict(pos_label=1, average="binary", zero_division=0)
    return (
        float(skm.precision_score(y_true, y_pred, **kwargs)),
        float(skm.recall_score(y_true, y_pred, **kwargs)),
        float(skm.f1_score(y_true, y_pred, **kwargs)),
    )


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")
