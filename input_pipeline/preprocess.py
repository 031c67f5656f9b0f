"""Image preprocessing ops (TensorFlow, per example): decode, BiT-HyperRule, inception crop.

Every op works on one image with values in [0, 255] (uint8 or float) and returns float32
[crop, crop, 3] normalised by `normalize`. Randomness comes only from stateless ops keyed by
an explicit `seed` (int32/int64 tensor of shape [2]), so an example's augmentation is a pure
function of its seed: the pipeline derives that seed from (run seed, global example index),
which makes a resumed input stream identical to an uninterrupted one.

Semantics follow the reference's torchvision transforms (transfer_learning/datasets/builder.py):

- 'bit' train: ``Resize(resize)`` with an int, i.e. the *shorter side* goes to `resize` and the
  aspect ratio is kept (BiT's own code squashes to ``(resize, resize)``; the paper's numbers come
  from the reference, so we keep its choice), then ``RandomCrop(crop)`` and
  ``RandomHorizontalFlip()``. Eval: ``Resize((crop, crop))`` (squash, no crop).
- 'inception' train (pre-training): random-resized crop to `crop` (scale 0.08-1, aspect ratio
  3/4-4/3) and flip; eval: shorter side to `resize` (256), centre crop `crop` (224).
- Interpolation: bilinear with antialiasing when shrinking, as PIL's ``BILINEAR`` filter that
  torchvision's ``Resize`` uses; JPEGs decode with libjpeg's accurate DCT, as PIL does.
  Differences to PIL: we do not round to uint8 between resizing and normalising, and the random
  crop / flip draws come from TF's stateless RNG, not torch's.
- Speed: the train crop is resized directly (enlarging: ResizeBilinear then a slice; shrinking:
  ScaleAndTranslate on the window only), the flip is applied to the smaller uint8 source, and
  per-channel normalisation avoids innermost-axis broadcasting (slow on CPU).
- The random-resized crop uses TF's ``sample_distorted_bounding_box`` (10 attempts, falling back
  to the whole image) where torchvision falls back to a centre crop with the ratio clamped; the
  two agree whenever a sample is accepted, which is nearly always within 10 attempts.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision RandomResizedCrop defaults (reference pre-training augmentation).
INCEPTION_AREA_RANGE = (0.08, 1.0)
INCEPTION_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
INCEPTION_MAX_ATTEMPTS = 10


def _normalize_bit(image: tf.Tensor) -> tf.Tensor:
  return image * (1.0 / 127.5) - 1.0


def _per_channel_affine(image: tf.Tensor, scale, offset) -> tf.Tensor:
  """image * scale + offset with per-channel (last axis) constants.

  Broadcasting a 3-vector along the innermost axis is about 7x slower on CPU than a row-wise
  broadcast; with a static width the constants are tiled to one row of [H, W * C] instead.
  """
  width, channels = image.shape[-2], image.shape[-1]
  scale, offset = np.asarray(scale, np.float32), np.asarray(offset, np.float32)
  if width is None or channels is None or image.shape.rank != 3:
    return image * scale + offset
  rows = tf.reshape(image, [-1, width * channels])
  rows = rows * np.tile(scale, width) + np.tile(offset, width)
  return tf.reshape(rows, tf.shape(image))


def _normalize_imagenet(image: tf.Tensor) -> tf.Tensor:
  mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
  return _per_channel_affine(image, 1.0 / (255.0 * std), -mean / std)


_NORMALIZERS = {"bit": _normalize_bit, "imagenet": _normalize_imagenet}
NORMS = tuple(_NORMALIZERS)


def check_norm(norm: str) -> None:
  """Raises ValueError naming the valid choices if `norm` is not a known normalisation."""
  if norm not in _NORMALIZERS:
    raise ValueError(f"Unknown pp.norm {norm!r}; valid: {sorted(_NORMALIZERS)}")


def normalize(image: tf.Tensor, norm: str) -> tf.Tensor:
  """Maps [0, 255] values to the model's input range: 'bit' -> [-1, 1]; 'imagenet' -> mean/std."""
  check_norm(norm)
  return _NORMALIZERS[norm](tf.cast(image, tf.float32))


# libjpeg's accurate integer DCT gives PIL's (the reference's) pixels exactly; TF's default,
# the fast DCT, differs by up to ~5 levels for about 12% less decode time.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes JPEG/PNG/GIF/BMP/WebP bytes to uint8 [H, W, 3] (grey and RGBA become RGB)."""
  image = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=JPEG_DCT_METHOD),
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def grey01_to_rgb255(image01: tf.Tensor) -> tf.Tensor:
  """[H, W, 1] floats in [0, 1] (X-ray decode) -> float32 [H, W, 3] in [0, 255]."""
  image = tf.cast(image01, tf.float32) * 255.0
  return tf.tile(image, [1, 1, 3])


def shorter_side_size(height: tf.Tensor, width: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Output (h, w) of torchvision's ``Resize(size)``: shorter side -> size, long side truncated."""
  h = tf.cast(height, tf.float64)
  w = tf.cast(width, tf.float64)
  # torchvision computes int(size * long / short) in Python floats; float64 floor matches that.
  new_h = tf.where(h <= w, tf.constant(size, tf.float64), tf.floor(size * h / w))
  new_w = tf.where(h <= w, tf.floor(size * w / h), tf.constant(size, tf.float64))
  return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def _resized_window(image: tf.Tensor, new_h, new_w, top, left, out_h: int, out_w: int) -> tf.Tensor:
  """The [out_h, out_w] window at (top, left) of `image` resized to (new_h, new_w).

  Equal (to float rounding) to ``tf.image.resize(image, (new_h, new_w), antialias=True)``
  followed by slicing. Enlarging (no antialiasing needed) uses ResizeBilinear on the whole
  image, about twice as fast per pixel as the general kernel; shrinking uses ScaleAndTranslate
  (triangle kernel, antialiased, what tf.image.resize calls) on the window only.
  """
  shape = tf.shape(image)
  in_h, in_w = shape[0], shape[1]

  def enlarge():
    full = tf.raw_ops.ResizeBilinear(images=image[None], size=tf.stack([new_h, new_w]), half_pixel_centers=True)
    return full[0, top:top + out_h, left:left + out_w]

  def shrink():
    scale = tf.stack([tf.cast(new_h, tf.float32) / tf.cast(in_h, tf.float32),
                      tf.cast(new_w, tf.float32) / tf.cast(in_w, tf.float32)])
    translation = -tf.cast(tf.stack([top, left]), tf.float32)
    out = tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=tf.constant([out_h, out_w], tf.int32), scale=scale,
        translation=translation, kernel_type="triangle", antialias=True)
    return out[0]

  out = tf.cond((new_h >= in_h) & (new_w >= in_w), enlarge, shrink)
  out.set_shape([out_h, out_w, image.shape[-1]])
  return out


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Left-right flip with probability 1/2, decided by the stateless `seed`."""
  flip = tf.random.stateless_uniform([], seed=seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def _flip_decision(seed: tf.Tensor) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed=seed) < 0.5


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Left-right flip with probability 1/2, decided by the stateless `seed`."""
  return tf.cond(_flip_decision(seed), lambda: tf.reverse(image, axis=[1]), lambda: image)


def bit_train(image: tf.Tensor, seed: tf.Tensor, *, resize: int, crop: int, norm: str) -> tf.Tensor:
  """BiT-HyperRule train op: shorter side -> `resize`, random `crop` x `crop`, random flip."""
  shape = tf.shape(image)
  new_h, new_w = shorter_side_size(shape[0], shape[1], resize)
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(crop_seed, 2))
  # RandomCrop draws offsets uniformly in [0, size - crop]; maxval is exclusive.
  top = tf.random.stateless_uniform([], top_seed, minval=0, maxval=new_h - crop + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], left_seed, minval=0, maxval=new_w - crop + 1, dtype=tf.int32)
  # Bilinear resizing with half-pixel centres commutes with a mirror flip, so flipping the
  # (smaller, uint8) source and mirroring the crop offset equals flipping the crop.
  flip = _flip_decision(flip_seed)
  image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  left = tf.where(flip, new_w - crop - left, left)
  return normalize(_resized_window(image, new_h, new_w, top, left, crop, crop), norm)


def resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
  """Bilinear resize of [H, W, C] to (height, width), antialiased when shrinking (PIL's BILINEAR)."""
  return _resized_window(image, height, width, 0, 0, height, width)


def bit_eval(image: tf.Tensor, *, crop: int, norm: str) -> tf.Tensor:
  """BiT-HyperRule eval op: resize straight to `crop` x `crop` (aspect ratio not kept)."""
  return normalize(resize(image, crop, crop), norm)


def inception_window(image_shape: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Random-resized-crop window (begin [y, x, 0], size [h, w, -1]) for an image shape [H, W, C]."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=INCEPTION_AREA_RANGE[0], aspect_ratio_range=INCEPTION_ASPECT_RANGE,
      area_range=INCEPTION_AREA_RANGE, max_attempts=INCEPTION_MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  return begin, size


def _inception_finish(window: tf.Tensor, flip_seed: tf.Tensor, crop: int, norm: str) -> tf.Tensor:
  window = random_flip(window, flip_seed)   # on the window, before resizing: fewer pixels
  return normalize(resize(window, crop, crop), norm)


def inception_train(image: tf.Tensor, seed: tf.Tensor, *, crop: int, norm: str) -> tf.Tensor:
  """Random-resized crop of a decoded image to `crop` x `crop`, then a random flip."""
  window_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  begin, size = inception_window(tf.shape(image), window_seed)
  return _inception_finish(tf.slice(image, begin, size), flip_seed, crop, norm)


def decode_and_inception_crop(encoded: tf.Tensor, seed: tf.Tensor, *, crop: int, norm: str) -> tf.Tensor:
  """`inception_train` from encoded bytes; JPEGs decode only the cropped window (faster).

  Takes the same window as ``inception_train(decode_rgb(encoded), seed, ...)``; the pixels are
  equal too, except where chroma-subsampled JPEGs upsample colour at the window's border.
  """
  window_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  def jpeg():
    shape = tf.io.extract_jpeg_shape(encoded)
    begin, size = inception_window(shape, window_seed)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.io.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=JPEG_DCT_METHOD)

  def other():
    image = decode_rgb(encoded)
    begin, size = inception_window(tf.shape(image), window_seed)
    return tf.slice(image, begin, size)

  window = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  window.set_shape([None, None, 3])
  return _inception_finish(window, flip_seed, crop, norm)


def inception_eval(image: tf.Tensor, *, resize: int, crop: int, norm: str) -> tf.Tensor:
  """Shorter side -> `resize` (aspect kept), centre crop `crop` x `crop` (torchvision rounding)."""
  shape = tf.shape(image)
  new_h, new_w = shorter_side_size(shape[0], shape[1], resize)
  # torchvision CenterCrop: int(round((size - crop) / 2)); Python and tf.round both round half to even.
  top = tf.cast(tf.round(tf.cast(new_h - crop, tf.float32) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - crop, tf.float32) / 2.0), tf.int32)
  return normalize(_resized_window(image, new_h, new_w, top, left, crop, crop), norm)
