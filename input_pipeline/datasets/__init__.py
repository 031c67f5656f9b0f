"""TFDS builders for the chest X-ray datasets (manual download); importing registers them.

Registered names: chexpert_v1, mimic_cxr_jpg, nih_chest_xray14, padchest,
covidx_cxr2, tuberculosis_cxr; configs `512` (default), `224`, `full`. Use
`prepare(name, manual_dir=..., data_dir=...)` or `tfds.builder(name, data_dir=...,
config=..., skip_corrupt=..., num_workers=...)`. Label names and views: `input_pipeline.registry`.
"""

from input_pipeline.datasets.prepare import BUILDERS, builder_class, prepare

__all__ = ["BUILDERS", "builder_class", "prepare"]
