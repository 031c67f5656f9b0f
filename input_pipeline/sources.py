"""Stage 1, sources: each split of the config as an ordered, re-readable list of encoded examples.

`build(options)` gives the training `Source` and the named eval Sources. A position is an
example's index in a source's order (TFDS: file order, read with ``interleave_cycle_length=1``;
image folder: sorted paths; X-ray: each builder's file order, sources concatenated). Which
reader serves a name comes from its `input_pipeline.registry` record (image folder, X-ray
builder, else a TFDS dataset).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import image_folder, registry
from input_pipeline.errors import UserError

VALID_SPLIT_NAME = "val"
_LABEL_BATCH = 4096
# The tf.data functions here have no Python control flow on tensors: skip AutoGraph.
_plain = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class Source:
    """One split: an ordered collection of encoded examples.

    read(start, stop, ordered): tf.data of ``{'image': encoded bytes, 'label': raw label}`` for
      positions [start, stop); in position order if `ordered`, else in some fixed order of the
      same examples (lets TFDS read files in parallel).
    read_labels(): the raw labels of all positions, in order (numpy).
    kind: 'natural' (decode to RGB) or 'xray' (decoded by `input_pipeline.xray`).
    paths/labels: set for file-backed sources, which then have random access.
    bytes_per_example: average encoded size when known (decides in-memory caching).
    """
    name: str
    num_examples: int
    label_names: list[str]
    multilabel: bool
    read: Callable[[int, int, bool], tf.data.Dataset]
    read_labels: Callable[[], np.ndarray]
    kind: str = "natural"
    paths: np.ndarray | None = None
    labels: np.ndarray | None = None
    bytes_per_example: float | None = None

    def read_positions(self, positions: np.ndarray, *, ordered: bool) -> tf.data.Dataset:
        """The examples at sorted `positions` (in position order if `ordered`)."""
        positions = np.asarray(positions, np.int64)
        if self.paths is not None:
            return _files_dataset(self.paths[positions], self.labels[positions])
        if len(positions) == 0:
            return self.read(0, 0, True)
        start, stop = int(positions[0]), int(positions[-1]) + 1
        if stop - start == len(positions):
            return self.read(start, stop, ordered)
        keep = np.zeros(stop - start, bool)
        keep[positions - start] = True
        keep = tf.constant(keep)
        ds = self.read(start, stop, True).enumerate()
        return ds.filter(_plain(lambda i, ex: keep[i])).map(_plain(lambda i, ex: ex))


# ----------------------------------------------------------------------------- readers


def _files_dataset(paths: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices({"image": paths.astype(str), "label": labels})
    return ds.map(_plain(lambda ex: {"image": tf.io.read_file(ex["image"]), "label": ex["label"]}),
                  num_parallel_calls=tf.data.AUTOTUNE)


def _folder_source(root: str, *, class_names: list[str] | None = None, skip_corrupt: bool = False) -> Source:
    """An image folder (one sub-folder per class) as a Source; files are checked first."""
    listing = image_folder.load_image_folder(root, class_names=class_names, skip_corrupt=skip_corrupt)
    paths, labels = listing.paths, listing.labels
    return Source(
        name=root, num_examples=len(paths), label_names=list(listing.class_names), multilabel=False,
        read=lambda start, stop, ordered: _files_dataset(paths[start:stop], labels[start:stop]),
        read_labels=lambda: labels, paths=paths, labels=labels)


def _split_names(split: str) -> list[str]:
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


def _tfds_source(builder: Any, split: str) -> Source:
    """A TFDS split (slicing and '+' allowed) as a Source; images stay encoded."""
    name = builder.info.name
    features = builder.info.features
    if "image" not in features or "label" not in features or not isinstance(
        features["label"], tfds.features.ClassLabel):
        raise ValueError(f"TFDS dataset {name!r} has no 'image' + ClassLabel 'label' features: {features}")
    splits = builder.info.splits
    # Splits are unknown when TFDS is mocked (tests) or the metadata lacks them; then the
    # dataset's own cardinality gives the size and slicing falls back to skip/take.
    known = dict(splits.items()) if splits else {}
    if known:
        unknown = [s for s in _split_names(split) if s not in known]
        if unknown:
            raise UserError(f"Unknown split {unknown} in {split!r} for dataset {name!r}; available: {sorted(known)}")
    image_decoders = tfds.decode.PartialDecoding(
        {"image": True, "label": True}, decoders={"image": tfds.decode.SkipDecoding()})

    def as_dataset(spec, decoders, ordered):
        # One file at a time gives the canonical (file) order that positions refer to.
        read_config = tfds.ReadConfig(interleave_cycle_length=1) if ordered else tfds.ReadConfig()
        return builder.as_dataset(split=spec, decoders=decoders, shuffle_files=False, read_config=read_config)

    if known:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
        num_examples = sum((i.to if i.to is not None else splits[i.splitname].num_examples) - (i.from_ or 0)
                           for i in instructions)
    else:
        card = int(as_dataset(split, image_decoders, True).cardinality())
        num_examples = card if card >= 0 else int(
            as_dataset(split, tfds.decode.PartialDecoding({"label": True}), True).reduce(0, lambda n, _: n + 1))
        instructions = []

    def read(start, stop, ordered):
        if stop <= start:
            return as_dataset(split, image_decoders, True).take(0)
        if len(instructions) == 1:
            first = instructions[0].from_ or 0
            spec = f"{instructions[0].splitname}[{first + start}:{first + stop}]"
            return as_dataset(spec, image_decoders, ordered)
        return as_dataset(split, image_decoders, True).skip(start).take(stop - start)

    def read_labels():
        ds = as_dataset(split, tfds.decode.PartialDecoding({"label": True}), True)
        batches = [b["label"] for b in ds.batch(_LABEL_BATCH).as_numpy_iterator()]
        return np.concatenate(batches) if batches else np.zeros([0], np.int64)

    bytes_per_example = None
    if known:
        base = [known[s] for s in _split_names(split)]
        total_bytes, total_examples = sum(s.num_bytes for s in base), sum(s.num_examples for s in base)
        if total_bytes > 0 and total_examples > 0:
            bytes_per_example = total_bytes / total_examples
    return Source(name=f"{name}:{split}", num_examples=int(num_examples),
                  label_names=list(features["label"].names), multilabel=False, read=read,
                  read_labels=functools.cache(read_labels), bytes_per_example=bytes_per_example)


def _xray_source(names: list[str], split: str, *, data_dir, views, label_set,
                builder_config) -> Source:
    """'+'-merged X-ray TFDS builders (via `input_pipeline.xray.read`) as a Source."""
    from input_pipeline import xray  # imported on use: tests put a stand-in in its place
    src = xray.read(names, split, data_dir=data_dir, views=views, label_set=label_set,
                    builder_config=builder_config)
    dataset = src.dataset  # {"image": encoded bytes, "label"}
    # input_pipeline.xray's reader reads a range of positions without scanning the records
    # before it, its labels in the view pass, and knows its size; a reader giving only
    # `dataset` (the tests' stand-in) is read by skipping and one pass over its labels.
    read_range = getattr(src, "read_range", None)

    def read(start, stop, ordered):
        if read_range is not None:
            return read_range(start, stop, ordered)
        return dataset.skip(start).take(max(stop - start, 0))

    def read_labels():
        if hasattr(src, "read_labels"):
            return src.read_labels()
        batches = [b for b in dataset.map(_plain(lambda ex: ex["label"])).batch(_LABEL_BATCH).as_numpy_iterator()]
        if batches:
            return np.concatenate(batches)
        return np.zeros([0, len(src.label_names)] if src.multilabel else [0], np.float32)

    return Source(name=f"{'+'.join(names)}:{split}", num_examples=int(src.num_examples),
                  label_names=list(src.label_names), multilabel=bool(src.multilabel), read=read,
                  read_labels=functools.cache(read_labels), kind="xray",
                  bytes_per_example=getattr(src, "bytes_per_example", None))


# ----------------------------------------------------------------------------- by name


def _kind(name: str) -> str:
    """The registry kind of `name`: 'image_folder', 'xray' ('+'-joined X-ray builders), else 'natural'."""
    record = registry.DATASETS.get(name)
    if record is not None and record.kind != "xray":
        return record.kind
    from input_pipeline import xray  # imported on use: tests put a stand-in in its place
    parts = [p.strip() for p in name.split("+")]
    if all(p in xray.XRAY_DATASETS for p in parts):
        return "xray"
    if "+" in name:
        valid = sorted(xray.XRAY_DATASETS)
        raise ValueError(f"data.name {name!r}: only X-ray sources can be merged with '+'; X-ray names: {valid}")
    return "natural"


def _unknown_name_error(name: str) -> UserError:
    from input_pipeline import xray  # imported on use: tests put a stand-in in its place
    xray_names = sorted(xray.XRAY_DATASETS)
    return UserError(f"Unknown data.name {name!r}; valid: {list(registry.NATURAL_DATASETS)}, 'image_folder', "
                      f"X-ray sources {xray_names} ('+'-joined to merge), or another registered TFDS "
                      "dataset with 'image' and 'label' features")


def build(data) -> tuple[Source, dict[str, Source]]:
    """The training Source and the named eval Sources of `data` (resolved ``config.data``)."""
    kind = _kind(data.name)
    if kind == "image_folder":
        if not data.train_dir:
            raise ValueError("data.name 'image_folder' needs data.train_dir")
        train = _folder_source(data.train_dir, skip_corrupt=data.skip_corrupt)
        evals = {}
        if data.val_dir:
            evals[VALID_SPLIT_NAME] = _folder_source(data.val_dir, class_names=train.label_names,
                                                     skip_corrupt=data.skip_corrupt)
        if data.eval_splits:
            logging.warning("data.eval_splits %s ignored for an image folder (eval = data.val_dir)", data.eval_splits)
        return train, evals
    if kind == "xray":
        names = [p.strip() for p in data.name.split("+")]

        def read(split):
            return _xray_source(names, split, data_dir=data.data_dir, views=data.views, label_set=data.label_set,
                                builder_config=data.builder_config)
    else:
        try:
            builder = tfds.builder(data.name, data_dir=data.data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise _unknown_name_error(data.name) from None
        if not builder.is_prepared():
            # Natural sets download themselves (ImageNet asks for its manual download).
            builder.download_and_prepare()

        def read(split):
            return _tfds_source(builder, split)
    return read(data.train_split), {k: read(v) for k, v in data.eval_splits.items()}
