"""Stage 2, selection: which positions of each source are used (numpy, on labels, identical on every host).

`select` applies, in the reference's order (``finetune.py: mktrainval``): the ``valid_ratio``
carve, the single-label filter (``multilabel_force_classification``), the k-shot draw
(`input_pipeline.fewshot`: per class, or per label on a multi-label target kept multi-label),
and the oversampling weights (inverse class frequency, ``WeightedRandomSampler``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from input_pipeline import fewshot
from input_pipeline.sources import VALID_SPLIT_NAME, Source


@dataclasses.dataclass
class Split:
    """A source and the sorted positions of it that are used."""
    source: Source
    positions: np.ndarray


@dataclasses.dataclass
class Selection:
    """The selected training and eval examples and what the later stages need to know of them.

    weights: per training example, its sampling weight when oversampling, else None.
    force_classification: multi-label source trained as single-label classes.
    """
    train: Split
    evals: dict[str, Split]
    num_classes: int
    multilabel: bool
    force_classification: bool
    weights: np.ndarray | None


def host_range(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """The contiguous share [lo, hi) of n selected examples that host `process_index` reads."""
    return n * process_index // process_count, n * (process_index + 1) // process_count


def _class_ids(raw_labels: np.ndarray, force_classification: bool) -> np.ndarray:
    if force_classification:
        return np.nan_to_num(raw_labels.astype(np.float64), nan=0.0).argmax(axis=1)
    return raw_labels.astype(np.int64)


def _single_label_filter(source: Source, positions: np.ndarray) -> np.ndarray:
    labels = source.read_labels()[positions]
    keep, _ = fewshot.single_label_subset(labels)
    logging.info("%s: %d of %d examples have exactly one positive label", source.name, len(keep), len(positions))
    return positions[keep]


def _check(data, source: Source) -> None:
    force, per_label = data.multilabel_force_classification, data.multilabel_shots == "per_label"
    if force and not source.multilabel:
        raise ValueError(f"data.multilabel_force_classification needs a multi-label source; {source.name} is not")
    if per_label and not source.multilabel:
        raise ValueError(f"data.multilabel_shots='per_label' needs a multi-label source; {source.name} is not")
    if data.shots and source.multilabel and not (force or per_label):
        raise ValueError("Few-shot on a multi-label source needs data.multilabel_force_classification=True "
                         "(the reference keeps images with exactly one positive label) or "
                         "data.multilabel_shots='per_label' (every label gets k positive images)")


def select(data, seed: int, train_source: Source, eval_sources: dict[str, Source]) -> Selection:
    """The `Selection` of `data` (resolved ``config.data``) from the sources of stage 1."""
    _check(data, train_source)
    shots, force = int(data.shots), bool(data.multilabel_force_classification)
    oversample = bool(data.oversample)
    train = np.arange(train_source.num_examples)
    evals = {k: Split(s, np.arange(s.num_examples)) for k, s in eval_sources.items()}
    if data.valid_ratio > 0:
        if VALID_SPLIT_NAME in evals:
            raise ValueError(f"data.valid_ratio carves eval split {VALID_SPLIT_NAME!r}, which data.eval_splits/val_dir "
                             "also define; use one of them")
        train, valid = fewshot.carve_validation(len(train), float(data.valid_ratio), int(data.valid_seed))
        evals[VALID_SPLIT_NAME] = Split(train_source, np.sort(valid))
    if force:
        train = _single_label_filter(train_source, train)
        for split in evals.values():
            split.positions = np.sort(_single_label_filter(split.source, split.positions))
    class_ids = None
    num_classes = len(train_source.label_names)
    if shots > 0 or oversample:
        all_labels = train_source.labels if train_source.labels is not None else train_source.read_labels()
        labels = all_labels[train]
        if shots > 0 and data.multilabel_shots == "per_label":
            train = train[fewshot.per_label_k_shot_indices(labels, shots, seed)]
        else:
            class_ids = _class_ids(labels, force)
            if shots > 0:
                pick = fewshot.k_shot_indices(class_ids, shots, seed, num_classes)
                train, class_ids = train[pick], class_ids[pick]
    if shots > 0 and oversample:
        logging.info("data.oversample ignored for a %d-shot set (the reference oversamples full sets only)", shots)
        oversample = False
    order = np.argsort(train, kind="stable")
    train = train[order]
    if len(train) == 0:
        raise ValueError(f"Empty training set from {train_source.name} after selection")
    for k, split in evals.items():
        if len(split.positions) == 0:
            raise ValueError(f"Eval split {k!r} ({split.source.name}) is empty")
    weights = fewshot.inverse_frequency_weights(class_ids[order], num_classes) if oversample else None
    return Selection(train=Split(train_source, train), evals=evals, num_classes=num_classes,
                     multilabel=train_source.multilabel and not force, force_classification=force,
                     weights=weights)
