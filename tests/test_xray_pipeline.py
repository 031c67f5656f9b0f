"""input_pipeline.xray: label merging, view filtering, splits, and the X-ray preprocessing.

References are independent of the module: the label sets are recomputed from the reference
code's raw lists the way its builder.py does; the preprocessing is recomputed with numpy and
OpenCV exactly as torchxrayvision 0.0.25 + albumentations 0.5.2 (the reference's pins) do it.
"""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import xray

# --------------------------------------------------------------------------- label sets
# The lists as written in the reference's dataset modules, before their sort/rename.
_REF_CHEXPERT = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                 "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                 "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
_REF_NIH = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
            "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule",
            "Mass", "Hernia"]
_REF_PADCHEST = _REF_NIH + ["Fracture", "Granuloma", "Flattened Diaphragm", "Bronchiectasis",
                            "Aortic Elongation", "Scoliosis", "Hilar Enlargement",
                            "Support Devices", "Tuberculosis", "Air Trapping",
                            "Costophrenic Angle Blunting", "Aortic Atheromatosis",
                            "Hemidiaphragm Elevation"]


def _ref_pathologies(name):
    raw = {"chexpert_v1": _REF_CHEXPERT, "mimic_cxr_jpg": _REF_CHEXPERT,
           "nih_chest_xray14": _REF_NIH, "padchest": _REF_PADCHEST}[name]
    return [("Effusion" if p == "Pleural Effusion" else p) for p in sorted(raw)]


def _ref_merge(names):
    """builder.py's `merge`: intersect the sets, sort, index into each source's list."""
    shared = set(_ref_pathologies(names[0]))
    for name in names[1:]:
        shared &= set(_ref_pathologies(name))
    shared = sorted(shared)
    return shared, {n: [_ref_pathologies(n).index(label) for label in shared] for n in names}


SEVEN = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia",
         "Pneumothorax"]


@pytest.mark.parametrize("name", xray.MULTILABEL_SOURCES)
def test_single_source_keeps_its_own_labels(name):
    assert xray.label_names([name]) == _ref_pathologies(name)
    assert xray.label_indices([name]) == {name: list(range(len(_ref_pathologies(name))))}


def test_single_source_sizes_and_effusion_slot():
    chexpert = xray.label_names(["chexpert_v1"])
    assert len(chexpert) == 13 and chexpert[8] == "Effusion"
    assert len(xray.label_names(["nih_chest_xray14"])) == 14
    assert len(xray.label_names(["padchest"])) == 27
    assert xray.label_names(["covidx_cxr2"]) == ["negative", "positive"]
    assert xray.label_names(["tuberculosis_cxr"]) == ["normal", "tuberculosis"]


@pytest.mark.parametrize("names", [
    ["chexpert_v1", "mimic_cxr_jpg", "nih_chest_xray14"],
    ["chexpert_v1", "mimic_cxr_jpg", "nih_chest_xray14", "padchest"],
    ["padchest", "nih_chest_xray14"],
    ["chexpert_v1", "mimic_cxr_jpg"],
    ["nih_chest_xray14", "chexpert_v1"],
])
def test_merged_label_sets_equal_reference_merge(names):
    expected_names, expected_indices = _ref_merge(names)
    assert xray.label_names(names) == expected_names
    assert xray.label_indices(names) == expected_indices
    assert xray.merge_order(names) == tuple(names)


def test_four_way_merge_has_seven_labels_at_documented_positions():
    names = ["chexpert_v1", "mimic_cxr_jpg", "nih_chest_xray14", "padchest"]
    assert xray.label_names(names) == SEVEN
    assert xray.label_names(names[:3]) == SEVEN
    assert xray.label_indices(names) == {
        "chexpert_v1": [0, 1, 2, 3, 8, 10, 11],
        "mimic_cxr_jpg": [0, 1, 2, 3, 8, 10, 11],
        "nih_chest_xray14": [0, 1, 2, 3, 4, 12, 13],
        "padchest": [3, 5, 6, 8, 9, 22, 23],
    }


def test_chexpert_mimic_intersection_is_strictly_sorted():
    names = xray.label_names(["chexpert_v1", "mimic_cxr_jpg"])
    assert names == sorted(_ref_pathologies("chexpert_v1"))
    assert names.index("Effusion") == 4


def test_chexpert_mimic_13_variant_native_order_mimic_first():
    for given in (["chexpert_v1", "mimic_cxr_jpg"], ["mimic_cxr_jpg", "chexpert_v1"]):
        assert xray.label_names(given, "chexpert_mimic_13") == _ref_pathologies("chexpert_v1")
        assert xray.merge_order(given, "chexpert_mimic_13") == ("mimic_cxr_jpg", "chexpert_v1")
        assert xray.label_indices(given, "chexpert_mimic_13") == {
            "mimic_cxr_jpg": list(range(13)), "chexpert_v1": list(range(13))}


@pytest.mark.parametrize("names, label_set, message", [
    (["chexpert_v1", "nih_chest_xray14"], "chexpert_mimic_13", "exactly"),
    (["chexpert_v1"], "chexpert_mimic_13", "exactly"),
    (["chexpert_v1"], "union", "valid: ['intersection', 'chexpert_mimic_13']"),
    (["chexpert"], "intersection", "valid names: ['chexpert_v1'"),
    ([], "intersection", "no X-ray dataset"),
    (["nih_chest_xray14", "nih_chest_xray14"], "intersection", "named twice"),
    (["covidx_cxr2", "chexpert_v1"], "intersection", "['covidx_cxr2'] cannot be merged"),
])
def test_bad_names_and_label_sets(names, label_set, message):
    with pytest.raises(ValueError) as err:
        xray.label_names(names, label_set)
    assert message in str(err.value)


def test_names_must_be_a_sequence_not_a_string():
    with pytest.raises(TypeError, match="sequence"):
        xray.label_names("chexpert_v1")


# --------------------------------------------------------------------------- views, splits


def test_default_views_follow_reference_configs():
    assert xray.default_views(["chexpert_v1"]) == ("PA", "AP")
    assert xray.default_views(["mimic_cxr_jpg"]) == ("PA", "AP")
    assert xray.default_views(["nih_chest_xray14"]) == ("PA", "AP")
    assert xray.default_views(["padchest"]) == ("PA", "AP", "AP Supine", "L", "COSTAL")
    assert xray.default_views(["chexpert_v1", "mimic_cxr_jpg"]) == ("PA", "AP")
    assert xray.default_views(["chexpert_v1", "mimic_cxr_jpg", "nih_chest_xray14"]) == ("PA", "AP")
    assert xray.default_views(
        ["chexpert_v1", "mimic_cxr_jpg", "nih_chest_xray14", "padchest"]) == xray.FIVE_VIEWS
    assert xray.default_views(["covidx_cxr2"]) is None
    assert xray.default_views(["tuberculosis_cxr"]) is None
    for name in xray.MULTILABEL_SOURCES:
        assert xray.DEFAULT_VIEWS[name] == xray.default_views([name])


def test_resolve_split_maps_validation_to_reference_eval_split():
    assert xray.resolve_split("nih_chest_xray14", "validation", ["train", "test"]) == "test"
    assert xray.resolve_split("nih_chest_xray14", "val[:50%]", ["train", "test"]) == "test[:50%]"
    assert xray.resolve_split("mimic_cxr_jpg", "validation",
                              ["train", "validation", "test"]) == "validation"
    assert xray.resolve_split("mimic_cxr_jpg", "test", ["train", "validation", "test"]) == "test"
    assert xray.resolve_split("chexpert_v1", "train[:10]+validation",
                              ["train", "validation"]) == "train[:10]+validation"
    assert xray.resolve_split("covidx_cxr2", "validation", ["train", "test"]) == "test"


def test_resolve_split_error_lists_available_splits():
    with pytest.raises(ValueError) as err:
        xray.resolve_split("chexpert_v1", "test", ["train", "validation"])
    assert "chexpert_v1" in str(err.value) and "['train', 'validation']" in str(err.value)
    with pytest.raises(ValueError, match="cannot parse"):
        xray.resolve_split("chexpert_v1", "train[:10", ["train"])


def _fake_examples(views, labels):
    return tf.data.Dataset.from_tensor_slices({
        "image": [f"img{i}".encode() for i in range(len(views))],
        "view": list(views),
        "labels": np.asarray(labels, np.float32),
        "patient_id": [str(i) for i in range(len(views))],
    })


def test_select_filters_views_and_reindexes_with_nan_kept():
    rng = np.random.default_rng(0)
    views = ["PA", "L", "AP", "LL", "AP", "LATERAL", "PA", "AP Supine"]
    labels = rng.choice([0.0, 1.0, np.nan], size=(len(views), 13)).astype(np.float32)
    merged = ["chexpert_v1", "mimic_cxr_jpg", "nih_chest_xray14"]
    indices = xray.label_indices(merged)["chexpert_v1"]
    out = list(xray.select(_fake_examples(views, labels), views=("PA", "AP"),
                           indices=indices).as_numpy_iterator())
    keep = [i for i, v in enumerate(views) if v in ("PA", "AP")]
    assert [ex["image"] for ex in out] == [f"img{i}".encode() for i in keep]
    got = np.stack([ex["label"] for ex in out])
    expected = labels[keep][:, [0, 1, 2, 3, 8, 10, 11]]
    assert got.dtype == np.float32 and got.shape == (len(keep), 7)
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(got, expected)  # NaN positions must match too
    assert set(out[0]) == {"image", "label"}


def test_select_five_views_and_single_label_passthrough():
    views = ["PA", "L", "AP", "LL", "COSTAL", "LATERAL", "AP Supine", "UNK"]
    labels = np.zeros((len(views), 13), np.float32)
    out = list(xray.select(_fake_examples(views, labels), views=xray.FIVE_VIEWS,
                           indices=list(range(13))).as_numpy_iterator())
    assert [ex["image"] for ex in out] == [b"img0", b"img1", b"img2", b"img4", b"img6"]

    single = tf.data.Dataset.from_tensor_slices(
        {"image": [b"a", b"b"], "view": ["PA", ""], "label": np.array([1, 0], np.int32)})
    out = list(xray.select(single, views=None, indices=None).as_numpy_iterator())
    assert [(ex["image"], ex["label"]) for ex in out] == [(b"a", 1), (b"b", 0)]
    assert out[0]["label"].dtype == np.int64


# --------------------------------------------------------------------------- decode


def test_decode_8bit_png_16bit_png_and_jpeg():
    rng = np.random.default_rng(1)
    grey8 = rng.integers(0, 256, size=(9, 7), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, size=(9, 7), dtype=np.uint16)
    grey16[0, 0], grey16[0, 1] = 0, 65535
    for array, maximum in ((grey8, 255.0), (grey16, 65535.0)):
        ok, png = cv2.imencode(".png", array)
        assert ok
        image = xray.decode(tf.constant(png.tobytes())).numpy()
        assert image.dtype == np.float32 and image.shape == (9, 7, 1)
        np.testing.assert_allclose(image[..., 0], array / maximum, rtol=0, atol=1e-6)
    ramp = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (16, 1))
    ok, jpg = cv2.imencode(".jpg", ramp, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    image = xray.decode(tf.constant(jpg.tobytes())).numpy()
    # The reference reads with cv2.imread (3-channel BGR) and keeps channel 0.
    reference = cv2.imdecode(jpg, cv2.IMREAD_COLOR)[:, :, 0] / 255.0
    np.testing.assert_allclose(image[..., 0], reference, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- preprocessing


def _ref_crop_resize(image01, size):
    """torchxrayvision 0.0.25 XRayCenterCrop + XRayResizer(engine='cv2')."""
    height, width = image01.shape
    side = min(height, width)
    top, left = height // 2 - side // 2, width // 2 - side // 2
    crop = image01[top:top + side, left:left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def _ref_eval(image01, size):
    x = (_ref_crop_resize(image01, size) - 0.5) / 0.5
    return np.repeat(x[:, :, None], 3, axis=2)


def _ref_matrix(height, width, angle, scale, dx, dy):
    """albumentations 0.5.2 F.shift_scale_rotate's forward matrix (input -> output pixels)."""
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[0, 2] += dx * width
    matrix[1, 2] += dy * height
    return matrix


def _cv2_shift_scale_rotate(image, angle, scale, dx, dy):
    """The reference's call: cv2.warpAffine, INTER_LINEAR, BORDER_REFLECT_101 (its defaults)."""
    height, width = image.shape[:2]
    return cv2.warpAffine(image, _ref_matrix(height, width, angle, scale, dx, dy), (width, height),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _reflect101(index, n):
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index > n - 1, period - index, index)


def _ref_shift_scale_rotate(image, angle, scale, dx, dy):
    """The same warp with exact bilinear weights in numpy (cv2 rounds sample positions to
    1/32 pixel in OpenCV 4 and for float64 images, which this test suite does not want to
    depend on): each output pixel samples the input at the inverse-mapped position, pixel
    centres on integer coordinates, neighbours outside the image reflected without the edge."""
    height, width = image.shape
    forward = np.vstack([_ref_matrix(height, width, angle, scale, dx, dy), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    x = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
    y = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0

    def at(r, c):
        return image[_reflect101(r, height), _reflect101(c, width)]

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def _ref_train(image01, size, params):
    """The reference's order: transform (crop, resize, normalise), then the augmentation."""
    x = (_ref_crop_resize(image01, size) - 0.5) / 0.5
    x = _ref_shift_scale_rotate(x, params["angle"], params["scale"], params["dx"], params["dy"])
    if params["flip"]:
        x = x[:, ::-1]
    return np.repeat(x[:, :, None], 3, axis=2)


def _image(height, width, seed=0):
    return np.random.default_rng(seed).random((height, width))


@pytest.mark.parametrize("height, width, size", [
    (50, 37, 16),   # odd side: txv's offset 25 - 18 = 7, not (50 - 37) // 2 = 6
    (37, 50, 16),
    (64, 64, 16),
    (10, 12, 16),   # upscaling
    (33, 40, 33),   # crop only
    (300, 260, 224),
])
def test_preprocess_eval_equals_reference_transform(height, width, size):
    image01 = _image(height, width)
    got = xray.preprocess_eval(tf.constant(image01[:, :, None], tf.float32), size).numpy()
    assert got.shape == (size, size, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _ref_eval(image01, size), rtol=0, atol=1e-4)


def test_crop_offsets_distinguish_txv_from_symmetric_crop():
    image01 = np.arange(50 * 37, dtype=np.float64).reshape(50, 37)
    crop = xray.center_crop_square(tf.constant(image01[:, :, None])).numpy()[:, :, 0]
    np.testing.assert_array_equal(crop, image01[7:44])


def test_preprocess_eval_rejects_colour_input():
    with pytest.raises(ValueError, match=r"\[H, W, 1\]"):
        xray.preprocess_eval(tf.zeros([8, 8, 3]), 4)


def _smooth(height, width):
    yy, xx = np.mgrid[0:height, 0:width]
    return 0.5 + 0.25 * np.sin(xx / 3.0) + 0.25 * np.cos(yy / 4.0 + xx / 7.0)


SSR_CASES = [
    (0.0, 1.0, 0.25, 0.0),      # whole-pixel shift: border rows come from reflection
    (0.0, 1.0, -0.25, 0.25),
    (90.0, 1.0, 0.0, 0.0),
    (30.0, 0.9, 0.1, -0.2),
    (-45.0, 1.1, -0.25, 0.25),  # the ranges' corners reach farthest outside
    (45.0, 0.9, 0.25, 0.25),
    (12.3, 0.95, 0.03, 0.07),
]


@pytest.mark.parametrize("angle, scale, dx, dy", SSR_CASES)
@pytest.mark.parametrize("height, width", [(24, 32), (17, 17)])
def test_shift_scale_rotate_equals_exact_bilinear_reflect101(angle, scale, dx, dy, height, width):
    for image in (_smooth(height, width), _image(height, width, seed=3)):
        image_t = tf.constant(image[:, :, None], tf.float32)
        got = xray.shift_scale_rotate(image_t, angle, scale, dx, dy)
        expected = _ref_shift_scale_rotate(image, angle, scale, dx, dy)
        # Every pixel, border included: the reflect-101 padding reproduces cv2's border.
        np.testing.assert_allclose(got.numpy()[:, :, 0], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("angle, scale, dx, dy", SSR_CASES)
def test_shift_scale_rotate_equals_cv2_warp_affine(angle, scale, dx, dy):
    # cv2 on float64, as in the reference; its 1/32-pixel sample positions stay within a
    # grey level on a smooth image, everywhere including the border.
    image = _smooth(24, 32)
    got = xray.shift_scale_rotate(tf.constant(image[:, :, None], tf.float32), angle, scale, dx, dy)
    expected = _cv2_shift_scale_rotate(image, angle, scale, dx, dy)
    difference = np.abs(got.numpy()[:, :, 0] - expected)
    assert difference.max() < 1 / 255 and difference.mean() < 1e-3
    if angle == 0.0 or angle == 90.0:  # whole-pixel maps: no rounding, must be equal
        assert difference.max() < 1e-5


def test_rotation_direction_is_counter_clockwise():
    image = np.zeros((9, 9), np.float32)
    image[4, 8] = 1.0  # right of the centre (4.5, 4.5) in cv2's convention
    got = xray.shift_scale_rotate(tf.constant(image[:, :, None]), 90.0, 1.0, 0.0, 0.0).numpy()
    # A point right of the centre moves up on screen (smaller row).
    row, col = np.unravel_index(np.argmax(got[:, :, 0]), (9, 9))
    assert row < 4 and col in (4, 5)


def test_sampled_parameters_cover_the_reference_ranges():
    seeds = tf.data.Dataset.range(2000).map(lambda i: tf.stack([i, tf.constant(17, tf.int64)]))
    draws = list(seeds.map(xray.sample_augmentation).batch(2000).as_numpy_iterator())[0]
    for key, low, high in (("angle", -45.0, 45.0), ("scale", 0.9, 1.1),
                           ("dx", -0.25, 0.25), ("dy", -0.25, 0.25)):
        values = draws[key]
        assert values.min() >= low and values.max() <= high, key
        span = high - low
        assert values.min() < low + 0.02 * span and values.max() > high - 0.02 * span, key
        assert abs(values.mean() - (low + high) / 2) < 0.03 * span, key
    assert 0.45 < draws["flip"].mean() < 0.55
    # The parameters are drawn independently of each other.
    assert abs(np.corrcoef(draws["angle"], draws["dx"])[0, 1]) < 0.1


@pytest.mark.parametrize("seed", [(0, 0), (1, 2), (5, 9), (1234, 77)])
def test_preprocess_train_equals_reference_for_the_drawn_parameters(seed):
    image01 = _image(70, 61, seed=seed[0])
    seed_t = tf.constant(seed, tf.int64)
    got = xray.preprocess_train(tf.constant(image01[:, :, None], tf.float32), seed_t, 32).numpy()
    params = {k: v.numpy() for k, v in xray.sample_augmentation(seed_t).items()}
    assert got.shape == (32, 32, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _ref_train(image01, 32, params), rtol=0, atol=1e-4)


def test_preprocess_train_flips_on_some_seeds_and_not_others():
    flips = {bool(xray.sample_augmentation(tf.constant([s, 0], tf.int64))["flip"].numpy())
             for s in range(20)}
    assert flips == {True, False}


def test_preprocess_train_is_a_function_of_the_seed():
    image = tf.constant(_image(40, 40)[:, :, None], tf.float32)
    a = xray.preprocess_train(image, tf.constant([3, 4], tf.int64), 16).numpy()
    b = xray.preprocess_train(image, tf.constant([3, 4], tf.int64), 16).numpy()
    c = xray.preprocess_train(image, tf.constant([3, 5], tf.int64), 16).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1
    assert np.abs(a - xray.preprocess_eval(image, 16).numpy()).max() > 0.1


def test_preprocess_in_tf_data_graph_has_static_shapes():
    images = np.random.default_rng(0).random((3, 30, 20, 1)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
    zero = tf.constant(0, tf.int64)
    train = ds.map(lambda i, x: xray.preprocess_train(x, tf.stack([i, zero]), 8))
    evals = ds.map(lambda i, x: xray.preprocess_eval(x, 8))
    assert train.element_spec.shape == (8, 8, 3) and evals.element_spec.shape == (8, 8, 3)
    out = np.stack(list(train.as_numpy_iterator()))
    assert out.shape == (3, 8, 8, 3) and out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    eager = xray.preprocess_train(tf.constant(images[1]), tf.constant([1, 0], tf.int64), 8).numpy()
    np.testing.assert_allclose(out[1], eager, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- read() end to end
# The real builders, prepared from fake copies in each dataset's exact layout.

_E2E_SOURCES = ("chexpert_v1", "mimic_cxr_jpg", "nih_chest_xray14", "padchest", "tuberculosis_cxr")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """data_dir with the five builders prepared ('full' config) and their fixtures."""
    from input_pipeline.datasets import prepare

    import fixtures

    root = tmp_path_factory.mktemp("xray")
    written = {
        "chexpert_v1": fixtures.write_chexpert(root / "chexpert", n_train=14, n_valid=5,
                                               image_size=(36, 30), seed=1),
        "mimic_cxr_jpg": fixtures.write_mimic(root / "mimic", n_subjects=8, image_size=(36, 30),
                                               seed=0),
        "nih_chest_xray14": fixtures.write_nih(root / "nih", n_images=12, image_size=(32, 32),
                                               seed=3),
        "padchest": fixtures.write_padchest(root / "padchest", n_images=18, image_size=(36, 30),
                                            seed=4),
        "tuberculosis_cxr": fixtures.write_tuberculosis(root / "tb", n_shenzhen=6, n_montgomery=4,
                                                        image_size=(30, 30), seed=5),
    }
    data_dir = root / "data"
    for name, fixture in written.items():
        prepare(name, manual_dir=fixture.root, data_dir=data_dir, config="full", num_workers=1)
    return str(data_dir), written


def _direct(data_dir, name, split):
    """The builder's own examples (independent of xray.read), in its stored order."""
    import tensorflow_datasets as tfds

    import input_pipeline.datasets  # noqa: F401

    builder = tfds.builder(name, data_dir=data_dir, config="full")
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    return list(ds.as_numpy_iterator())


def _expected(prepared, parts, views):
    """(image bytes, label) of each kept example: builder order, fixture labels re-indexed.

    parts: [(name, builder split, label indices)] in concatenation order.
    """
    data_dir, written = prepared
    images, labels = [], []
    for name, split, indices in parts:
        by_path = {e.image_path: e for e in written[name].examples}
        for example in _direct(data_dir, name, split):
            if example["view"].decode() not in views:
                continue
            truth = by_path[example["image_path"].decode()]
            images.append(example["image"])
            labels.append(np.asarray(truth.labels, np.float32)[indices])
    return images, np.stack(labels)


def _fixture_count(prepared, name, split, views):
    return sum(e.view in views for e in prepared[1][name].kept(split))


def _materialise(source):
    out = list(source.dataset.as_numpy_iterator())
    return [ex["image"] for ex in out], np.stack([ex["label"] for ex in out])


def test_read_chexpert_nih_merge_train(prepared):
    data_dir, _ = prepared
    names = ["chexpert_v1", "nih_chest_xray14"]
    source = xray.read(names, "train", data_dir=data_dir, builder_config="full")
    assert source.label_names == SEVEN and source.multilabel
    images, labels = _materialise(source)
    exp_images, exp_labels = _expected(prepared, [
        ("chexpert_v1", "train", [0, 1, 2, 3, 8, 10, 11]),
        ("nih_chest_xray14", "train", [0, 1, 2, 3, 4, 12, 13])], ("PA", "AP"))
    assert images == exp_images
    assert np.isnan(exp_labels).any()  # CheXpert's unknowns must survive the merge
    np.testing.assert_array_equal(labels, exp_labels)
    count = (_fixture_count(prepared, "chexpert_v1", "train", ("PA", "AP"))
             + _fixture_count(prepared, "nih_chest_xray14", "train", ("PA", "AP")))
    assert source.num_examples == len(images) == count
    # Laterals and LL/RL frontals were in the fixture and are filtered out.
    assert count < len(prepared[1]["chexpert_v1"].kept("train")) + len(
        prepared[1]["nih_chest_xray14"].kept("train"))


def test_read_validation_uses_each_sources_reference_eval_split(prepared):
    data_dir, _ = prepared
    source = xray.read(["chexpert_v1", "nih_chest_xray14"], "validation", data_dir=data_dir,
                       builder_config="full")
    images, labels = _materialise(source)
    exp_images, exp_labels = _expected(prepared, [
        ("chexpert_v1", "validation", [0, 1, 2, 3, 8, 10, 11]),
        ("nih_chest_xray14", "test", [0, 1, 2, 3, 4, 12, 13])], ("PA", "AP"))
    assert images == exp_images
    np.testing.assert_array_equal(labels, exp_labels)
    assert source.num_examples == (
        _fixture_count(prepared, "chexpert_v1", "validation", ("PA", "AP"))
        + _fixture_count(prepared, "nih_chest_xray14", "test", ("PA", "AP")))


def test_read_four_way_merge_yields_seven_labels_and_five_views(prepared):
    data_dir, _ = prepared
    names = ["chexpert_v1", "mimic_cxr_jpg", "nih_chest_xray14", "padchest"]
    source = xray.read(names, "train", data_dir=data_dir, builder_config="full")
    assert source.label_names == SEVEN
    images, labels = _materialise(source)
    assert labels.shape == (len(images), 7)
    exp_images, exp_labels = _expected(prepared, [
        ("chexpert_v1", "train", [0, 1, 2, 3, 8, 10, 11]),
        ("mimic_cxr_jpg", "train", [0, 1, 2, 3, 8, 10, 11]),
        ("nih_chest_xray14", "train", [0, 1, 2, 3, 4, 12, 13]),
        ("padchest", "train", [3, 5, 6, 8, 9, 22, 23])], xray.FIVE_VIEWS)
    assert images == exp_images
    np.testing.assert_array_equal(labels, exp_labels)
    assert source.num_examples == len(images)
    # CheXpert laterals ('L') are in; MIMIC laterals ('LATERAL') are not.
    chexpert_views = [e.view for e in prepared[1]["chexpert_v1"].kept("train")]
    mimic_views = [e.view for e in prepared[1]["mimic_cxr_jpg"].kept("train")]
    assert "L" in chexpert_views and "LATERAL" in mimic_views
    n_chexpert = _fixture_count(prepared, "chexpert_v1", "train", xray.FIVE_VIEWS)
    n_mimic = _fixture_count(prepared, "mimic_cxr_jpg", "train", xray.FIVE_VIEWS)
    assert n_mimic == _fixture_count(prepared, "mimic_cxr_jpg", "train", ("PA", "AP"))
    assert n_chexpert > _fixture_count(prepared, "chexpert_v1", "train", ("PA", "AP"))


def test_read_chexpert_mimic_13_concatenates_mimic_first(prepared):
    data_dir, _ = prepared
    source = xray.read(["chexpert_v1", "mimic_cxr_jpg"], "validation", data_dir=data_dir,
                       builder_config="full", label_set="chexpert_mimic_13")
    assert source.label_names == _ref_pathologies("chexpert_v1")
    images, labels = _materialise(source)
    exp_images, exp_labels = _expected(prepared, [
        ("mimic_cxr_jpg", "validation", list(range(13))),
        ("chexpert_v1", "validation", list(range(13)))], ("PA", "AP"))
    assert images == exp_images
    np.testing.assert_array_equal(labels, exp_labels)


def test_read_explicit_views(prepared):
    data_dir, _ = prepared
    source = xray.read(["chexpert_v1"], "train", data_dir=data_dir, builder_config="full",
                       views=["L"])
    images, labels = _materialise(source)
    exp_images, exp_labels = _expected(
        prepared, [("chexpert_v1", "train", list(range(13)))], ("L",))
    assert images == exp_images and len(images) == source.num_examples > 0
    np.testing.assert_array_equal(labels, exp_labels)


def test_read_padchest_keeps_16_bit_range(prepared):
    data_dir, written = prepared
    source = xray.read(["padchest"], "train", data_dir=data_dir, builder_config="full")
    assert len(source.label_names) == 27
    direct = _direct(data_dir, "padchest", "train")
    paths = {ex["image"]: ex["image_path"].decode() for ex in direct}
    for encoded in [ex["image"] for ex in source.dataset.take(3).as_numpy_iterator()]:
        image = xray.decode(tf.constant(encoded)).numpy()[:, :, 0]
        original = cv2.imread(str(written["padchest"].root / paths[encoded]), cv2.IMREAD_UNCHANGED)
        assert original.dtype == np.uint16
        np.testing.assert_allclose(image, original / 65535.0, rtol=0, atol=1e-6)
        values = np.rint(image * 65535).astype(np.int64)
        assert (values % 257 != 0).any()  # not an 8-bit image scaled up


def test_read_single_label_tuberculosis(prepared):
    data_dir, written = prepared
    source = xray.read(["tuberculosis_cxr"], "validation", data_dir=data_dir, builder_config="full")
    assert source.label_names == ["normal", "tuberculosis"] and not source.multilabel
    direct = _direct(data_dir, "tuberculosis_cxr", "test")
    by_path = {e.image_path: e.label for e in written["tuberculosis_cxr"].examples}
    out = list(source.dataset.as_numpy_iterator())
    assert [ex["image"] for ex in out] == [ex["image"] for ex in direct]
    assert [int(ex["label"]) for ex in out] == [by_path[ex["image_path"].decode()] for ex in direct]
    assert out[0]["label"].dtype == np.int64
    assert source.num_examples == len(out) == 2  # Shenzhen 6 -> 1 test, Montgomery 4 -> 1


def test_read_output_feeds_the_preprocessing(prepared):
    data_dir, _ = prepared
    source = xray.read(["chexpert_v1", "padchest"], "train", data_dir=data_dir,
                       builder_config="full")
    ds = source.dataset.enumerate().map(
        lambda i, ex: xray.preprocess_train(xray.decode(ex["image"]),
                                            tf.stack([i, tf.constant(0, tf.int64)]), 16))
    images = np.stack(list(ds.as_numpy_iterator()))
    assert images.shape == (source.num_examples, 16, 16, 3)
    assert images.min() >= -1 - 1e-6 and images.max() <= 1 + 1e-6 and images.std() > 0.05


def test_read_errors_name_the_problem(prepared, tmp_path):
    data_dir, _ = prepared
    with pytest.raises(FileNotFoundError, match="prepare"):
        xray.read(["chexpert_v1"], "train", data_dir=str(tmp_path), builder_config="full")
    no_split = r"chexpert_v1 has no split 'test'.*\['train', 'validation'\]"
    with pytest.raises(ValueError, match=no_split):
        xray.read(["chexpert_v1", "nih_chest_xray14"], "test", data_dir=data_dir,
                  builder_config="full")
    no_view = r"no example has a view in \['LATERAL'\]; views present: \[.*'L'"
    with pytest.raises(ValueError, match=no_view):
        xray.read(["chexpert_v1"], "train", data_dir=data_dir, builder_config="full",
                  views=["LATERAL"])
    with pytest.raises(ValueError, match="views=None"):
        xray.read(["tuberculosis_cxr"], "train", data_dir=data_dir, builder_config="full",
                  views=["PA"])
    with pytest.raises(TypeError, match="not the string"):
        xray.read(["chexpert_v1"], "train", data_dir=data_dir, builder_config="full", views="PA")
