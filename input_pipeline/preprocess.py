"""Image preprocessing ops (TensorFlow, per example); `model_input` (re-exported from
`input_pipeline.normalize`) finishes them on the device.

Every op works on one image with values in [0, 255] (uint8, or float for decoded X-rays) and returns
**uint8** [crop, crop, C]: resizing is computed in float and rounded once to the nearest level.
Batches of uint8 are 4x smaller than float32 ones and cost the host nothing to normalise; the train
step maps them with `model_input(images, norm, window)` (on numpy or jax arrays). Randomness comes only from
stateless ops keyed by an explicit `seed` (int32/int64 tensor of shape [2]), so an example's
augmentation is a pure function of its seed: the pipeline derives that seed from (run seed, global
example index), which makes a resumed input stream identical to an uninterrupted one.

Semantics follow the reference's torchvision transforms (transfer_learning/datasets/builder.py):

- 'bit' train: ``Resize(resize)`` with an int, i.e. the *shorter side* goes to `resize` and the
  aspect ratio is kept (BiT's own code squashes to ``(resize, resize)``; the paper's numbers come
  from the reference, so we keep its choice), then ``RandomCrop(crop)`` and
  ``RandomHorizontalFlip()``. Eval: ``Resize((crop, crop))`` (squash, no crop).
- 'inception' train (pre-training): random-resized crop to `crop` (scale 0.08-1, aspect ratio
  3/4-4/3) and flip; eval: shorter side to `resize` (256), centre crop `crop` (224).
- Interpolation: bilinear, antialiased when shrinking, as PIL's ``BILINEAR`` filter that
  torchvision's ``Resize`` uses (enlarging needs no antialiasing: there the two are the same
  filter); JPEGs decode with libjpeg's accurate DCT, as PIL does. PIL rounds to uint8 after each of
  its two separable passes, we once at the end: outputs differ by at most a level or so.
- 'bit' train, sources whose shorter side is under `EXACT_CROP_MAX_SIDE` (CIFAR, digits, every
  source the BiT-HyperRule gives 160/128): exactly the reference's order. The whole image is
  resized (``Resize(resize)``, shorter side, aspect kept), then cropped at integer offsets and
  flipped; pixels equal torchvision's to interpolation rounding (a level).
- 'bit' train, larger sources: the crop is drawn in resized coordinates as ``RandomCrop`` draws
  it, mapped to the source pixels it covers (rounded to whole pixels), only that window is
  decoded (JPEG) and it is resized straight to `crop` x `crop`. The crops have the distribution
  of resize-then-crop; each crop's edges lie within half a source pixel of the exact ones (its
  scale differs by at most one source pixel over the crop, < 0.5% at the threshold). Other
  formats decode fully, then take the same window. Both paths draw the same offsets and flip
  from a seed. From encoded bytes (`decode_bit_window`), a window no larger than the crop is
  shipped unresized and enlarged in the train step (`normalize.resize_windows`, the same
  kernel and rounding): that resize took half the host's time per image.
- The random-resized crop uses TF's ``sample_distorted_bounding_box`` (10 attempts, falling back
  to the whole image) where torchvision falls back to a centre crop with the ratio clamped; the
  two agree whenever a sample is accepted, which is nearly always within 10 attempts.
- The random crop / flip draws come from TF's stateless RNG, not torch's.
"""

from __future__ import annotations

import tensorflow as tf

# The on-device normalisation lives in a TensorFlow-free module (the train step and the GPU
# benchmark import it where TensorFlow is not installed); its names stay importable from here.
from input_pipeline.normalize import IMAGENET_MEAN, IMAGENET_STD, NORM_MEAN_STD, NORMS, check_norm, model_input  # noqa: F401

# torchvision RandomResizedCrop defaults (reference pre-training augmentation).
INCEPTION_AREA_RANGE = (0.08, 1.0)
INCEPTION_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
INCEPTION_MAX_ATTEMPTS = 10

# 'bit' train: a source whose shorter side is under this many pixels is resized whole, then cropped
# (the reference's order, exact); larger ones take the windowed crop. Why 256: the windowed crop's
# edges are rounded to half a source pixel, i.e. 0.5 * resize / side resized pixels; on a 32 px
# CIFAR image at 160/128 that is 2.5 pixels per edge (the crop's zoom off by up to 4%; on digits at
# 36/32 enough to cost accuracy against the reference), while from 256 px on it is at most one
# pixel of the 512 px resize (0.4% zoom over a 480 crop) and a third of one at 160. Below 256 the
# whole decode is small, so the windowed decode saves little; the BiT-HyperRule's 160/128 sources
# (under 96 x 96) all fall below, Pets / Flowers / ImageNet-sized JPEGs (~500 x 375) stay above.
EXACT_CROP_MAX_SIDE = 256

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


def grey01_to_255(image01: tf.Tensor) -> tf.Tensor:
    """[H, W, 1] floats in [0, 1] (X-ray decode) -> float32 [H, W, 1] in [0, 255]."""
    return tf.cast(image01, tf.float32) * 255.0


def grey_to_rgb(image: tf.Tensor) -> tf.Tensor:
    """[H, W, 1] -> [H, W, 3], the grey plane in each channel (after resizing: 3x less work)."""
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
    """The [out_h, out_w] window at (top, left) of `image` resized to (new_h, new_w), as uint8.

    Equal (to float rounding, then rounded to the nearest level) to
    ``tf.image.resize(image, (new_h, new_w), antialias=True)`` followed by slicing. Enlarging
    uses ResizeBilinear (no antialiasing needed), about twice as fast per pixel as the general
    kernel and faster still on float input; shrinking uses ScaleAndTranslate (triangle kernel,
    antialiased, what tf.image.resize calls) on the window only. Both kernels' weights sum to 1,
    so adding 0.5 before resizing and truncating after rounds to nearest; the results lie in
    [0.5, 255.5], where the cast cannot overflow.
    """
    shape = tf.shape(image)
    in_h, in_w = shape[0], shape[1]

    def enlarge():
        # Converting the (smaller) source once is cheaper than the kernel converting each tap.
        source = tf.cast(image, tf.float32) + 0.5
        full = tf.raw_ops.ResizeBilinear(images=source[None], size=tf.stack([new_h, new_w]),
                                         half_pixel_centers=True)
        return full[0, top:top + out_h, left:left + out_w]

    def shrink():
        scale = tf.stack([tf.cast(new_h, tf.float32) / tf.cast(in_h, tf.float32),
                          tf.cast(new_w, tf.float32) / tf.cast(in_w, tf.float32)])
        translation = -tf.cast(tf.stack([top, left]), tf.float32)
        out = tf.raw_ops.ScaleAndTranslate(
            images=image[None], size=tf.constant([out_h, out_w], tf.int32), scale=scale,
            translation=translation, kernel_type="triangle", antialias=True)
        return out[0] + 0.5

    out = tf.cond((new_h >= in_h) & (new_w >= in_w), enlarge, shrink)
    out.set_shape([out_h, out_w, image.shape[-1]])
    return tf.cast(out, tf.uint8)


def resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Bilinear resize of [H, W, C] to uint8 (height, width), antialiased when shrinking (PIL's)."""
    return _resized_window(image, height, width, 0, 0, height, width)


def _flip_decision(seed: tf.Tensor) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed=seed) < 0.5


def _resize_flipped(window: tf.Tensor, flip: tf.Tensor, crop: int) -> tf.Tensor:
    # Bilinear resizing with half-pixel centres commutes with a mirror flip: flip the window
    # (before enlarging it is the smaller image).
    window = tf.cond(flip, lambda: tf.reverse(window, axis=[1]), lambda: window)
    return resize(window, crop, crop)


def _source_span(start: tf.Tensor, length: int, size: tf.Tensor, new_size: tf.Tensor):
    """Source pixels [first, first + count) nearest to resized pixels [start, start + length)."""
    start, size, new_size = (tf.cast(v, tf.int64) for v in (start, size, new_size))
    # Resized pixel edge e sits at source coordinate e * size / new_size; round it to the nearest
    # pixel edge in integers: floor((2 e size + new_size) / (2 new_size)).
    first = (2 * start * size + new_size) // (2 * new_size)
    last = (2 * (start + length) * size + new_size) // (2 * new_size)
    first = tf.minimum(first, size - 1)
    count = tf.maximum(last - first, 1)   # a source thinner than one pixel of the crop
    return tf.cast(first, tf.int32), tf.cast(count, tf.int32)


def bit_crop_offsets(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor, *, resize: int,
                     crop: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """BiT-HyperRule's random crop of a [height, width] source, in resized pixels: (top, left, flip).

    The offsets torchvision's ``RandomCrop(crop)`` draws on ``Resize(resize)``'s output (int32,
    uniform in [0, size - crop]) and the ``RandomHorizontalFlip()`` (bool). Both train paths take
    these.
    """
    new_h, new_w = shorter_side_size(height, width, resize)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(crop_seed, 2))
    # RandomCrop draws offsets uniformly in [0, size - crop]; maxval is exclusive.
    top = tf.random.stateless_uniform([], top_seed, minval=0, maxval=new_h - crop + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_seed, minval=0, maxval=new_w - crop + 1, dtype=tf.int32)
    return top, left, _flip_decision(flip_seed)


def bit_crop_window(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor, *, resize: int,
                    crop: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The windowed path's crop of a [height, width] source: (window, flip).

    `window` = int32 [y, x, h, w] are the source pixels that the crop at `bit_crop_offsets`
    covers, its edges rounded to the nearest pixel edge. `flip`: bool, the horizontal flip.
    """
    new_h, new_w = shorter_side_size(height, width, resize)
    top, left, flip = bit_crop_offsets(height, width, seed, resize=resize, crop=crop)
    y, h = _source_span(top, crop, height, new_h)
    x, w = _source_span(left, crop, width, new_w)
    return tf.stack([y, x, h, w]), flip


def takes_exact_crop(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """True where a [height, width] source is resized whole then cropped (`EXACT_CROP_MAX_SIDE`)."""
    return tf.minimum(height, width) < EXACT_CROP_MAX_SIDE


def _exact_bit_crop(image: tf.Tensor, seed: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
    """torchvision's ``Resize(resize)``, ``RandomCrop(crop)``, ``RandomHorizontalFlip()``, in order."""
    shape = tf.shape(image)
    new_h, new_w = shorter_side_size(shape[0], shape[1], resize)
    top, left, flip = bit_crop_offsets(shape[0], shape[1], seed, resize=resize, crop=crop)
    out = _resized_window(image, new_h, new_w, top, left, crop, crop)
    return tf.cond(flip, lambda: tf.reverse(out, axis=[1]), lambda: out)


def _windowed_bit_crop(image: tf.Tensor, seed: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
    shape = tf.shape(image)
    window, flip = bit_crop_window(shape[0], shape[1], seed, resize=resize, crop=crop)
    pixels = tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], -1]))
    return _resize_flipped(pixels, flip, crop)


def bit_train(image: tf.Tensor, seed: tf.Tensor, *, resize: int, crop: int) -> tf.Tensor:
    """BiT-HyperRule train op on a decoded image: shorter side -> `resize`, random `crop`, flip.

    Returns uint8 [crop, crop, 3]. Sources with a side under `EXACT_CROP_MAX_SIDE` are resized
    whole then cropped (exact); larger ones have the crop's window of the source resized
    straight to `crop` (see the module docstring).
    """
    shape = tf.shape(image)
    return tf.cond(takes_exact_crop(shape[0], shape[1]),
                   lambda: _exact_bit_crop(image, seed, resize, crop),
                   lambda: _windowed_bit_crop(image, seed, resize, crop))


def _shipped(pixels: tf.Tensor, flip: tf.Tensor, crop: int) -> dict:
    """A windowed crop's source pixels as a train example: shipped to the device if they fit.

    A window no larger than `crop` x `crop` (the crop enlarges it: every source whose shorter side
    is at most `resize`) goes out unresized, packed flat (`input_pipeline.normalize`), for
    `resize_windows` in the train step; a larger one (the crop shrinks it, which needs
    antialiasing) is resized and flipped here and marked ``(crop, crop, 0)``.
    """
    shape = tf.shape(pixels)
    height, width, channels = shape[0], shape[1], pixels.shape[-1]

    def packed():
        flat = tf.reshape(pixels, [-1])
        flat = tf.pad(flat, [[0, crop * crop * channels - tf.size(flat)]])
        return tf.reshape(flat, [crop, crop, channels]), tf.stack([height, width, tf.cast(flip, tf.int32)])

    def resized():
        return _resize_flipped(pixels, flip, crop), tf.constant([crop, crop, 0], tf.int32)

    image, window = tf.cond((height <= crop) & (width <= crop), packed, resized)
    return {"image": image, "window": window}


def decode_bit_window(encoded: tf.Tensor, seed: tf.Tensor, *, resize: int, crop: int) -> dict:
    """'bit' train example from encoded bytes: ``image`` uint8 [crop, crop, 3] and its ``window``.

    The train step's ``model_input(image, norm, window)`` gives ``bit_train(decode_rgb(encoded),
    seed, ...)``: same path, window, flip and pixels (to a level), except where a windowed
    chroma-subsampled JPEG upsamples colour at the window's border. On the windowed path JPEGs
    decode only the crop's window, and a window no larger than the crop is resized on the device
    (`_shipped`); small sources (the exact path) are finished here.
    """
    def finished(image):
        return {"image": image, "window": tf.constant([crop, crop, 0], tf.int32)}

    def decoded():
        image = decode_rgb(encoded)
        shape = tf.shape(image)

        def windowed():
            window, flip = bit_crop_window(shape[0], shape[1], seed, resize=resize, crop=crop)
            pixels = tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], -1]))
            pixels.set_shape([None, None, 3])
            return _shipped(pixels, flip, crop)

        return tf.cond(takes_exact_crop(shape[0], shape[1]),
                       lambda: finished(_exact_bit_crop(image, seed, resize, crop)), windowed)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)

        def windowed():
            window, flip = bit_crop_window(shape[0], shape[1], seed, resize=resize, crop=crop)
            pixels = tf.io.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=JPEG_DCT_METHOD)
            pixels.set_shape([None, None, 3])
            return _shipped(pixels, flip, crop)

        return tf.cond(takes_exact_crop(shape[0], shape[1]), decoded, windowed)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, decoded)


def bit_eval(image: tf.Tensor, *, crop: int) -> tf.Tensor:
    """BiT-HyperRule eval op: resize straight to uint8 `crop` x `crop` (aspect ratio not kept)."""
    return resize(image, crop, crop)


def inception_window(image_shape: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Random-resized-crop window (begin [y, x, 0], size [h, w, -1]) for an image shape [H, W, C]."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=INCEPTION_AREA_RANGE[0], aspect_ratio_range=INCEPTION_ASPECT_RANGE,
        area_range=INCEPTION_AREA_RANGE, max_attempts=INCEPTION_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    return begin, size


def inception_train(image: tf.Tensor, seed: tf.Tensor, *, crop: int) -> tf.Tensor:
    """Random-resized crop of a decoded image to uint8 `crop` x `crop`, then a random flip."""
    window_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, size = inception_window(tf.shape(image), window_seed)
    return _resize_flipped(tf.slice(image, begin, size), _flip_decision(flip_seed), crop)


def decode_and_inception_crop(encoded: tf.Tensor, seed: tf.Tensor, *, crop: int) -> tf.Tensor:
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
    return _resize_flipped(window, _flip_decision(flip_seed), crop)


def inception_eval(image: tf.Tensor, *, resize: int, crop: int) -> tf.Tensor:
    """Shorter side -> `resize` (aspect kept), centre crop uint8 `crop` x `crop` (torchvision's)."""
    shape = tf.shape(image)
    new_h, new_w = shorter_side_size(shape[0], shape[1], resize)
    # torchvision CenterCrop: int(round((size - crop) / 2)); Python and tf.round both round half to even.
    top = tf.cast(tf.round(tf.cast(new_h - crop, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - crop, tf.float32) / 2.0), tf.int32)
    return _resized_window(image, new_h, new_w, top, left, crop, crop)
