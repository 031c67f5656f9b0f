"""CheXpert, MIMIC-CXR and NIH builders run on fake copies of the datasets; prepare() and options."""

import csv
import math
import os
import pickle

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import datasets as xray_datasets
from input_pipeline import registry
from input_pipeline.datasets import _common, synthetic

import fixtures
from xray_helpers import load as _load
from xray_helpers import prepare as _prepare

NAN = math.nan


def _check_against_fixture(builder, fx, splits):
    for split in splits:
        got = _load(builder, split)
        want = {e.image_path: e for e in fx.kept(split)}
        assert sorted(got) == sorted(want), split
        for path, e in want.items():
            ex = got[path]
            assert ex["view"].decode() == e.view, path
            assert ex["patient_id"].decode() == e.patient_id, path
            np.testing.assert_array_equal(ex["labels"], e.labels, err_msg=path)
        assert builder.info.splits[split].num_examples == len(want)
        assert builder.info.metadata["kept"][split] == len(want)


# ----------------------------------------------------------------------------- CheXpert

CHEXPERT_LABELS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]


def test_chexpert_label_rules_views_and_images(tmp_path):
    rows = [
        # No Finding zeroes all 13, Support Devices and an uncertain Edema included.
        {"No Finding": "1.0", "Support Devices": "1.0", "Edema": "-1.0"},
        # -1 -> NaN, blank -> NaN, 0/1 kept; Pleural Effusion lands in slot 8 as "Effusion".
        {"Pleural Effusion": "1.0", "Edema": "-1.0", "Atelectasis": "0.0"},
        {"Frontal/Lateral": "Lateral", "AP/PA": "", "Cardiomegaly": "1.0"},
        {"Frontal/Lateral": "Frontal", "AP/PA": "LL", "Fracture": "0.0"},
        {"split": "valid", "AP/PA": "AP", "Pneumonia": "1.0"},
    ]
    fx = fixtures.write_chexpert(tmp_path / "CheXpert-v1.0", rows=rows, image_size=(80, 64))
    builder = _prepare("chexpert_v1", fx.root, tmp_path / "data")
    assert builder.info.metadata["label_names"] == CHEXPERT_LABELS
    train, valid = _load(builder, "train"), _load(builder, "validation")
    by_order = [train[e.image_path] for e in fx.examples[:4]] + [valid[fx.examples[4].image_path]]

    def vec(**values):
        out = np.full(13, NAN, np.float32)
        for k, v in values.items():
            out[CHEXPERT_LABELS.index(k.replace("_", " "))] = v
        return out

    np.testing.assert_array_equal(by_order[0]["labels"], np.zeros(13, np.float32))
    np.testing.assert_array_equal(by_order[1]["labels"], vec(Effusion=1, Edema=NAN, Atelectasis=0))
    assert CHEXPERT_LABELS.index("Effusion") == 8
    np.testing.assert_array_equal(by_order[2]["labels"], vec(Cardiomegaly=1))
    np.testing.assert_array_equal(by_order[3]["labels"], vec(Fracture=0))
    np.testing.assert_array_equal(by_order[4]["labels"], vec(Pneumonia=1))
    assert [ex["view"].decode() for ex in by_order] == ["PA", "PA", "L", "LL", "AP"]
    # Path prefix stripped; patient id = digits after "patient".
    assert by_order[0]["image_path"].decode() == "train/patient00001/study1/view1_frontal.jpg"
    assert by_order[0]["patient_id"].decode() == "00001"
    assert by_order[4]["patient_id"].decode() == "64541"
    # The 224 config holds what the reference's transform computes (to within rounding).
    for e in fx.examples[:2]:
        img = train[e.image_path]["image"]
        assert img.shape == (224, 224, 1) and img.dtype == np.uint8
        src = cv2.imread(os.path.join(fx.root, e.image_path))[..., 0]
        side = min(src.shape)
        top, left = src.shape[0] // 2 - side // 2, src.shape[1] // 2 - side // 2
        ref = cv2.resize(src[top:top + side, left:left + side].astype(np.float64) / 255, (224, 224),
                         interpolation=cv2.INTER_AREA) * 255
        assert np.abs(img[..., 0] - ref).max() <= 0.5 + 1e-3


def test_chexpert_random_fixture_small_release_full_config(tmp_path):
    fx = fixtures.write_chexpert(tmp_path / "CheXpert-v1.0-small", n_train=10, n_valid=3,
                                 small=True, seed=3)
    with open(fx.root / "train.csv", newline="") as f:
        header = next(csv.reader(f))
        first_path = next(csv.reader(f))[0]
    assert header == list(synthetic.CHEXPERT_COLUMNS) and len(header) == 19
    assert first_path.startswith("CheXpert-v1.0-small/train/")
    builder = _prepare("chexpert_v1", fx.root, tmp_path / "data", config="full")
    _check_against_fixture(builder, fx, ["train", "validation"])
    ex = next(iter(_load(builder, "train").values()))
    src = cv2.imread(os.path.join(fx.root, ex["image_path"].decode()))[..., 0]
    np.testing.assert_array_equal(ex["image"][..., 0], src)  # original pixels, as OpenCV reads them
    assert builder.info.metadata["dropped"] == {}


def test_chexpert_bad_images_fail_by_default_or_are_counted(tmp_path):
    rows = [{}, {"image": "missing"}, {"image": "corrupt"}, {"split": "valid"}]
    fx = fixtures.write_chexpert(tmp_path / "root", rows=rows)
    missing = fx.examples[1].image_path
    with pytest.raises(FileNotFoundError, match=missing):  # raised through the decoding threads
        _prepare("chexpert_v1", fx.root, tmp_path / "d1", num_workers=2)
    # With the missing file supplied, the corrupt one is named next (decoded in this thread).
    synthetic.write_image(fx.root / missing, np.zeros((8, 8)), "ok", fmt="jpeg")
    with pytest.raises(_common.UnreadableImageError, match=fx.examples[2].image_path):
        _prepare("chexpert_v1", fx.root, tmp_path / "d2")
    os.remove(fx.root / missing)
    # The documented builder call with the switch: skip and count.
    builder = tfds.builder("chexpert_v1", data_dir=tmp_path / "d3", config="224",
                           skip_corrupt=True, num_workers=1)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(fx.root)))
    assert builder.info.splits["train"].num_examples == 1
    reloaded = tfds.builder("chexpert_v1", data_dir=tmp_path / "d3", config="224")
    assert reloaded.info.metadata["kept"] == {"train": 1, "validation": 1}
    assert reloaded.info.metadata["dropped"] == {"train": {"missing file": 1, "unreadable image": 1}}
    assert pickle.loads(pickle.dumps(builder))._skip_corrupt is True


def test_chexpert_missing_csv_file_or_column(tmp_path):
    fx = fixtures.write_chexpert(tmp_path / "root", n_train=2, n_valid=1)
    os.remove(fx.root / "valid.csv")
    with pytest.raises(FileNotFoundError, match=r"valid\.csv not found(.|\n)*stanfordmlgroup"):
        _prepare("chexpert_v1", fx.root, tmp_path / "d1")
    fx = fixtures.write_chexpert(tmp_path / "root2", n_train=2, n_valid=1)
    with open(fx.root / "train.csv", newline="") as f:
        rows = list(csv.reader(f))
    drop = rows[0].index("Edema")
    with open(fx.root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([r[:drop] + r[drop + 1:] for r in rows])
    with pytest.raises(ValueError, match=r"'Edema'.*root2/train\.csv"):
        _prepare("chexpert_v1", fx.root, tmp_path / "d2")


# ----------------------------------------------------------------------------- MIMIC


def test_mimic_join_split_views_and_drops(tmp_path):
    fx = fixtures.write_mimic(tmp_path / "2.0.0", n_subjects=4, seed=1)
    builder = _prepare("mimic_cxr_jpg", fx.root, tmp_path / "data")
    _check_against_fixture(builder, fx, ["train", "validation", "test"])
    dropped = builder.info.metadata["dropped"]
    n_nolabel = sum(e.dropped == "no labels for study" for e in fx.examples)
    n_nosplit = sum(e.dropped == "not in split file" for e in fx.examples)
    assert n_nolabel >= 1 and n_nosplit >= 1
    assert sum(v.get("no labels for study", 0) for v in dropped.values()) == n_nolabel
    assert dropped["unassigned"]["not in split file"] == n_nosplit
    views = {ex["view"].decode() for s in ("train", "validation", "test")
             for ex in _load(builder, s).values()}
    assert "LATERAL" in views  # verbatim, not renamed to L
    assert builder.info.metadata["default_views"] == ["PA", "AP"]


def test_mimic_explicit_study_rules(tmp_path):
    rows = [
        {"subject_id": 10000032, "study_id": 50000001, "ViewPosition": "PA", "split": "train",
         "labels": {"No Finding": "1.0", "Support Devices": "1.0"}},
        {"subject_id": 10000032, "study_id": 50000001, "ViewPosition": "LATERAL", "split": "train"},
        {"subject_id": 10000032, "study_id": 50000002, "ViewPosition": "AP", "split": "train",
         "labels": {"Pleural Effusion": "-1.0", "Edema": "1.0", "Fracture": "0.0"}},
        {"subject_id": 11000040, "study_id": 50000003, "ViewPosition": "AP", "split": "validate",
         "labels": None},  # no label row -> left out
        {"subject_id": 11000040, "study_id": 50000004, "ViewPosition": "", "split": "test",
         "labels": {"Pneumothorax": "1.0"}},
    ]
    fx = fixtures.write_mimic(tmp_path / "2.0.0", rows=rows)
    builder = _prepare("mimic_cxr_jpg", fx.root, tmp_path / "data")
    train = _load(builder, "train")
    e0, e1, e2 = fx.examples[:3]
    np.testing.assert_array_equal(train[e0.image_path]["labels"], np.zeros(13, np.float32))
    np.testing.assert_array_equal(train[e1.image_path]["labels"], np.zeros(13, np.float32))
    want = np.full(13, NAN, np.float32)
    want[CHEXPERT_LABELS.index("Edema")] = 1
    want[CHEXPERT_LABELS.index("Fracture")] = 0
    np.testing.assert_array_equal(train[e2.image_path]["labels"], want)
    assert e0.image_path.startswith("files/p10/p10000032/s50000001/")
    assert train[e1.image_path]["view"] == b"LATERAL"
    assert "validation" not in builder.info.splits  # its only image had no labels
    assert builder.info.metadata["dropped"] == {"validation": {"no labels for study": 1}}
    test = _load(builder, "test")
    assert [ex["view"] for ex in test.values()] == [b""]
    assert [ex["patient_id"] for ex in test.values()] == [b"11000040"]


def test_mimic_unreadable_label_file_is_named(tmp_path):
    fx = fixtures.write_mimic(tmp_path / "2.0.0", n_subjects=1)
    (fx.root / "mimic-cxr-2.0.0-chexpert.csv.gz").write_text("subject_id,study_id\n")  # not gzip
    with pytest.raises(ValueError, match=r"cannot read .*mimic-cxr-2\.0\.0-chexpert\.csv\.gz"):
        _prepare("mimic_cxr_jpg", fx.root, tmp_path / "data")


# ----------------------------------------------------------------------------- NIH

NIH_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
              "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
              "Pneumonia", "Pneumothorax"]


def test_nih_labels_splits_and_channel_zero(tmp_path):
    rows = [
        {"Finding Labels": "Effusion|Pleural_Thickening", "Patient ID": 7, "split": "train"},
        {"Finding Labels": "No Finding", "Patient ID": 8, "View Position": "AP", "split": "test"},
        {"Finding Labels": "Infiltration|Mass|Nodule", "Patient ID": 9, "split": "both"},
        {"Finding Labels": "Hernia", "Patient ID": 10, "split": None},
        {"Finding Labels": "Cardiomegaly", "Patient ID": 11, "Follow-up #": 0,
         "Image Index": "00000011_004.png", "image": "rgb", "split": "train"},
    ]
    fx = fixtures.write_nih(tmp_path / "NIH", rows=rows)
    header = (fx.root / "Data_Entry_2017_v2020.csv").read_text().splitlines()[0]
    assert header.endswith("OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    bbox = (fx.root / "BBox_List_2017.csv").read_text()
    assert bbox.startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    builder = _prepare("nih_chest_xray14", fx.root, tmp_path / "data", config="full")
    assert builder.info.metadata["label_names"] == NIH_LABELS
    train, test = _load(builder, "train"), _load(builder, "test")

    def vec(*names):
        return np.asarray([1.0 if n in names else 0.0 for n in NIH_LABELS], np.float32)

    np.testing.assert_array_equal(train["images/00000007_000.png"]["labels"],
                                  vec("Effusion", "Pleural_Thickening"))
    np.testing.assert_array_equal(test["images/00000008_000.png"]["labels"], vec())
    assert test["images/00000008_000.png"]["view"] == b"AP"
    both = "images/00000009_000.png"
    assert both in train and both in test  # listed in both files -> in both splits
    np.testing.assert_array_equal(train[both]["labels"], vec("Infiltration", "Mass", "Nodule"))
    assert "images/00000010_000.png" not in train | test
    assert builder.info.metadata["dropped"] == {
        "unassigned": {"not in train_val_list.txt or test_list.txt": 1}}
    rgb = train["images/00000011_004.png"]  # file name from the CSV, not rebuilt from Follow-up #
    src = cv2.imread(os.path.join(fx.root, "images/00000011_004.png"))
    np.testing.assert_array_equal(rgb["image"][..., 0], src[..., 0])  # OpenCV's channel 0
    assert rgb["patient_id"] == b"11"


def test_nih_random_fixture_and_missing_bbox_file(tmp_path):
    fx = fixtures.write_nih(tmp_path / "NIH", n_images=12, seed=2)
    builder = _prepare("nih_chest_xray14", fx.root, tmp_path / "data")
    _check_against_fixture(builder, fx, ["train", "test"])
    os.remove(fx.root / "BBox_List_2017.csv")
    with pytest.raises(FileNotFoundError, match="BBox_List_2017.csv"):
        _prepare("nih_chest_xray14", fx.root, tmp_path / "data2")


# ----------------------------------------------------------------------------- prepare()


def test_prepare_rejects_unknown_names_and_configs(tmp_path):
    with pytest.raises(ValueError, match="chexpert_v1.*covidx_cxr2.*mimic_cxr_jpg.*nih_chest_xray14"
                                         ".*padchest.*tuberculosis_cxr"):
        xray_datasets.prepare("chexpert", manual_dir=tmp_path, data_dir=tmp_path)
    with pytest.raises(ValueError, match="'full', '512', '224'"):
        xray_datasets.prepare("padchest", manual_dir=tmp_path, data_dir=tmp_path, config="256")


def test_registration_constants_and_default_config(tmp_path):
    for name, cls in xray_datasets.BUILDERS.items():
        assert tfds.builder_cls(name) is cls
        assert cls.MANUAL_DOWNLOAD_INSTRUCTIONS
        builder = tfds.builder(name, data_dir=tmp_path)  # no config given
        assert builder.builder_config.name == "512"
        assert builder.builder_config.size == 512
    assert sorted(xray_datasets.BUILDERS) == sorted(registry.XRAY_DATASETS)
    assert registry.DATASETS["padchest"].views == ("PA", "AP", "AP Supine", "L", "COSTAL")
    assert registry.DATASETS["chexpert_v1"].views == ("PA", "AP")
    # The reference reads every Tuberculosis image (transfer_learning/datasets/tuberculosis.py).
    assert registry.DATASETS["tuberculosis_cxr"].views is None
    assert registry.DATASETS["tuberculosis_cxr"].label_names == ("normal", "tuberculosis")
    assert len(registry.DATASETS["padchest"].label_names) == 27
