"""Index selection on label arrays (numpy only): validation carve, single-label filter, k-shot,
per-label k-shot for multi-label targets, oversampling weights.

Each function but `per_label_k_shot_indices` reproduces a step of the reference's
``finetune.py: mktrainval`` on the labels of the examples in their source order, so the same
labels and seed give the same images as the reference. The functions return indices into the
array they were given; the pipeline composes them in the reference's order: carve ->
single-label filter -> k-shot (or carve -> per-label k-shot, which the reference lacks).
"""

from __future__ import annotations

import logging

import numpy as np


def carve_validation(num_examples: int, valid_ratio: float, valid_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits range(num_examples) into (train, valid) index arrays as the reference's `valid_ratio`.

    Shuffles with ``np.random.RandomState(valid_seed)``; the first ``int(n * (1 - ratio))``
    shuffled indices are train, the rest valid. Both keep the shuffled order, as the reference's
    ``Subset``s do (the k-shot draw below depends on that order).
    """
    if not 0.0 < valid_ratio < 1.0:
        raise ValueError(f"data.valid_ratio must be in (0, 1) to carve a validation split, got {valid_ratio}")
    rng = np.random.RandomState(valid_seed)
    inds = np.arange(num_examples)
    rng.shuffle(inds)
    nb_train = int(num_examples * (1 - valid_ratio))
    return inds[:nb_train], inds[nb_train:]


def single_label_subset(multi_hot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keeps examples with exactly one positive label (NaN counts as 0); returns (indices, class).

    The reference's ``SingleLabelFromMultiLabel`` (``--multilabel-force-classification``).
    """
    labels = np.nan_to_num(np.asarray(multi_hot, np.float64), nan=0.0)
    if labels.ndim != 2:
        raise ValueError(f"multi-label targets must be [examples, classes], got shape {labels.shape}")
    keep = np.flatnonzero(labels.sum(axis=1) == 1)
    return keep, labels[keep].argmax(axis=1)


def k_shot_indices(class_ids: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
    """`shots` examples per class, drawn as the reference does for labelled datasets.

    ``RandomState(seed)``; for each class in order: shuffle that class's indices, keep the first
    `shots`; concatenate; shuffle once more with the same generator. A class with fewer than
    `shots` examples contributes all of them (logged). The result is independent of host count
    and batch size: it depends only on the labels, `shots` and `seed`.
    """
    if shots <= 0:
        raise ValueError(f"shots must be positive, got {shots}")
    class_ids = np.asarray(class_ids)
    rng = np.random.RandomState(seed)
    inds = np.arange(len(class_ids))
    chosen = []
    short = []
    for cl in range(num_classes):
        inds_cl = inds[class_ids == cl]
        rng.shuffle(inds_cl)
        if len(inds_cl) < shots:
            short.append((cl, len(inds_cl)))
        chosen.append(inds_cl[:shots])
    if short:
        logging.warning("%d-shot: %d classes have fewer examples and contribute all they have: %s",
                        shots, len(short), short[:10])
    indices = np.concatenate(chosen) if chosen else np.zeros([0], np.int64)
    rng.shuffle(indices)
    return indices


def per_label_k_shot_indices(multi_hot: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """A few-shot subset of a multi-label set in which every label has >= `shots` positive images.

    Not in the reference, which can only few-shot a multi-label target through the single-label
    filter. `multi_hot` is [examples, labels] with 1 = positive, 0 = negative, NaN = unknown;
    only a 1 counts as a positive. The draw, with ``np.random.RandomState(seed)``:

    1. Order the labels by rarity: ascending number of positive images in the whole array, ties
       by label index.
    2. For each label in that order, if the images chosen so far (for the rarer labels) hold
       fewer than `shots` of its positives: shuffle its positive images not chosen yet and add
       the first ``shots - have`` of them. Counting the positives that images chosen for rarer
       labels bring keeps the set small: a common label often needs no image of its own.
    3. Shuffle the chosen indices once more with the same generator.

    A label with fewer than `shots` positive images in the whole array contributes all of them
    (logged, as `k_shot_indices` does for short classes), so a rare label never makes a run fail;
    a label without any positive stays without. Images with no positive label are never drawn:
    each label's negatives are the images drawn for the other labels. The result depends only on
    `multi_hot`, `shots` and `seed` (never on host count or batch size), so every host draws the
    same images.
    """
    if shots <= 0:
        raise ValueError(f"shots must be positive, got {shots}")
    multi_hot = np.asarray(multi_hot, np.float64)
    if multi_hot.ndim != 2:
        raise ValueError(f"multi-label targets must be [examples, labels], got shape {multi_hot.shape}")
    positive = multi_hot == 1.0   # NaN == 1 is False: unknown never counts
    totals = positive.sum(axis=0)
    rng = np.random.RandomState(seed)
    chosen = np.zeros(len(positive), bool)
    have = np.zeros(positive.shape[1], np.int64)
    picks = []
    for label in np.argsort(totals, kind="stable"):
        need = shots - have[label]
        if need <= 0:
            continue
        candidates = np.flatnonzero(positive[:, label] & ~chosen)
        rng.shuffle(candidates)
        take = candidates[:need]
        chosen[take] = True
        have += positive[take].sum(axis=0)
        picks.append(take)
    short = [(int(label), int(totals[label])) for label in np.flatnonzero(totals < shots)]
    if short:
        logging.warning("%d-shot per label: %d labels have fewer positive images and contribute all they "
                        "have (label, positives): %s", shots, len(short), short[:10])
    indices = np.concatenate(picks) if picks else np.zeros([0], np.int64)
    rng.shuffle(indices)
    return indices


def inverse_frequency_weights(class_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-example sampling weights ``N / count[class]`` (the reference's oversampling weights).

    With these weights, sampling with replacement picks every class with equal probability and
    examples uniformly within a class, like the reference's ``WeightedRandomSampler``.
    """
    class_ids = np.asarray(class_ids, np.int64)
    counts = np.bincount(class_ids, minlength=num_classes).astype(np.float64)
    return len(class_ids) / counts[class_ids]
