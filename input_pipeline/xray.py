"""Chest X-ray sources: reading, view filtering, merging, and the X-ray preprocessing.

The TFDS builders in `input_pipeline.datasets` keep every image of a dataset; this module
turns one builder split, or the union of several, into the stream the reference trains on:

* **Views.** Rows whose `view` is not in the view list are dropped before anything else.
  The default list is the reference's: `PA`/`AP` for every single-source config except
  PadChest and for the CheXpert+MIMIC(+NIH) merges; the five-view list
  (`PA, AP, AP Supine, L, COSTAL`) for PadChest and for any union that contains it (the
  reference's four-way merge). The same list applies to every merged source, as in the
  reference (so the four-way merge keeps CheXpert laterals, `L`, but not MIMIC's, which are
  called `LATERAL`). COVIDx and Tuberculosis have no view filter in the reference.
* **Labels.** One source keeps its own label names in its own order. Several sources keep
  the sorted intersection of their names, each source's label vector re-indexed to it (the
  reference's `merge` type; 7 labels for CheXpert+MIMIC+NIH(+PadChest)). `label_set=
  'chexpert_mimic_13'` is the reference's `chexpert_mimic` type: all 13 CheXpert labels in
  their native order (Effusion in slot 8), no intersection, the sources concatenated as
  [MIMIC, CheXpert] whatever order they are given in, as the reference does.
* **Splits.** `'train'` is each builder's train split. `'validation'` (or `'val'`) is the
  split the reference evaluates each source on (`REFERENCE_EVAL_SPLIT`: NIH's `test_list`,
  MIMIC's `validate`, CheXpert's `valid.csv`, ...). Any other split name (`'test'`) is passed
  through and must exist in every source. TFDS slices work on either (`'train[:10%]'`).
* **Preprocessing** (`preprocess_eval`, `preprocess_train`) reproduces the reference's
  torchxrayvision + albumentations 0.5.2 transform in TensorFlow ops: centre crop to a
  square (txv's offsets), area resize, the ShiftScaleRotate + horizontal flip augmentation
  with stateless randomness, grey to 3 channels, `(x - 0.5) / 0.5`.

The facts of each source (labels, views, evaluation split) are its `input_pipeline.registry`
record. Examples come in each builder's file order; a view filter costs one pass over views
and labels (no image), which also gives the labels. Images stay encoded until `decode`, so
shuffling and few-shot selection on the returned dataset are cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import registry

# The registry's X-ray records, in the shapes this module's users index them by.
XRAY_DATASETS = registry.XRAY_DATASETS
MULTILABEL_SOURCES = tuple(n for n, r in registry.DATASETS.items() if r.kind == "xray" and r.multilabel)
SINGLE_LABEL_SOURCES = tuple(n for n, r in registry.DATASETS.items() if r.kind == "xray" and not r.multilabel)
# Label (or class) names of each source in the order its builder stores them.
SOURCE_LABEL_NAMES: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {n: registry.DATASETS[n].label_names for n in XRAY_DATASETS})
PA_AP = registry.PA_AP
FIVE_VIEWS = registry.FIVE_VIEWS
# The reference's default view list of each source used alone (those that filter by view).
DEFAULT_VIEWS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {n: registry.DATASETS[n].views for n in XRAY_DATASETS if registry.DATASETS[n].views is not None})

LABEL_SETS = ("intersection", "chexpert_mimic_13")
# The split the reference evaluates each source on ("val"): builders name splits after the
# files they come from, so NIH's test_list.txt is "test" and MIMIC's "validate" "validation".
REFERENCE_EVAL_SPLIT: Mapping[str, str] = types.MappingProxyType(
    {n: registry.DATASETS[n].eval_split for n in XRAY_DATASETS})
_EVAL_SPLIT_ALIASES = ("validation", "val")

# albumentations ShiftScaleRotate(shift_limit=0.25, scale_limit=0.1, rotate_limit=45, p=1)
# followed by HorizontalFlip(p=0.5), the reference's `cohen_chexpert_aug`.
SHIFT_LIMIT = 0.25
SCALE_LIMIT = 0.1
ROTATE_LIMIT = 45.0
FLIP_PROBABILITY = 0.5


@dataclasses.dataclass(frozen=True)
class _Part:
    """One source of a read: its builder, its resolved split, and which of its records are kept.

    The split's records are numbered in file order (TFDS ``interleave_cycle_length=1``) across
    its absolute pieces (`ranges`: [(split name, first, stop)]). `kept`: the record number of
    each kept example, ascending; None when every record is kept (no view filter).
    """
    builder: object
    ranges: tuple
    views: tuple | None
    indices: tuple | None
    kept: np.ndarray | None
    labels: np.ndarray | None   # kept examples' labels, when the view pass has read them
    num_examples: int
    bytes_per_example: float | None


@dataclasses.dataclass
class XraySource:
    """One X-ray source, or the union of several, ready for the generic pipeline.

    Attributes:
      dataset: examples `{'image': tf.string (encoded PNG/JPEG bytes), 'label': ...}`; the
        label is float32 [C] with NaN = unknown for multi-label sources, int64 otherwise.
      label_names: the C label names (multi-label) or the class names.
      multilabel: whether labels are multi-hot vectors.
      num_examples: exact number of examples in `dataset` (after the view filter).
      bytes_per_example: average encoded size of a kept example (from the builders' split
        info); None if unknown.
    """

    dataset: tf.data.Dataset
    label_names: list[str]
    multilabel: bool
    num_examples: int
    bytes_per_example: float | None
    parts: list[_Part] = dataclasses.field(repr=False)

    def read_range(self, start: int, stop: int, ordered: bool = True) -> tf.data.Dataset:
        """Examples [start, stop) of `dataset`, reading only the records that hold them (in
        `dataset`'s order if `ordered`, else the same examples in TFDS's parallel file order)."""
        pieces, offset = [], 0
        for part in self.parts:
            lo, hi = max(start - offset, 0), min(stop - offset, part.num_examples)
            if lo < hi:
                pieces.append(_read_part(part, lo, hi, ordered))
            offset += part.num_examples
        if not pieces:   # the element spec, without reading anything
            part = self.parts[0]
            whole = _as_dataset(part.builder, part.ranges[0][0], {"image": tfds.decode.SkipDecoding()}, ordered)
            return select(whole, views=part.views, indices=part.indices).take(0)
        return functools.reduce(lambda x, y: x.concatenate(y), pieces)

    def read_labels(self) -> np.ndarray:
        """The labels of `dataset`, in order (float32 [N, C] or int64 [N]), from the view pass
        when it ran, else from one label-only pass."""
        labels = [part.labels if part.labels is not None else _labels_pass(part) for part in self.parts]
        return np.concatenate(labels)


# ----------------------------------------------------------------------------- names and labels


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of dataset names, not the string {names!r}")
    names = tuple(names)
    if not names:
        raise ValueError(f"no X-ray dataset named; valid names: {sorted(XRAY_DATASETS)}")
    unknown = [n for n in names if n not in XRAY_DATASETS]
    if unknown:
        raise ValueError(
            f"unknown X-ray dataset(s) {unknown}; valid names: {sorted(XRAY_DATASETS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a dataset is named twice in {list(names)}")
    if len(names) > 1:
        single = [n for n in names if n not in MULTILABEL_SOURCES]
        if single:
            raise ValueError(
                f"only multi-label sources {list(MULTILABEL_SOURCES)} can be merged; "
                f"{single} cannot be merged with other datasets")
    return names


def merge_order(names: Sequence[str], label_set: str = "intersection") -> tuple[str, ...]:
    """The order in which the sources are concatenated.

    The given order, except for `label_set='chexpert_mimic_13'`, where the reference builds
    `Merge([mimic, chexpert])`.
    """
    names = _check_names(names)
    if label_set not in LABEL_SETS:
        raise ValueError(f"unknown label_set {label_set!r}; valid: {list(LABEL_SETS)}")
    if label_set == "chexpert_mimic_13":
        if set(names) != {"chexpert_v1", "mimic_cxr_jpg"}:
            raise ValueError(
                "label_set='chexpert_mimic_13' (the reference's 'chexpert_mimic' type) needs "
                f"exactly ['chexpert_v1', 'mimic_cxr_jpg'], got {list(names)}")
        return ("mimic_cxr_jpg", "chexpert_v1")
    return names


def label_names(names: Sequence[str], label_set: str = "intersection") -> list[str]:
    """Label names of one source or of the union of several.

    One source: its own names in its own order. Several: the sorted intersection of their
    names (the reference's `merge`), or with `label_set='chexpert_mimic_13'` (CheXpert and
    MIMIC only) the 13 CheXpert labels in their native order.
    """
    order = merge_order(names, label_set)
    if len(order) == 1 or label_set == "chexpert_mimic_13":
        return list(SOURCE_LABEL_NAMES[order[0]])
    shared = set(SOURCE_LABEL_NAMES[order[0]])
    for name in order[1:]:
        shared &= set(SOURCE_LABEL_NAMES[name])
    return sorted(shared)


def label_indices(names: Sequence[str], label_set: str = "intersection") -> dict[str, list[int]]:
    """For each source, the positions in its own label vector of the merged label names."""
    merged = label_names(names, label_set)
    return {name: [SOURCE_LABEL_NAMES[name].index(label) for label in merged]
            for name in merge_order(names, label_set)}


def default_views(names: Sequence[str]) -> tuple[str, ...] | None:
    """The reference's default view list for this combination of sources.

    Each source's registry list, the union of them for several sources (the five-view list
    once PadChest is among them: PadChest configs and the four-way merge; PA/AP for other
    multi-label unions), and None (no filter) when a source has none (COVIDx and Tuberculosis,
    which the reference never filters by view).
    """
    names = _check_names(names)
    lists = [registry.DATASETS[n].views for n in names]
    if any(views is None for views in lists):
        return None
    return tuple(dict.fromkeys(v for views in lists for v in views))


# ----------------------------------------------------------------------------- splits

_SPLIT_PART = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(\[[^\]]*\])?\s*$")


def resolve_split(name: str, split: str, available: Sequence[str]) -> str:
    """Translate a split string for one source into its builder's split names.

    `'validation'`/`'val'` become the split the reference evaluates `name` on; other names
    pass through. '+'-joined parts and TFDS slices are kept. Raises ValueError naming the
    dataset and its available splits when a part does not exist.
    """
    parts = []
    for part in split.split("+"):
        match = _SPLIT_PART.match(part)
        if not match:
            raise ValueError(f"cannot parse split {split!r} for {name} (expected e.g. 'train', "
                             f"'validation', 'train[:10%]')")
        base, slice_ = match.group(1), match.group(2) or ""
        if base in _EVAL_SPLIT_ALIASES:
            base = REFERENCE_EVAL_SPLIT[name]
        if base not in available:
            raise ValueError(
                f"split {split!r}: {name} has no split {base!r}; available splits: "
                f"{sorted(available)} ('validation' means {REFERENCE_EVAL_SPLIT[name]!r} "
                f"for {name})")
        parts.append(base + slice_)
    return "+".join(parts)


# ----------------------------------------------------------------------------- reading


def _view_filter(views: Sequence[str]):
    allowed = tf.constant(list(views), dtype=tf.string)

    def keep(example):
        return tf.reduce_any(tf.equal(example["view"], allowed))

    return keep


def select(examples: tf.data.Dataset, *, views: Sequence[str] | None,
           indices: Sequence[int] | None) -> tf.data.Dataset:
    """Filter builder examples by view and reduce them to `{'image', 'label'}`.

    Args:
      examples: a builder's examples with `image` (encoded bytes), `view` and `labels`
        (float32 [C], NaN = unknown) or `label` (int).
      views: keep examples whose `view` is one of these; None keeps all.
      indices: positions of the kept labels in `labels` (multi-label sources); None for
        single-label sources, whose `label` is passed through as int64.
    """
    if views is not None:
        examples = examples.filter(_view_filter(views))
    if indices is None:
        def to_output(example):
            return {"image": example["image"], "label": tf.cast(example["label"], tf.int64)}
    else:
        index = tf.constant(list(indices), dtype=tf.int32)

        def to_output(example):
            labels = tf.cast(example["labels"], tf.float32)
            return {"image": example["image"], "label": tf.gather(labels, index)}
    return examples.map(to_output, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _check_views(views) -> tuple[str, ...]:
    if isinstance(views, (str, bytes)):
        raise TypeError(f"views must be a sequence of view names, not the string {views!r}")
    views = tuple(views)
    if not views:
        raise ValueError("views is empty: no example would be kept")
    bad = [v for v in views if not isinstance(v, str)]
    if bad:
        raise TypeError(f"view names must be strings, got {bad}")
    return views


def _load_builder(name: str, data_dir, builder_config: str):
    import input_pipeline.datasets  # noqa: F401  (registers the X-ray builders)

    try:
        builder = tfds.builder(name, data_dir=data_dir, config=builder_config)
    except ValueError as err:
        raise ValueError(f"cannot load builder {name!r} with config {builder_config!r} "
                         f"(data_dir={data_dir!r}): {err}") from err
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{name} (config {builder_config!r}) is not prepared in data_dir={data_dir!r} "
            f"(looked in {builder.data_dir}); prepare it first with "
            f"input_pipeline.datasets.prepare({name!r}, manual_dir=..., data_dir=..., "
            f"config={builder_config!r}) or `bit-medical prepare {name}`")
    return builder


def _builder_label_names(builder, name: str) -> list[str]:
    if name in MULTILABEL_SOURCES:
        stored = builder.info.metadata.get("label_names") if builder.info.metadata else None
        if stored is None:
            raise ValueError(f"{name}: builder metadata has no 'label_names' "
                             f"(data in {builder.data_dir})")
    else:
        stored = builder.info.features["label"].names
    return list(stored)


_PASS_BATCH = 4096


def _label_key(indices) -> str:
    return "label" if indices is None else "labels"


def _as_labels(raw: np.ndarray, indices) -> np.ndarray:
    """Builder labels -> the reader's: int64 classes, or float32 [N, C] re-indexed to the merge."""
    if indices is None:
        return raw.astype(np.int64)
    return raw.astype(np.float32)[:, list(indices)]


def _as_dataset(builder, spec: str, decoders, ordered: bool) -> tf.data.Dataset:
    # One file at a time gives the file order that record numbers refer to.
    read_config = tfds.ReadConfig(interleave_cycle_length=1) if ordered else tfds.ReadConfig()
    return builder.as_dataset(split=spec, shuffle_files=False, decoders=decoders, read_config=read_config)


def _spec(ranges, first: int, stop: int) -> str:
    """The TFDS split spec of records [first, stop) of the concatenated `ranges`."""
    pieces, offset = [], 0
    for name, lo, hi in ranges:
        a, b = max(first - offset, 0), min(stop - offset, hi - lo)
        if a < b:
            pieces.append(f"{name}[{lo + a}:{lo + b}]")
        offset += hi - lo
    return "+".join(pieces)


def _read_part(part: _Part, lo: int, hi: int, ordered: bool) -> tf.data.Dataset:
    """Kept examples [lo, hi) of one part, reading only records [kept[lo], kept[hi - 1]]."""
    first, stop = (lo, hi) if part.kept is None else (int(part.kept[lo]), int(part.kept[hi - 1]) + 1)
    examples = _as_dataset(part.builder, _spec(part.ranges, first, stop),
                           {"image": tfds.decode.SkipDecoding()}, ordered)
    return select(examples, views=part.views, indices=part.indices)


def _pass(part_builder, ranges, keys, total: int) -> dict[str, np.ndarray]:
    """One pass over the `keys` features of every record (no image), as numpy arrays."""
    ds = _as_dataset(part_builder, _spec(ranges, 0, total), tfds.decode.PartialDecoding({k: True for k in keys}), True)
    batches = list(ds.batch(_PASS_BATCH).as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in keys} if batches else None


def _labels_pass(part: _Part) -> np.ndarray:
    total = sum(hi - lo for _, lo, hi in part.ranges)
    key = _label_key(part.indices)
    columns = _pass(part.builder, part.ranges, [key], total)
    if columns is None:
        width = [0] if part.indices is None else [0, len(part.indices)]
        return np.zeros(width, np.int64 if part.indices is None else np.float32)
    return _as_labels(columns[key], part.indices)


def _open_part(builder, name: str, split: str, views, indices) -> _Part:
    """A `_Part`; with a view filter, one pass over views and labels finds the kept records and
    their labels together."""
    splits = builder.info.splits
    ranges = tuple((i.splitname, i.from_ or 0, splits[i.splitname].num_examples if i.to is None else i.to)
                   for i in tfds.core.ReadInstruction.from_spec(split).to_absolute(splits))
    total = sum(hi - lo for _, lo, hi in ranges)
    kept = labels = None
    count = total
    if views is not None:
        key = _label_key(indices)
        columns = _pass(builder, ranges, ["view", key], total)
        present = np.zeros([0], object) if columns is None else columns["view"]
        mask = np.isin(present, [v.encode() for v in views])
        kept = np.flatnonzero(mask)
        count = len(kept)
        if count == 0:
            found = sorted({v.decode("utf-8", "replace") for v in present})
            raise ValueError(f"{name} split {split!r}: no example has a view in {list(views)}; views present: {found}")
        labels = _as_labels(columns[key][mask], indices)
    split_bytes = sum(builder.info.splits[n].num_bytes for n, _, _ in ranges)
    split_examples = sum(builder.info.splits[n].num_examples for n, _, _ in ranges)
    per_example = split_bytes / split_examples if split_bytes > 0 and split_examples > 0 else None
    return _Part(builder=builder, ranges=ranges, views=views, indices=indices, kept=kept, labels=labels,
                 num_examples=count, bytes_per_example=per_example)


def read(names: Sequence[str], split: str, *, data_dir: str | None = None,
         views: Sequence[str] | None = None, label_set: str = "intersection",
         builder_config: str = "512") -> XraySource:
    """Read one X-ray source, or the union of several, as encoded images and labels.

    Examples are in each builder's file order, the sources concatenated. Only the view pass
    (when a view filter applies) reads the split before use; it collects the labels too.

    Args:
      names: builder names from `XRAY_DATASETS`; several multi-label sources are merged.
      split: 'train', 'validation' (= the split the reference evaluates each source on, see
        `REFERENCE_EVAL_SPLIT`), or another split every source has; TFDS slices allowed.
      data_dir: TFDS data_dir holding the prepared builders.
      views: views to keep (applied to every source); None = `default_views(names)`.
      label_set: 'intersection' or 'chexpert_mimic_13' (see `label_names`).
      builder_config: the builders' stored resolution ('full', '512', '224').

    Returns:
      An `XraySource`; images are not decoded (see `decode`).
    """
    order = merge_order(names, label_set)
    if views is None:
        views = default_views(order)
    else:
        views = _check_views(views)
        if any(n in SINGLE_LABEL_SOURCES for n in order):
            # Their builders store a placeholder view ('PA' or ''), which the reference
            # never filters on: an explicit list would silently drop images.
            raise ValueError(f"{list(order)} have no view filter in the reference; pass views=None")
    merged_names = label_names(order, label_set)
    indices = label_indices(order, label_set)
    multilabel = order[0] in MULTILABEL_SOURCES

    parts = []
    for name in order:
        builder = _load_builder(name, data_dir, builder_config)
        stored = _builder_label_names(builder, name)
        if stored != list(SOURCE_LABEL_NAMES[name]):
            raise ValueError(f"{name}: the builder's label names {stored} differ from the "
                             f"reference order {list(SOURCE_LABEL_NAMES[name])}")
        source_split = resolve_split(name, split, list(builder.info.splits.keys()))
        parts.append(_open_part(builder, name, source_split, views,
                                tuple(indices[name]) if multilabel else None))
    total = sum(p.num_examples for p in parts)
    sizes = [p.bytes_per_example * p.num_examples for p in parts if p.bytes_per_example is not None]
    per_example = sum(sizes) / total if len(sizes) == len(parts) and total else None
    source = XraySource(dataset=None, label_names=merged_names, multilabel=multilabel, num_examples=total,
                        bytes_per_example=per_example, parts=parts)
    source.dataset = source.read_range(0, total)
    return source


# ----------------------------------------------------------------------------- preprocessing


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decode PNG or JPEG bytes to float32 [H, W, 1] in [0, 1].

    8-bit images are divided by 255 and 16-bit PNGs (PadChest) by 65535, as the reference
    reads them. JPEGs use libjpeg's accurate integer DCT, which gives the same pixels as the
    reference's cv2.imread (TF's default fast DCT differs by up to 4 grey levels). A colour
    image is reduced to one channel by TF's decoder (luminance); the builders store grey
    images, so this only matters for foreign inputs.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)

    def jpeg():
        pixels = tf.io.decode_jpeg(encoded, channels=1, dct_method="INTEGER_ACCURATE")
        return tf.cast(pixels, tf.float32) / 255.0

    def other():
        # PNG: decoded at 16 bits (8-bit values are expanded by 257) and scaled by 1/65535.
        return tf.io.decode_image(encoded, channels=1, dtype=tf.float32, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, 1])
    return image


def center_crop_square(image: tf.Tensor) -> tf.Tensor:
    """Crop [H, W, C] to a centred square of side min(H, W).

    Offsets as torchxrayvision's XRayCenterCrop: `H // 2 - side // 2`, which differs by one
    pixel from `(H - side) // 2` when H is even and side odd.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.minimum(height, width)
    top = height // 2 - side // 2
    left = width // 2 - side // 2
    return image[top:top + side, left:left + side, :]


def _crop_and_resize(image01: tf.Tensor, size: int) -> tf.Tensor:
    image01 = tf.convert_to_tensor(image01, tf.float32)
    if image01.shape.rank != 3 or image01.shape[-1] not in (1, None):
        raise ValueError(f"expected a grey image [H, W, 1], got shape {image01.shape}")
    square = center_crop_square(image01)
    # TF's area resize is the exact pixel-area average, as cv2.INTER_AREA (also upwards).
    return tf.image.resize(square, [size, size], method="area")


def _to_model_input(image01: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.tile((image01 - 0.5) / 0.5, [1, 1, 3])
    image.set_shape([size, size, 3])
    return image


def preprocess_eval(image01: tf.Tensor, size: int = 224) -> tf.Tensor:
    """The reference's X-ray transform: [H, W, 1] in [0, 1] -> float32 [size, size, 3] in [-1, 1].

    Centre crop to a square, area resize to `size`, (x - 0.5) / 0.5, grey repeated 3 times.
    """
    return _to_model_input(_crop_and_resize(image01, size), size)


def sample_augmentation(seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Draw the augmentation parameters from a stateless seed (int tensor of shape [2]).

    As albumentations 0.5.2's ShiftScaleRotate(0.25, 0.1, 45) + HorizontalFlip(0.5), each
    uniform: angle in [-45, 45] degrees, scale in [0.9, 1.1], dx and dy in [-0.25, 0.25]
    (fractions of width and height), flip with probability 0.5.
    """
    u = tf.random.stateless_uniform([5], seed=seed, dtype=tf.float32)
    return {
        "angle": ROTATE_LIMIT * (2.0 * u[0] - 1.0),
        "scale": 1.0 + SCALE_LIMIT * (2.0 * u[1] - 1.0),
        "dx": SHIFT_LIMIT * (2.0 * u[2] - 1.0),
        "dy": SHIFT_LIMIT * (2.0 * u[3] - 1.0),
        "flip": u[4] < FLIP_PROBABILITY,
    }


def shift_scale_rotate(image: tf.Tensor, angle, scale, dx, dy) -> tf.Tensor:
    """albumentations 0.5.2's ShiftScaleRotate for fixed parameters, on [H, W, C] float32.

    The forward map is cv2.getRotationMatrix2D((W / 2, H / 2), angle, scale) (angle in
    degrees, counter-clockwise) with (dx * W, dy * H) added to its translation, applied as
    cv2.warpAffine does (bilinear, pixel centres on integer coordinates, BORDER_REFLECT_101).
    ImageProjectiveTransformV3 wants the output -> input map, so the affine is inverted.
    TF's own REFLECT fill repeats the edge pixel (cv2's BORDER_REFLECT), so the image is
    first padded by reflection without the edge (tf.pad REFLECT = BORDER_REFLECT_101) by
    H - 1 / W - 1 pixels, which covers every sample point this augmentation's ranges reach
    (at most ~0.68 of a side beyond the border); only farther points fall back to TF's fill.
    albumentations >= 1.4 rotates about (W / 2 - 0.5, H / 2 - 0.5); the reference pins 0.5.2.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    theta = tf.cast(angle, tf.float64) * (math.pi / 180.0)
    scale = tf.cast(scale, tf.float64)
    a = scale * tf.cos(theta)
    b = scale * tf.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    tx = (1.0 - a) * cx - b * cy + tf.cast(dx, tf.float64) * w
    ty = b * cx + (1.0 - a) * cy + tf.cast(dy, tf.float64) * h
    # Forward: [x', y'] = [[a, b], [-b, a]] [x, y] + [tx, ty]; invert the rotation-scale.
    det = a * a + b * b
    i00, i01, i10, i11 = a / det, -b / det, b / det, a / det
    pad_y, pad_x = height - 1, width - 1
    offset_x = -(i00 * tx + i01 * ty) + tf.cast(pad_x, tf.float64)
    offset_y = -(i10 * tx + i11 * ty) + tf.cast(pad_y, tf.float64)
    zero = tf.constant(0.0, tf.float64)
    transform = tf.cast(tf.stack([i00, i01, offset_x, i10, i11, offset_y, zero, zero]), tf.float32)
    padded = tf.pad(image, [[pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="REFLECT")
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=padded[tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.stack([height, width]), fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR", fill_mode="REFLECT")
    warped = warped[0]
    warped.set_shape(image.shape)
    return warped


def preprocess_train(image01: tf.Tensor, seed: tf.Tensor, size: int = 224) -> tf.Tensor:
    """`preprocess_eval` plus the reference's augmentation, keyed by a stateless seed.

    Crop and resize as in evaluation, then ShiftScaleRotate (p=1) and a horizontal flip
    (p=0.5) with parameters from `sample_augmentation(seed)`, then normalise and repeat the
    grey plane. The reference normalises before augmenting; bilinear interpolation and
    reflection are affine-equivariant, so the order does not change the result.
    """
    image = _crop_and_resize(image01, size)
    params = sample_augmentation(seed)
    image = shift_scale_rotate(image, params["angle"], params["scale"], params["dx"], params["dy"])
    image = tf.where(params["flip"], tf.reverse(image, axis=[1]), image)
    return _to_model_input(image, size)


__all__ = [
    "XRAY_DATASETS", "MULTILABEL_SOURCES", "SINGLE_LABEL_SOURCES", "SOURCE_LABEL_NAMES",
    "DEFAULT_VIEWS", "PA_AP", "FIVE_VIEWS", "LABEL_SETS", "REFERENCE_EVAL_SPLIT",
    "XraySource", "label_names", "label_indices", "merge_order", "default_views",
    "resolve_split", "select", "read", "decode", "center_crop_square", "preprocess_eval",
    "preprocess_train", "sample_augmentation", "shift_scale_rotate",
]
