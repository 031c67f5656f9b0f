"""COVIDx CXR-2 (Kaggle andyczhao/covidx-cxr2) as the TFDS builder `covidx_cxr2`.

Semantics of the reference (transfer_learning/datasets/covidx_cxr2.py):
- train.txt -> `train`, test.txt -> `test`; images under train/ and test/.
- label: 1 (`positive`) if the label field is "positive", else 0 (`negative`).
Line format: `<patient id> <file name> <label> <source>`, space separated, no
header. Some releases have patient ids with a space ("COVID 1 COVID(1).png
positive sirm"); the reference's pandas read (sep=" ", 4 names) raises
"Expected 4 fields, saw 5" on those. Here the label and source are the last two
fields, the file name is the field before them (it must end in an image
extension) and everything before it is the patient id, so such lines are read
correctly. view is "" (COVIDx does not record it). An RGB file is reduced to
one plane by luminance (the reference feeds PIL RGB, whose planes are equal for
grey X-rays); the `512`/`224` configs keep the aspect ratio (shorter side
resized, no crop) because the reference's transfer pipeline (Resize(512) then
crop 480, or Resize((480, 480)) for evaluation) sees the whole image.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from input_pipeline import registry
from input_pipeline.datasets import _common

NAME = "covidx_cxr2"
SPLIT_FILES = {"train": "train.txt", "test": "test.txt"}
SPLIT_DIRS = {"train": "train", "test": "test"}
CLASS_NAMES = registry.DATASETS[NAME].label_names
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download COVIDx CXR-2 from Kaggle (https://www.kaggle.com/datasets/andyczhao/covidx-cxr2,
version 3), extract it and pass the folder holding the label files as manual_dir:
  <manual_dir>/train.txt
  <manual_dir>/test.txt
  <manual_dir>/train/<file name from train.txt> ...
  <manual_dir>/test/<file name from test.txt> ...
"""


def parse_line(line: str, *, path: str, line_no: int) -> dict:
    """Splits one label line into patient_id, file name, label (0/1), source and `head`
    (the fields before the file name).

    Raises:
      ValueError: naming the file and line, for a line with fewer than 4 fields,
        a file name without an image extension, or a label other than
        positive/negative.
    """
    fields = line.split()
    where = f"{NAME}: {path} line {line_no}"
    if len(fields) < 4:
        raise ValueError(f"{where}: expected '<patient id> <file> <label> <source>', got {line!r}")
    *head, file_name, label, source = fields
    # The field before the label is the file name; read_split widens it to the left only
    # when the file on disk has a space in its name (_resolve_file).
    if not file_name.lower().endswith(IMAGE_EXTENSIONS):
        raise ValueError(f"{where}: field {file_name!r} before the label is not an image file name "
                         f"(expected one of {IMAGE_EXTENSIONS}); line {line!r}")
    if label not in CLASS_NAMES:
        raise ValueError(f"{where}: label {label!r} is not one of {CLASS_NAMES}")
    return {"patient_id": " ".join(head), "file_name": file_name, "head": head,
            "label": CLASS_NAMES.index(label), "source": source}


def _resolve_file(folder: str, head: list, file_name: str) -> tuple:
    """(patient_id, file_name): the shortest existing name made of file_name and the
    fields just before it, for the rare file name that itself holds a space."""
    for k in range(len(head)):
        candidate = " ".join(head[len(head) - k:] + [file_name])
        if os.path.isfile(os.path.join(folder, candidate)):
            return " ".join(head[:len(head) - k]), candidate
    return " ".join(head), file_name


def read_split(root: str, split: str) -> list:
    """The records of one split from its label file."""
    path = os.path.join(root, SPLIT_FILES[split])
    if not os.path.isfile(path):
        raise _common.missing_file_error(NAME, path, MANUAL_DOWNLOAD_INSTRUCTIONS)
    records = []
    with open(path, "r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = parse_line(line.strip(), path=path, line_no=line_no)
            folder = os.path.join(root, SPLIT_DIRS[split])
            patient_id, file_name = _resolve_file(folder, fields["head"], fields["file_name"])
            rel = f"{SPLIT_DIRS[split]}/{file_name}"
            example = {"image_path": rel, "view": "", "patient_id": patient_id,
                       "label": fields["label"], "source": fields["source"]}
            records.append(_common.Record(key=f"{line_no:07d}:{rel}",
                                          image_file=os.path.join(folder, file_name), example=example))
    return records


class CovidxCxr2(_common.XrayBuilder):
    """COVIDx CXR-2: COVID-19 positive/negative chest radiographs, official train/test files."""

    BUILDER_CONFIGS = _common.make_configs(square_crop=False)
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    CHANNEL_RULE = "luminance"
    DESCRIPTION = (
        "COVIDx CXR-2 (Pavlova et al. 2021): chest radiographs labelled COVID-19 positive or "
        "negative. label: ClassLabel(negative, positive); source: the originating collection."
    )
    HOMEPAGE = "https://www.kaggle.com/datasets/andyczhao/covidx-cxr2"
    CITATION = """@article{pavlova2021covidnet,
  title={COVID-Net CXR-2: An Enhanced Deep Convolutional Neural Network Design for Detection of COVID-19 Cases from Chest X-ray Images},
  author={Pavlova, Maya and Terhljan, Naomi and Chung, Audrey G. and others},
  journal={arXiv:2105.06640}, year={2021}}"""

    def _extra_features(self) -> dict:
        return {"source": tfds.features.Text()}

    def _read_records(self, root: str) -> tuple:
        return {split: read_split(root, split) for split in SPLIT_FILES}, _common.DropLog()
