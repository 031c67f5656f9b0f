"""CheXpert v1.0 (full or small release) as the TFDS builder `chexpert_v1`.

Semantics of the reference (transfer_learning/datasets/chexpert.py):
- 13 observations (No Finding excluded), sorted, "Pleural Effusion" renamed
  "Effusion" in place (sorted slot 8).
- No Finding == 1 sets all 13 to 0 (Support Devices included); then -1 -> NaN,
  blank -> NaN, 0/1 kept.
- view = "L" for Frontal/Lateral == Lateral, else the AP/PA value (LL, RL kept).
- train.csv -> `train`, valid.csv -> `validation`; patient_id = digits after "patient".
Unlike the reference, which only finds images of the full release, the CSV's
first path component (`CheXpert-v1.0/` or `CheXpert-v1.0-small/`) is stripped
and the rest read under manual_dir, so either release works.
"""

from __future__ import annotations

import math
import os
import re

from input_pipeline import registry
from input_pipeline.datasets import _common

NAME = "chexpert_v1"
CSV_FILES = {"train": "train.csv", "validation": "valid.csv"}
LABEL_NAMES = registry.DATASETS[NAME].label_names
# CSV column of each label, in label order (the reference sorts the CSV's observations, then
# renames "Pleural Effusion" to "Effusion" in place).
LABEL_COLUMNS = tuple("Pleural Effusion" if n == "Effusion" else n for n in LABEL_NAMES)
PATH_PREFIXES = ("CheXpert-v1.0/", "CheXpert-v1.0-small/")
REQUIRED_COLUMNS = ("Path", "Frontal/Lateral", "AP/PA", "No Finding") + LABEL_COLUMNS

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Register and download CheXpert v1.0 from https://stanfordmlgroup.github.io/competitions/chexpert/
(full release `CheXpert-v1.0`, ~440 GB, or the downsampled `CheXpert-v1.0-small`, ~11 GB).
Extract it and pass its root folder as manual_dir:
  <manual_dir>/train.csv
  <manual_dir>/valid.csv
  <manual_dir>/train/patient00001/study1/view1_frontal.jpg ...
  <manual_dir>/valid/patient64541/study1/view1_frontal.jpg ...
The CSV `Path` column's first component (CheXpert-v1.0/ or CheXpert-v1.0-small/)
is dropped and the rest is read under manual_dir.
"""

_PATIENT_RE = re.compile(r"patient(\d+)")


def relative_path(csv_path: str) -> str:
    """The image path under the dataset root: the CSV Path without its release prefix."""
    for prefix in PATH_PREFIXES:
        if csv_path.startswith(prefix):
            return csv_path[len(prefix):]
    return csv_path


def derive_view(frontal_lateral: str, ap_pa: str) -> str:
    """`L` for laterals, else the AP/PA value (may be LL, RL or blank)."""
    if frontal_lateral == "Frontal":
        return ap_pa
    if frontal_lateral == "Lateral":
        return "L"
    return frontal_lateral


def map_labels(values: dict) -> list:
    """The reference's label rule on one row's observation values (floats, NaN = blank).

    No Finding == 1 zeroes all 13; then -1 becomes NaN. Returns the 13 values in
    LABEL_NAMES order.
    """
    healthy = values["No Finding"] == 1
    out = []
    for column in LABEL_COLUMNS:
        v = 0.0 if healthy else values[column]
        out.append(math.nan if v == -1 else v)
    return out


def read_split(root: str, split: str) -> list:
    """The records of one split (train or validation) from its CSV."""
    path = os.path.join(root, CSV_FILES[split])
    rows = _common.read_csv(path, REQUIRED_COLUMNS, dataset=NAME,
                            instructions=MANUAL_DOWNLOAD_INSTRUCTIONS)
    records = []
    for i, row in enumerate(rows):
        values = {
            c: _common.parse_float(row[c], dataset=NAME, path=path, column=c, row=i + 1)
            for c in ("No Finding",) + LABEL_COLUMNS
        }
        rel = relative_path(row["Path"])
        match = _PATIENT_RE.search(rel)
        if match is None:
            raise ValueError(
                f"{NAME}: {path} record {i + 1}: no 'patient<digits>' in Path {row['Path']!r}")
        example = {
            "image_path": rel,
            "view": derive_view(row["Frontal/Lateral"], row["AP/PA"]),
            "patient_id": match.group(1),
            "labels": _common.label_vector(map_labels(values)),
        }
        records.append(_common.Record(key=f"{i:07d}:{rel}", image_file=os.path.join(root, rel),
                                      example=example))
    return records


class ChexpertV1(_common.XrayBuilder):
    """CheXpert v1.0 chest radiographs: 13 observations, NaN = uncertain or unmentioned."""

    BUILDER_CONFIGS = _common.make_configs(square_crop=True)
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    DESCRIPTION = (
        "CheXpert v1.0 (Irvin et al. 2019): chest radiographs with 13 observations labelled "
        "from reports. labels: float32[13], NaN = uncertain (-1) or not mentioned."
    )
    HOMEPAGE = "https://stanfordmlgroup.github.io/competitions/chexpert/"
    CITATION = """@inproceedings{irvin2019chexpert,
  title={CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison},
  author={Irvin, Jeremy and Rajpurkar, Pranav and others},
  booktitle={AAAI}, year={2019}}"""

    def _read_records(self, root: str) -> tuple:
        splits = {split: read_split(root, split) for split in CSV_FILES}
        return splits, _common.DropLog()
