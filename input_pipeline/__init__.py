"""tf.data input pipeline: natural-image TFDS sets, image folders and the X-ray builders.

Entry point: ``get_datasets(config) -> Datasets(train, evals, info)``.
"""

from input_pipeline.pipeline import DatasetInfo
from input_pipeline.pipeline import Datasets
from input_pipeline.pipeline import get_datasets

__all__ = ["DatasetInfo", "Datasets", "get_datasets"]
