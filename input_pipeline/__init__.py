"""tf.data input pipeline: natural-image TFDS sets, image folders and the X-ray builders.

Entry point: ``get_datasets(config) -> Datasets(train, evals, info)``; the train step turns a
batch's images into the model's input with ``model_input(batch["image"], config.pp.norm)``.

The names below are imported on first use (PEP 562), so that importing a light submodule such
as `input_pipeline.imaging` (numpy + Pillow) does not import TensorFlow.
"""

import importlib

# Public name -> the submodule that defines it.
_EXPORTS = {
    "DatasetInfo": "input_pipeline.pipeline",
    "Datasets": "input_pipeline.pipeline",
    "get_datasets": "input_pipeline.pipeline",
    "NORM_MEAN_STD": "input_pipeline.normalize",
    "model_input": "input_pipeline.normalize",
}

__all__ = ["DatasetInfo", "Datasets", "NORM_MEAN_STD", "get_datasets", "model_input"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'input_pipeline' has no attribute {name!r}; it exports {__all__}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
