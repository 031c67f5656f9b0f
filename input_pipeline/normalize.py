"""The model's input from pipeline images: the normalisation that runs on the device.

numpy only (no TensorFlow), so that the train step imports it where TensorFlow is not
installed (the GPU benchmark's machine).
"""

from __future__ import annotations

import numpy as np

from input_pipeline.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# pp.norm -> per-channel (mean, std) of torchvision's ToTensor then Normalize(mean, std):
# 'bit' is the reference's Normalize(0.5, 0.5), i.e. [-1, 1]. Exports state these numbers.
NORM_MEAN_STD = {
    "bit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
# The same as an affine map of uint8 values: model input = value * scale + offset.
_NORM_AFFINE = {
    name: ((1.0 / (255.0 * np.asarray(std))).astype(np.float32),
           (-np.asarray(mean) / np.asarray(std)).astype(np.float32))
    for name, (mean, std) in NORM_MEAN_STD.items()
}
NORMS = tuple(_NORM_AFFINE)
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def check_norm(norm: str) -> None:
    """Raises a UserError naming the valid choices if `norm` is not a known normalisation."""
    if norm not in _NORM_AFFINE:
        raise UserError(f"Unknown pp.norm {norm!r}; valid: {sorted(_NORM_AFFINE)}")


def model_input(images, norm: str):
    """Pipeline images -> the model's float32 input; works on numpy and jax arrays alike.

    uint8 images (pp.kind 'bit' / 'inception') are normalised: 'bit' -> [-1, 1] (x / 127.5 - 1),
    'imagenet' -> (x / 255 - mean) / std. Float images (pp.kind 'xray', already in [-1, 1]) are
    returned unchanged. Call it inside the jitted step so the conversion runs on the device.
    """
    check_norm(norm)
    dtype = np.dtype(images.dtype)
    if dtype.name in _FLOAT_DTYPES:
        return images
    if dtype != np.uint8:
        raise ValueError(f"model_input takes uint8 or float images, got dtype {dtype.name}")
    scale, offset = _NORM_AFFINE[norm]
    return images.astype(np.float32) * scale + offset
