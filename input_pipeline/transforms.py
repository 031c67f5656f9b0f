"""Stage 3, preprocessing: encoded image -> model-ready [crop, crop, 3] image, for each pp.kind.

`TRANSFORMS` is the one table from ``pp.kind`` to its (train, eval) functions; `for_source` picks
the entry and fixes its shape. The ops live in `input_pipeline.preprocess` (natural images) and
`input_pipeline.xray` (the reference's X-ray transform); a source's kind ('xray' or not) says how
its bytes decode. Images are uint8 for 'bit' / 'inception' (normalised on the device by
`preprocess.model_input`) and float32 in [-1, 1] for 'xray', whose 16-bit sources would lose
precision in uint8. A train function returns the example's image features: ``{"image": ...}``, and
for 'bit' on natural sources also ``window`` (the crop's resize runs on the device, see
`input_pipeline.normalize`). X-ray sources under 'bit' / 'inception' are resized grey, then tiled
to RGB.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from input_pipeline import preprocess


@dataclasses.dataclass(frozen=True)
class Transforms:
    """train(encoded, seed) -> {"image": [crop, crop, 3] of `dtype`, maybe "window"}; eval(encoded) -> image."""
    train: Callable[[tf.Tensor, tf.Tensor], dict]
    eval: Callable[[tf.Tensor], tf.Tensor]
    dtype: tf.DType


def _xray_module():
    from input_pipeline import xray  # imported on use: tests put a stand-in in its place
    return xray


def _natural_ops(source_kind: str):
    """(decode, finish): encoded bytes -> [0, 255] levels the ops take; their uint8 output -> RGB.

    Natural sources decode to uint8 RGB. X-ray sources decode to one float32 grey plane, which the
    ops resize alone and `finish` tiles to RGB afterwards (a third of the resize work).
    """
    if source_kind == "xray":
        xray = _xray_module()
        return lambda enc: preprocess.grey01_to_255(xray.decode(enc)), preprocess.grey_to_rgb
    return preprocess.decode_rgb, lambda image: image


def _bit(pp, source_kind: str) -> Transforms:
    resize, crop = int(pp.resize), int(pp.crop)
    decode, finish = _natural_ops(source_kind)
    if source_kind == "xray":
        def train(enc, seed):
            return {"image": finish(preprocess.bit_train(decode(enc), seed, resize=resize, crop=crop))}
    else:
        def train(enc, seed):   # JPEGs decode only the crop's window; the device resizes it
            return preprocess.decode_bit_window(enc, seed, resize=resize, crop=crop)
    return Transforms(train, lambda enc: finish(preprocess.bit_eval(decode(enc), crop=crop)), tf.uint8)


def _inception(pp, source_kind: str) -> Transforms:
    resize, crop = int(pp.resize), int(pp.crop)
    decode, finish = _natural_ops(source_kind)
    if source_kind == "xray":
        def train(enc, seed):
            return {"image": finish(preprocess.inception_train(decode(enc), seed, crop=crop))}
    else:
        def train(enc, seed):   # JPEGs decode only the cropped window
            return {"image": preprocess.decode_and_inception_crop(enc, seed, crop=crop)}
    return Transforms(train, lambda enc: finish(preprocess.inception_eval(decode(enc), resize=resize, crop=crop)),
                      tf.uint8)


def _xray(pp, source_kind: str) -> Transforms:
    if source_kind != "xray":
        raise ValueError("pp.kind 'xray' needs an X-ray source; use 'bit' or 'inception' for natural images")
    if pp.norm != "bit":
        raise ValueError(f"pp.kind 'xray' normalises to [-1, 1] as the reference; pp.norm must be 'bit', "
                         f"got {pp.norm!r}")
    xray, crop = _xray_module(), int(pp.crop)
    return Transforms(lambda enc, seed: {"image": xray.preprocess_train(xray.decode(enc), seed, size=crop)},
                      lambda enc: xray.preprocess_eval(xray.decode(enc), size=crop), tf.float32)


# pp.kind -> (pp, source kind) -> Transforms.
TRANSFORMS: dict[str, Callable[..., Transforms]] = {"bit": _bit, "inception": _inception, "xray": _xray}


def for_source(pp, source_kind: str) -> Transforms:
    """The transforms of `pp` (resolved ``config.pp``) for a source of `source_kind`, shapes fixed."""
    t = TRANSFORMS[pp.kind](pp, source_kind)
    shape = [int(pp.crop), int(pp.crop), 3]

    def train(enc, seed):
        features = t.train(enc, seed)
        return dict(features, image=tf.ensure_shape(features["image"], shape))

    return Transforms(train, lambda enc: tf.ensure_shape(t.eval(enc), shape), t.dtype)


def label_transform(source_multilabel: bool, force_classification: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    """Raw label -> the train label: int32 class (the first positive when forced), or float32 multi-hot."""
    if force_classification:
        return lambda y: tf.cast(tf.argmax(tf.where(tf.math.is_nan(y), tf.zeros_like(y), y)), tf.int32)
    if source_multilabel:
        return lambda y: tf.cast(y, tf.float32)
    return lambda y: tf.cast(y, tf.int32)
