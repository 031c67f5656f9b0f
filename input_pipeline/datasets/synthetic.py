"""Synthetic chest X-rays written in each dataset's exact on-disk layout (the demo and the tests).

Each `write_*` function writes a dataset root (the folder passed to a builder as manual_dir), in
the layout of /work/shared/datasets/FORMATS.md, and returns what it wrote: one `Written` record
per image row, in file order, holding the raw values written for it. What a builder should make
of those values (labels, views, drops) is not this module's business; the tests work it out
independently in tests/fixtures.py.

Images carry a learnable signal: a chest-like noisy background plus, for every finding an image
shows, a bright blob at a finding-specific place inside the central square (so it survives the
builders' centre crop). `signal` scales the blobs (0 = no signal).
"""

from __future__ import annotations

import ast
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


@dataclasses.dataclass(frozen=True)
class Written:
    """One image row a writer put on disk.

    Attributes:
      image_path: the image's path relative to the dataset root.
      split: the official split file or list that names the row, in the dataset's own words
        ("train"/"valid" for CheXpert, "train"/"validate"/"test" for MIMIC, "train"/"test"/"both"
        for NIH, "train"/"test" for COVIDx); None when no file names it or the dataset has none.
      row: the raw values written for the image: CSV cells by column name (strings as in the
        file), or the fields of its line; see each writer.
      image: what was written at image_path: "ok", "missing" (nothing), "corrupt" (not an
        image), "rgb" (3 distinct channels), "8bit" (PadChest in 8 bits) or "subdir" (PadChest,
        written under its ImageDir folder).
    """

    image_path: str
    split: Optional[str]
    row: dict
    image: str = "ok"


# ----------------------------------------------------------------------------- images


def _chest(rng: np.random.Generator, shape: tuple) -> tuple:
    """A noisy chest-like background in [0, 1] (two dark lungs, a bright spine), with the
    coordinates (u, v) of each pixel in units of the central square (0..1 inside it)."""
    h, w = shape
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (xx + 0.5 - w / 2) / side + 0.5
    v = (yy + 0.5 - h / 2) / side + 0.5
    lungs = sum(np.exp(-((((u - cu) / 0.15) ** 2 + ((v - 0.52) / 0.28) ** 2) ** 2))
                for cu in (0.3, 0.7))
    spine = np.exp(-(((u - 0.5) / 0.05) ** 2))
    img = 0.55 - 0.3 * lungs + 0.2 * spine + rng.normal(0.0, 0.04, size=(h, w))
    return img, u, v


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
    img, u, v = _chest(rng, shape)
    grid = max(1, math.ceil(math.sqrt(max(n_labels, 1))))
    sigma = 0.25 / grid
    for k in positives:
        row, col = divmod(int(k), grid)
        cu = 0.2 + 0.6 * (col + 0.5) / grid
        cv = 0.2 + 0.6 * (row + 0.5) / grid
        img += 0.45 * signal * np.exp(-(((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma ** 2)))
    return np.clip(img, 0.0, 1.0)


# Style "shapes" (the demo): each finding is a small figure of its own, drawn at a random place
# and angle inside the central square, so that only its form tells which finding it is. Each
# figure is a function of local coordinates (a, b) in units of SHAPE_SIZE; dark ones subtract.
SHAPE_SIZE = 0.075  # of the central square's side: a radius of about 5 pixels at 64


def _disc(a, b):
    return np.exp(-(np.hypot(a, b) ** 4))


def _ring(a, b):
    return np.exp(-(((np.hypot(a, b) - 1.0) / 0.35) ** 2))


def _bar(a, b):
    return np.exp(-((a / 1.6) ** 4 + (b / 0.4) ** 2))


def _cross(a, b):
    return np.maximum(_bar(a, b), _bar(b, a))


def _dots(a, b):
    return sum(np.exp(-(((a - x) ** 2 + b ** 2) / 0.4 ** 2)) for x in (-1.0, 1.0))


def _target(a, b):
    return np.maximum(_ring(a, b), np.exp(-((np.hypot(a, b) / 0.4) ** 2)))


def _square(a, b):
    edge = np.maximum(np.abs(a), np.abs(b))
    return np.exp(-(((edge - 0.9) / 0.3) ** 2))


# (figure, sign): one per finding index; index 6 (CheXpert's Lung Lesion, a cavity) is the ring.
SHAPES = (
    (_disc, 1), (_bar, 1), (_cross, 1), (_dots, 1), (_target, 1), (_square, 1), (_ring, 1),
    (_disc, -1), (_bar, -1), (_cross, -1), (_dots, -1), (_target, -1), (_ring, -1),
)


def synth_shapes(
    rng: np.random.Generator,
    shape: tuple,
    findings: Sequence[int],
    *,
    signal: float = 1.0,
) -> np.ndarray:
    """A chest-like float image in [0, 1] with the figure SHAPES[k] for each finding k.

    Each figure lies at a uniform place in the middle half of the central square, at a uniform
    angle; amplitude 0.45 * signal (negative for the dark figures).
    """
    img, u, v = _chest(rng, shape)
    for k in findings:
        figure, sign = SHAPES[int(k)]
        cu, cv = rng.uniform(0.25, 0.75, size=2)
        angle = rng.uniform(0.0, 2 * math.pi)
        du, dv = (u - cu) / SHAPE_SIZE, (v - cv) / SHAPE_SIZE
        a = du * math.cos(angle) + dv * math.sin(angle)
        b = -du * math.sin(angle) + dv * math.cos(angle)
        img += sign * 0.45 * signal * figure(a, b)
    return np.clip(img, 0.0, 1.0)


def _quantize(img: np.ndarray, bits: int) -> np.ndarray:
    top = 65535 if bits == 16 else 255
    return np.rint(img * top).astype(np.uint16 if bits == 16 else np.uint8)


def write_image(path: pathlib.Path, img: np.ndarray, kind: str, *, fmt: str, bits: int = 8) -> None:
    """Writes a float image in [0, 1] as `fmt` ("png"/"jpeg"), or a broken/missing/RGB file.

    kind: "ok" (bits deep), "8bit", "rgb" (three distinct planes), "corrupt" or "missing".
    """
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


def _painter(style: str, n_labels: int):
    """paint(rng, shape, findings, signal=...) of a style: "grid" over n_labels, or "shapes"."""
    if style == "grid":
        return lambda rng, shape, findings, signal: synth_xray(rng, shape, findings, n_labels,
                                                               signal=signal)
    if style == "shapes":
        return synth_shapes
    raise ValueError(f"unknown style {style!r}; valid: grid, shapes")


# ----------------------------------------------------------------------------- CheXpert

CHEXPERT_COLUMNS = (
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding",
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
# The 13 observations (CheXpert's and MIMIC's), in alphabetical order: the order of their blobs.
OBSERVATIONS = tuple(sorted(CHEXPERT_COLUMNS[6:]))
CHEXPERT_PREFIXES = {False: "CheXpert-v1.0/", True: "CheXpert-v1.0-small/"}


def observations_shown(values: Optional[dict]) -> list:
    """Indices (into OBSERVATIONS) of the findings an image with these report values shows.

    A study marked "No Finding" shows none; otherwise each observation marked 1.0 (positive),
    not uncertain (-1.0) or negative ones.
    """
    if values is None or values.get("No Finding", "") == "1.0":
        return []
    return [i for i, c in enumerate(OBSERVATIONS) if values.get(c, "") == "1.0"]


def _random_observations(rng: np.random.Generator) -> dict:
    values = {}
    if rng.random() < 0.2:
        values["No Finding"] = "1.0"
    for column in OBSERVATIONS:
        values[column] = str(rng.choice(["1.0", "0.0", "-1.0", "", "", ""]))
    return values


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
    style: str = "grid",
) -> list:
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
      signal: blob strength of the findings shown.
      style: how a finding k (of OBSERVATIONS) is painted: "grid" (a blob at the k-th place of
        a grid, synth_xray) or "shapes" (the figure SHAPES[k] anywhere, synth_shapes).

    Returns:
      A `Written` per row, in file order (train.csv's, then valid.csv's, as given);
      its row holds the 19 CSV cells and its split is "train" or "valid".
    """
    root = pathlib.Path(root)
    paint = _painter(style, len(OBSERVATIONS))
    rng = np.random.default_rng(seed)
    prefix = CHEXPERT_PREFIXES[small]
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
    written = []
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
        kind = row.get("image", "ok")
        img = paint(rng, image_size, observations_shown(values), signal=signal)
        write_image(root / rel, img, kind, fmt="jpeg")
        csv_rows[split].append([values[c] for c in CHEXPERT_COLUMNS])
        written.append(Written(image_path=rel, split=split, row=values, image=kind))
    for split, name in (("train", "train.csv"), ("valid", "valid.csv")):
        _write_csv(root / name, CHEXPERT_COLUMNS, csv_rows[split])
    return written


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
) -> list:
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

    Returns:
      A `Written` per image, in metadata order; its row holds the metadata cells plus
      "labels": the study's label-file cells by column (None: the study has no label row),
      and its split is the split file's value (None: absent from the split file).
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
    metadata, label_rows, split_rows, written = [], [], [], []
    study_labels = {}
    for row in rows:
        subject, study = int(row["subject_id"]), int(row["study_id"])
        dicom = row.get("dicom_id") or _dicom_id(rng)
        if (subject, study) not in study_labels:
            values = row.get("labels")
            study_labels[(subject, study)] = None if values is None else {
                c: values.get(c, "") for c in MIMIC_LABEL_COLUMNS[2:]}
            if values is not None:
                label_rows.append(
                    [subject, study] + [values.get(c, "") for c in MIMIC_LABEL_COLUMNS[2:]])
        values = study_labels[(subject, study)]
        view = row.get("ViewPosition", "PA")
        h, w = image_size
        meta = [dicom, subject, study, "CHEST (PA AND LAT)", view, h, w, 21800506,
                "213014.531", "CHEST (PA AND LAT)", "postero-anterior", "Erect"]
        metadata.append(meta)
        if row.get("split") is not None:
            split_rows.append([dicom, study, subject, row["split"]])
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        kind = row.get("image", "ok")
        img = synth_xray(rng, image_size, observations_shown(values), len(OBSERVATIONS), signal=signal)
        write_image(root / rel, img, kind, fmt="jpeg")
        written.append(Written(image_path=rel, split=row.get("split"),
                               row={**dict(zip(MIMIC_METADATA_COLUMNS, map(str, meta))),
                                    "labels": values},
                               image=kind))
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_METADATA_COLUMNS, metadata, gz=True)
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", MIMIC_LABEL_COLUMNS, label_rows, gz=True)
    _write_csv(root / "mimic-cxr-2.0.0-negbio.csv.gz", MIMIC_LABEL_COLUMNS, label_rows, gz=True)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", MIMIC_SPLIT_COLUMNS, split_rows, gz=True)
    return written


# ----------------------------------------------------------------------------- NIH

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
               "OriginalImagePixelSpacing[x", "y]")
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# The 14 findings of the Finding Labels column (besides "No Finding"), alphabetical: blob order.
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)


def write_nih(
    root: os.PathLike,
    *,
    n_images: int = 12,
    image_size: tuple = (64, 64),
    seed: int = 0,
    rows: Optional[Sequence[dict]] = None,
    signal: float = 1.0,
) -> list:
    """Writes Data_Entry_2017_v2020.csv, BBox_List_2017.csv, the split lists and PNGs.

    Random data includes a file-name suffix that differs from Follow-up #, a
    "No Finding" row, an image in neither list, and both AP and PA views.

    Args:
      rows: explicit images: dicts with "Finding Labels" (default "No Finding"),
        "Patient ID" (int), "Follow-up #", "Image Index" (default
        <8-digit patient>_<3-digit follow-up>.png), "View Position" (default PA),
        "split" ("train", "test", "both" or None = in neither list) and "image"
        ("ok", "missing", "corrupt", "rgb").

    Returns:
      A `Written` per Data_Entry row; its row holds the 11 cells (NIH_COLUMNS) and its split
      says which lists name the image ("train": train_val_list.txt, "test", "both" or None).
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    if rows is None:
        rows = []
        for i in range(n_images):
            k = int(rng.integers(0, 3))
            findings = "No Finding" if k == 0 else "|".join(
                sorted(rng.choice(NIH_FINDINGS, size=k, replace=False).tolist()))
            split = "test" if i % 4 == 3 else "train"
            if i == n_images - 1:
                split = None
            row = {"Finding Labels": findings, "Patient ID": 1 + i // 2, "Follow-up #": i % 2,
                   "View Position": "PA" if rng.random() < 0.6 else "AP", "split": split}
            if i == 1:  # the name's suffix need not equal Follow-up # in the real file
                row["Image Index"] = f"{1 + i // 2:08d}_007.png"
            rows.append(row)
    entries, bbox, lists, written = [], [], {"train": [], "test": []}, []
    for row in rows:
        patient = int(row.get("Patient ID", 1))
        follow = int(row.get("Follow-up #", 0))
        name = row.get("Image Index", f"{patient:08d}_{follow:03d}.png")
        findings = row.get("Finding Labels", "No Finding")
        view = row.get("View Position", "PA")
        h, w = image_size
        entry = [name, findings, follow, patient, int(rng.integers(20, 90)),
                 str(rng.choice(["M", "F"])), view, w, h, 0.143, 0.143]
        entries.append(entry)
        if "Effusion" in findings and len(bbox) < 3:
            bbox.append([name, "Effusion", 10.5, 20.25, 30.0, 40.0])
        split = row.get("split", "train")
        for s in ("train", "test"):
            if split in (s, "both"):
                lists[s].append(name)
        kind = row.get("image", "ok")
        shown = [i for i, f in enumerate(NIH_FINDINGS) if f in findings.split("|")]
        img = synth_xray(rng, image_size, shown, len(NIH_FINDINGS), signal=signal)
        write_image(root / "images" / name, img, kind, fmt="png")
        written.append(Written(image_path=f"images/{name}", split=split,
                               row=dict(zip(NIH_COLUMNS, map(str, entry))), image=kind))
    _write_csv(root / "Data_Entry_2017_v2020.csv", (), entries, raw_header=NIH_HEADER)
    _write_csv(root / "BBox_List_2017.csv", (), bbox, raw_header=NIH_BBOX_HEADER)
    for s, fname in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        (root / fname).write_text("".join(n + "\n" for n in lists[s]))
    return written


# ----------------------------------------------------------------------------- PadChest

PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
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
# Raw PadChest terms, including ones that reach labels only through substrings/synonyms; an
# image shows a blob per term of this list in its Labels cell.
PADCHEST_TERMS = (
    "normal", "pleural effusion", "cardiomegaly", "laminar atelectasis", "aortic elongation",
    "descendent aortic elongation", "calcified adenopathy", "interstitial pattern",
    "air bronchogram", "apical pleural thickening", "pacemaker", "electrical device",
    "hiatal hernia", "pseudonodule", "subcutaneous emphysema", "rib fracture",
    "tuberculosis sequelae", "calcified granuloma", "scoliosis", "costophrenic angle blunting",
    "copd signs", "vertebral degenerative changes",
)
PADCHEST_PROJECTIONS = ("PA", "L", "AP", "AP_horizontal", "COSTAL", "UNK", "EXCLUDE")
# One of the ImageIDs the reference leaves out by name (broken in the real release).
PADCHEST_EXCLUDED_ID = "216840111366964012283393834152009027091819347_00-007-136.png"


def padchest_labels_text(terms: Sequence[str]) -> str:
    """A Labels cell: a Python-list string, terms after the first with a leading space."""
    return "[" + ", ".join(repr(t if i == 0 else " " + t) for i, t in enumerate(terms)) + "]"


def _padchest_terms_shown(text: str) -> list:
    """Indices (into PADCHEST_TERMS) of the terms of a Labels cell; none for `nan` or junk."""
    try:
        terms = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    terms = {str(t).strip() for t in terms} if isinstance(terms, list) else set()
    return [i for i, t in enumerate(PADCHEST_TERMS) if t in terms]


def write_padchest(
    root: os.PathLike,
    *,
    n_images: int = 24,
    image_size: tuple = (64, 56),
    seed: int = 0,
    rows: Optional[Sequence[dict]] = None,
    signal: float = 1.0,
) -> list:
    """Writes the gzipped 160K label CSV (all 36 columns) and flat 16-bit PNGs under root.

    Random data includes every projection (UNK, EXCLUDE, AP_horizontal ...), a
    literal `nan` Labels row, one of the reference's hard-coded excluded ImageIDs
    (PADCHEST_EXCLUDED_ID), a report spanning several lines and empty '' terms.

    Args:
      rows: explicit images: dicts with "ImageID" (default generated), "PatientID",
        "Projection" (default PA), "Labels" (raw cell text, default "['normal']"),
        "Report", "ImageDir" (default "0") and "image" ("ok", "missing", "corrupt",
        "8bit"; "subdir" writes the PNG under <ImageDir>/ instead of the root).

    Returns:
      A `Written` per CSV row; its row holds the 36 cells, its split is None (PadChest has none).
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    if rows is None:
        rows = []
        for i in range(n_images):
            k = int(rng.integers(1, 4))
            terms = rng.choice(PADCHEST_TERMS, size=k, replace=False).tolist()
            if i % 5 == 2:
                terms.append("")
            row = {"Projection": PADCHEST_PROJECTIONS[i % len(PADCHEST_PROJECTIONS)]
                   if i < 2 * len(PADCHEST_PROJECTIONS) else str(rng.choice(["PA", "L", "AP"])),
                   "Labels": padchest_labels_text(terms), "PatientID": str(1000 + i // 2)}
            if i == 3:
                row["Labels"] = "nan"
            if i == 4:
                row["ImageID"] = PADCHEST_EXCLUDED_ID
            if i == 5:
                row["Report"] = "cardiomegalia.\nderrame pleural, \"leve\"."
            rows.append(row)
    csv_rows, written = [], []
    for i, row in enumerate(rows):
        image_id = row.get("ImageID") or (
            f"2168401113669640{int(rng.integers(10 ** 12, 10 ** 13))}_{i:02d}-{i:03d}-{i:03d}.png")
        text = row.get("Labels", "['normal']")
        image_dir = str(row.get("ImageDir", "0"))
        h, w = image_size
        values = {c: "" for c in PADCHEST_COLUMNS}
        values.update({
            "": str(i), "ImageID": image_id, "ImageDir": image_dir, "StudyDate_DICOM": "20091031",
            "StudyID": f"study{i}", "PatientID": row.get("PatientID", str(1000 + i)),
            "PatientBirth": "1950.0", "PatientSex_DICOM": "M",
            "ViewPosition_DICOM": "POSTEROANTERIOR", "Projection": row.get("Projection", "PA"),
            "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No",
            "Modality_DICOM": "CR", "Rows_DICOM": str(h), "Columns_DICOM": str(w),
            "BitsStored_DICOM": "12", "ReportID": str(4000 + i),
            "Report": row.get("Report", "sin hallazgos."), "MethodLabel": "Physician",
            "Labels": text, "Localizations": "[]", "LabelsLocalizationsBySentence": "[['normal']]",
            "labelCUIS": "[]", "LocalizationsCUIS": "[]",
        })
        csv_rows.append([values[c] for c in PADCHEST_COLUMNS])
        kind = row.get("image", "ok")
        rel = f"{image_dir}/{image_id}" if kind == "subdir" else image_id
        img = synth_xray(rng, image_size, _padchest_terms_shown(text), len(PADCHEST_TERMS),
                         signal=signal)
        write_image(root / rel, img, "ok" if kind == "subdir" else kind, fmt="png", bits=16)
        written.append(Written(image_path=rel, split=None, row=values, image=kind))
    _write_csv(root / PADCHEST_CSV, PADCHEST_COLUMNS, csv_rows, gz=True)
    return written


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
) -> list:
    """Writes train.txt, test.txt and images under train/ and test/.

    Random data includes a sirm line whose patient id holds a space
    ("COVID 1 COVID(1).png positive sirm"), JPEG and PNG files and an RGB image.

    Args:
      rows: explicit lines: dicts with "split" ("train"/"test"), "patient_id",
        "file_name", "label" ("positive"/"negative"), "source" and "image"
        ("ok", "missing", "corrupt", "rgb").

    Returns:
      A `Written` per line; its row holds the line's four fields (patient_id, file_name,
      label, source), its split the list file ("train"/"test").
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
    written = []
    for row in rows:
        split = row["split"]
        fields = {k: row[k] for k in ("patient_id", "file_name", "label", "source")}
        lines[split].append(" ".join(fields.values()))
        kind = row.get("image", "ok")
        fmt = "jpeg" if row["file_name"].lower().endswith((".jpg", ".jpeg")) else "png"
        img = synth_xray(rng, image_size, [0] if row["label"] == "positive" else [], 1, signal=signal)
        write_image(root / split / row["file_name"], img, kind, fmt=fmt)
        written.append(Written(image_path=f"{split}/{row['file_name']}", split=split, row=fields,
                               image=kind))
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("".join(line + "\n" for line in lines[split]))
    return written


# ----------------------------------------------------------------------------- Tuberculosis

TB_FOLDERS = {
    "shenzhen": ("ChinaSet_AllFiles/ChinaSet_AllFiles", "CHNCXR"),
    "montgomery": ("Montgomery/MontgomerySet", "MCUCXR"),
}


# The CheXpert finding whose figure (SHAPES) marks tuberculosis in style "shapes": a cavity.
TB_SIGN = OBSERVATIONS.index("Lung Lesion")


def write_tuberculosis(
    root: os.PathLike,
    *,
    n_shenzhen: int = 20,
    n_montgomery: int = 8,
    image_size: tuple = (64, 60),
    seed: int = 0,
    signal: float = 1.0,
    corrupt: Sequence[str] = (),
    style: str = "grid",
    distractors: float = 0.0,
    label_noise: float = 0.0,
) -> list:
    """Writes both collections' CXR_png folders (plus ClinicalReadings, ManualMask) under root.

    File names are <PREFIX>_<4-digit number>_<label>.png with random labels. An image of
    tuberculosis shows its sign: in style "grid" one central blob, in style "shapes" the figure
    of CheXpert's Lung Lesion (SHAPES[TB_SIGN], a ring), which a model pre-trained on
    write_chexpert(style="shapes") has learnt to tell from the others.

    Args:
      corrupt: file names to write as broken PNGs.
      style: "grid" or "shapes" (see above).
      distractors: style "shapes": the chance that an image, of either class, also shows each
        other CheXpert finding's figure.
      label_noise: the chance that an image's file name carries the other label than the
        one painted (a misread case).

    Returns:
      A `Written` per image; its row holds "collection" ("shenzhen"/"montgomery"), "label"
      (the file name's label, 0 or 1) and "painted" (whether the image shows the sign); its
      split is None (the files name none).
    """
    if style not in ("grid", "shapes"):
        raise ValueError(f"unknown style {style!r}; valid: grid, shapes")
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    others = [k for k in range(len(OBSERVATIONS)) if k != TB_SIGN]
    written = []
    for collection, n in (("shenzhen", n_shenzhen), ("montgomery", n_montgomery)):
        base, prefix = TB_FOLDERS[collection]
        for number in range(1, n + 1):
            painted = int(rng.integers(0, 2))
            if style == "grid":
                img = synth_xray(rng, image_size, [0] if painted else [], 1, signal=signal)
            else:
                findings = [k for k in others if rng.random() < distractors]
                findings += [TB_SIGN] if painted else []
                img = synth_shapes(rng, image_size, findings, signal=signal)
            label = 1 - painted if label_noise and rng.random() < label_noise else painted
            name = f"{prefix}_{number:04d}_{label}.png"
            kind = "corrupt" if name in corrupt else "ok"
            write_image(root / base / "CXR_png" / name, img, kind, fmt="png")
            readings = root / base / "ClinicalReadings" / name.replace(".png", ".txt")
            readings.parent.mkdir(parents=True, exist_ok=True)
            finding = "normal" if label == 0 else "PTB in the left upper field"
            readings.write_text(f"male 35yrs\n{finding}\n")
            if collection == "montgomery":
                (root / base / "ManualMask" / "leftMask").mkdir(parents=True, exist_ok=True)
            written.append(Written(image_path=f"{base}/CXR_png/{name}", split=None,
                                   row={"collection": collection, "label": label,
                                        "painted": bool(painted)}, image=kind))
    return written
