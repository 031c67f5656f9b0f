"""Image-folder source: listing (against torchvision's ImageFolder), bad input, and get_datasets on it.

Images are tiny real PNG/JPEG files of one flat colour each, so a preprocessed image (any
resize/crop/flip of a constant image is constant) identifies the file it came from.
"""

import io
import logging
import os

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torchvision
from PIL import Image  # noqa: E402

import input_pipeline  # noqa: E402
from input_pipeline import image_folder  # noqa: E402


def _colour(i):
    return (17 + 23 * i) % 256, (101 + 59 * i) % 256, (200 + 31 * i) % 256


def _save(path, colour, fmt="PNG", size=(12, 9)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)


def _write_folder(root, counts, start=0):
    """counts: class name -> number of images; returns {colour: label id} (classes sorted by name)."""
    ids, i = {}, start
    for label, name in enumerate(sorted(counts)):
        for j in range(counts[name]):
            _save(os.path.join(root, name, f"img{j:02d}.png"), _colour(i))
            ids[_colour(i)] = label
            i += 1
    return ids


def _config(train_dir, val_dir="", **overrides):
    data = dict(name="image_folder", data_dir=None, train_split="train", eval_splits={}, valid_ratio=0.0,
                valid_seed=0, train_dir=str(train_dir), val_dir=str(val_dir), shots=0, oversample=False,
                multilabel_force_classification=False, skip_corrupt=False, views=None,
                label_set="intersection", shuffle_buffer=100)
    data.update(overrides)
    return ml_collections.ConfigDict(dict(seed=3, batch_size=6, eval_batch_size=6, data=data,
                                          pp=dict(kind="bit", resize=20, crop=16, norm="bit")))


def _colours_of(images):
    """Flat colour of each preprocessed (uint8) image."""
    assert images.dtype == np.uint8
    return [tuple(int(v) for v in np.rint(m)) for m in images.mean(axis=(1, 2))]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    train = _write_folder(root / "train", {"cat": 4, "dog": 4, "emu": 4})      # 12 = 2 global batches
    val = _write_folder(root / "val", {"cat": 3, "dog": 2, "emu": 2}, start=50)  # 7: padded
    return root, train, val


# ----------------------------------------------------------------------------- listing


def test_listing_matches_torchvision_image_folder(tmp_path):
    _save(tmp_path / "b_dog" / "x.png", (1, 2, 3))
    _save(tmp_path / "b_dog" / "deep" / "er" / "y.JPG", (1, 2, 3), fmt="JPEG")
    _save(tmp_path / "a_cat" / "z.jpeg", (1, 2, 3), fmt="JPEG")
    _save(tmp_path / "a_cat" / "a.bmp", (1, 2, 3), fmt="BMP")
    (tmp_path / "a_cat" / "notes.txt").write_text("not an image")
    (tmp_path / "stray_file.png").write_bytes(b"")   # files at the root are not classes
    listing = image_folder.list_image_folder(str(tmp_path))
    reference = torchvision.datasets.ImageFolder(str(tmp_path))
    assert listing.class_names == reference.classes == ["a_cat", "b_dog"]
    assert [(str(p), int(y)) for p, y in zip(listing.paths, listing.labels)] == reference.samples


def test_eval_folder_uses_training_class_ids(tmp_path):
    _save(tmp_path / "val" / "dog" / "x.png", (1, 2, 3))
    listing = image_folder.list_image_folder(str(tmp_path / "val"), class_names=["cat", "dog"])
    assert listing.labels.tolist() == [1]


def test_eval_folder_with_unknown_class_is_an_error(tmp_path):
    _save(tmp_path / "val" / "wolf" / "x.png", (1, 2, 3))
    with pytest.raises(ValueError, match=r"not in the training folder: \['wolf'\]"):
        image_folder.list_image_folder(str(tmp_path / "val"), class_names=["cat", "dog"])


def test_empty_class_folder_is_an_error(tmp_path):
    _save(tmp_path / "cat" / "x.png", (1, 2, 3))
    os.makedirs(tmp_path / "dog")
    (tmp_path / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"Empty class folder.*dog"):
        image_folder.list_image_folder(str(tmp_path))


def test_missing_root_and_no_classes_are_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        image_folder.list_image_folder(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no class sub-folders"):
        image_folder.list_image_folder(str(tmp_path))


def test_format_tensorflow_cannot_decode_is_an_error(tmp_path):
    _save(tmp_path / "cat" / "x.png", (1, 2, 3))
    _save(tmp_path / "cat" / "scan.tif", (1, 2, 3), fmt="TIFF")
    with pytest.raises(ValueError, match=r"cannot decode.*scan\.tif"):
        image_folder.list_image_folder(str(tmp_path))


def _write_corrupt(root):
    _save(root / "cat" / "good.jpg", (9, 9, 9), fmt="JPEG", size=(64, 48))
    _save(root / "dog" / "good.png", (9, 9, 9))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "dog" / "random.jpg").write_bytes(np.random.default_rng(1).bytes(3000))
    return [str(root / "cat" / "truncated.jpg"), str(root / "dog" / "random.jpg")]


def test_corrupt_images_are_reported_by_path(tmp_path):
    bad = _write_corrupt(tmp_path)
    with pytest.raises(ValueError) as err:
        image_folder.load_image_folder(str(tmp_path))
    message = str(err.value)
    assert "2 unreadable or corrupt" in message
    assert "--config.data.skip_corrupt=true" in message  # the flag a user types
    for path in bad:
        assert path in message
    assert "good" not in message


def test_skip_corrupt_drops_them_and_logs_the_count(tmp_path, caplog):
    bad = _write_corrupt(tmp_path)
    with caplog.at_level(logging.WARNING):
        listing = image_folder.load_image_folder(str(tmp_path), skip_corrupt=True)
    assert sorted(map(str, listing.paths)) == [str(tmp_path / "cat" / "good.jpg"), str(tmp_path / "dog" / "good.png")]
    assert listing.labels.tolist() == [0, 1]
    assert "Skipping 2 unreadable" in caplog.text and bad[0] in caplog.text


def test_class_with_only_corrupt_files_is_an_error_even_when_skipping(tmp_path):
    _save(tmp_path / "cat" / "good.png", (9, 9, 9))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "random.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with pytest.raises(ValueError, match=r"no readable image left.*\['dog'\]"):
        image_folder.load_image_folder(str(tmp_path), skip_corrupt=True)


def test_get_datasets_fails_on_a_corrupt_file_before_training(tmp_path):
    bad = _write_corrupt(tmp_path / "train")
    with pytest.raises(ValueError, match="truncated.jpg"):
        input_pipeline.get_datasets(_config(tmp_path / "train"), process_index=0, process_count=1)
    datasets = input_pipeline.get_datasets(_config(tmp_path / "train", skip_corrupt=True), process_index=0,
                                           process_count=1)
    assert datasets.info.train_size == 2 and bad


# ----------------------------------------------------------------------------- through get_datasets


def test_train_batches_shapes_labels_and_values(folders):
    root, train_ids, _ = folders
    datasets = input_pipeline.get_datasets(_config(root / "train"), process_index=0, process_count=1)
    info = datasets.info
    assert (info.num_classes, info.label_names, info.multilabel, info.train_size, info.image_size) == (
        3, ["cat", "dog", "emu"], False, 12, (16, 16))
    batch = next(datasets.train)
    assert batch["image"].shape == (6, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (6,) and batch["label"].dtype == np.int32
    model_input = input_pipeline.model_input(batch["image"], "bit")
    assert model_input.dtype == np.float32 and -1.0 <= model_input.min() and model_input.max() <= 1.0
    # Flat colours stay exact: after model_input, the file's colour in [-1, 1].
    np.testing.assert_allclose(model_input[:, 3, 5], np.asarray(_colours_of(batch["image"])) / 127.5 - 1.0, atol=1e-6)
    assert [train_ids[c] for c in _colours_of(batch["image"])] == batch["label"].tolist()


def test_jpeg_files_decode_only_the_crop_window_and_keep_their_colours(tmp_path):
    # JPEGs take the window-decoding path; a flat-colour file stays flat, at its decoded colour.
    colours = {}
    for i in range(6):
        path = tmp_path / f"class{i % 2}" / f"{i}.jpg"
        _save(path, _colour(i), fmt="JPEG", size=(40, 30))
        colours[tuple(np.asarray(Image.open(path).convert("RGB"))[15, 20].tolist())] = i % 2
    datasets = input_pipeline.get_datasets(_config(tmp_path), process_index=0, process_count=1)
    batch = next(datasets.train)
    assert batch["image"].shape == (6, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert (batch["image"] == batch["image"][:, :1, :1]).all()          # flat
    assert sorted(_colours_of(batch["image"])) == sorted(colours)        # one epoch: each file once
    assert [colours[c] for c in _colours_of(batch["image"])] == batch["label"].tolist()


def test_large_files_ship_the_crop_window_and_the_train_step_resizes_it(tmp_path):
    # Sources whose shorter side is at least 256 and under pp.resize: the batch carries each crop's
    # window unresized (packed, zero-padded) with its size and flip; model_input resizes it. A flat
    # file must come out flat at its colour: a wrong row stride or the padding would show.
    colours = {}
    for i in range(6):
        path = tmp_path / f"class{i % 2}" / f"{i}.png"
        _save(path, _colour(i), size=(300 + 10 * i, 270))
        colours[_colour(i)] = i % 2
    config = _config(tmp_path)
    config.pp.update(resize=288, crop=256)
    batch = next(input_pipeline.get_datasets(config, process_index=0, process_count=1).train)
    image, window = batch["image"], batch["window"]
    assert image.shape == (6, 256, 256, 3) and window.shape == (6, 3) and window.dtype == np.int32
    # 256 * 270 / 288 = 240 source rows; columns the same to the rounding of the resized width.
    assert (window[:, 0] == 240).all() and set(window[:, 1]) <= {240, 241} and set(window[:, 2]) <= {0, 1}
    assert not image[:, -1].any()                                           # shipped: padded, not resized
    model_input = np.asarray(input_pipeline.model_input(image, "bit", window))
    assert model_input.shape == (6, 256, 256, 3)
    flat = np.rint((model_input + 1.0) * 127.5).astype(np.uint8)
    assert (flat == flat[:, :1, :1]).all()
    assert [colours[c] for c in _colours_of(flat)] == batch["label"].tolist()
    assert sorted(_colours_of(flat)) == sorted(colours)


def test_train_epoch_is_covered_once_across_hosts_and_equal_for_any_host_count(folders):
    root, train_ids, _ = folders
    global_batches = {}
    for hosts in (1, 2, 3):
        per_host = [input_pipeline.get_datasets(_config(root / "train"), process_index=p, process_count=hosts)
                    for p in range(hosts)]
        steps = []
        for _ in range(2):   # 12 images / global batch 6 = one epoch
            rows = [next(d.train) for d in per_host]
            steps.append(sum((_colours_of(r["image"]) for r in rows), []))
        epoch = sum(steps, [])
        assert sorted(epoch) == sorted(train_ids)          # every image once, none twice
        global_batches[hosts] = steps
    assert global_batches[1] == global_batches[2] == global_batches[3]


def test_same_seed_same_stream_other_seed_other_stream(folders):
    root, _, _ = folders
    first = [next(input_pipeline.get_datasets(_config(root / "train"), process_index=0, process_count=1).train)
             for _ in range(2)]
    np.testing.assert_array_equal(first[0]["image"], first[1]["image"])
    other = _config(root / "train")
    other.seed = 4
    changed = next(input_pipeline.get_datasets(other, process_index=0, process_count=1).train)
    assert not np.array_equal(first[0]["image"], changed["image"])


def test_resume_at_step_gives_the_uninterrupted_batches(folders):
    root, _, _ = folders
    stream = input_pipeline.get_datasets(_config(root / "train"), process_index=1, process_count=2).train
    batches = [next(stream) for _ in range(7)]
    resumed = input_pipeline.get_datasets(_config(root / "train"), start_step=5, process_index=1,
                                          process_count=2).train
    for expected in batches[5:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["label"], expected["label"])


@pytest.mark.parametrize("hosts", [1, 2, 3])
def test_eval_is_exactly_once_with_masked_padding(folders, hosts):
    root, _, val_ids = folders
    per_host = [list(input_pipeline.get_datasets(_config(root / "train", root / "val"), process_index=p,
                                                 process_count=hosts).evals["val"]())
                for p in range(hosts)]
    assert len({len(batches) for batches in per_host}) == 1    # every host runs the same number of steps
    seen = []
    for batches in per_host:
        for b in batches:
            assert b["image"].shape == (6 // hosts, 16, 16, 3) and b["mask"].dtype == bool
            colours = _colours_of(b["image"][b["mask"]])
            assert [val_ids[c] for c in colours] == b["label"][b["mask"]].tolist()
            seen.extend(colours)
            assert (b["image"][~b["mask"]] == 0).all() and (b["label"][~b["mask"]] == 0).all()
    assert sorted(seen) == sorted(val_ids)


def test_valid_ratio_carves_val_from_the_training_folder(folders):
    root, train_ids, _ = folders
    datasets = input_pipeline.get_datasets(_config(root / "train", valid_ratio=0.25, valid_seed=1),
                                           process_index=0, process_count=1)
    assert datasets.info.train_size == 9      # int(12 * 0.75), as the reference
    val = [c for b in datasets.evals["val"]() for c in _colours_of(b["image"][b["mask"]])]
    train = sum((_colours_of(next(datasets.train)["image"]) for _ in range(3)), [])[:9]
    assert len(val) == 3 and set(val).isdisjoint(train) and set(val) | set(train) == set(train_ids)
    # The same carve as the reference: RandomState(valid_seed) shuffles the sorted file list, whose
    # k-th file has colour k here.
    order = np.arange(12)
    np.random.RandomState(1).shuffle(order)
    assert set(val) == {_colour(i) for i in order[9:]}


def test_valid_ratio_and_val_dir_together_is_an_error(folders):
    root, _, _ = folders
    with pytest.raises(ValueError, match="valid_ratio.*'val'"):
        input_pipeline.get_datasets(_config(root / "train", root / "val", valid_ratio=0.5), process_index=0,
                                    process_count=1)
