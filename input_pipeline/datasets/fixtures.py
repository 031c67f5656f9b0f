"""Small fake copies of the six X-ray datasets, in each one's exact on-disk layout.

Each `write_*` function writes a dataset root (the folder passed as manual_dir)
and returns a `Fixture`: the root and, per source row, what the builder should
make of it (`Expected`: split, view, patient_id, labels, or why it is left out).
The expectations are worked out here from the documented rules, independently
of the builders. Explicit `rows` let tests exercise each rule; see each writer.

Images carry a learnable signal: a chest-like noisy background plus, for every
positive label k, a bright blob at a label-specific place inside the central
square (so it survives the builders' centre crop). `signal` scales the blobs
(0 = no signal).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import math
import os
import pathlib
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from input_pipeline.datasets import chexpert, nih, padchest


@dataclasses.dataclass
class Expected:
    """What the builder should produce from one source row.

    Attributes:
      image_path: path relative to the dataset root.
      view: the derived view.
      patient_id: patient id text.
      split: builder split name; None when the row is left out, or when the
        builder draws the split at random (PadChest, Tuberculosis) - tests
        re-implement the reference's draw for those.
      labels: float32 label vector (multi-label sets), NaN = unknown.
      label: class index (COVIDx, Tuberculosis).
      dropped: reason the row is left out before images are read, else None.
      image: "ok", "missing", "corrupt", "rgb" (3 distinct channels) or "8bit".
      extra: other features (COVIDx `source`).
    """

    image_path: str
    view: str
    patient_id: str
    split: Optional[str]
    labels: Optional[np.ndarray] = None
    label: Optional[int] = None
    dropped: Optional[str] = None
    image: str = "ok"
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Fixture:
    """A written fake dataset: its root folder and the expected examples, in file order."""

    root: pathlib.Path
    examples: list

    def kept(self, split: Optional[str] = None) -> list:
        """Expected examples not left out by row rules and readable, optionally of one split."""
        out = [e for e in self.examples
               if e.dropped is None and e.image not in ("missing", "corrupt")]
        if split is not None:
            out = [e for e in out if e.split == split]
        return out


# ----------------------------------------------------------------------------- images


def synth_xray(
    rng: np.random.Generator,
    shape: tuple,
    positives: Sequence[int],
    n_labels: int,
    *,
    signal: float = 1.0,
) -> np.ndarray:
    """A chest-like float image in [0, 1] with a blob per positive label index.

    Label k of n_labels gets a Gaussian blob at cell k of a ceil(sqrt(n)) grid
    spanning the middle 60% of the central square; amplitude 0.45 * signal.
    """
    h, w = shape
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (xx + 0.5 - w / 2) / side + 0.5
    v = (yy + 0.5 - h / 2) / side + 0.5
    lungs = sum(np.exp(-((((u - cu) / 0.15) ** 2 + ((v - 0.52) / 0.28) ** 2) ** 2))
                for cu in (0.3, 0.7))
    spine = np.exp(-(((u - 0.5) / 0.05) ** 2))
    img = 0.55 - 0.3 * lungs + 0.2 * spine + rng.normal(0.0, 0.04, size=(h, w))
    grid = max(1, math.ceil(math.sqrt(max(n_labels, 1))))
    sigma = 0.25 / grid
    for k in positives:
        row, col = divmod(int(k), grid)
        cu = 0.2 + 0.6 * (col + 0.5) / grid
        cv = 0.2 + 0.6 * (row + 0.5) / grid
        img += 0.45 * signal * np.exp(-(((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma ** 2)))
    return np.clip(img, 0.0, 1.0)


def _quantize(img: np.ndarray, bits: int) -> np.ndarray:
    top = 65535 if bits == 16 else 255
    return np.rint(img * top).astype(np.uint16 if bits == 16 else np.uint8)


def _write_image(path: pathlib.Path, img: np.ndarray, kind: str, *, fmt: str, bits: int = 8):
    """Writes a float image in [0, 1] as `fmt` ("png"/"jpeg"), or a broken/missing/RGB file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        return
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image" if fmt == "png" else b"not a jpeg")
        return
    if kind == "rgb":
        gray = _quantize(img, 8)
        # Distinct planes, so tests can tell which one a builder kept.
        rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
        Image.fromarray(rgb, mode="RGB").save(path, format=fmt.upper())
        return
    if kind == "8bit" or bits == 8:
        Image.fromarray(_quantize(img, 8)).save(path, format=fmt.upper(), **(
            {"quality": 95} if fmt == "jpeg" else {}))
        return
    Image.fromarray(_quantize(img, 16)).save(path, format="PNG")


def _positives(labels: Optional[np.ndarray]) -> list:
    if labels is None:
        return []
    return [i for i, v in enumerate(labels) if v == 1]


def _write_csv(path: pathlib.Path, header: Sequence[str], rows: Sequence[Sequence], *,
               gz: bool = False, raw_header: Optional[str] = None) -> None:
    """Writes a CSV (optionally gzipped); raw_header replaces the header line verbatim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if raw_header is not None:
        buffer.write(raw_header + "\n")
    else:
        writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fnum(v: str) -> float:
    return math.nan if v == "" else float(v)


def _chexpert_expected(values: dict) -> np.ndarray:
    """CheXpert/MIMIC rule written out plainly: No Finding 1 -> zeros; -1 -> NaN."""
    out = np.full(len(chexpert.LABEL_COLUMNS), np.nan, dtype=np.float32)
    if _fnum(values.get("No Finding", "")) == 1:
        out[:] = 0.0
        return out
    for i, column in enumerate(chexpert.LABEL_COLUMNS):
        v = _fnum(values.get(column, ""))
        out[i] = np.nan if v == -1 else v
    return out


def _random_observations(rng: np.random.Generator) -> dict:
    values = {}
    if rng.random() < 0.2:
        values["No Finding"] = "1.0"
    for column in chexpert.LABEL_COLUMNS:
        values[column] = str(rng.choice(["1.0", "0.0", "-1.0", "", "", ""]))
    return values


# ----------------------------------------------------------------------------- CheXpert

CHEXPERT_COLUMNS = (
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)


def write_chexpert(
    root: os.PathLike,
    *,
    n_train: int = 12,
    n_valid: int = 4,
    image_size: tuple = (64, 56),
    seed: int = 0,
    small: bool = False,
    rows: Optional[Sequence[dict]] = None,
    signal: float = 1.0,
) -> Fixture:
    """Writes train.csv, valid.csv and JPEGs of a fake CheXpert release under root.

    Args:
      root: the dataset root (manual_dir), created if needed.
      n_train, n_valid: random rows per CSV (ignored when rows is given).
      image_size: (H, W) of every image.
      seed: random seed for rows and pixels.
      small: write `CheXpert-v1.0-small/` Path prefixes instead of `CheXpert-v1.0/`.
      rows: explicit rows: dicts of CSV values (strings, e.g. "1.0", "-1.0", "")
        by column name, plus "split" ("train" or "valid", default train) and
        "image" ("ok", "missing", "corrupt"). Missing values are blank; Path,
        Sex, Age, Frontal/Lateral (Frontal) and AP/PA (PA) get defaults.
      signal: blob strength of positive labels.
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    prefix = chexpert.PATH_PREFIXES[1] if small else chexpert.PATH_PREFIXES[0]
    if rows is None:
        rows = []
        for split, n in (("train", n_train), ("valid", n_valid)):
            for _ in range(n):
                lateral = rng.random() < 0.25
                row = {"split": split, "Frontal/Lateral": "Lateral" if lateral else "Frontal",
                       "AP/PA": "" if lateral else str(
                           rng.choice(["AP", "PA", "LL"], p=[0.5, 0.45, 0.05]))}
                row.update(_random_observations(rng))
                rows.append(row)
    next_patient = {"train": 1, "valid": 64541}
    csv_rows = {"train": [], "valid": []}
    examples = []
    for row in rows:
        split = row.get("split", "train")
        if split not in csv_rows:
            raise ValueError(f"write_chexpert: split must be 'train' or 'valid', got {split!r}")
        values = {c: row.get(c, "") for c in CHEXPERT_COLUMNS}
        values["Frontal/Lateral"] = row.get("Frontal/Lateral", "Frontal")
        values["AP/PA"] = row.get("AP/PA", "PA" if values["Frontal/Lateral"] == "Frontal" else "")
        values["Sex"] = row.get("Sex", str(rng.choice(["Male", "Female"])))
        values["Age"] = row.get("Age", str(int(rng.integers(18, 91))))
        if "Path" not in row:
            patient = next_patient[split]
            next_patient[split] += 1
            kind = "lateral" if values["Frontal/Lateral"] == "Lateral" else "frontal"
            values["Path"] = f"{prefix}{split}/patient{patient:05d}/study1/view1_{kind}.jpg"
        rel = values["Path"].split("/", 1)[1]
        labels = _chexpert_expected(values)
        view = {"Frontal": values["AP/PA"], "Lateral": "L"}.get(values["Frontal/Lateral"],
                                                                 values["Frontal/Lateral"])
        kind = row.get("image", "ok")
        img = synth_xray(rng, image_size, _positives(labels), len(labels), signal=signal)
        _write_image(root / rel, img, kind, fmt="jpeg")
        csv_rows[split].append([values[c] for c in CHEXPERT_COLUMNS])
        examples.append(Expected(
            image_path=rel, view=view, patient_id=rel.split("/")[1][len("patient"):],
            split="train" if split == "train" else "validation", labels=labels, image=kind))
    for split, name in (("train", "train.csv"), ("valid", "valid.csv")):
        _write_csv(root / name, CHEXPERT_COLUMNS, csv_rows[split])
    return Fixture(root=root, examples=examples)


# ----------------------------------------------------------------------------- MIMIC

MIMIC_METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
MIMIC_LABEL_COLUMNS = (
    "subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
    "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_SPLITS = {"train": "train", "validate": "validation", "test": "test"}


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(rng.integers(0, 2 ** 32)):08x}" for _ in range(5))


def write_mimic(
    root: os.PathLike,
    *,
    n_subjects: int = 4,
    studies_per_subject: int = 2,
    images_per_study: int = 2,
    image_size: tuple = (64, 56),
    seed: int = 0,
    rows: Optional[Sequence[dict]] = None,
    signal: float = 1.0,
) -> Fixture:
    """Writes the four gzipped MIMIC-CXR-JPG CSVs and JPEGs under root (= 2.0.0 folder).

    Random data (rows=None) always includes a study without a label row, an image
    missing from the split file, LATERAL and blank views and all three splits.

    Args:
      rows: explicit images: dicts with "subject_id" (int, 8 digits starting 1),
        "study_id" (int, 8 digits starting 5), optional "dicom_id",
        "ViewPosition" (default PA), "split" ("train", "validate", "test" or None =
        absent from the split file), "labels" ({column: "1.0"/"-1.0"/""...} for the
        study, or None = the study has no label row; the first image of a study
        decides) and "image" ("ok", "missing", "corrupt").
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    if rows is None:
        rows = []
        split_cycle = ["train", "validate", "test", "train"]
        for s in range(n_subjects):
            subject = 10000032 + 1000 * s
            split = split_cycle[s % len(split_cycle)]
            for t in range(studies_per_subject):
                study = 50414267 + 100 * s + t
                labels = None if (s, t) == (0, 0) else _random_observations(rng)
                for k in range(images_per_study):
                    view = str(rng.choice(["PA", "AP", "LATERAL", "AP", "PA", "LL", ""]))
                    in_split = not (s == n_subjects - 1 and t == 0 and k == 0)
                    rows.append({"subject_id": subject, "study_id": study, "ViewPosition": view,
                                 "split": split if in_split else None, "labels": labels})
    metadata, label_rows, split_rows, examples = [], [], [], []
    study_labels = {}
    for row in rows:
        subject, study = int(row["subject_id"]), int(row["study_id"])
        dicom = row.get("dicom_id") or _dicom_id(rng)
        if (subject, study) not in study_labels:
            study_labels[(subject, study)] = row.get("labels")
            if row.get("labels") is not None:
                values = row["labels"]
                label_rows.append(
                    [subject, study] + [values.get(c, "") for c in MIMIC_LABEL_COLUMNS[2:]])
        values = study_labels[(subject, study)]
        view = row.get("ViewPosition", "PA")
        h, w = image_size
        metadata.append([dicom, subject, study, "CHEST (PA AND LAT)", view, h, w, 21800506,
                         "213014.531", "CHEST (PA AND LAT)", "postero-anterior", "Erect"])
        if row.get("split") is not None:
            split_rows.append([dicom, study, subject, row["split"]])
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        labels = None if values is None else _chexpert_expected(values)
        if values is None:
            dropped = "no labels for study"
        elif row.get("split") is None:
            dropped = "not in split file"
        else:
            dropped = None
        kind = row.get("image", "ok")
        img = synth_xray(rng, image_size, _positives(labels), len(chexpert.LABEL_NAMES), signal=signal)
        _write_image(root / rel, img, kind, fmt="jpeg")
        examples.append(Expected(
            image_path=rel, view=view, patient_id=str(subject),
            split=None if dropped else MIMIC_SPLITS[row["split"]], labels=labels, dropped=dropped,
            image=kind))
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_METADATA_COLUMNS, metadata, gz=True)
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", MIMIC_LABEL_COLUMNS, label_rows, gz=True)
    _write_csv(root / "mimic-cxr-2.0.0-negbio.csv.gz", MIMIC_LABEL_COLUMNS, label_rows, gz=True)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", MIMIC_SPLIT_COLUMNS, split_rows, gz=True)
    return Fixture(root=root, examples=examples)


# ----------------------------------------------------------------------------- NIH

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def write_nih(
    root: os.PathLike,
    *,
    n_images: int = 12,
    image_size: tuple = (64, 64),
    seed: int = 0,
    rows: Optional[Sequence[dict]] = None,
    signal: float = 1.0,
) -> Fixture:
    """Writes Data_Entry_2017_v2020.csv, BBox_List_2017.csv, the split lists and PNGs.

    Random data includes a file-name suffix that differs from Follow-up #, a
    "No Finding" row, an image in neither list, and both AP and PA views.

    Args:
      rows: explicit images: dicts with "Finding Labels" (default "No Finding"),
        "Patient ID" (int), "Follow-up #", "Image Index" (default
        <8-digit patient>_<3-digit follow-up>.png), "View Position" (default PA),
        "split" ("train", "test", "both" or None = in neither list) and "image"
        ("ok", "missing", "corrupt", "rgb").
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    if rows is None:
        rows = []
        for i in range(n_images):
            k = int(rng.integers(0, 3))
            findings = "No Finding" if k == 0 else "|".join(
                sorted(rng.choice(nih.LABEL_NAMES, size=k, replace=False).tolist()))
            split = "test" if i % 4 == 3 else "train"
            if i == n_images - 1:
                split = None
            row = {"Finding Labels": findings, "Patient ID": 1 + i // 2, "Follow-up #": i % 2,
                   "View Position": "PA" if rng.random() < 0.6 else "AP", "split": split}
            if i == 1:  # the name's suffix need not equal Follow-up # in the real file
                row["Image Index"] = f"{1 + i // 2:08d}_007.png"
            rows.append(row)
    entries, bbox, lists, examples = [], [], {"train": [], "test": []}, []
    for row in rows:
        patient = int(row.get("Patient ID", 1))
        follow = int(row.get("Follow-up #", 0))
        name = row.get("Image Index", f"{patient:08d}_{follow:03d}.png")
        findings = row.get("Finding Labels", "No Finding")
        view = row.get("View Position", "PA")
        h, w = image_size
        entries.append([name, findings, follow, patient, int(rng.integers(20, 90)),
                        str(rng.choice(["M", "F"])), view, w, h, 0.143, 0.143])
        if "Effusion" in findings and len(bbox) < 3:
            bbox.append([name, "Effusion", 10.5, 20.25, 30.0, 40.0])
        split = row.get("split", "train")
        for s in ("train", "test"):
            if split in (s, "both"):
                lists[s].append(name)
        labels = np.asarray([1.0 if n in findings else 0.0 for n in nih.LABEL_NAMES], np.float32)
        kind = row.get("image", "ok")
        img = synth_xray(rng, image_size, _positives(labels), len(labels), signal=signal)
        _write_image(root / "images" / name, img, kind, fmt="png")
        splits = [s for s in ("train", "test") if split in (s, "both")]
        for s in splits or [None]:
            examples.append(Expected(
                image_path=f"images/{name}", view=view, patient_id=str(patient), split=s,
                labels=labels, dropped=None if s else "not in train_val_list.txt or test_list.txt",
                image=kind))
    _write_csv(root / "Data_Entry_2017_v2020.csv", (), entries, raw_header=NIH_HEADER)
    _write_csv(root / "BBox_List_2017.csv", (), bbox, raw_header=NIH_BBOX_HEADER)
    for s, fname in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        (root / fname).write_text("".join(n + "\n" for n in lists[s]))
    return Fixture(root=root, examples=examples)


# ----------------------------------------------------------------------------- PadChest

PADCHEST_COLUMNS = (
    "", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
    "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
    "Modality_DICOM", "Manufacturer_DICOM", "PhotometricInterpretation_DICOM",
    "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM", "SpatialResolution_DICOM",
    "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM",
    "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
)
# Raw PadChest terms, including ones that reach labels only through substrings/synonyms.
PADCHEST_TERMS = (
    "normal", "pleural effusion", "cardiomegaly", "laminar atelectasis", "aortic elongation",
    "descendent aortic elongation", "calcified adenopathy", "interstitial pattern",
    "air bronchogram", "apical pleural thickening", "pacemaker", "electrical device",
    "hiatal hernia", "pseudonodule", "subcutaneous emphysema", "rib fracture",
    "tuberculosis sequelae", "calcified granuloma", "scoliosis", "costophrenic angle blunting",
    "copd signs", "vertebral degenerative changes",
)
PADCHEST_PROJECTIONS = ("PA", "L", "AP", "AP_horizontal", "COSTAL", "UNK", "EXCLUDE")


def _padchest_labels_text(terms: Sequence[str]) -> str:
    """A Labels cell: a Python-list string, terms after the first with a leading space."""
    return "[" + ", ".join(repr(t if i == 0 else " " + t) for i, t in enumerate(terms)) + "]"


def _padchest_expected(text: str) -> np.ndarray:
    """PadChest rule written out plainly: name or synonym is a substring of the raw text."""
    return np.asarray([
        1.0 if (n.lower() in text or any(s in text for s in padchest.SYNONYMS.get(n, ()))) else 0.0
        for n in padchest.LABEL_NAMES
    ], dtype=np.float32)


def write_padchest(
    root: os.PathLike,
    *,
    n_images: int = 24,
    image_size: tuple = (64, 56),
    seed: int = 0,
    rows: Optional[Sequence[dict]] = None,
    signal: float = 1.0,
) -> Fixture:
    """Writes the gzipped 160K label CSV (all 36 columns) and flat 16-bit PNGs under root.

    Random data includes every projection (UNK, EXCLUDE, AP_horizontal ...), a
    literal `nan` Labels row, one of the reference's hard-coded excluded ImageIDs,
    a report spanning several lines and empty '' terms. Expected splits are None
    (tests re-draw the reference's RandomState(42) split).

    Args:
      rows: explicit images: dicts with "ImageID" (default generated), "PatientID",
        "Projection" (default PA), "Labels" (raw cell text, default "['normal']"),
        "Report", "ImageDir" (default "0") and "image" ("ok", "missing", "corrupt",
        "8bit"; "subdir" writes the PNG under <ImageDir>/ instead of the root).
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    if rows is None:
        rows = []
        excluded = sorted(padchest.EXCLUDED_IMAGE_IDS)[0]
        for i in range(n_images):
            k = int(rng.integers(1, 4))
            terms = rng.choice(PADCHEST_TERMS, size=k, replace=False).tolist()
            if i % 5 == 2:
                terms.append("")
            row = {"Projection": PADCHEST_PROJECTIONS[i % len(PADCHEST_PROJECTIONS)]
                   if i < 2 * len(PADCHEST_PROJECTIONS) else str(rng.choice(["PA", "L", "AP"])),
                   "Labels": _padchest_labels_text(terms), "PatientID": str(1000 + i // 2)}
            if i == 3:
                row["Labels"] = "nan"
            if i == 4:
                row["ImageID"] = excluded
            if i == 5:
                row["Report"] = "cardiomegalia.\nderrame pleural, \"leve\"."
            rows.append(row)
    csv_rows, examples = [], []
    for i, row in enumerate(rows):
        image_id = row.get("ImageID") or (
            f"2168401113669640{int(rng.integers(10 ** 12, 10 ** 13))}_{i:02d}-{i:03d}-{i:03d}.png")
        projection = row.get("Projection", "PA")
        text = row.get("Labels", "['normal']")
        patient = row.get("PatientID", str(1000 + i))
        image_dir = str(row.get("ImageDir", "0"))
        h, w = image_size
        values = {c: "" for c in PADCHEST_COLUMNS}
        values.update({
            "": str(i), "ImageID": image_id, "ImageDir": image_dir, "StudyDate_DICOM": "20091031",
            "StudyID": f"study{i}", "PatientID": patient, "PatientBirth": "1950.0",
            "PatientSex_DICOM": "M", "ViewPosition_DICOM": "POSTEROANTERIOR", "Projection": projection,
            "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No",
            "Modality_DICOM": "CR", "Rows_DICOM": str(h), "Columns_DICOM": str(w),
            "BitsStored_DICOM": "12", "ReportID": str(4000 + i),
            "Report": row.get("Report", "sin hallazgos."), "MethodLabel": "Physician",
            "Labels": text, "Localizations": "[]", "LabelsLocalizationsBySentence": "[['normal']]",
            "labelCUIS": "[]", "LocalizationsCUIS": "[]",
        })
        csv_rows.append([values[c] for c in PADCHEST_COLUMNS])
        view = padchest.VIEW_RENAMES.get(projection, projection)
        if view not in padchest.SPLIT_VIEWS:
            dropped = f"projection {projection or '(blank)'} (not one of the 5 views)"
        elif text in padchest.PANDAS_NA_VALUES:
            dropped = "Labels is nan"
        elif image_id in padchest.EXCLUDED_IMAGE_IDS:
            dropped = "hard-coded excluded"
        else:
            dropped = None
        labels = None if text in padchest.PANDAS_NA_VALUES else _padchest_expected(text)
        kind = row.get("image", "ok")
        rel = f"{image_dir}/{image_id}" if kind == "subdir" else image_id
        img = synth_xray(rng, image_size, _positives(labels), len(padchest.LABEL_NAMES), signal=signal)
        _write_image(root / rel, img, "ok" if kind == "subdir" else kind, fmt="png", bits=16)
        examples.append(Expected(image_path=rel, view=view, patient_id=patient, split=None,
                                 labels=labels, dropped=dropped, image=kind))
    _write_csv(root / padchest.CSV_FILE, PADCHEST_COLUMNS, csv_rows, gz=True)
    return Fixture(root=root, examples=examples)


# ----------------------------------------------------------------------------- COVIDx


def write_covidx(
    root: os.PathLike,
    *,
    n_train: int = 8,
    n_test: int = 4,
    image_size: tuple = (60, 72),
    seed: int = 0,
    rows: Optional[Sequence[dict]] = None,
    signal: float = 1.0,
) -> Fixture:
    """Writes train.txt, test.txt and images under train/ and test/.

    Random data includes a sirm line whose patient id holds a space
    ("COVID 1 COVID(1).png positive sirm"), JPEG and PNG files and an RGB image.

    Args:
      rows: explicit lines: dicts with "split" ("train"/"test"), "patient_id",
        "file_name", "label" ("positive"/"negative"), "source" and "image"
        ("ok", "missing", "corrupt", "rgb").
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    if rows is None:
        rows = []
        sources = ("cohen", "actmed", "fig1", "sirm", "ricord", "rsna")
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                label = "positive" if i % 2 == 0 else "negative"
                ext = ".jpg" if i % 3 == 1 else ".png"
                row = {"split": split, "patient_id": f"{split}-{i:04d}", "label": label,
                       "file_name": f"{split}-{i:04d}-img{ext}", "source": sources[i % len(sources)]}
                if split == "train" and i == 0:
                    row.update(patient_id="COVID 1", file_name="COVID(1).png", source="sirm")
                if split == "train" and i == 2:
                    row["image"] = "rgb"
                rows.append(row)
    lines = {"train": [], "test": []}
    examples = []
    for row in rows:
        split = row["split"]
        label = row["label"]
        lines[split].append(f"{row['patient_id']} {row['file_name']} {label} {row['source']}")
        kind = row.get("image", "ok")
        fmt = "jpeg" if row["file_name"].lower().endswith((".jpg", ".jpeg")) else "png"
        img = synth_xray(rng, image_size, [0] if label == "positive" else [], 1, signal=signal)
        _write_image(root / split / row["file_name"], img, kind, fmt=fmt)
        examples.append(Expected(
            image_path=f"{split}/{row['file_name']}", view="", patient_id=row["patient_id"],
            split=split, label=1 if label == "positive" else 0, image=kind,
            extra={"source": row["source"]}))
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("".join(line + "\n" for line in lines[split]))
    return Fixture(root=root, examples=examples)


# ----------------------------------------------------------------------------- Tuberculosis

TB_FOLDERS = {
    "shenzhen": ("ChinaSet_AllFiles/ChinaSet_AllFiles", "CHNCXR"),
    "montgomery": ("Montgomery/MontgomerySet", "MCUCXR"),
}


def write_tuberculosis(
    root: os.PathLike,
    *,
    n_shenzhen: int = 20,
    n_montgomery: int = 8,
    image_size: tuple = (64, 60),
    seed: int = 0,
    signal: float = 1.0,
    corrupt: Sequence[str] = (),
) -> Fixture:
    """Writes both collections' CXR_png folders (plus ClinicalReadings, ManualMask) under root.

    File names are <PREFIX>_<4-digit number>_<label>.png with random labels.
    Expected splits are None (tests re-draw the reference's per-folder split).

    Args:
      corrupt: file names to write as broken PNGs.
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    examples = []
    for collection, n in (("shenzhen", n_shenzhen), ("montgomery", n_montgomery)):
        base, prefix = TB_FOLDERS[collection]
        for number in range(1, n + 1):
            label = int(rng.integers(0, 2))
            name = f"{prefix}_{number:04d}_{label}.png"
            img = synth_xray(rng, image_size, [0] if label else [], 1, signal=signal)
            kind = "corrupt" if name in corrupt else "ok"
            _write_image(root / base / "CXR_png" / name, img, kind, fmt="png")
            readings = root / base / "ClinicalReadings" / name.replace(".png", ".txt")
            readings.parent.mkdir(parents=True, exist_ok=True)
            finding = "normal" if label == 0 else "PTB in the left upper field"
            readings.write_text(f"male 35yrs\n{finding}\n")
            if collection == "montgomery":
                (root / base / "ManualMask" / "leftMask").mkdir(parents=True, exist_ok=True)
            examples.append(Expected(image_path=f"{base}/CXR_png/{name}", view="PA",
                                     patient_id=name[:-len("_0.png")], split=None, label=label,
                                     image=kind))
    return Fixture(root=root, examples=examples)
