"""PadChest (BIMCV, CSV 160K_01.02.19) as the TFDS builder `padchest`.

Semantics of the reference (transfer_learning/datasets/padchest.py), in its order:
1. Projection AP_horizontal is renamed "AP Supine"; view = Projection.
2. Only the five views PA, AP, AP Supine, L, COSTAL are kept (the reference's
   PadChest configs); UNK, EXCLUDE and any other projection are left out here
   with a count per value (they are outside the population the split is drawn from).
3. Rows whose Labels is missing (pandas' NaN spellings, e.g. the literal `nan`)
   are left out ("Labels is nan").
4. The reference's 30 hard-coded ImageIDs (missing/corrupt PNGs) are left out
   ("hard-coded excluded").
5. 27 labels, sorted; each is 1 if its lowercased name or a synonym is a
   substring of the raw Labels text, else 0 (no NaNs).
6. Split: the remaining rows, in file order, are shuffled with
   np.random.RandomState(42); the first int(0.9 N) are `train`, the rest
   `validation`. Image-level, as in the reference.
Images are 16-bit PNGs stored as uint16 without rescaling. The reference wants
them all in one flat folder; an image found instead under <ImageDir>/<ImageID>
(the numbered zip archives extracted into subfolders) is read from there.
"""

from __future__ import annotations

import os

import numpy as np

from input_pipeline import registry
from input_pipeline.datasets import _common

NAME = "padchest"
CSV_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
LABEL_NAMES = registry.DATASETS[NAME].label_names
SYNONYMS = {
    "Infiltration": ("infiltrates", "interstitial pattern", "ground glass pattern",
                     "reticular interstitial pattern", "reticulonodular interstitial pattern",
                     "alveolar pattern", "consolidation", "air bronchogram"),
    "Pleural_Thickening": ("pleural thickening",),
    "Consolidation": ("air bronchogram",),
    "Hilar Enlargement": ("adenopathy", "pulmonary artery enlargement"),
    "Support Devices": ("device", "pacemaker"),
}
VIEW_RENAMES = {"AP_horizontal": "AP Supine"}
# The population the reference splits is fixed by its PadChest configs' view list.
SPLIT_VIEWS = registry.DATASETS[NAME].views
SPLIT_SEED = 42
TRAIN_FRACTION = 0.9
# pandas.read_csv's default missing-value spellings (how the reference finds NaN Labels).
PANDAS_NA_VALUES = frozenset((
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
))
# ImageIDs the reference drops (missing or corrupt PNGs in its copy); 31 entries, 30 unique.
EXCLUDED_IMAGE_IDS = frozenset((
    "216840111366964012819207061112010307142602253_04-014-084.png",
    "216840111366964012989926673512011074122523403_00-163-058.png",
    "216840111366964012959786098432011033083840143_00-176-115.png",
    "216840111366964012558082906712009327122220177_00-102-064.png",
    "216840111366964012339356563862009072111404053_00-043-192.png",
    "216840111366964013076187734852011291090445391_00-196-188.png",
    "216840111366964012373310883942009117084022290_00-064-025.png",
    "216840111366964012283393834152009033102258826_00-059-087.png",
    "216840111366964012373310883942009170084120009_00-097-074.png",
    "216840111366964012819207061112010315104455352_04-024-184.png",
    "216840111366964013829543166512013353113303615_02-092-190.png",
    "216840111366964012904401302362010337093236130_03-198-079.png",
    "216840111366964012904401302362010336141343749_03-198-010.png",
    "216840111366964012989926673512011151082430686_00-157-045.png",
    "216840111366964012989926673512011083134050913_00-168-009.png",
    "216840111366964012373310883942009077082646386_00-047-124.png",
    "216840111366964013686042548532013208193054515_02-026-007.png",
    "216840111366964013962490064942014134093945580_01-178-104.png",
    "216840111366964012819207061112010281134410801_00-129-131.png",
    "216840111366964013590140476722013043111952381_02-065-198.png",
    "216840111366964012283393834152009027091819347_00-007-136.png",
    "216840111366964012373310883942009152114636712_00-102-045.png",
    "216840111366964012283393834152009033140208626_00-059-118.png",
    "216840111366964013590140476722013058110301622_02-056-111.png",
    "216840111366964012487858717522009280135853083_00-075-001.png",
    "216840111366964013590140476722013049100117076_02-063-097.png",
    "216840111366964013649110343042013092101343018_02-075-146.png",
    "216840111366964012819207061112010306085429121_04-020-102.png",
    "269300710246070740096540277379121868595_e7zsan.png",
    "216840111366964012373310883942009180082307973_00-097-011.png",
))
REQUIRED_COLUMNS = ("ImageID", "PatientID", "Projection", "Labels")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request PadChest from BIMCV: https://bimcv.cipf.es/bimcv-projects/padchest/ .
Extract the numbered image archives (0.zip ... 55.zip) so that every PNG lies
directly in the root folder (a <ImageDir>/<ImageID> subfolder layout is also
accepted), keep the label CSV next to them, and pass the root as manual_dir:
  <manual_dir>/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz
  <manual_dir>/216840111366964012339356563862009072111404053_00-043-192.png ...
"""


def map_labels(labels_text: str) -> list:
    """1.0 where the lowercased name or a synonym occurs in the raw Labels text, else 0.0."""
    out = []
    for name in LABEL_NAMES:
        terms = (name.lower(),) + SYNONYMS.get(name, ())
        out.append(1.0 if any(t in labels_text for t in terms) else 0.0)
    return out


def derive_view(projection: str) -> str:
    """Projection with AP_horizontal renamed to 'AP Supine'."""
    return VIEW_RENAMES.get(projection, projection)


def split_positions(n: int) -> tuple:
    """(train positions, validation positions) of the reference's seeded 90/10 split."""
    positions = np.arange(n)
    np.random.RandomState(SPLIT_SEED).shuffle(positions)
    n_train = int(n * TRAIN_FRACTION)
    return positions[:n_train], positions[n_train:]


def _image_relpath(root: str, image_id: str, image_dir: str) -> str:
    """Flat ImageID if present, else <ImageDir>/<ImageID> if that exists, else flat."""
    if not os.path.isfile(os.path.join(root, image_id)) and image_dir:
        nested = f"{image_dir}/{image_id}"
        if os.path.isfile(os.path.join(root, nested)):
            return nested
    return image_id


def read_records(root: str) -> tuple:
    """({'train': [...], 'validation': [...]}, DropLog) from the label CSV under root."""
    path = os.path.join(root, CSV_FILE)
    # ImageDir is optional: it only locates images extracted into per-archive subfolders.
    rows = _common.read_csv(path, REQUIRED_COLUMNS, dataset=NAME,
                            instructions=MANUAL_DOWNLOAD_INSTRUCTIONS, optional_columns=("ImageDir",))
    drops = _common.DropLog()
    population = []
    for i, row in enumerate(rows):
        view = derive_view(row["Projection"])
        if view not in SPLIT_VIEWS:
            drops.add(_common.UNASSIGNED, f"projection {row['Projection'] or '(blank)'} "
                                          "(not one of the 5 views)")
            continue
        if row["Labels"] in PANDAS_NA_VALUES:
            drops.add(_common.UNASSIGNED, "Labels is nan")
            continue
        image_id = row["ImageID"].strip()
        if image_id in EXCLUDED_IMAGE_IDS:
            drops.add(_common.UNASSIGNED, "hard-coded excluded")
            continue
        rel = _image_relpath(root, image_id, row["ImageDir"].strip())
        example = {
            "image_path": rel,
            "view": view,
            "patient_id": row["PatientID"].strip(),
            "labels": _common.label_vector(map_labels(row["Labels"])),
        }
        population.append(_common.Record(key=f"{i:07d}:{image_id}", image_file=os.path.join(root, rel),
                                         example=example))
    train, validation = split_positions(len(population))
    splits = {
        "train": [population[p] for p in np.sort(train)],
        "validation": [population[p] for p in np.sort(validation)],
    }
    return splits, drops


class Padchest(_common.XrayBuilder):
    """PadChest: 27 labels (0/1) mined from Spanish reports, 16-bit images, seeded 90/10 split."""

    BUILDER_CONFIGS = _common.make_configs(square_crop=True)
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BITS = 16
    CHANNEL_RULE = "rgb0"
    DESCRIPTION = (
        "PadChest (Bustos et al. 2020): chest radiographs with labels mined from reports, "
        "27 of them as in the reference. image: uint16 (16-bit range kept). labels: "
        "float32[27] of 0/1. Splits: the reference's RandomState(42) 90/10 image-level split "
        "over the five views PA, AP, AP Supine, L, COSTAL."
    )
    HOMEPAGE = "https://bimcv.cipf.es/bimcv-projects/padchest/"
    CITATION = """@article{bustos2020padchest,
  title={PadChest: A large chest x-ray image dataset with multi-label annotated reports},
  author={Bustos, Aurelia and Pertusa, Antonio and Salinas, Jose-Maria and de la Iglesia-Vay{\\'a}, Maria},
  journal={Medical Image Analysis}, volume={66}, year={2020}}"""

    def _read_records(self, root: str) -> tuple:
        return read_records(root)
