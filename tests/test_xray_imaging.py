"""Image reading / crop / area resize of the X-ray builders against OpenCV and PIL."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from input_pipeline import imaging
from input_pipeline.datasets import synthetic


def _cv2_reference(img_u8: np.ndarray, size: int) -> np.ndarray:
    """The reference's transform: XRayCenterCrop then cv2 INTER_AREA on img/255."""
    h, w = img_u8.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    crop = img_u8[top:top + side, left:left + side].astype(np.float64) / 255.0
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA) * 255.0


@pytest.mark.parametrize("shape,size", [
    ((300, 260), 224),   # non-integer shrink, non-square source
    ((448, 500), 224),   # integer factor (cv2's fast path)
    ((1000, 1000), 512),
    ((100, 120), 224),   # enlarging (INTER_AREA's bilinear variant)
    ((37, 41), 5),
])
def test_area_resize_matches_cv2_inter_area(shape, size):
    rng = np.random.default_rng(sum(shape) + size)
    img = (rng.random(shape) * 255).astype(np.uint8)
    ours = imaging.area_resize(imaging.center_crop_square(img), (size, size))
    np.testing.assert_allclose(ours, _cv2_reference(img, size), atol=1e-3)
    stored = imaging.transform_plane(img, size, square_crop=True)
    assert stored.dtype == np.uint8 and stored.shape == (size, size)
    # Within one grey level of OpenCV's own uint8 result.
    cv2_u8 = cv2.resize(imaging.center_crop_square(img), (size, size), interpolation=cv2.INTER_AREA)
    assert np.abs(stored.astype(int) - cv2_u8.astype(int)).max() <= 1


def test_area_resize_16bit_keeps_range():
    rng = np.random.default_rng(1)
    img = (rng.random((90, 70)) * 65535).astype(np.uint16)
    stored = imaging.transform_plane(img, 32, square_crop=True)
    assert stored.dtype == np.uint16 and stored.max() > 255
    ref = cv2.resize(imaging.center_crop_square(img).astype(np.float64), (32, 32),
                     interpolation=cv2.INTER_AREA)
    assert np.abs(stored.astype(np.float64) - ref).max() <= 0.5 + 1e-3


def test_shorter_side_resize_keeps_aspect_like_torchvision():
    assert imaging.shorter_side_shape(60, 72, 224) == (224, 268)
    assert imaging.shorter_side_shape(4892, 4020, 512) == (int(512 * 4892 / 4020), 512)
    img = np.zeros((60, 72), np.uint8)
    assert imaging.transform_plane(img, 224, square_crop=False).shape == (224, 268)


def test_center_crop_matches_xray_center_crop():
    img = np.arange(7 * 10).reshape(7, 10)
    # startx = 10 // 2 - 7 // 2 = 2
    np.testing.assert_array_equal(imaging.center_crop_square(img), img[:, 2:9])
    np.testing.assert_array_equal(imaging.center_crop_square(img.T), img.T[2:9, :])


def _write(tmp_path, name, arr, **kw):
    path = tmp_path / name
    Image.fromarray(arr).save(path, **kw)
    return str(path)


def test_channel_rules_match_the_references(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    path = _write(tmp_path, "rgb.png", rgb)
    bgr0, _ = imaging.read_plane(path, 8, "bgr0")
    np.testing.assert_array_equal(bgr0, cv2.imread(path)[..., 0])  # OpenCV's channel 0
    rgb0, _ = imaging.read_plane(path, 16, "rgb0")
    np.testing.assert_array_equal(rgb0, rgb[..., 0].astype(np.uint16))  # skimage's channel 0
    lum, _ = imaging.read_plane(path, 8, "luminance")
    np.testing.assert_array_equal(lum, np.asarray(Image.open(path).convert("L")))


def test_full_config_copies_gray_png_and_reencodes_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    gray = (rng.random((40, 50)) * 255).astype(np.uint8)
    png = _write(tmp_path, "g.png", gray)
    out = imaging.process_image(imaging.ImageTask(png, 8, "bgr0", None, True))
    assert out.png == open(png, "rb").read()  # bytes copied
    jpg = _write(tmp_path, "g.jpg", gray, quality=90)
    out = imaging.process_image(imaging.ImageTask(jpg, 8, "bgr0", None, True))
    assert out.png.startswith(b"\x89PNG")
    decoded = np.asarray(Image.open(io.BytesIO(out.png)))
    np.testing.assert_array_equal(decoded, cv2.imread(jpg)[..., 0])  # what the reference reads
    # An 8-bit PNG in a 16-bit set is re-encoded with its raw values, not copied.
    out16 = imaging.process_image(imaging.ImageTask(png, 16, "rgb0", None, True))
    decoded16 = np.asarray(Image.open(io.BytesIO(out16.png)))
    assert out16.low_bit_depth and decoded16.dtype == np.uint16
    np.testing.assert_array_equal(decoded16, gray.astype(np.uint16))


def test_process_image_reports_missing_and_corrupt(tmp_path):
    missing = imaging.process_image(imaging.ImageTask(str(tmp_path / "nope.png"), 8, "bgr0", 32, True))
    assert missing.error_kind == "missing file" and "nope.png" in missing.message
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    corrupt = imaging.process_image(imaging.ImageTask(str(bad), 8, "bgr0", 32, True))
    assert corrupt.error_kind == "unreadable image" and corrupt.png is None


def test_synthetic_signal_marks_each_positive_label_at_its_own_place():
    shape, n = (64, 80), 13
    base = synthetic.synth_xray(np.random.default_rng(0), shape, [], n, signal=1.0)
    peaks = set()
    for k in (0, 5, 12):
        img = synthetic.synth_xray(np.random.default_rng(0), shape, [k], n, signal=1.0)
        diff = img - base
        assert diff.max() > 0.2
        row, col = np.unravel_index(np.argmax(diff), shape)
        peaks.add((row, col))
        # The blob lies inside the central square (columns 8..71) that the 224/512 configs keep.
        assert 8 <= col < 72
    assert len(peaks) == 3
    quiet = synthetic.synth_xray(np.random.default_rng(0), shape, [3], n, signal=0.0)
    np.testing.assert_array_equal(quiet, base)


def test_shapes_style_draws_each_finding_as_its_own_figure():
    """synth_shapes adds only the figure to the same background; bright figures add, dark ones
    subtract, and tuberculosis's ring is hollow where its look-alike (the target) is not."""
    shape = (72, 64)
    base = synthetic.synth_shapes(np.random.default_rng(0), shape, [], signal=0.5)
    centre_share = {}
    for k, (_, sign) in enumerate(synthetic.SHAPES):
        diff = synthetic.synth_shapes(np.random.default_rng(0), shape, [k], signal=0.5) - base
        assert np.abs(diff).max() > 0.15, k
        assert np.sign(diff.flat[np.argmax(np.abs(diff))]) == sign, k
        weight = np.abs(diff)
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        cy, cx = (int(round((g * weight).sum() / weight.sum())) for g in (yy, xx))
        centre_share[k] = weight[cy, cx] / weight.max()
    ring, target = synthetic.TB_SIGN, 4
    assert synthetic.SHAPES[ring][0].__name__ == "_ring" and synthetic.SHAPES[target][0].__name__ == "_target"
    assert centre_share[ring] < 0.2 < 0.5 < centre_share[target]


def test_tuberculosis_shapes_style_labels_and_label_noise(tmp_path):
    clean = synthetic.write_tuberculosis(tmp_path / "a", n_shenzhen=30, n_montgomery=10,
                                         image_size=(32, 32), style="shapes", distractors=0.2)
    assert all(w.row["label"] == w.row["painted"] for w in clean)
    assert all(w.image_path.endswith(f"_{w.row['label']}.png") for w in clean)
    noisy = synthetic.write_tuberculosis(tmp_path / "b", n_shenzhen=200, n_montgomery=0,
                                         image_size=(16, 16), style="shapes", label_noise=0.3)
    flipped = np.mean([w.row["label"] != w.row["painted"] for w in noisy])
    assert 0.2 < flipped < 0.4  # 0.3 +- 3 binomial standard deviations
    with pytest.raises(ValueError, match="unknown style 'dots'; valid: grid, shapes"):
        synthetic.write_tuberculosis(tmp_path / "c", style="dots")
