"""MIMIC-CXR-JPG 2.0.0 as the TFDS builder `mimic_cxr_jpg`.

Semantics of the reference (transfer_learning/datasets/mimic.py):
- Labels from mimic-cxr-2.0.0-chexpert.csv.gz (one row per study) are joined to
  the images of mimic-cxr-2.0.0-metadata.csv.gz on (subject_id, study_id);
  images of studies without a label row are left out ("no labels for study").
- Same 13 labels, order and mapping as CheXpert (No Finding zeroes, -1 -> NaN).
- view = ViewPosition verbatim (LATERAL stays LATERAL, blank stays "").
- Split from mimic-cxr-2.0.0-split.csv.gz on (dicom_id, study_id, subject_id):
  train -> `train`, validate -> `validation`, test -> `test` (the reference uses
  train and validate only). Images absent from the split file are left out.
- Image path: files/p<first 2 digits of subject>/p<subject>/s<study>/<dicom_id>.jpg
  (the CSVs hold no path; this is the release's documented layout).
"""

from __future__ import annotations

import collections
import os

from absl import logging

from input_pipeline import registry
from input_pipeline.datasets import _common, chexpert

NAME = "mimic_cxr_jpg"
LABEL_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
LABEL_COLUMNS = chexpert.LABEL_COLUMNS
LABEL_NAMES = registry.DATASETS[NAME].label_names
SPLIT_NAMES = {"train": "train", "validate": "validation", "test": "test"}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
MIMIC-CXR-JPG 2.0.0 needs PhysioNet credentials and a signed data use agreement:
https://physionet.org/content/mimic-cxr-jpg/2.0.0/ . Download it and pass the
version folder (mimic-cxr-jpg/2.0.0) as manual_dir:
  <manual_dir>/mimic-cxr-2.0.0-metadata.csv.gz
  <manual_dir>/mimic-cxr-2.0.0-chexpert.csv.gz
  <manual_dir>/mimic-cxr-2.0.0-split.csv.gz
  <manual_dir>/files/p10/p10000032/s50414267/<dicom_id>.jpg ...
"""


def _norm_id(value: str) -> str:
    """An integer id as text, so "10000032" and "10000032.0" compare equal."""
    value = value.strip()
    try:
        as_float = float(value)
    except ValueError:
        return value
    return str(int(as_float)) if as_float.is_integer() else value


def image_relpath(subject_id: str, study_id: str, dicom_id: str) -> str:
    """files/p<2 digits>/p<subject>/s<study>/<dicom>.jpg, the release layout."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def read_records(root: str) -> tuple:
    """({split: [Record]}, DropLog) from the three CSVs under root."""
    instructions = MANUAL_DOWNLOAD_INSTRUCTIONS
    label_path = os.path.join(root, LABEL_FILE)
    labels_rows = _common.read_csv(label_path, ("subject_id", "study_id", "No Finding") + LABEL_COLUMNS,
                                   dataset=NAME, instructions=instructions)
    meta_rows = _common.read_csv(os.path.join(root, METADATA_FILE),
                                 ("dicom_id", "subject_id", "study_id", "ViewPosition"),
                                 dataset=NAME, instructions=instructions)
    split_rows = _common.read_csv(os.path.join(root, SPLIT_FILE),
                                  ("dicom_id", "study_id", "subject_id", "split"),
                                  dataset=NAME, instructions=instructions)

    study_labels = collections.defaultdict(list)
    for i, row in enumerate(labels_rows):
        values = {
            c: _common.parse_float(row[c], dataset=NAME, path=label_path, column=c, row=i + 1)
            for c in ("No Finding",) + LABEL_COLUMNS
        }
        key = (_norm_id(row["subject_id"]), _norm_id(row["study_id"]))
        study_labels[key].append(_common.label_vector(chexpert.map_labels(values)))

    split_of = {}
    for row in split_rows:
        key = (row["dicom_id"].strip(), _norm_id(row["study_id"]), _norm_id(row["subject_id"]))
        name = row["split"].strip()
        if name not in SPLIT_NAMES:
            raise ValueError(f"{NAME}: {os.path.join(root, SPLIT_FILE)}: unknown split {name!r} for "
                             f"dicom_id {key[0]}; expected one of {sorted(SPLIT_NAMES)}.")
        split_of.setdefault(key, []).append(SPLIT_NAMES[name])

    drops = _common.DropLog()
    splits = {name: [] for name in SPLIT_NAMES.values()}
    seen_studies = set()
    for i, row in enumerate(meta_rows):
        subject, study = _norm_id(row["subject_id"]), _norm_id(row["study_id"])
        dicom = row["dicom_id"].strip()
        # A left merge in the reference: an image listed twice in the split file appears twice.
        image_splits = split_of.get((dicom, study, subject))
        labels = study_labels.get((subject, study))
        if labels is None:
            for s in image_splits or [_common.UNASSIGNED]:
                drops.add(s, "no labels for study")
            continue
        seen_studies.add((subject, study))
        if image_splits is None:
            drops.add(_common.UNASSIGNED, "not in split file")
            continue
        rel = image_relpath(subject, study, dicom)
        for k, s in enumerate(image_splits):
            for j, vector in enumerate(labels):  # a duplicated label row expands, as a join does
                example = {"image_path": rel, "view": row["ViewPosition"].strip(),
                           "patient_id": subject, "labels": vector}
                splits[s].append(_common.Record(key=f"{i:07d}.{k}.{j}:{rel}",
                                                image_file=os.path.join(root, rel), example=example))
    unused = len(set(study_labels) - seen_studies)
    if unused:
        logging.info("%s: %d labelled studies have no image in %s.", NAME, unused, METADATA_FILE)
    return splits, drops


class MimicCxrJpg(_common.XrayBuilder):
    """MIMIC-CXR-JPG 2.0.0 with the CheXpert labeller's 13 labels, NaN = uncertain/unmentioned."""

    BUILDER_CONFIGS = _common.make_configs(square_crop=True)
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    DESCRIPTION = (
        "MIMIC-CXR-JPG 2.0.0 (Johnson et al. 2019): chest radiographs with the CheXpert "
        "labeller's 13 labels per study. labels: float32[13], NaN = uncertain or not mentioned."
    )
    HOMEPAGE = "https://physionet.org/content/mimic-cxr-jpg/2.0.0/"
    CITATION = """@article{johnson2019mimiccxrjpg,
  title={MIMIC-CXR-JPG, a large publicly available database of labeled chest radiographs},
  author={Johnson, Alistair E. W. and Pollard, Tom J. and others},
  journal={arXiv:1901.07042}, year={2019}}"""

    def _read_records(self, root: str) -> tuple:
        return read_records(root)
