"""`prepare(...)`: build one of the X-ray datasets from its manually downloaded copy."""

from __future__ import annotations

import os
from typing import Optional

import tensorflow_datasets as tfds

from input_pipeline.datasets import chexpert, covidx, mimic, nih, padchest, tuberculosis
from input_pipeline.errors import UserError

# Registered name -> builder class (explicit, so an unknown name lists the valid ones).
BUILDERS = {
    "chexpert_v1": chexpert.ChexpertV1,
    "mimic_cxr_jpg": mimic.MimicCxrJpg,
    "nih_chest_xray14": nih.NihChestXray14,
    "padchest": padchest.Padchest,
    "covidx_cxr2": covidx.CovidxCxr2,
    "tuberculosis_cxr": tuberculosis.TuberculosisCxr,
}


def builder_class(name: str):
    """The builder class registered as `name`; ValueError listing the valid names."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise UserError(
            f"Unknown X-ray dataset {name!r}; expected one of {sorted(BUILDERS)}.") from None


def prepare(
    name: str,
    *,
    manual_dir: os.PathLike,
    data_dir: os.PathLike,
    config: str = "512",
    num_workers: Optional[int] = None,
    skip_corrupt: bool = False,
) -> tfds.core.DatasetBuilder:
    """Prepares dataset `name` from manual_dir into data_dir and returns its builder.

    Args:
      name: one of BUILDERS (chexpert_v1, mimic_cxr_jpg, nih_chest_xray14, padchest,
        covidx_cxr2, tuberculosis_cxr).
      manual_dir: the dataset's own root folder, laid out as the builder's
        MANUAL_DOWNLOAD_INSTRUCTIONS say.
      data_dir: where the TFDS files are written (data_dir/name/config/version).
      config: stored resolution, "512" (default), "224" or "full".
      num_workers: image decoding threads (default os.cpu_count()).
      skip_corrupt: leave out unreadable/missing images and count them instead of failing.

    Returns:
      The prepared builder (as_dataset, info.splits, info.metadata["kept"/"dropped"]).
    """
    cls = builder_class(name)
    valid_configs = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in valid_configs:
        raise UserError(f"{name}: unknown config {config!r}; expected one of {valid_configs}.")
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
        # Checked before TFDS creates data_dir (TFDS would assert, with a traceback).
        state = "is empty" if os.path.isdir(manual_dir) else "is not a folder"
        raise FileNotFoundError(
            f"{name}: manual_dir {os.fspath(manual_dir)!r} {state}; it must be the dataset's "
            f"downloaded root folder:\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    builder = cls(data_dir=os.fspath(data_dir), config=config, num_workers=num_workers,
                  skip_corrupt=skip_corrupt)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    )
    return builder
