"""get_datasets on TFDS sources (mocked and a real tiny on-disk dataset) and on a fake X-ray reader.

- Natural TFDS names run under ``tfds.testing.mock_data`` (random examples from each dataset's
  feature spec, no files).
- A tiny dataset prepared on disk exercises what mocks skip: split names, slicing, sizes.
- The X-ray branch runs against a stand-in for ``input_pipeline.xray`` that follows the
  interface the real module implements (encoded grey PNGs, multi-hot labels with NaN).
"""

import sys
import types

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import input_pipeline

import run_helpers

_CLASSES = {"cifar10": 10, "cifar100": 100, "oxford_iiit_pet": 37, "oxford_flowers102": 102, "imagenet2012": 1000}


def _config(name="cifar10", *, batch=4, eval_batch=4, kind="bit", resize=20, crop=16, **overrides):
    data = dict(name=name, data_dir=None, train_split="train", eval_splits={"test": "test"}, valid_ratio=0.0,
                valid_seed=0, train_dir="", val_dir="", shots=0, oversample=False,
                multilabel_force_classification=False, skip_corrupt=False, views=None,
                label_set="intersection", shuffle_buffer=64)
    data.update(overrides)
    return ml_collections.ConfigDict(dict(seed=0, batch_size=batch, eval_batch_size=eval_batch, data=data,
                                          pp=dict(kind=kind, resize=resize, crop=crop, norm="bit")))


def _get(config, **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return input_pipeline.get_datasets(config, **kwargs)


def _key(image):
    """Identifies an example whose preprocessing is the identity up to a horizontal flip."""
    assert image.dtype == np.uint8     # the stored pixel values
    return min(image.tobytes(), image[:, ::-1].tobytes())


# ----------------------------------------------------------------------------- mocked TFDS


@pytest.mark.parametrize("name", sorted(_CLASSES))
def test_natural_sources_give_batches_of_the_documented_form(name):
    kind, resize = ("inception", 20) if name == "imagenet2012" else ("bit", 20)
    with tfds.testing.mock_data(num_examples=10):
        datasets = _get(_config(name, kind=kind, resize=resize, crop=16))
        train = next(datasets.train)
        evals = list(datasets.evals["test"]())
    info = datasets.info
    assert (info.num_classes, len(info.label_names), info.multilabel, info.train_size, info.image_size) == (
        _CLASSES[name], _CLASSES[name], False, 10, (16, 16))
    assert train["image"].shape == (4, 16, 16, 3) and train["image"].dtype == np.uint8
    assert train["label"].shape == (4,) and train["label"].dtype == np.int32
    assert ((0 <= train["label"]) & (train["label"] < _CLASSES[name])).all()
    model_input = input_pipeline.model_input(train["image"], "bit")
    assert -1.0 <= model_input.min() and model_input.max() <= 1.0 and model_input.std() > 0.05
    assert [b["image"].shape for b in evals] == [(4, 16, 16, 3)] * 3
    assert sum(int(b["mask"].sum()) for b in evals) == 10 and evals[-1]["mask"].tolist() == [True, True, False, False]


def test_norm_option_applies_on_the_device_through_model_input():
    config = _config()
    with tfds.testing.mock_data(num_examples=4):
        bit = next(_get(config).train)["image"]
        config.pp.norm = "imagenet"
        imagenet = next(_get(config).train)["image"]
    # pp.norm leaves the uint8 batches alone (same examples, same augmentation) ...
    np.testing.assert_array_equal(imagenet, bit)
    # ... and model_input maps them to the model's input range.
    x01 = bit / 255.0
    np.testing.assert_allclose(input_pipeline.model_input(bit, "imagenet"),
                               (x01 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), atol=1e-5)
    np.testing.assert_allclose(input_pipeline.model_input(bit, "bit"), x01 * 2.0 - 1.0, atol=1e-6)


def test_unknown_dataset_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown data.name 'cifar11'.*'cifar10'.*'image_folder'"):
        _get(_config("cifar11"))


@pytest.mark.parametrize("change,message", [
    (dict(kind="resnet"), r"pp.kind 'resnet'.*\['bit', 'inception', 'xray'\]"),
    (dict(kind="xray"), "needs an X-ray source"),
    (dict(resize=8, crop=16), r"pp.resize \(8\) must be >= pp.crop \(16\)"),
    (dict(batch=6), "batch_size=6 must be a positive multiple of the host count 4"),
    (dict(shots=-1), "data.shots must be >= 0"),
    (dict(valid_ratio=1.0), r"valid_ratio must be in \[0, 1\)"),
])
def test_bad_config_values_are_errors_naming_the_field(change, message):
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(ValueError, match=message):
            _get(_config(**change), process_index=0, process_count=4)


def test_unknown_norm_is_an_error():
    config = _config()
    config.pp.norm = "zscore"
    with pytest.raises(ValueError, match=r"pp.norm 'zscore'.*\['bit', 'imagenet'\]"):
        _get(config)


def test_merging_natural_sources_is_an_error():
    with pytest.raises(ValueError, match=r"only X-ray sources can be merged"):
        _get(_config("cifar10+cifar100"))


# Streamed mode (cache budget 0): per-host epochs through a shuffle buffer. 32x32 CIFAR images
# with resize = crop = 32 pass through unchanged up to the flip, so `_key` identifies them.


def test_streamed_train_covers_each_host_share_once_per_epoch():
    config = _config(resize=32, crop=32, batch=4)
    with tfds.testing.mock_data(num_examples=20):
        everything = {_key(b["image"][i]) for b in _get(config).evals["test"]() for i in range(4) if b["mask"][i]}
        per_host = []
        for p in range(2):
            train = _get(config, process_index=p, process_count=2, cache_budget_bytes=0).train
            rows = [_key(img) for _ in range(10) for img in next(train)["image"]]   # 2 epochs of this host's 10
            per_host.append(rows[:10])
            assert set(rows[:10]) == set(rows[10:])     # the next epoch: same share, another order
            assert rows[:10] != rows[10:]
    assert len(everything) == 20
    assert set(per_host[0]).isdisjoint(per_host[1]) and set(per_host[0]) | set(per_host[1]) == everything
    assert len(set(per_host[0])) == 10


@pytest.mark.parametrize("oversample", [False, True])
def test_streamed_train_resumes_exactly(oversample):
    config = _config(resize=20, crop=16, batch=6, oversample=oversample)
    with tfds.testing.mock_data(num_examples=14):
        stream = _get(config, process_index=1, process_count=2, cache_budget_bytes=0).train
        expected = [next(stream) for _ in range(6)]
        resumed = _get(config, start_step=4, process_index=1, process_count=2, cache_budget_bytes=0).train
        for want in expected[4:]:     # step 4 starts inside this host's third epoch (7 per host)
            got = next(resumed)
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["label"], want["label"])


def test_indexed_and_streamed_read_the_same_examples():
    config = _config(resize=32, crop=32, batch=4)
    with tfds.testing.mock_data(num_examples=12):
        indexed, streamed = _get(config).train, _get(config, cache_budget_bytes=0).train
        indexed = {_key(img) for _ in range(3) for img in next(indexed)["image"]}
        streamed = {_key(img) for _ in range(3) for img in next(streamed)["image"]}
    assert indexed == streamed and len(indexed) == 12


def test_valid_ratio_carves_a_disjoint_val_split_from_tfds_train():
    config = _config(resize=32, crop=32, batch=5, eval_batch=4, valid_ratio=0.2, valid_seed=3)
    with tfds.testing.mock_data(num_examples=15):
        datasets = _get(config)
        val = [_key(b["image"][i]) for b in datasets.evals["val"]() for i in range(4) if b["mask"][i]]
        train = {_key(img) for _ in range(3) for img in next(datasets.train)["image"]}
    assert datasets.info.train_size == 12 and len(val) == 3    # int(15 * 0.8) train, as the reference
    assert len(train) == 12 and train.isdisjoint(val)
    assert set(datasets.evals) == {"test", "val"}


# ----------------------------------------------------------------------------- a real on-disk TFDS dataset


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (26, 32, 32, 3), np.uint8)
    labels = np.arange(26) % 3
    run_helpers.store_tfds(data_dir, "bitmed_tiny", images, labels,
                           {"train": (0, 20), "test": (20, 26)}, ["x", "y", "z"])
    run_helpers.store_tfds(data_dir, "bitmed_imbalanced", images[:20], np.repeat([0, 1], [16, 4]),
                           {"train": (0, 20)}, ["major", "minor"])
    return data_dir


def _tiny_config(data_dir, **kwargs):
    return _config("bitmed_tiny", data_dir=data_dir, resize=32, crop=32, **kwargs)


def test_real_tfds_split_slicing_and_sizes(tiny_tfds):
    reference = tfds.builder("bitmed_tiny", data_dir=tiny_tfds).as_dataset(split="train[:50%]")
    expected = {_key(ex["image"]) for ex in tfds.as_numpy(reference)}
    config = _tiny_config(tiny_tfds, train_split="train[:50%]", eval_splits={"half": "train[:50%]", "test": "test"},
                          batch=10, eval_batch=4)
    datasets = _get(config)
    assert datasets.info.train_size == 10 and datasets.info.label_names == ["x", "y", "z"]
    train = {_key(img) for img in next(datasets.train)["image"]}
    assert train == expected
    for hosts in (1, 2):
        seen = []
        for p in range(hosts):
            for b in _get(config, process_index=p, process_count=hosts).evals["half"]():
                seen.extend(_key(b["image"][i]) for i in range(len(b["mask"])) if b["mask"][i])
        assert sorted(seen) == sorted(expected)
    assert sum(int(b["mask"].sum()) for b in datasets.evals["test"]()) == 6


def test_real_tfds_streamed_hosts_read_their_own_slices(tiny_tfds):
    config = _tiny_config(tiny_tfds, batch=4)
    shares = []
    for p in range(2):
        train = _get(config, process_index=p, process_count=2, cache_budget_bytes=0).train
        shares.append({_key(img) for _ in range(5) for img in next(train)["image"]})   # 10 = one share
    assert all(len(s) == 10 for s in shares) and shares[0].isdisjoint(shares[1])


def test_real_tfds_streamed_oversampling_balances_classes(tiny_tfds):
    config = _config("bitmed_imbalanced", data_dir=tiny_tfds, resize=32, crop=32, batch=20, eval_splits={},
                     oversample=True)
    train = _get(config, cache_budget_bytes=0).train
    labels = np.concatenate([next(train)["label"] for _ in range(20)])   # ~20 epochs of ~20 draws
    assert 0.44 < labels.mean() < 0.56      # minority class: 4 of 20 images, half of the draws
    plain = _get(_config("bitmed_imbalanced", data_dir=tiny_tfds, resize=32, crop=32, batch=20, eval_splits={}),
                 cache_budget_bytes=0).train
    assert np.concatenate([next(plain)["label"] for _ in range(5)]).mean() == pytest.approx(0.2)


def test_unknown_split_lists_the_available_ones(tiny_tfds):
    with pytest.raises(ValueError, match=r"Unknown split \['tset'\].*\['test', 'train'\]"):
        _get(_tiny_config(tiny_tfds, eval_splits={"test": "tset"}))


# ----------------------------------------------------------------------------- X-ray branch (stand-in reader)

_XRAY_LABELS = ["Atelectasis", "Cardiomegaly", "Effusion"]
_NAN = float("nan")
# Example i: grey level 10 + 9 i; labels cycle through these rows (rows 0, 2, 5 have one positive).
_XRAY_ROWS = [[1, 0, 0], [1, 1, 0], [_NAN, 0, 1], [0, 0, 0], [_NAN, _NAN, _NAN], [0, 1, _NAN]]


def _fake_xray_module(sizes, bits=8):
    """A stand-in for input_pipeline.xray implementing its documented interface.

    Example i is a flat grey image of level 10 + 9 i (8 bits) or 1000 + 7 i (16 bits).
    """
    dtype, first, step = (tf.uint8, 10, 9) if bits == 8 else (tf.uint16, 1000, 7)
    module = types.ModuleType("input_pipeline.xray")
    module.XRAY_DATASETS = frozenset(sizes)

    def read(names, split, *, data_dir=None, views=None, label_set="intersection", builder_config="512"):
        del split, data_dir, views, label_set
        n = sum(sizes[name] for name in names)
        greys = [tf.io.encode_png(tf.fill([6 + i % 3, 5, 1], tf.constant(first + step * i, dtype))).numpy()
                 for i in range(n)]
        labels = np.array([_XRAY_ROWS[i % len(_XRAY_ROWS)] for i in range(n)], np.float32)
        dataset = tf.data.Dataset.from_tensor_slices({"image": greys, "label": labels})
        return types.SimpleNamespace(dataset=dataset, label_names=list(_XRAY_LABELS), multilabel=True,
                                     num_examples=n)

    def decode(encoded):
        return tf.cast(tf.io.decode_png(encoded, channels=1, dtype=dtype), tf.float32) / dtype.max

    def preprocess_eval(image01, size=224):
        return tf.tile(tf.image.resize(image01, [size, size]), [1, 1, 3]) * 2.0 - 1.0

    def preprocess_train(image01, seed, size=224):
        return tf.image.stateless_random_flip_left_right(preprocess_eval(image01, size), seed)

    module.read, module.decode = read, decode
    module.preprocess_eval, module.preprocess_train = preprocess_eval, preprocess_train
    return module


@pytest.fixture
def fake_xray(monkeypatch):
    module = _fake_xray_module({"fake_chexpert": 12, "fake_nih": 6})
    monkeypatch.setitem(sys.modules, "input_pipeline.xray", module)
    monkeypatch.setattr(input_pipeline, "xray", module, raising=False)
    return module


def _grey_level(image):
    """Example index from a preprocessed flat grey image (uint8, or float in [-1, 1])."""
    level = int(np.rint((input_pipeline.model_input(image, "bit").mean() + 1.0) * 127.5))
    return (level - 10) // 9


def test_xray_multilabel_labels_keep_nan_and_padding_is_all_nan(fake_xray):
    config = _config("fake_chexpert+fake_nih", kind="xray", crop=8, batch=4, eval_batch=8, eval_splits={"valid": "v"})
    datasets = _get(config)
    info = datasets.info
    assert (info.num_classes, info.label_names, info.multilabel, info.train_size) == (3, _XRAY_LABELS, True, 18)
    batch = next(datasets.train)
    assert batch["image"].shape == (4, 8, 8, 3) and batch["label"].dtype == np.float32
    assert batch["image"].dtype == np.float32     # pp.kind 'xray': already normalised
    for image, label in zip(batch["image"], batch["label"]):
        np.testing.assert_array_equal(label, np.array(_XRAY_ROWS[_grey_level(image) % 6], np.float32))
    evals = list(datasets.evals["valid"]())
    assert len(evals) == 3 and sum(int(b["mask"].sum()) for b in evals) == 18
    assert np.isnan(evals[-1]["label"][~evals[-1]["mask"]]).all()


def test_xray_force_classification_keeps_single_positive_images(fake_xray):
    config = _config("fake_chexpert", kind="xray", crop=8, batch=2, eval_batch=2, eval_splits={"valid": "v"},
                     multilabel_force_classification=True)
    datasets = _get(config)
    # Rows 0, 2 and 5 of every 6 have exactly one positive (NaN counts as 0): 6 of 12 examples.
    assert (datasets.info.multilabel, datasets.info.train_size, datasets.info.num_classes) == (False, 6, 3)
    class_of_row = {0: 0, 2: 2, 5: 1}
    for _ in range(3):
        batch = next(datasets.train)
        assert batch["label"].dtype == np.int32
        for image, label in zip(batch["image"], batch["label"]):
            assert label == class_of_row[_grey_level(image) % 6]
    seen = sorted(_grey_level(img) for b in datasets.evals["valid"]() for img in b["image"][b["mask"]])
    assert seen == [0, 2, 5, 6, 8, 11]


def test_xray_few_shot_needs_force_classification(fake_xray):
    with pytest.raises(ValueError, match="multilabel_force_classification"):
        _get(_config("fake_chexpert", kind="xray", crop=8, shots=1))
    config = _config("fake_chexpert", kind="xray", crop=8, shots=1, batch=2, eval_batch=2,
                     multilabel_force_classification=True)
    datasets = _get(config)
    assert datasets.info.train_size == 3    # one image of each class


def test_bit_preprocessing_on_grey_xray_images(fake_xray):
    config = _config("fake_nih", kind="bit", resize=10, crop=8, eval_splits={"valid": "v"})
    datasets = _get(config)
    batch = next(datasets.train)
    image = batch["image"]
    assert image.shape == (4, 8, 8, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], image[..., 2])   # grey repeated to RGB
    levels = sorted(_grey_level(img) for b in datasets.evals["valid"]() for img in b["image"][b["mask"]])
    assert levels == list(range(6))


def test_xray_preprocessing_keeps_16_bit_precision(monkeypatch):
    module = _fake_xray_module({"fake_padchest": 6}, bits=16)
    monkeypatch.setitem(sys.modules, "input_pipeline.xray", module)
    monkeypatch.setattr(input_pipeline, "xray", module, raising=False)
    config = _config("fake_padchest", kind="xray", crop=8, eval_splits={"valid": "v"})
    images = [img for b in _get(config).evals["valid"]() for img in b["image"][b["mask"]]]
    # Levels 1000 + 7 i of 65535: all within one 8-bit level, told apart in float32.
    assert all(img.dtype == np.float32 for img in images)
    levels = sorted(float(np.mean(img) + 1.0) / 2.0 * 65535 for img in images)
    np.testing.assert_allclose(levels, [1000 + 7 * i for i in range(6)], atol=0.1)


def test_mixing_xray_and_natural_names_is_an_error(fake_xray):
    with pytest.raises(ValueError, match=r"only X-ray sources can be merged.*fake_chexpert"):
        _get(_config("fake_chexpert+cifar10", kind="xray", crop=8))


# ----------------------------------------------------------------------------- X-ray branch (real builders)


@pytest.fixture(scope="module")
def xray_data(tmp_path_factory):
    """Tuberculosis and NIH fixtures in their on-disk layouts, prepared by the project's builders."""
    from input_pipeline.datasets import prepare  # the function the package exports

    import fixtures

    root = tmp_path_factory.mktemp("xray")
    tb = fixtures.write_tuberculosis(root / "tb", n_shenzhen=6, n_montgomery=4, image_size=(40, 36))
    nih = fixtures.write_nih(root / "nih", n_images=12, image_size=(32, 32))
    prepare("tuberculosis_cxr", manual_dir=tb.root, data_dir=root / "data", num_workers=1)
    prepare("nih_chest_xray14", manual_dir=nih.root, data_dir=root / "data", num_workers=1)
    return str(root / "data")


def _builder_examples(data_dir, name, split):
    builder = tfds.builder(name, data_dir=data_dir, config="512")
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def test_real_xray_single_label_source_with_bit_preprocessing(xray_data):
    config = _config("tuberculosis_cxr", data_dir=xray_data, resize=40, crop=32, eval_splits={"test": "validation"})
    datasets = _get(config)
    train, test = (_builder_examples(xray_data, "tuberculosis_cxr", s) for s in ("train", "test"))
    info = datasets.info
    assert (info.num_classes, info.label_names, info.multilabel, info.train_size) == (
        2, ["normal", "tuberculosis"], False, len(train))
    batch = next(datasets.train)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["label"].dtype == np.int32
    np.testing.assert_allclose(batch["image"][..., 0], batch["image"][..., 1])     # grey -> RGB
    evals = list(datasets.evals["test"]())
    labels = np.concatenate([b["label"][b["mask"]] for b in evals])
    assert sorted(labels.tolist()) == sorted(int(ex["label"]) for ex in test)


def test_real_xray_multilabel_source_with_xray_preprocessing(xray_data):
    config = _config("nih_chest_xray14", data_dir=xray_data, kind="xray", crop=32, eval_splits={"test": "validation"})
    datasets = _get(config)
    train = _builder_examples(xray_data, "nih_chest_xray14", "train")
    test = _builder_examples(xray_data, "nih_chest_xray14", "test")
    assert datasets.info.multilabel and datasets.info.num_classes == 14
    assert datasets.info.train_size == sum(ex["view"] in (b"PA", b"AP") for ex in train)
    batch = next(datasets.train)
    assert batch["label"].shape == (4, 14) and batch["label"].dtype == np.float32
    rows = {tuple(ex["labels"].tolist()) for ex in train}
    assert all(tuple(row.tolist()) in rows for row in batch["label"])
    evals = list(datasets.evals["test"]())
    assert sum(int(b["mask"].sum()) for b in evals) == len(test)


def test_real_xray_force_classification_few_shot(xray_data):
    config = _config("nih_chest_xray14", data_dir=xray_data, kind="xray", crop=32, eval_splits={},
                     multilabel_force_classification=True, shots=5)
    datasets = _get(config)
    single = [ex for ex in _builder_examples(xray_data, "nih_chest_xray14", "train") if ex["labels"].sum() == 1]
    per_class = np.bincount([int(ex["labels"].argmax()) for ex in single], minlength=14)
    assert datasets.info.train_size == int(np.minimum(per_class, 5).sum())
    assert not datasets.info.multilabel and next(datasets.train)["label"].dtype == np.int32
