"""input_pipeline.preprocess against torchvision's transforms (the reference's) on small images."""

import io

import torchvision.transforms as T

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from input_pipeline import preprocess

# PIL rounds to uint8 after resizing and uses fixed-point filters; in [-1, 1] units one grey level
# is 2/255, so a few levels of slack covers the two implementations.
_TOL = 4 * 2 / 255


def _image(h, w, seed=0):
  """A smooth RGB test image (gradients + a blob), uint8 [h, w, 3]."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  chans = [np.sin(x / rng.uniform(2, 6) + c) * np.cos(y / rng.uniform(2, 6)) for c in range(3)]
  img = (np.stack(chans, -1) * 100 + 128).clip(0, 255)
  return img.astype(np.uint8)


def _torch_bit_norm(pil, transform):
  tensor = T.Compose([transform, T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])(pil)
  return tensor.permute(1, 2, 0).numpy()


def _seed(i):
  return tf.constant([i, 7], tf.int64)


@pytest.mark.parametrize("h,w", [(30, 45), (45, 30), (33, 33), (17, 100), (101, 7)])
def test_shorter_side_size_matches_torchvision_resize(h, w):
  for size in (16, 40, 160):
    expected_w, expected_h = T.Resize(size)(Image.new("RGB", (w, h))).size
    got_h, got_w = preprocess.shorter_side_size(tf.constant(h), tf.constant(w), size)
    assert (int(got_h), int(got_w)) == (expected_h, expected_w)


def test_bit_train_is_a_random_crop_of_torchvision_resize_and_deterministic():
  img = _image(30, 45)
  resized = _torch_bit_norm(Image.fromarray(img), T.Resize(40))   # shorter side 30 -> 40: 40 x 60
  assert resized.shape == (40, 60, 3)
  seen_offsets, flips = set(), 0
  for i in range(12):
    out = preprocess.bit_train(tf.constant(img), _seed(i), resize=40, crop=32, norm="bit").numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(
        out, preprocess.bit_train(tf.constant(img), _seed(i), resize=40, crop=32, norm="bit").numpy())
    # Find the crop offset and flip that explain the output (exhaustive over valid offsets).
    best = min((np.abs(cand - out).max(), top, left, flip)
               for top in range(40 - 32 + 1) for left in range(60 - 32 + 1) for flip in (False, True)
               for cand in [resized[top:top + 32, left:left + 32][:, ::-1 if flip else 1]])
    assert best[0] < _TOL, best
    seen_offsets.add(best[1:3])
    flips += best[3]
  assert len(seen_offsets) > 6      # offsets vary with the seed
  assert 2 <= flips <= 10           # both flipped and unflipped outputs occur


def test_bit_train_downscaling_matches_torchvision():
  img = _image(120, 90)   # shorter side 90 -> 40: antialiased shrink
  resized = _torch_bit_norm(Image.fromarray(img), T.Resize(40))
  out = preprocess.bit_train(tf.constant(img), _seed(3), resize=40, crop=40, norm="bit").numpy()
  err = min(np.abs(resized[top:top + 40] - out[:, ::f]).max()
            for top in range(resized.shape[0] - 40 + 1) for f in (1, -1))
  assert err < _TOL


def test_bit_eval_matches_torchvision_squash_resize():
  img = _image(30, 45)
  expected = _torch_bit_norm(Image.fromarray(img), T.Resize((24, 24)))
  out = preprocess.bit_eval(tf.constant(img), crop=24, norm="bit").numpy()
  assert out.shape == (24, 24, 3)
  np.testing.assert_allclose(out, expected, atol=_TOL)


@pytest.mark.parametrize("h,w", [(30, 45), (41, 29)])
def test_inception_eval_matches_torchvision_resize_center_crop(h, w):
  img = _image(h, w)
  expected = _torch_bit_norm(Image.fromarray(img), T.Compose([T.Resize(20), T.CenterCrop(16)]))
  out = preprocess.inception_eval(tf.constant(img), resize=20, crop=16, norm="bit").numpy()
  np.testing.assert_allclose(out, expected, atol=_TOL)


def test_imagenet_normalisation_matches_torchvision():
  img = _image(8, 8)
  expected = T.Compose([T.ToTensor(), T.Normalize(preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD)])(
      Image.fromarray(img)).permute(1, 2, 0).numpy()
  np.testing.assert_allclose(preprocess.normalize(tf.constant(img), "imagenet").numpy(), expected, atol=1e-5)
  bit = preprocess.normalize(tf.constant(img), "bit").numpy()
  np.testing.assert_allclose(bit, img / 127.5 - 1.0, atol=1e-6)


def test_unknown_norm_lists_choices():
  with pytest.raises(ValueError, match=r"pp.norm 'zscore'.*\['bit', 'imagenet'\]"):
    preprocess.normalize(tf.zeros([2, 2, 3]), "zscore")


def _jpeg(img, subsampling):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "JPEG", quality=95, subsampling=subsampling)
  return buf.getvalue()


def test_inception_crop_jpeg_fast_path_equals_generic_path():
  # Without chroma subsampling, decoding only the window is exact.
  encoded = tf.constant(_jpeg(_image(48, 64), subsampling=0))
  for i in range(5):
    fast = preprocess.decode_and_inception_crop(encoded, _seed(i), crop=24, norm="bit").numpy()
    slow = preprocess.inception_train(preprocess.decode_rgb(encoded), _seed(i), crop=24, norm="bit").numpy()
    assert fast.shape == (24, 24, 3)
    np.testing.assert_allclose(fast, slow, atol=1e-5)
  # With 4:2:0 chroma, only the chroma upsampling at the window's border differs.
  encoded = tf.constant(_jpeg(_image(48, 64), subsampling=2))
  for i in range(5):
    fast = preprocess.decode_and_inception_crop(encoded, _seed(i), crop=24, norm="bit").numpy()
    slow = preprocess.inception_train(preprocess.decode_rgb(encoded), _seed(i), crop=24, norm="bit").numpy()
    assert np.abs(fast - slow).mean() < 0.02


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
  np.testing.assert_allclose(preprocess.grey01_to_rgb255(grey).numpy(), [[[0, 0, 0], [255, 255, 255]]])


def test_decode_rgb_handles_grey_png():
  buf = io.BytesIO()
  Image.fromarray(np.full((5, 6), 77, np.uint8), mode="L").save(buf, "PNG")
  out = preprocess.decode_rgb(tf.constant(buf.getvalue())).numpy()
  assert out.shape == (5, 6, 3) and (out == 77).all()


def test_decode_rgb_jpeg_equals_pil_pixels():
  encoded = _jpeg(_image(37, 53), subsampling=2)
  expected = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
  np.testing.assert_array_equal(preprocess.decode_rgb(tf.constant(encoded)).numpy(), expected)
