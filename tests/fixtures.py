"""The synthetic X-ray datasets with what each builder should make of them.

Each `write_*` function writes a dataset root with input_pipeline.datasets.synthetic and returns a
`Fixture`: the root and, per source row, what the builder should produce from it (`Expected`:
split, view, patient_id, labels, or why it is left out). The expectations are worked out here
from the documented rules (/work/shared/datasets/FORMATS.md), independently of the builders.
Explicit `rows` let tests exercise each rule; see the writers in synthetic.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Optional

import numpy as np

from input_pipeline.datasets import chexpert, nih, padchest, synthetic


@dataclasses.dataclass
class Expected:
    """What the builder should produce from one source row.

    Attributes:
      image_path: path relative to the dataset root.
      view: the derived view.
      patient_id: patient id text.
      split: builder split name; None when the row is left out, or when the
        builder draws the split at random (PadChest, Tuberculosis) - tests
        re-implement the reference's draw for those.
      labels: float32 label vector (multi-label sets), NaN = unknown.
      label: class index (COVIDx, Tuberculosis).
      dropped: reason the row is left out before images are read, else None.
      image: "ok", "missing", "corrupt", "rgb" (3 distinct channels) or "8bit".
      extra: other features (COVIDx `source`).
    """

    image_path: str
    view: str
    patient_id: str
    split: Optional[str]
    labels: Optional[np.ndarray] = None
    label: Optional[int] = None
    dropped: Optional[str] = None
    image: str = "ok"
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Fixture:
    """A written fake dataset: its root folder and the expected examples, in file order."""

    root: pathlib.Path
    examples: list

    def kept(self, split: Optional[str] = None) -> list:
        """Expected examples not left out by row rules and readable, optionally of one split."""
        out = [e for e in self.examples
               if e.dropped is None and e.image not in ("missing", "corrupt")]
        if split is not None:
            out = [e for e in out if e.split == split]
        return out


def _fnum(v: str) -> float:
    return math.nan if v == "" else float(v)


def _chexpert_expected(values: dict) -> np.ndarray:
    """CheXpert/MIMIC rule written out plainly: No Finding 1 -> zeros; -1 -> NaN."""
    out = np.full(len(chexpert.LABEL_COLUMNS), np.nan, dtype=np.float32)
    if _fnum(values.get("No Finding", "")) == 1:
        out[:] = 0.0
        return out
    for i, column in enumerate(chexpert.LABEL_COLUMNS):
        v = _fnum(values.get(column, ""))
        out[i] = np.nan if v == -1 else v
    return out


def write_chexpert(root: os.PathLike, **kwargs) -> Fixture:
    """synthetic.write_chexpert; splits: train.csv -> train, valid.csv -> validation."""
    examples = []
    for w in synthetic.write_chexpert(root, **kwargs):
        view = {"Frontal": w.row["AP/PA"], "Lateral": "L"}.get(w.row["Frontal/Lateral"],
                                                               w.row["Frontal/Lateral"])
        examples.append(Expected(
            image_path=w.image_path, view=view,
            patient_id=w.image_path.split("/")[1][len("patient"):],
            split="train" if w.split == "train" else "validation",
            labels=_chexpert_expected(w.row), image=w.image))
    return Fixture(root=pathlib.Path(root), examples=examples)


MIMIC_SPLITS = {"train": "train", "validate": "validation", "test": "test"}


def write_mimic(root: os.PathLike, **kwargs) -> Fixture:
    """synthetic.write_mimic; a study without labels, then an image without a split, is left out."""
    examples = []
    for w in synthetic.write_mimic(root, **kwargs):
        values = w.row["labels"]
        if values is None:
            dropped = "no labels for study"
        elif w.split is None:
            dropped = "not in split file"
        else:
            dropped = None
        examples.append(Expected(
            image_path=w.image_path, view=w.row["ViewPosition"], patient_id=w.row["subject_id"],
            split=None if dropped else MIMIC_SPLITS[w.split],
            labels=None if values is None else _chexpert_expected(values), dropped=dropped,
            image=w.image))
    return Fixture(root=pathlib.Path(root), examples=examples)


def write_nih(root: os.PathLike, **kwargs) -> Fixture:
    """synthetic.write_nih; one example per list naming the image, a name substring -> 1."""
    examples = []
    for w in synthetic.write_nih(root, **kwargs):
        findings = w.row["Finding Labels"]
        labels = np.asarray([1.0 if n in findings else 0.0 for n in nih.LABEL_NAMES], np.float32)
        splits = [s for s in ("train", "test") if w.split in (s, "both")]
        for s in splits or [None]:
            examples.append(Expected(
                image_path=w.image_path, view=w.row["View Position"],
                patient_id=w.row["Patient ID"], split=s, labels=labels,
                dropped=None if s else "not in train_val_list.txt or test_list.txt",
                image=w.image))
    return Fixture(root=pathlib.Path(root), examples=examples)


def _padchest_expected(text: str) -> np.ndarray:
    """PadChest rule written out plainly: name or synonym is a substring of the raw text."""
    return np.asarray([
        1.0 if (n.lower() in text or any(s in text for s in padchest.SYNONYMS.get(n, ()))) else 0.0
        for n in padchest.LABEL_NAMES
    ], dtype=np.float32)


def write_padchest(root: os.PathLike, **kwargs) -> Fixture:
    """synthetic.write_padchest; expected splits are None (tests re-draw the reference's
    RandomState(42) split)."""
    examples = []
    for w in synthetic.write_padchest(root, **kwargs):
        projection, text = w.row["Projection"], w.row["Labels"]
        view = padchest.VIEW_RENAMES.get(projection, projection)
        if view not in padchest.SPLIT_VIEWS:
            dropped = f"projection {projection or '(blank)'} (not one of the 5 views)"
        elif text in padchest.PANDAS_NA_VALUES:
            dropped = "Labels is nan"
        elif w.row["ImageID"] in padchest.EXCLUDED_IMAGE_IDS:
            dropped = "hard-coded excluded"
        else:
            dropped = None
        labels = None if text in padchest.PANDAS_NA_VALUES else _padchest_expected(text)
        examples.append(Expected(image_path=w.image_path, view=view, patient_id=w.row["PatientID"],
                                 split=None, labels=labels, dropped=dropped, image=w.image))
    return Fixture(root=pathlib.Path(root), examples=examples)


def write_covidx(root: os.PathLike, **kwargs) -> Fixture:
    """synthetic.write_covidx; label 1 = positive, the list file is the split."""
    examples = [
        Expected(image_path=w.image_path, view="", patient_id=w.row["patient_id"], split=w.split,
                 label=1 if w.row["label"] == "positive" else 0, image=w.image,
                 extra={"source": w.row["source"]})
        for w in synthetic.write_covidx(root, **kwargs)]
    return Fixture(root=pathlib.Path(root), examples=examples)


def write_tuberculosis(root: os.PathLike, **kwargs) -> Fixture:
    """synthetic.write_tuberculosis; every image is PA, the patient id is the name's stem
    (<PREFIX>_<number>), the label the class painted. Expected splits are None (tests re-draw
    the reference's per-folder split)."""
    examples = [
        Expected(image_path=w.image_path, view="PA",
                 patient_id=os.path.basename(w.image_path)[:-len("_0.png")], split=None,
                 label=w.row["label"], image=w.image)
        for w in synthetic.write_tuberculosis(root, **kwargs)]
    return Fixture(root=pathlib.Path(root), examples=examples)
