"""Shenzhen + Montgomery tuberculosis chest X-rays as the TFDS builder `tuberculosis_cxr`.

Layout of Kaggle kmader/pulmonary-chest-xray-abnormalities v1. Semantics of
the reference (transfer_learning/datasets/tuberculosis.py with the two folders
of tuberculosis_full.yaml):
- label = the digit before `.png` (`_0` normal, `_1` tuberculosis).
- Each folder separately: sorted(glob("*.png")), shuffled with a fresh
  np.random.RandomState(42), first int(0.85 n) -> `train`, rest -> `test`;
  the splits concatenate Shenzhen then Montgomery. Image-level split.
- view "PA" (both collections are PA; the reference filters no view, nor does the
  registry record); patient_id = file stem without the label
  suffix (each patient has one image).
An RGB file is reduced to one plane by luminance; the `512`/`224` configs keep
the aspect ratio (see covidx.py for why).
"""

from __future__ import annotations

import glob
import os

import numpy as np

from input_pipeline.datasets import _common

NAME = "tuberculosis_cxr"
# (collection, folder under the root), in the reference's concatenation order.
FOLDERS = (
    ("shenzhen", "ChinaSet_AllFiles/ChinaSet_AllFiles/CXR_png"),
    ("montgomery", "Montgomery/MontgomerySet/CXR_png"),
)
SPLIT_SEED = 42
TRAIN_FRACTION = 0.85

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download "Pulmonary Chest X-Ray Abnormalities" from Kaggle
(https://www.kaggle.com/datasets/kmader/pulmonary-chest-xray-abnormalities, version 1),
extract it and pass the folder that holds both collections as manual_dir:
  <manual_dir>/ChinaSet_AllFiles/ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png ...
  <manual_dir>/Montgomery/MontgomerySet/CXR_png/MCUCXR_0001_0.png ...
The digit before .png is the label (0 normal, 1 tuberculosis).
"""


def split_files(files: list) -> tuple:
    """(train, test) of one folder's sorted files, as the reference shuffles them."""
    files = list(files)
    np.random.RandomState(SPLIT_SEED).shuffle(files)
    n_train = int(len(files) * TRAIN_FRACTION)
    return files[:n_train], files[n_train:]


def label_of(file_name: str) -> int:
    """0/1 from the character before `.png`; ValueError naming the file otherwise."""
    digit = file_name[-5] if len(file_name) >= 5 else ""
    if digit not in ("0", "1"):
        raise ValueError(f"{NAME}: cannot read the label of {file_name!r}: expected a name "
                         "ending in _0.png (normal) or _1.png (tuberculosis).")
    return int(digit)


def read_records(root: str) -> tuple:
    """({'train': [...], 'test': [...]}, DropLog) from the two PNG folders under root."""
    splits = {"train": [], "test": []}
    for collection, folder in FOLDERS:
        directory = os.path.join(root, folder)
        if not os.path.isdir(directory):
            raise _common.missing_file_error(NAME, directory, MANUAL_DOWNLOAD_INSTRUCTIONS)
        files = sorted(glob.glob(os.path.join(glob.escape(directory), "*.png")))
        if not files:
            raise FileNotFoundError(
                f"{NAME}: no *.png files in {directory}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
        for split, chosen in zip(("train", "test"), split_files(files)):
            for path in chosen:
                name = os.path.basename(path)
                rel = f"{folder}/{name}"
                example = {"image_path": rel, "view": "PA", "patient_id": name[:-len("_0.png")],
                           "label": label_of(name)}
                splits[split].append(_common.Record(key=f"{collection}:{name}", image_file=path,
                                                    example=example))
    return splits, _common.DropLog()


class TuberculosisCxr(_common.XrayBuilder):
    """Shenzhen and Montgomery chest X-rays, normal vs tuberculosis, seeded 85/15 split."""

    BUILDER_CONFIGS = _common.make_configs(square_crop=False)
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    CHANNEL_RULE = "luminance"
    DESCRIPTION = (
        "Shenzhen (662) and Montgomery County (138) chest X-ray sets (Jaeger et al. 2014): "
        "label: ClassLabel(normal, tuberculosis). Splits: the reference's per-folder "
        "RandomState(42) 85/15 split (train 679 / test 121 on the full data)."
    )
    HOMEPAGE = "https://www.kaggle.com/datasets/kmader/pulmonary-chest-xray-abnormalities"
    CITATION = """@article{jaeger2014two,
  title={Two public chest X-ray datasets for computer-aided screening of pulmonary diseases},
  author={Jaeger, Stefan and Candemir, Sema and Antani, Sameer and W{\\'a}ng, Yi-Xiang J. and Lu, Pu-Xuan and Thoma, George},
  journal={Quantitative Imaging in Medicine and Surgery}, volume={4}, number={6}, year={2014}}"""

    def _read_records(self, root: str) -> tuple:
        return read_records(root)
