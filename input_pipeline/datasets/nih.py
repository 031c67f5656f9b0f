"""NIH ChestX-ray14 as the TFDS builder `nih_chest_xray14`.

Semantics of the reference (transfer_learning/datasets/nih.py):
- 14 labels, sorted; each is 1 if its name is a (case-sensitive) substring of
  `Finding Labels`, else 0 (no NaNs; "No Finding" gives all zeros).
- view = `View Position`; patient_id = `Patient ID`.
- train_val_list.txt -> `train`; test_list.txt -> `test` (the reference's
  validation/evaluation set). An image in neither list is left out and counted.
- BBox_List_2017.csv must exist (the reference reads it), though no feature uses it.
- Images: images/<Image Index>, the file name taken from the CSV.
"""

from __future__ import annotations

import os

from absl import logging

from input_pipeline import registry
from input_pipeline.datasets import _common

NAME = "nih_chest_xray14"
DATA_ENTRY_FILE = "Data_Entry_2017_v2020.csv"
BBOX_FILE = "BBox_List_2017.csv"
SPLIT_FILES = {"train": "train_val_list.txt", "test": "test_list.txt"}
IMAGE_DIR = "images"
LABEL_NAMES = registry.DATASETS[NAME].label_names
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download NIH ChestX-ray14 from https://nihcc.app.box.com/v/ChestXray-NIHCC
(images_001.tar.gz ... images_012.tar.gz and the CSV/txt files). Extract every
archive so that all PNGs lie in one images/ folder and pass the root as manual_dir:
  <manual_dir>/Data_Entry_2017_v2020.csv
  <manual_dir>/BBox_List_2017.csv
  <manual_dir>/train_val_list.txt
  <manual_dir>/test_list.txt
  <manual_dir>/images/00000001_000.png ...
"""


def map_labels(finding_labels: str) -> list:
    """1.0 for each label name that is a substring of Finding Labels, else 0.0."""
    return [1.0 if name in finding_labels else 0.0 for name in LABEL_NAMES]


def read_list(path: str) -> set:
    """The file names of a split list (one per line, no header)."""
    if not os.path.isfile(path):
        raise _common.missing_file_error(NAME, path, MANUAL_DOWNLOAD_INSTRUCTIONS)
    with open(path, "r", encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def read_records(root: str) -> tuple:
    """({split: [Record]}, DropLog) from the CSV and split lists under root."""
    rows = _common.read_csv(os.path.join(root, DATA_ENTRY_FILE), REQUIRED_COLUMNS, dataset=NAME,
                            instructions=MANUAL_DOWNLOAD_INSTRUCTIONS)
    bbox = os.path.join(root, BBOX_FILE)
    if not os.path.isfile(bbox):
        raise _common.missing_file_error(NAME, bbox, MANUAL_DOWNLOAD_INSTRUCTIONS)
    lists = {split: read_list(os.path.join(root, f)) for split, f in SPLIT_FILES.items()}

    drops = _common.DropLog()
    splits = {split: [] for split in SPLIT_FILES}
    listed = set()
    for i, row in enumerate(rows):
        name = row["Image Index"].strip()
        rel = f"{IMAGE_DIR}/{name}"
        example = {
            "image_path": rel,
            "view": row["View Position"].strip(),
            "patient_id": row["Patient ID"].strip(),
            "labels": _common.label_vector(map_labels(row["Finding Labels"])),
        }
        in_any = False
        for split, names in lists.items():
            if name in names:
                in_any = True
                splits[split].append(_common.Record(key=f"{i:07d}:{rel}",
                                                    image_file=os.path.join(root, IMAGE_DIR, name),
                                                    example=example))
        if in_any:
            listed.add(name)
        else:
            drops.add(_common.UNASSIGNED, "not in train_val_list.txt or test_list.txt")
    for split, names in lists.items():
        unknown = len(names - listed)
        if unknown:
            logging.warning("%s: %d names in %s are not in %s.", NAME, unknown, SPLIT_FILES[split],
                            DATA_ENTRY_FILE)
    return splits, drops


class NihChestXray14(_common.XrayBuilder):
    """NIH ChestX-ray14: 14 text-mined labels (0/1), official train_val / test lists."""

    BUILDER_CONFIGS = _common.make_configs(square_crop=True)
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    DESCRIPTION = (
        "NIH ChestX-ray14 (Wang et al. 2017): 112,120 frontal chest radiographs with 14 "
        "text-mined labels. labels: float32[14] of 0/1. Splits: train = train_val_list.txt, "
        "test = test_list.txt (the reference's evaluation set)."
    )
    HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
    CITATION = """@inproceedings{wang2017chestxray8,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi and Summers, Ronald M.},
  booktitle={CVPR}, year={2017}}"""

    def _read_records(self, root: str) -> tuple:
        return read_records(root)
