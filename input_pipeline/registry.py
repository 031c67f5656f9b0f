"""Every fact about a dataset, one record each: the builders, the X-ray reader, the pipeline and
the configs read them from here.

A record is keyed by its builder name (TFDS name, or ``image_folder``). Adding a source or a
target is one record here plus, for a manual-download X-ray set, its builder in
`input_pipeline.datasets` (see the README, "Adding a dataset"). Pure Python, no TensorFlow.

References (SLAMPAI/large-scale-pretraining-transfer): label orders and views from
``transfer_learning/datasets/{chexpert,mimic,nih,padchest}.py`` and ``configs/*.yaml``;
COVIDx and Tuberculosis have no view filter (``transfer_learning/datasets/builder.py`` builds
``Tuberculosis(folder)`` from the file list alone, ``configs/finetune/tuberculosis_full.yaml``
sets no ``views``); eval splits as each dataset's ``val`` in ``builder.py``; train sizes and
original sizes from the TFDS catalogue and ../shared/datasets/FORMATS.md.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping

KINDS = ("natural", "xray", "image_folder")

PA_AP = ("PA", "AP")
# PadChest's configs and the four-way merge (chexpert_mimic_nih_padchest*.yaml).
FIVE_VIEWS = ("PA", "AP", "AP Supine", "L", "COSTAL")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset as the reference uses it.

    Attributes:
      builder: TFDS builder name (``data.name``), or ``image_folder``.
      kind: 'natural' (a TFDS set of RGB images), 'xray' (a builder of input_pipeline.datasets,
        read by input_pipeline.xray) or 'image_folder'.
      results: the dataset's name in the paper's results files (``results.dataset``).
      label_names: label (multi-label) or class names in the builder's order; empty for natural
        TFDS sets, whose names come from the TFDS metadata.
      classes: number of classes of a natural set (X-ray: the number of label names).
      multilabel: multi-hot labels (NaN = unknown).
      views: the reference's default view filter; None: no filter.
      train_split, eval_split: the splits the reference trains and evaluates on (builder split
        names; an X-ray eval split is what ``'validation'`` means for that source).
      train_size: examples in the reference's full training set; None: known only from the data.
      image_size: original (H, W), for the BiT-HyperRule resolution; None: not a HyperRule target.
      oversample: the reference balances the full training set (WeightedRandomSampler).
    """

    builder: str
    kind: str
    results: str = ""
    label_names: tuple[str, ...] = ()
    classes: int = 0
    multilabel: bool = False
    views: tuple[str, ...] | None = None
    train_split: str = "train"
    eval_split: str = "test"
    train_size: int | None = None
    image_size: tuple[int, int] | None = None
    oversample: bool = False

    @property
    def num_classes(self) -> int | None:
        """Number of classes or labels; None where only the data tells (image folders)."""
        return len(self.label_names) if self.label_names else (self.classes or None)


# The reference sorts each observation list, then renames "Pleural Effusion" to "Effusion" in
# place, so Effusion sits in sorted slot 8 of the CheXpert/MIMIC order.
_CHEXPERT_MIMIC_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)
_NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
_PADCHEST_LABELS = (
    "Air Trapping", "Aortic Atheromatosis", "Aortic Elongation", "Atelectasis", "Bronchiectasis",
    "Cardiomegaly", "Consolidation", "Costophrenic Angle Blunting", "Edema", "Effusion",
    "Emphysema", "Fibrosis", "Flattened Diaphragm", "Fracture", "Granuloma",
    "Hemidiaphragm Elevation", "Hernia", "Hilar Enlargement", "Infiltration", "Mass", "Nodule",
    "Pleural_Thickening", "Pneumonia", "Pneumothorax", "Scoliosis", "Support Devices",
    "Tuberculosis",
)

_RECORDS = (
    Dataset("cifar10", "natural", "cifar10", classes=10, train_size=50_000, image_size=(32, 32)),
    Dataset("cifar100", "natural", "cifar100", classes=100, train_size=50_000, image_size=(32, 32)),
    Dataset("oxford_iiit_pet", "natural", "pets", classes=37, train_size=3_680, image_size=(500, 375)),
    # flowers_oversampling.yaml trains on `mod_train`, the original test split (6149 images,
    # imbalanced, oversampled) and evaluates on `mod_test`, train + validation.
    Dataset("oxford_flowers102", "natural", "flowers_oversampling", classes=102, train_split="test",
            eval_split="train+validation", train_size=6_149, image_size=(500, 500), oversample=True),
    Dataset("imagenet2012", "natural", "imagenet2012", classes=1000, eval_split="validation"),
    Dataset("image_folder", "image_folder", "image_folder", image_size=(500, 500)),
    Dataset("chexpert_v1", "xray", "chexpert", _CHEXPERT_MIMIC_LABELS, multilabel=True, views=PA_AP,
            eval_split="validation"),
    Dataset("mimic_cxr_jpg", "xray", "mimic", _CHEXPERT_MIMIC_LABELS, multilabel=True, views=PA_AP,
            eval_split="validation"),
    # The builder names NIH's test_list.txt "test": the reference's validation list.
    Dataset("nih_chest_xray14", "xray", "nih", _NIH_LABELS, multilabel=True, views=PA_AP),
    Dataset("padchest", "xray", "padchest", _PADCHEST_LABELS, multilabel=True, views=FIVE_VIEWS,
            eval_split="validation"),
    Dataset("covidx_cxr2", "xray", "covidx_cxr2", ("negative", "positive"), train_size=15_952,
            image_size=(1024, 1024), oversample=True),
    # 85% of each folder (Shenzhen 662, Montgomery 138): 562 + 117.
    Dataset("tuberculosis_cxr", "xray", "tuberculosis_full", ("normal", "tuberculosis"),
            train_size=562 + 117, image_size=(3000, 3000)),
)
DATASETS: Mapping[str, Dataset] = types.MappingProxyType({r.builder: r for r in _RECORDS})
XRAY_DATASETS = frozenset(name for name, r in DATASETS.items() if r.kind == "xray")
NATURAL_DATASETS = tuple(name for name, r in DATASETS.items() if r.kind == "natural")
