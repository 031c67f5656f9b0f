"""input_pipeline.preprocess against torchvision's transforms (the reference's) on small images."""

import io

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats
import tensorflow as tf  # noqa: E402
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image  # noqa: E402

from input_pipeline import normalize, preprocess

# PIL rounds to uint8 after each of its two separable passes and uses fixed-point weights; we
# round once. One level apart at most.
_PIL_TOL = 1


def _image(h, w, seed=0, period=(2, 6)):
    """An RGB test image (sinusoids of random period in `period` pixels / 2 pi), uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [np.sin(x / rng.uniform(*period) + c) * np.cos(y / rng.uniform(*period)) for c in range(3)]
    img = (np.stack(chans, -1) * 100 + 128).clip(0, 255)
    return img.astype(np.uint8)


def _seed(i):
    return tf.constant([i, 7], tf.int64)


def _diff(a, b):
    return np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64)).max()


def _bit_from_bytes(encoded, seed, *, resize, crop):
    """What the train step's model sees of `decode_bit_window` (before normalising): uint8 levels."""
    example = preprocess.decode_bit_window(encoded, seed, resize=resize, crop=crop)
    image, window = example["image"].numpy(), example["window"].numpy()
    assert image.shape == (crop, crop, 3) and image.dtype == np.uint8 and window.dtype == np.int32
    out = np.asarray(normalize.resize_windows(image[None], window[None]))[0]
    assert out.dtype == np.float32 and (out == np.round(out)).all() and out.min() >= 0 and out.max() <= 255
    return out.astype(np.uint8)


@pytest.mark.parametrize("h,w", [(30, 45), (45, 30), (33, 33), (17, 100), (101, 7)])
def test_shorter_side_size_matches_torchvision_resize(h, w):
    for size in (16, 40, 160):
        expected_w, expected_h = T.Resize(size)(Image.new("RGB", (w, h))).size
        got_h, got_w = preprocess.shorter_side_size(tf.constant(h), tf.constant(w), size)
        assert (int(got_h), int(got_w)) == (expected_h, expected_w)


# ----------------------------------------------------------------------------- 'bit' train crop


@pytest.fixture
def windowed_crop(monkeypatch):
    """Routes every source to the windowed 'bit' crop (its tests use small, fast images)."""
    monkeypatch.setattr(preprocess, "EXACT_CROP_MAX_SIDE", 0)


_CROP_CASES = [(30, 45, 40, 32), (45, 30, 40, 32), (120, 90, 40, 40), (17, 100, 20, 16), (375, 500, 512, 480)]


@pytest.mark.parametrize("h,w,resize,crop", _CROP_CASES)
def test_bit_crop_window_covers_a_random_crop_of_the_resized_image(h, w, resize, crop):
    # torchvision: Resize(resize) -> (new_w, new_h); RandomCrop offsets uniform in [0, new - crop].
    new_w, new_h = T.Resize(resize)(Image.new("RGB", (w, h))).size
    scale_y, scale_x = h / new_h, w / new_w
    draw = tf.function(lambda seed: preprocess.bit_crop_window(h, w, seed, resize=resize, crop=crop))
    offsets, flips = [], 0
    for i in range(300):
        window, flip = draw(_seed(i))
        y, x, wh, ww = window.numpy().tolist()
        assert 0 <= y and y + wh <= h and 0 <= x and x + ww <= w
        # The offset t in resized pixels whose crop this window covers: its edges lie within half
        # a source pixel of the crop's exact edges t * scale and (t + crop) * scale.
        top = round(y / scale_y)
        left = round(x / scale_x)
        assert 0 <= top <= new_h - crop and 0 <= left <= new_w - crop
        for start, size, t, s in ((y, wh, top, scale_y), (x, ww, left, scale_x)):
            candidates = [c for c in (t - 1, t, t + 1)
                          if abs(start - c * s) <= 0.5 and abs(start + size - (c + crop) * s) <= 0.5]
            assert candidates, (i, start, size, t, s)
        offsets.append((y / scale_y, x / scale_x))
        flips += bool(flip)
    offsets = np.asarray(offsets)
    # Uniform offsets: mean (new - crop) / 2 and the full range, up to the half-pixel rounding.
    for axis, span in enumerate((new_h - crop, new_w - crop)):
        assert abs(offsets[:, axis].mean() - span / 2) <= 0.1 * span + 1
        assert offsets[:, axis].min() <= 0.05 * span + 1 and offsets[:, axis].max() >= 0.95 * span - 1
    assert 110 <= flips <= 190


@pytest.mark.usefixtures("windowed_crop")
@pytest.mark.parametrize("h,w,resize,crop", _CROP_CASES[:4])
def test_bit_train_is_torchvision_resized_crop_of_its_window(h, w, resize, crop):
    img = _image(h, w)
    pil = Image.fromarray(img)
    for i in range(6):
        window, flip = preprocess.bit_crop_window(h, w, _seed(i), resize=resize, crop=crop)
        y, x, wh, ww = window.numpy().tolist()
        out = preprocess.bit_train(tf.constant(img), _seed(i), resize=resize, crop=crop).numpy()
        assert out.shape == (crop, crop, 3) and out.dtype == np.uint8
        expected = np.asarray(TF.resized_crop(pil, y, x, wh, ww, [crop, crop], antialias=True))
        assert _diff(out, expected[:, ::-1] if flip else expected) <= _PIL_TOL


@pytest.mark.usefixtures("windowed_crop")
@pytest.mark.parametrize("h,w,resize,crop", _CROP_CASES[:4])
def test_bit_train_is_within_a_pixel_of_torchvision_resize_then_random_crop(h, w, resize, crop):
    img = _image(h, w, period=(15, 30))   # smooth: a sub-pixel shift changes levels by little
    resized = np.asarray(T.Resize(resize)(Image.fromarray(img)))
    seen = set()
    for i in range(8):
        out = preprocess.bit_train(tf.constant(img), _seed(i), resize=resize, crop=crop).numpy()
        np.testing.assert_array_equal(
            out, preprocess.bit_train(tf.constant(img), _seed(i), resize=resize, crop=crop).numpy())
        # The crop offset and flip that explain the output (exhaustive over valid offsets).
        best = min((_diff(resized[top:top + crop, left:left + crop][:, ::-1 if flip else 1], out), top, left, flip)
                   for top in range(resized.shape[0] - crop + 1) for left in range(resized.shape[1] - crop + 1)
                   for flip in (False, True))
        assert best[0] <= 4, best
        seen.add(best[1:])
    assert len(seen) >= 4      # crops vary with the seed


def _jpeg(img, subsampling):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95, subsampling=subsampling)
    return buf.getvalue()


@pytest.mark.usefixtures("windowed_crop")
def test_bit_crop_jpeg_fast_path_equals_generic_path():
    # Without chroma subsampling, decoding only the window is exact.
    encoded = tf.constant(_jpeg(_image(48, 64), subsampling=0))
    for i in range(5):
        fast = _bit_from_bytes(encoded, _seed(i), resize=56, crop=40)
        slow = preprocess.bit_train(preprocess.decode_rgb(encoded), _seed(i), resize=56, crop=40).numpy()
        np.testing.assert_array_equal(fast, slow)   # the device resize is the host's, bit for bit
    # With 4:2:0 chroma, only the chroma upsampling at the window's border differs.
    encoded = tf.constant(_jpeg(_image(48, 64), subsampling=2))
    for i in range(5):
        fast = _bit_from_bytes(encoded, _seed(i), resize=56, crop=40)
        slow = preprocess.bit_train(preprocess.decode_rgb(encoded), _seed(i), resize=56, crop=40).numpy()
        assert np.abs(fast.astype(np.int64) - slow).mean() < 2.5


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_bit_crop_falls_back_to_decoding_other_formats():
    encoded = tf.constant(_png(_image(30, 45)))
    for i in range(3):
        np.testing.assert_array_equal(
            _bit_from_bytes(encoded, _seed(i), resize=40, crop=32),
            preprocess.bit_train(tf.constant(_image(30, 45)), _seed(i), resize=40, crop=32).numpy())


# ----------------------------------------------------------------------------- 'bit' train crop, resize on the device


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_shipped_window_is_the_crop_window_and_resizes_to_torchvision_resized_crop(fmt):
    # A Pets-like case at a small scale: the shorter side (260) under `resize`, so the crop's
    # window is smaller than the crop and goes to the device unresized.
    h, w, resize, crop = 260, 340, 280, 256
    img = _image(h, w)
    encoded = tf.constant(_png(img) if fmt == "png" else _jpeg(img, subsampling=0))
    pil = Image.open(io.BytesIO(encoded.numpy())).convert("RGB")   # PIL's pixels = ours (accurate DCT)
    flips = set()
    for i in range(4):
        example = preprocess.decode_bit_window(encoded, _seed(i), resize=resize, crop=crop)
        window, flip = preprocess.bit_crop_window(h, w, _seed(i), resize=resize, crop=crop)
        y, x, wh, ww = window.numpy().tolist()
        np.testing.assert_array_equal(example["window"].numpy(), [wh, ww, int(flip)])
        assert wh < crop and ww < crop
        # The row holds the window's pixels row-major, then zeros.
        flat = example["image"].numpy().reshape(-1)
        np.testing.assert_array_equal(flat[:wh * ww * 3], np.asarray(pil)[y:y + wh, x:x + ww].reshape(-1))
        assert not flat[wh * ww * 3:].any()
        expected = np.asarray(TF.resized_crop(pil, y, x, wh, ww, [crop, crop], antialias=True))
        out = _bit_from_bytes(encoded, _seed(i), resize=resize, crop=crop)
        assert _diff(out, expected[:, ::-1] if flip else expected) <= _PIL_TOL
        flips.add(bool(flip))
    assert flips == {False, True}


@pytest.mark.usefixtures("windowed_crop")
def test_window_larger_than_the_crop_is_resized_on_the_host():
    # The crop shrinks this source (antialiasing needs the host's kernel): the host finishes it.
    encoded = tf.constant(_png(_image(120, 90)))
    for i in range(3):
        example = preprocess.decode_bit_window(encoded, _seed(i), resize=40, crop=32)
        np.testing.assert_array_equal(example["window"].numpy(), [32, 32, 0])
        expected = preprocess.bit_train(tf.constant(_image(120, 90)), _seed(i), resize=40, crop=32).numpy()
        np.testing.assert_array_equal(example["image"].numpy(), expected)
        np.testing.assert_array_equal(_bit_from_bytes(encoded, _seed(i), resize=40, crop=32), expected)


def test_device_augmentation_has_the_reference_distribution():
    # The mean and spread over many draws of what the model sees (decode_bit_window + the device
    # resize), against torchvision's Resize, RandomCrop, RandomHorizontalFlip (the reference's
    # train transform) with torch's own random draws. An asymmetric image: a missing flip, a
    # centred crop or a wrong scale each move the mean or spread far beyond the tolerance.
    h, w, resize, crop, n = 60, 84, 64, 48, 300
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / w, 255 * (y / h) ** 2, 128 + 100 * np.sin(x / 5.0) * (y > h / 2)], -1)
    img = img.clip(0, 255).astype(np.uint8)
    encoded = tf.constant(_png(img))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocess, "EXACT_CROP_MAX_SIDE", 0)   # the windowed path on a small image
        draw = tf.function(lambda seed: preprocess.decode_bit_window(encoded, seed, resize=resize, crop=crop))
        examples = [draw(_seed(i)) for i in range(n)]
    assert all(int(e["window"][0]) < crop for e in examples)   # every one shipped to the device
    ours = np.asarray(normalize.resize_windows(np.stack([e["image"].numpy() for e in examples]),
                                               np.stack([e["window"].numpy() for e in examples])))
    torch.manual_seed(0)
    reference = T.Compose([T.Resize(resize), T.RandomCrop(crop), T.RandomHorizontalFlip()])
    theirs = np.stack([np.asarray(reference(Image.fromarray(img))) for _ in range(n)]).astype(np.float32)
    # Per-pixel means and spreads: the crop offsets' and the flip's law. Two torchvision runs with
    # other seeds differ by 2.7-3.9 (means) and 1.0-1.5 (spreads); without the flip 12.8 / 6.0, a
    # centre crop 13.5 / 20.5, squashing to (resize, resize) 5.4 / 4.7, resizing to resize + 4
    # 2.8 / 2.9.
    assert np.abs(ours.mean(0) - theirs.mean(0)).mean() < 6.0
    assert np.abs(ours.std(0) - theirs.std(0)).mean() < 2.5
    # Scale: the crops' horizontal gradient (channel 0 is 255 x / w) has the reference's slope
    # (other seeds: within 0.1%; resize + 4: 6% off, squashed: 39%).
    def slope(a):
        return np.abs(np.diff(a[..., 0], axis=2)).mean()
    assert abs(slope(ours) - slope(theirs)) < 0.02 * slope(theirs)


def test_resize_windows_is_bilinear_enlarging_with_half_pixel_centres():
    rng = np.random.default_rng(5)
    size = 9
    rows = np.zeros((3, size, size, 3), np.uint8)
    windows = [(4, 6, 0), (7, 3, 1), (size, size, 0)]
    pixels = [rng.integers(0, 256, (hh, ww, 3)).astype(np.uint8) for hh, ww, _ in windows]
    for row, p in zip(rows, pixels):
        row.reshape(-1)[:p.size] = p.reshape(-1)
    out = np.asarray(jax.jit(normalize.resize_windows)(rows, np.asarray(windows, np.int32)))
    for (hh, ww, flip), p, got in zip(windows, pixels, out):
        # torch's bilinear (align_corners=False) is the same filter; PIL's too when enlarging.
        ref = torch.nn.functional.interpolate(torch.from_numpy(p).permute(2, 0, 1)[None].double(), size=(size, size),
                                              mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        ref = ref[:, ::-1] if flip else ref
        assert np.abs(got - ref).max() <= 0.5 + 1e-4 and (got == np.round(got)).all()
    np.testing.assert_array_equal(out[2], pixels[2])   # (size, size, 0): the row itself
    with pytest.raises(ValueError, match=r"window \[B, 3\]"):
        normalize.resize_windows(rows, np.zeros((3, 2), np.int32))


# ----------------------------------------------------------------------------- 'bit' train crop, small sources

# (h, w, resize, crop): CIFAR at the 160/128 rule, digits at 36/32, a non-square source (Resize
# keeps the aspect), and sources the resize shrinks (where only an antialiased resize matches).
_SMALL_CASES = [(32, 32, 160, 128), (28, 28, 36, 32), (30, 45, 40, 32), (240, 200, 160, 128), (100, 120, 64, 48)]


def _offsets(h, w, seed, resize, crop):
    top, left, flip = preprocess.bit_crop_offsets(h, w, seed, resize=resize, crop=crop)
    return int(top), int(left), bool(flip)


def _crop_flip(image, top, left, crop, flip):
    """torchvision's crop at (top, left) of a PIL image or CHW tensor, as HWC numpy, then the flip."""
    out = TF.crop(image, top, left, crop, crop)
    out = out.permute(1, 2, 0).numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return out[:, ::-1] if flip else out


@pytest.mark.parametrize("h,w,resize,crop", _SMALL_CASES)
def test_small_source_crop_is_torchvision_resize_then_crop_at_the_same_offsets(h, w, resize, crop):
    assert max(h, w) < preprocess.EXACT_CROP_MAX_SIDE
    img = _image(h, w)
    # The reference runs its transforms on PIL images: PIL's bilinear filter is always antialiased.
    # Resize(int) keeps the aspect ratio; on a square source it is Resize((resize, resize)).
    resized = {"pil": T.Resize(resize)(Image.fromarray(img))}
    if h == w:
        resized["pil squash"] = T.Resize((resize, resize))(Image.fromarray(img))
    # On tensors, antialias=True is PIL's filter; antialias=False equals it only when enlarging.
    chw = torch.from_numpy(img).permute(2, 0, 1)
    resized["tensor antialias"] = T.Resize(resize, antialias=True)(chw)
    no_antialias = T.Resize(resize, antialias=False)(chw)
    shrinks = min(h, w) > resize
    encoded = {"png": tf.constant(_png(img)), "jpeg": tf.constant(_jpeg(img, subsampling=0))}
    decoded_jpeg = Image.open(io.BytesIO(encoded["jpeg"].numpy()))   # PIL's pixels = ours (accurate DCT)
    flips = set()
    for i in range(6):
        top, left, flip = _offsets(h, w, _seed(i), resize, crop)
        flips.add(flip)
        out = preprocess.bit_train(tf.constant(img), _seed(i), resize=resize, crop=crop).numpy()
        assert out.shape == (crop, crop, 3) and out.dtype == np.uint8
        for name, image in resized.items():
            assert _diff(out, _crop_flip(image, top, left, crop, flip)) <= _PIL_TOL, name
        far = _diff(out, _crop_flip(no_antialias, top, left, crop, flip))
        assert far > 2 if shrinks else far <= _PIL_TOL
        np.testing.assert_array_equal(_bit_from_bytes(encoded["png"], _seed(i), resize=resize, crop=crop), out)
        from_jpeg = _bit_from_bytes(encoded["jpeg"], _seed(i), resize=resize, crop=crop)
        assert _diff(from_jpeg, _crop_flip(T.Resize(resize)(decoded_jpeg), top, left, crop, flip)) <= _PIL_TOL
    assert flips == {False, True}


def test_small_source_offsets_are_uniform_and_independent():
    h, w, resize, crop = 32, 32, 40, 32      # offsets in [0, 8] on both axes
    span = resize - crop + 1
    n = 4000
    draw = tf.function(lambda seeds: tf.map_fn(
        lambda s: tf.stack([tf.cast(v, tf.int32)
                            for v in preprocess.bit_crop_offsets(h, w, s, resize=resize, crop=crop)]),
        seeds, fn_output_signature=tf.int32))
    seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(11, tf.int64))], axis=1)
    top, left, flip = draw(seeds).numpy().T
    assert top.min() == 0 and top.max() == span - 1 and left.min() == 0 and left.max() == span - 1
    # Chi-square against RandomCrop's uniform law (deterministic seeds: no flakiness); the joint
    # table also checks that top and left are independent, the flip a fair coin.
    for counts in (np.bincount(top, minlength=span), np.bincount(left, minlength=span),
                   np.bincount(top * span + left, minlength=span * span), np.bincount(flip, minlength=2)):
        assert scipy.stats.chisquare(counts).pvalue > 1e-3, counts
    assert abs(np.corrcoef(top, flip)[0, 1]) < 0.05 and abs(np.corrcoef(left, flip)[0, 1]) < 0.05


def test_exact_crop_threshold_picks_the_path():
    # Just under the threshold: resize then crop; at it: the windowed crop (large-image path).
    # A high-frequency image tells the two apart.
    side = preprocess.EXACT_CROP_MAX_SIDE
    resize, crop = 2 * side, 2 * side - 32
    told_apart = False
    for h, exact in ((side - 1, True), (side, False)):
        w = side + 40
        img = _image(h, w, period=(0.7, 1.5))
        resized = T.Resize(resize)(Image.fromarray(img))
        assert bool(preprocess.takes_exact_crop(tf.constant(h), tf.constant(w))) == exact
        for i in range(2):
            top, left, flip = _offsets(h, w, _seed(i), resize, crop)
            window, window_flip = preprocess.bit_crop_window(h, w, _seed(i), resize=resize, crop=crop)
            y, x, wh, ww = window.numpy().tolist()
            assert bool(window_flip) == flip
            windowed = np.asarray(TF.resized_crop(Image.fromarray(img), y, x, wh, ww, [crop, crop], antialias=True))
            windowed = windowed[:, ::-1] if flip else windowed
            exact_crop = _crop_flip(resized, top, left, crop, flip)
            out = _bit_from_bytes(tf.constant(_png(img)), _seed(i), resize=resize, crop=crop)
            assert _diff(out, exact_crop if exact else windowed) <= _PIL_TOL
            told_apart |= _diff(windowed, exact_crop) > 10
    assert told_apart


# ----------------------------------------------------------------------------- eval ops, rounding


def test_bit_eval_matches_torchvision_squash_resize():
    img = _image(30, 45)
    expected = np.asarray(T.Resize((24, 24))(Image.fromarray(img)))
    out = preprocess.bit_eval(tf.constant(img), crop=24).numpy()
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert _diff(out, expected) <= _PIL_TOL


@pytest.mark.parametrize("h,w", [(30, 45), (41, 29)])
def test_inception_eval_matches_torchvision_resize_center_crop(h, w):
    img = _image(h, w)
    expected = np.asarray(T.Compose([T.Resize(20), T.CenterCrop(16)])(Image.fromarray(img)))
    out = preprocess.inception_eval(tf.constant(img), resize=20, crop=16).numpy()
    assert out.dtype == np.uint8
    assert _diff(out, expected) <= _PIL_TOL


@pytest.mark.usefixtures("windowed_crop")
@pytest.mark.parametrize("h,w,size", [(20, 30, 48), (64, 50, 24), (30, 45, 40)])   # enlarge, shrink, mixed
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_uint8_outputs_are_the_float_resize_rounded_to_nearest(h, w, size, dtype):
    img = np.random.default_rng(1).integers(0, 256, (h, w, 3)).astype(dtype)
    exact = tf.image.resize(img.astype(np.float32), (size, size), antialias=True).numpy()
    out = preprocess.bit_eval(tf.constant(img), crop=size).numpy()
    assert np.abs(out - exact).max() <= 0.5 + 1e-3      # nearest level, not truncated
    assert abs((out - exact).mean()) < 0.05              # no bias
    # After model_input, within one grey level of normalising the float resize.
    np.testing.assert_allclose(preprocess.model_input(out, "bit"), exact / 127.5 - 1.0, atol=1 / 127.5)
    # The train op rounds the same way: the float resize of its window.
    window, flip = preprocess.bit_crop_window(h, w, _seed(0), resize=size, crop=size - 8)
    y, x, wh, ww = window.numpy().tolist()
    pixels = img[y:y + wh, x:x + ww][:, ::-1 if flip else 1].astype(np.float32)
    exact = tf.image.resize(pixels, (size - 8, size - 8), antialias=True).numpy()
    out = preprocess.bit_train(tf.constant(img), _seed(0), resize=size, crop=size - 8).numpy()
    assert np.abs(out - exact).max() <= 0.5 + 1e-3


# ----------------------------------------------------------------------------- model_input


def test_model_input_matches_torchvision_normalize():
    images = np.stack([_image(8, 9, seed=s) for s in range(2)])
    for norm, (mean, std) in {"imagenet": (preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD),
                              "bit": ((0.5,) * 3, (0.5,) * 3)}.items():
        to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
        expected = np.stack([to_tensor(Image.fromarray(im)).permute(1, 2, 0).numpy()
                             for im in images])
        got = preprocess.model_input(images, norm)
        assert got.dtype == np.float32 and got.shape == images.shape
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_model_input_on_jax_arrays_and_float_passthrough():
    images = np.stack([_image(8, 9, seed=s) for s in range(2)])
    for norm in preprocess.NORMS:
        got = jax.jit(lambda x, norm=norm: preprocess.model_input(x, norm))(jnp.asarray(images))
        assert isinstance(got, jax.Array) and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), preprocess.model_input(images, norm), atol=1e-6)
    # With train batches' windows: the device resize, then the same normalisation.
    square, window = images[:, :, :8], np.asarray([[5, 4, 1], [8, 8, 0]], np.int32)
    got = jax.jit(lambda x, wnd: preprocess.model_input(x, "bit", wnd))(jnp.asarray(square), window)
    np.testing.assert_allclose(np.asarray(got), np.asarray(normalize.resize_windows(square, window)) / 127.5 - 1,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(got[1]), preprocess.model_input(square[1], "bit"), atol=1e-6)
    floats = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 2, 2, 3)
    assert preprocess.model_input(floats, "imagenet") is floats
    floats_jax = jnp.asarray(floats, jnp.bfloat16)
    assert preprocess.model_input(floats_jax, "bit") is floats_jax


def test_model_input_errors_name_the_bad_norm_or_dtype():
    with pytest.raises(ValueError, match=r"pp.norm 'zscore'.*\['bit', 'imagenet'\]"):
        preprocess.model_input(np.zeros([1, 2, 2, 3], np.uint8), "zscore")
    with pytest.raises(ValueError, match="uint8 or float images, got dtype int32"):
        preprocess.model_input(np.zeros([1, 2, 2, 3], np.int32), "bit")


# ----------------------------------------------------------------------------- inception, decoding


def test_inception_crop_jpeg_fast_path_equals_generic_path():
    # Without chroma subsampling, decoding only the window is exact.
    encoded = tf.constant(_jpeg(_image(48, 64), subsampling=0))
    for i in range(5):
        fast = preprocess.decode_and_inception_crop(encoded, _seed(i), crop=24).numpy()
        slow = preprocess.inception_train(preprocess.decode_rgb(encoded), _seed(i), crop=24).numpy()
        assert fast.shape == (24, 24, 3) and fast.dtype == np.uint8
        np.testing.assert_array_equal(fast, slow)
    # With 4:2:0 chroma, only the chroma upsampling at the window's border differs.
    encoded = tf.constant(_jpeg(_image(48, 64), subsampling=2))
    for i in range(5):
        fast = preprocess.decode_and_inception_crop(encoded, _seed(i), crop=24).numpy()
        slow = preprocess.inception_train(preprocess.decode_rgb(encoded), _seed(i), crop=24).numpy()
        assert np.abs(fast.astype(np.int64) - slow).mean() < 2.5


def test_inception_window_respects_area_and_aspect_ranges():
    areas, ratios = [], []
    for i in range(200):
        begin, size = preprocess.inception_window(tf.constant([100, 100, 3]), _seed(i))
        h, w = int(size[0]), int(size[1])
        assert 0 <= int(begin[0]) <= 100 - h and 0 <= int(begin[1]) <= 100 - w
        areas.append(h * w / 1e4)
        ratios.append(w / h)
    # Integer rounding of the window can step slightly outside the nominal ranges.
    assert min(areas) >= 0.07 and max(areas) <= 1.0
    assert min(ratios) >= 0.7 and max(ratios) <= 1.4
    assert np.std(areas) > 0.1     # crops really vary


def test_grey_to_rgb():
    grey = tf.constant([[[0.0], [1.0]]])
    levels = preprocess.grey01_to_255(grey)
    np.testing.assert_allclose(levels.numpy(), [[[0], [255]]])
    np.testing.assert_allclose(preprocess.grey_to_rgb(levels).numpy(), [[[0, 0, 0], [255, 255, 255]]])


@pytest.mark.parametrize("h,w", [(300, 400), (60, 50)])   # the windowed and the exact path
def test_grey_resized_then_tiled_equals_tiled_then_resized(h, w):
    # The resize works on each channel alone: resizing one grey plane and tiling it gives the
    # pixels of resizing the tiled RGB image (what the X-ray path did before, at 3x the work).
    grey = preprocess.grey01_to_255(tf.constant(np.random.default_rng(3).random((h, w, 1)), tf.float32))
    for i in range(3):
        after = preprocess.grey_to_rgb(preprocess.bit_train(grey, _seed(i), resize=320, crop=288)).numpy()
        before = preprocess.bit_train(preprocess.grey_to_rgb(grey), _seed(i), resize=320, crop=288).numpy()
        np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(preprocess.grey_to_rgb(preprocess.bit_eval(grey, crop=24)).numpy(),
                                  preprocess.bit_eval(preprocess.grey_to_rgb(grey), crop=24).numpy())


def test_decode_rgb_handles_grey_png():
    buf = io.BytesIO()
    Image.fromarray(np.full((5, 6), 77, np.uint8), mode="L").save(buf, "PNG")
    out = preprocess.decode_rgb(tf.constant(buf.getvalue())).numpy()
    assert out.shape == (5, 6, 3) and (out == 77).all()


def test_decode_rgb_jpeg_equals_pil_pixels():
    encoded = _jpeg(_image(37, 53), subsampling=2)
    expected = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    np.testing.assert_array_equal(preprocess.decode_rgb(tf.constant(encoded)).numpy(), expected)
