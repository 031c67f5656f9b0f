"""Image reading, cropping, area resizing and PNG encoding for the X-ray builders.

Only numpy and Pillow are used here; both release the GIL while decoding,
resizing and encoding, so the builders run `process_image` in threads.

Pixel semantics follow the reference code (SLAMPAI/large-scale-pretraining-transfer):
- CheXpert, MIMIC, NIH read the file with OpenCV as 3-channel BGR and take channel 0;
  for a grayscale file that is the grey plane, for an RGB file it is the blue channel.
- PadChest reads with scikit-image (uint16 for 16-bit PNGs) and takes channel 0 (red)
  of a multi-channel file; values are kept raw, never rescaled.
- COVIDx and Tuberculosis convert to RGB with PIL; here an RGB file is reduced to
  one plane with PIL's luminance conversion (ITU-R 601-2), a grey file is kept as is.
- The X-ray transform is a centre crop to a square of side min(H, W) followed by
  cv2.resize(..., INTER_AREA); `area_resize` reproduces INTER_AREA in float64.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional

import numpy as np
from PIL import Image

# How a colour file is reduced to one plane (see the module docstring).
CHANNEL_RULES = ("bgr0", "rgb0", "luminance")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class ImageTask:
    """One image to prepare.

    Attributes:
      path: absolute path of the source file.
      bits: 8 or 16, the stored sample depth (uint8 or uint16 feature).
      channel_rule: one of CHANNEL_RULES.
      size: target side (square crop) or shorter side (aspect kept); None = full size.
      square_crop: centre-crop to a square before resizing.
    """

    path: str
    bits: int
    channel_rule: str
    size: Optional[int]
    square_crop: bool


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """Outcome of `process_image`: PNG bytes, or an error kind and message."""

    png: Optional[bytes] = None
    shape: Optional[tuple] = None
    error_kind: Optional[str] = None  # "missing file" or "unreadable image"
    message: str = ""
    low_bit_depth: bool = False  # an 8-bit file in a 16-bit dataset


def _png_header(data: bytes) -> Optional[tuple]:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None if not a PNG."""
    if len(data) < 26 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _to_plane(image: Image.Image, bits: int, channel_rule: str) -> tuple:
    """Decodes a PIL image to a 2-D array as the reference reads it.

    Returns (array, low_bit_depth) where array is uint8 for bits=8 and uint16 for
    bits=16 and low_bit_depth says an 8-bit file was found in a 16-bit set.
    """
    mode = image.mode
    if channel_rule not in CHANNEL_RULES:
        raise ValueError(f"channel_rule must be one of {CHANNEL_RULES}, got {channel_rule!r}")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image)
        if bits == 16:
            return np.clip(arr, 0, 65535).astype(np.uint16), False
        # OpenCV's IMREAD_COLOR keeps the high byte of a 16-bit file.
        return (np.clip(arr, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8), False
    if mode == "F":
        raise ValueError("floating-point images are not supported")
    if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB" if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV") else "L")
        mode = image.mode
    if mode in ("RGB", "RGBA", "RGBX"):
        if channel_rule == "luminance":
            arr = np.asarray(image.convert("L"))
        else:
            rgb = np.asarray(image)
            arr = rgb[..., 2] if channel_rule == "bgr0" else rgb[..., 0]
    elif mode in ("L", "LA"):
        arr = np.asarray(image)
        if arr.ndim == 3:
            arr = arr[..., 0]
    else:
        raise ValueError(f"unsupported PIL image mode {mode!r}")
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if bits == 16:
        # Raw values, as skimage + /65535 in the reference: an 8-bit PadChest file stays 0..255.
        return arr.astype(np.uint16), True
    return arr, False


def read_plane(path: str, bits: int, channel_rule: str) -> tuple:
    """Reads an image file into a 2-D uint8/uint16 array; see `_to_plane`."""
    with Image.open(path) as image:
        image.load()
        return _to_plane(image, bits, channel_rule)


def center_crop_square(arr: np.ndarray) -> np.ndarray:
    """Crops the centre square of side min(H, W), as torchxrayvision's XRayCenterCrop."""
    h, w = arr.shape[:2]
    side = min(h, w)
    top = h // 2 - side // 2
    left = w // 2 - side // 2
    return arr[top:top + side, left:left + side]


def _area_down_axis(arr: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """Area-average downscaling along one axis (cv2 INTER_AREA when shrinking).

    Each output sample is the mean of the source over [k*s, (k+1)*s), s = in/out,
    counting partially covered source samples by their covered fraction. Computed
    from the running integral of the piecewise-constant source.
    """
    arr = np.moveaxis(arr, axis, 0)
    in_len = arr.shape[0]
    scale = in_len / out_len
    integral = np.concatenate([np.zeros((1,) + arr.shape[1:]), np.cumsum(arr, axis=0)], axis=0)
    edges = np.arange(out_len + 1, dtype=np.float64) * scale
    edges[-1] = in_len  # guard against rounding past the end
    whole = np.floor(edges).astype(np.int64)
    frac = edges - whole
    nxt = np.minimum(whole, in_len - 1)
    extra = frac.reshape((-1,) + (1,) * (arr.ndim - 1)) * arr[nxt]
    at_edge = integral[whole] + extra
    out = (at_edge[1:] - at_edge[:-1]) / scale
    return np.moveaxis(out, 0, axis)


def _area_up_axis(arr: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """Enlarging along one axis with cv2 INTER_AREA's coefficients (a bilinear variant)."""
    arr = np.moveaxis(arr, axis, 0)
    in_len = arr.shape[0]
    scale = in_len / out_len
    inv_scale = out_len / in_len
    dst = np.arange(out_len, dtype=np.float64)
    src = np.floor(dst * scale).astype(np.int64)
    weight = (dst + 1) - (src + 1) * inv_scale
    weight = np.where(weight <= 0, 0.0, weight - np.floor(weight))
    last = src >= in_len - 1
    src = np.minimum(src, in_len - 1)
    weight = np.where(last, 0.0, weight)
    nxt = np.minimum(src + 1, in_len - 1)
    weight = weight.reshape((-1,) + (1,) * (arr.ndim - 1))
    out = (1.0 - weight) * arr[src] + weight * arr[nxt]
    return np.moveaxis(out, 0, axis)


def area_resize(arr: np.ndarray, out_hw: tuple) -> np.ndarray:
    """Resizes a 2-D array to out_hw like cv2.resize(INTER_AREA), in float64.

    Shrinking averages over each output pixel's footprint (exact area weights);
    enlarging uses OpenCV's INTER_AREA interpolation coefficients. Returns float64.
    """
    out = np.asarray(arr, dtype=np.float64)
    for axis, out_len in enumerate(out_hw):
        in_len = out.shape[axis]
        if out_len == in_len:
            continue
        if out_len < in_len:
            out = _area_down_axis(out, out_len, axis)
        else:
            out = _area_up_axis(out, out_len, axis)
    return out


def shorter_side_shape(h: int, w: int, size: int) -> tuple:
    """Output (H, W) with the shorter side = size, as torchvision's Resize(size)."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def transform_plane(arr: np.ndarray, size: Optional[int], square_crop: bool) -> np.ndarray:
    """Centre-crops (optionally) and area-resizes to `size`, rounding to arr's dtype."""
    if size is None:
        return arr
    if square_crop:
        arr = center_crop_square(arr)
        out_hw = (size, size)
    else:
        out_hw = shorter_side_shape(arr.shape[0], arr.shape[1], size)
    if tuple(arr.shape[:2]) == tuple(out_hw):
        return arr
    info = np.iinfo(arr.dtype)
    resized = area_resize(arr, out_hw)
    return np.clip(np.rint(resized), info.min, info.max).astype(arr.dtype)


def encode_png(arr: np.ndarray) -> bytes:
    """Encodes a 2-D uint8 or uint16 array as a single-channel PNG."""
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim != 2:
        raise ValueError(f"expected a 2-D uint8/uint16 array, got {arr.dtype} {arr.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def process_image(task: ImageTask) -> ImageResult:
    """Reads, checks and converts one image; never raises for a bad file.

    With size=None (the `full` config) a single-channel PNG whose bit depth equals
    the stored depth is copied byte for byte (after a full decode to check it);
    anything else (JPEG included) is re-encoded losslessly as PNG, so the stored
    pixels are what OpenCV/PIL decode (TensorFlow's default JPEG decoder differs).
    """
    if not os.path.isfile(task.path):
        return ImageResult(error_kind="missing file", message=f"no such file: {task.path}")
    try:
        with open(task.path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            plane, low_bits = _to_plane(image, task.bits, task.channel_rule)
    except Exception as e:  # noqa: BLE001 -- any decoder failure means "unreadable"
        return ImageResult(error_kind="unreadable image", message=f"{type(e).__name__}: {e}")
    if plane.ndim != 2 or plane.size == 0:
        return ImageResult(error_kind="unreadable image",
                           message=f"unexpected image shape {plane.shape}")
    if task.size is None and _png_header(data) == (task.bits, 0):
        return ImageResult(png=data, shape=plane.shape, low_bit_depth=low_bits)
    out = transform_plane(plane, task.size, task.square_crop)
    return ImageResult(png=encode_png(out), shape=out.shape, low_bit_depth=low_bits)
