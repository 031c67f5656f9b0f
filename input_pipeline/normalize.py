"""The model's input from pipeline images: the normalisation, and the train crops' resize, that run on the device.

numpy and jax only (no TensorFlow), so that the train step imports it where TensorFlow is not
installed (the GPU benchmark's machine).

'bit' train batches carry a ``window`` (int32 [B, 3]: height, width, flip) beside ``image``:
resizing the crop's window to the crop doubles the host's time per image (benchmarks/RESULTS.md),
so where the window is no larger than the crop the host ships it unresized and `resize_windows`
enlarges it inside the jitted step. Such an ``image`` row holds the window's ``h * w * C`` values
row-major (row stride ``w``, not the crop's side: padding a flat buffer costs the host nothing,
padding rows does) followed by zeros. Rows the host resized itself have window ``(crop, crop, 0)``,
which `resize_windows` maps to themselves exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def model_input(images, norm: str, window=None):
    """Pipeline images -> the model's float32 input; works on numpy and jax arrays alike.

    uint8 images (pp.kind 'bit' / 'inception') are normalised: 'bit' -> [-1, 1] (x / 127.5 - 1),
    'imagenet' -> (x / 255 - mean) / std. Float images (pp.kind 'xray', already in [-1, 1]) are
    returned unchanged. With a batch's ``window`` (train batches of 'bit' carry one) the shipped
    windows are first resized to the crop (`resize_windows`, jax). Call it inside the jitted step
    so the work runs on the device.
    """
    check_norm(norm)
    dtype = np.dtype(images.dtype)
    if dtype.name in _FLOAT_DTYPES:
        return images
    if dtype != np.uint8:
        raise ValueError(f"model_input takes uint8 or float images, got dtype {dtype.name}")
    if window is not None:
        images = resize_windows(images, window)
    scale, offset = _NORM_AFFINE[norm]
    return images.astype(np.float32) * scale + offset


def _taps(size: int, length: jax.Array):
    """Bilinear taps (lower, upper, weight of upper) of `size` outputs from `length` inputs.

    TensorFlow's ResizeBilinear with half-pixel centres (the host's enlarging kernel): output pixel
    o samples input coordinate (o + 0.5) * length / size - 0.5, clamped to the edge pixels.
    """
    scale = length.astype(jnp.float32) / size
    coord = (jnp.arange(size, dtype=jnp.float32) + 0.5) * scale - 0.5
    floor = jnp.floor(coord)
    lower = jnp.clip(floor.astype(jnp.int32), 0, length - 1)
    upper = jnp.clip(floor.astype(jnp.int32) + 1, 0, length - 1)
    return lower, upper, coord - floor


def _resize_window(row: jax.Array, window: jax.Array) -> jax.Array:
    """One shipped row [S, S, C] (see the module docstring) -> float32 [S, S, C] levels, rounded."""
    size, channels = row.shape[0], row.shape[-1]
    height, width, flip = window[0], window[1], window[2]
    flat = row.reshape(-1)
    y0, y1, wy = _taps(size, height)
    x0, x1, wx = _taps(size, width)
    # The host flips the window, then resizes: the same taps, read from the mirrored columns (so
    # the levels match the host's bit for bit, where flipping the output would round ties apart).
    x0, x1 = (jnp.where(flip != 0, width - 1 - x, x) for x in (x0, x1))

    def rows(ys):
        # Source row y starts at y * width * C. A contiguous slice of S * C values (running past
        # `width` into the next row, values never read) gathers far faster than pixel indices,
        # and stays inside the buffer: (height - 1) * width + S <= S * S.
        sliced = jax.vmap(lambda y: jax.lax.dynamic_slice(flat, (y * width * channels,), (size * channels,)))(ys)
        return sliced.reshape(size, size, channels)

    def at(source_rows, xs):
        # + 0.5, then floor: rounds to the nearest level, with the host's operations in its order
        # (its kernel adds 0.5 to the source, interpolates columns then rows, truncates), so both
        # give the same levels, ties included.
        return jnp.take(source_rows, xs, axis=1).astype(jnp.float32) + 0.5

    upper_rows, lower_rows = rows(y0), rows(y1)
    top = at(upper_rows, x0) + (at(upper_rows, x1) - at(upper_rows, x0)) * wx[None, :, None]
    bottom = at(lower_rows, x0) + (at(lower_rows, x1) - at(lower_rows, x0)) * wx[None, :, None]
    return jnp.floor(top + (bottom - top) * wy[:, None, None])


def resize_windows(images, window) -> jax.Array:
    """Shipped 'bit' train rows uint8 [B, S, S, C] + ``window`` int32 [B, 3] -> float32 [B, S, S, C].

    Each row's ``height x width`` window is mirrored where ``flip`` is set and enlarged bilinearly
    to S x S: the host's op (`preprocess.resize`), the same levels on the CPU (an accelerator's
    fused multiply-adds may move a rounding tie by one level). Enlarging needs no
    antialiasing, so this equals the reference's PIL resize to a level; windows larger than the crop
    never come here (the host shrinks them).
    """
    images, window = jnp.asarray(images), jnp.asarray(window, jnp.int32)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or window.shape != (images.shape[0], 3):
        raise ValueError(f"resize_windows takes square rows [B, S, S, C] and window [B, 3], "
                         f"got {images.shape} and {window.shape}")
    return jax.vmap(_resize_window)(images, window)
