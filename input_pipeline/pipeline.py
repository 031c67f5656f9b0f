"""`get_datasets(config)`: the train stream and the eval passes of one experiment (tf.data).

Stages, shared by every source (TFDS natural sets, image folders, the X-ray builders):

1. **Source**: one split as an ordered, re-readable list of *encoded* examples
   ``{'image': bytes, 'label': raw label}``. A position is an example's index in that order
   (TFDS: file order, read with ``interleave_cycle_length=1``; image folder: sorted paths).
2. **Selection** (numpy, on labels, identical on every host): the reference's ``valid_ratio``
   carve, the single-label filter (``multilabel_force_classification``), k-shot draws
   (`input_pipeline.fewshot`): per class, or on a multi-label target kept multi-label
   (``multilabel_shots='per_label'``) per label. The result is a sorted array of positions.
3. **Train stream**, resumable at any step. Global element ``g`` (the j-th example of global
   batch s is ``g = s * batch + j``) gets its augmentation from stateless ops keyed by
   ``(seed, g)``. Two ways to order examples:

   - *indexed* (random access: image-folder files, or the selection cached in memory as encoded
     bytes when it fits `cache_budget_bytes`; few-shot sets always do): the example of ``g`` is
     a pure function of ``(seed, g)``: a permutation per epoch (``index_shuffle`` keyed by
     (seed, epoch)), or i.i.d. draws with replacement when the set is smaller than the global
     batch (reference: ``RandomSampler(replacement=True)``), or inverse-class-frequency draws
     when ``oversample`` (reference: ``WeightedRandomSampler``). Host ``p`` computes rows
     ``[p*b, (p+1)*b)`` of every global batch, so the global batches are the same for any host
     count and a restart at step s starts at ``g = s * batch``.
   - *streamed* (large sets without random access, e.g. ImageNet or full X-ray collections):
     each host reads its own contiguous share of the positions once per epoch through a
     shuffle buffer seeded by (seed, host, epoch); oversampling repeats each example a
     stateless-random number of times whose expectation is the ``WeightedRandomSampler``'s.
     A restart skips whole epochs arithmetically and the rest of an epoch on encoded records
     (nothing skipped is decoded). The stream depends on the host count.

4. **Eval pass**: every selected example exactly once. Host ``p`` takes a contiguous share,
   pads it with masked zero examples so every host yields the same number of full batches.

Differences to the reference (``finetune.py: mktrainval``), all deliberate:
- The reference's train loader yields a short last batch per epoch; here batches have a fixed
  size and run across epoch boundaries (fixed shapes for jit).
- "Few-shot set smaller than the batch -> sample with replacement" compares with the global
  batch; the reference compares with its micro-batch (batch / batch_split), which this
  project's gradient accumulation does not see.
- k-shot draws use the per-class ``RandomState`` procedure for every source; the reference uses
  it only for datasets exposing ``labels`` (X-ray) and a torch-DataLoader scan otherwise (CIFAR,
  Pets, image folders), which cannot be reproduced without torch. Source orders differ from
  torchvision's anyway (TFDS file order).
- An image folder's evaluation folder uses the training folder's class ids (by name).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import fewshot, image_folder, preprocess
from input_pipeline.errors import UserError

NATURAL_TFDS_NAMES = ("cifar10", "cifar100", "oxford_iiit_pet", "oxford_flowers102", "imagenet2012")
IMAGE_FOLDER = "image_folder"
PP_KINDS = ("bit", "inception", "xray")
# data.multilabel_shots: how a few-shot set of a multi-label target is drawn. 'single': the
# reference's way, needing multilabel_force_classification (images with exactly one positive,
# trained as single-label classes); 'per_label': the target stays multi-label, every label gets
# at least k positive images (fewshot.per_label_k_shot_indices).
MULTILABEL_SHOTS = ("single", "per_label")
# Largest training selection (encoded bytes) kept in host memory for random access. Kept under
# the 2 GiB protobuf limit that tf.data graph rewrites hit with captured constants.
DEFAULT_CACHE_BUDGET_BYTES = 1 << 30
VALID_SPLIT_NAME = "val"

_INT64_MAX = np.iinfo(np.int64).max
# Purposes folded into the run seed so that the draws of different stages are independent.
_SEED_ORDER = 1
_SEED_AUGMENT = 2
_LABEL_BATCH = 4096
_NO_LIMIT = 1 << 62
# The tf.data functions here have no Python control flow on tensors: skip AutoGraph.
_plain = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass
class DatasetInfo:
    """What the model and the train loop need to know about the data."""
    num_classes: int
    label_names: list[str]
    multilabel: bool              # True -> float multi-hot labels, NaN = unknown
    train_size: int               # examples in the training set actually used
    image_size: tuple[int, int]   # model input (H, W) after preprocessing


@dataclasses.dataclass
class Datasets:
    """Per-host batches as dicts of numpy arrays.

    train: infinite; ``image`` [b, H, W, 3], ``label`` int32 [b] or float32 [b, C].
    evals: name -> callable giving one fresh pass over that split; batches add ``mask`` bool [b]
      (False on padding rows, whose image is zero and label 0 or all-NaN).

    ``image`` is uint8 (raw levels) for pp.kind 'bit' and 'inception', and float32 in [-1, 1] for
    'xray' (16-bit sources keep their precision). The model's input is
    ``input_pipeline.model_input(batch["image"], config.pp.norm)``, best inside the jitted step:
    uint8 -> float32 with the pp.norm normalisation; float images pass through unchanged.
    """
    train: Iterator[dict[str, np.ndarray]]
    evals: dict[str, Callable[[], Iterator[dict[str, np.ndarray]]]]
    info: DatasetInfo


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


# ----------------------------------------------------------------------------- sources


def _files_dataset(paths: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices({"image": paths.astype(str), "label": labels})
    return ds.map(_plain(lambda ex: {"image": tf.io.read_file(ex["image"]), "label": ex["label"]}),
                  num_parallel_calls=tf.data.AUTOTUNE)


def folder_source(root: str, *, class_names: list[str] | None = None, skip_corrupt: bool = False) -> Source:
    """An image folder (one sub-folder per class) as a Source; files are checked first."""
    listing = image_folder.load_image_folder(root, class_names=class_names, skip_corrupt=skip_corrupt)
    paths, labels = listing.paths, listing.labels
    return Source(
        name=root, num_examples=len(paths), label_names=list(listing.class_names), multilabel=False,
        read=lambda start, stop, ordered: _files_dataset(paths[start:stop], labels[start:stop]),
        read_labels=lambda: labels, paths=paths, labels=labels)


def _split_names(split: str) -> list[str]:
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


def tfds_source(builder: Any, split: str) -> Source:
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


def xray_source(names: list[str], split: str, *, data_dir, views, label_set,
                builder_config) -> Source:
    """'+'-merged X-ray TFDS builders (via `input_pipeline.xray.read`) as a Source."""
    from input_pipeline import xray  # imported on use: tests put a stand-in in its place
    src = xray.read(names, split, data_dir=data_dir, views=views, label_set=label_set,
                    builder_config=builder_config)
    dataset = src.dataset  # {"image": encoded bytes, "label"}

    def read(start, stop, ordered):
        del ordered  # The X-ray reader has one fixed order.
        return dataset.skip(start).take(max(stop - start, 0))

    def read_labels():
        batches = [b for b in dataset.map(_plain(lambda ex: ex["label"])).batch(_LABEL_BATCH).as_numpy_iterator()]
        if batches:
            return np.concatenate(batches)
        return np.zeros([0, len(src.label_names)] if src.multilabel else [0], np.float32)

    return Source(name=f"{'+'.join(names)}:{split}", num_examples=int(src.num_examples),
                  label_names=list(src.label_names), multilabel=bool(src.multilabel), read=read,
                  read_labels=functools.cache(read_labels), kind="xray")


def _read_positions(source: Source, positions: np.ndarray, *, ordered: bool) -> tf.data.Dataset:
    """The examples at sorted `positions` of `source` (in position order if `ordered`)."""
    positions = np.asarray(positions, np.int64)
    if source.paths is not None:
        return _files_dataset(source.paths[positions], source.labels[positions])
    if len(positions) == 0:
        return source.read(0, 0, True)
    start, stop = int(positions[0]), int(positions[-1]) + 1
    if stop - start == len(positions):
        return source.read(start, stop, ordered)
    keep = np.zeros(stop - start, bool)
    keep[positions - start] = True
    keep = tf.constant(keep)
    ds = source.read(start, stop, True).enumerate()
    return ds.filter(_plain(lambda i, ex: keep[i])).map(_plain(lambda i, ex: ex))


# ----------------------------------------------------------------------------- selection


@dataclasses.dataclass
class _Split:
    source: Source
    positions: np.ndarray   # sorted positions used


def _class_ids(raw_labels: np.ndarray, force_classification: bool) -> np.ndarray:
    if force_classification:
        return np.nan_to_num(raw_labels.astype(np.float64), nan=0.0).argmax(axis=1)
    return raw_labels.astype(np.int64)


def _single_label_filter(source: Source, positions: np.ndarray) -> np.ndarray:
    labels = source.read_labels()[positions]
    keep, _ = fewshot.single_label_subset(labels)
    logging.info("%s: %d of %d examples have exactly one positive label", source.name, len(keep), len(positions))
    return positions[keep]


# ----------------------------------------------------------------------------- per-example ops


def _label_fn(multilabel: bool, force_classification: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    if force_classification:
        return lambda y: tf.cast(tf.argmax(tf.where(tf.math.is_nan(y), tf.zeros_like(y), y)), tf.int32)
    if multilabel:
        return lambda y: tf.cast(y, tf.float32)
    return lambda y: tf.cast(y, tf.int32)


def _preprocessors(pp, source_kind: str):
    """(train_fn(encoded, seed), eval_fn(encoded), image dtype) for a source kind.

    Both functions give [crop, crop, 3] images: uint8 for pp.kind 'bit' / 'inception' (normalised
    on the device by `preprocess.model_input`), float32 in [-1, 1] for 'xray', whose 16-bit
    sources would lose precision in uint8.
    """
    kind, crop, resize, norm = pp.kind, int(pp.crop), int(pp.get("resize", 0) or 0), pp.get("norm", "bit")
    if source_kind == "xray":
        from input_pipeline import xray  # imported on use: tests put a stand-in in its place
        if kind == "xray":
            if norm != "bit":
                raise ValueError(f"pp.kind 'xray' normalises to [-1, 1] as the reference; "
                                 f"pp.norm must be 'bit', got {norm!r}")
            return (lambda enc, seed: xray.preprocess_train(xray.decode(enc), seed, size=crop),
                    lambda enc: xray.preprocess_eval(xray.decode(enc), size=crop), tf.float32)
        def decode(enc):
            return preprocess.grey01_to_rgb255(xray.decode(enc))

        if kind == "bit":
            return (lambda enc, seed: preprocess.bit_train(decode(enc), seed, resize=resize, crop=crop),
                    lambda enc: preprocess.bit_eval(decode(enc), crop=crop), tf.uint8)
        return (lambda enc, seed: preprocess.inception_train(decode(enc), seed, crop=crop),
                lambda enc: preprocess.inception_eval(decode(enc), resize=resize, crop=crop), tf.uint8)
    if kind == "xray":
        raise ValueError("pp.kind 'xray' needs an X-ray source; use 'bit' or 'inception' for natural images")
    decode = preprocess.decode_rgb
    if kind == "bit":
        return (lambda enc, seed: preprocess.decode_and_bit_crop(enc, seed, resize=resize, crop=crop),
                lambda enc: preprocess.bit_eval(decode(enc), crop=crop), tf.uint8)
    return (lambda enc, seed: preprocess.decode_and_inception_crop(enc, seed, crop=crop),
            lambda enc: preprocess.inception_eval(decode(enc), resize=resize, crop=crop), tf.uint8)


def _fixed_shape(fn, crop: int):
    return lambda *args: tf.ensure_shape(fn(*args), [crop, crop, 3])


# ----------------------------------------------------------------------------- train stream


def _sampler(kind: str, n: int, seed: int, weights: np.ndarray | None) -> Callable[[tf.Tensor], tf.Tensor]:
    """Global element index g -> position in the training store (a pure function of (seed, g))."""
    key = tf.constant([seed, _SEED_ORDER], tf.int64)
    if kind == "permutation":
        def sample(g):
            epoch_key = tf.random.experimental.stateless_fold_in(key, g // n)
            return tf.random.experimental.index_shuffle(g % n, epoch_key, tf.constant(n - 1, tf.int64))
    elif kind == "uniform":
        def sample(g):
            return tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(key, g),
                                               minval=0, maxval=n, dtype=tf.int64)
    elif kind == "weighted":
        cdf = np.cumsum(weights, dtype=np.float64)
        cdf = tf.constant(cdf / cdf[-1])

        def sample(g):
            u = tf.random.stateless_uniform([1], tf.random.experimental.stateless_fold_in(key, g), dtype=tf.float64)
            return tf.minimum(tf.searchsorted(cdf, u, side="right")[0], n - 1)
    else:
        raise ValueError(f"Unknown sampler {kind!r}; valid: permutation, uniform, weighted")
    return sample


def _materialise(source: Source, positions: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Encoded images and raw labels at `positions`, or None if they exceed `budget` bytes."""
    if source.bytes_per_example is not None and source.bytes_per_example * len(positions) > budget:
        return None
    images, labels, total = [], [], 0
    for batch in _read_positions(source, positions, ordered=True).batch(256).as_numpy_iterator():
        total += sum(len(b) for b in batch["image"])
        if total > budget:
            logging.info("%s: training selection exceeds the %d-byte cache budget; streaming it", source.name, budget)
            return None
        images.extend(batch["image"])
        labels.append(batch["label"])
    return np.asarray(images, dtype=object), np.concatenate(labels)


def _augment_key(seed: int) -> tf.Tensor:
    return tf.constant([seed, _SEED_AUGMENT], tf.int64)


def _indexed_train(images: np.ndarray, labels: np.ndarray, *, from_files: bool, sampler, train_fn, label_fn,
                   seed: int, global_batch: int, local_batch: int, process_index: int,
                   start_step: int) -> tf.data.Dataset:
    images_t = tf.constant(images.astype(object) if not from_files else images.astype(str))
    labels_t = tf.constant(labels)
    aug_key = _augment_key(seed)

    def element(local_i):
        # Rows [p*b, (p+1)*b) of global batch s belong to host p.
        g = (local_i // local_batch) * global_batch + process_index * local_batch + local_i % local_batch
        idx = sampler(g)
        encoded = tf.gather(images_t, idx)
        if from_files:
            encoded = tf.io.read_file(encoded)
        return {"image": train_fn(encoded, tf.random.experimental.stateless_fold_in(aug_key, g)),
                "label": label_fn(tf.gather(labels_t, idx))}

    ds = tf.data.Dataset.range(start_step * local_batch, _INT64_MAX)
    ds = ds.map(_plain(element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _host_range(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    return n * process_index // process_count, n * (process_index + 1) // process_count


def _streamed_train(source: Source, positions: np.ndarray, copies: np.ndarray | None, *, train_fn, label_fn,
                    seed: int, local_batch: int, process_index: int, process_count: int,
                    start_step: int, shuffle_buffer: int) -> tf.data.Dataset:
    """Per-host epochs through a seeded shuffle buffer; `copies`: expected repeats per example.

    ``Dataset.shuffle`` combines its seed with TensorFlow's global seed, which this project never
    sets (``tf.random.set_seed`` elsewhere in a process would change the streamed order).
    """
    lo, hi = _host_range(len(positions), process_index, process_count)
    if hi <= lo:
        raise ValueError(f"{len(positions)} training examples cannot be shared by {process_count} hosts")
    shard = positions[lo:hi]
    # Oversampling needs each example's label in stream order: read in position order then.
    examples = _read_positions(source, shard, ordered=copies is not None)
    host_key = tf.random.experimental.stateless_fold_in(tf.constant([seed, _SEED_ORDER], tf.int64), process_index)
    # Independent keys for the repeat counts and the shuffle order of each epoch.
    repeat_key = tf.random.experimental.stateless_fold_in(host_key, 0)
    shuffle_key = tf.random.experimental.stateless_fold_in(host_key, 1)
    buffer = max(1, min(int(shuffle_buffer), len(shard)))
    if copies is not None:
        copies = copies[lo:hi]
        base = tf.constant(np.floor(copies).astype(np.int64))
        frac = tf.constant(copies - np.floor(copies))

    def repeats(epoch):
        u = tf.random.stateless_uniform([len(shard)], tf.random.experimental.stateless_fold_in(repeat_key, epoch),
                                        dtype=tf.float64)
        return base + tf.cast(u < frac, tf.int64)

    def epoch_dataset(epoch):
        ds = examples
        if copies is not None:
            ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(repeats(epoch)))
            ds = ds.flat_map(_plain(lambda ex, r: tf.data.Dataset.from_tensors(ex).repeat(r)))
        # stateless_fold_in(key, e) is [f(key), e]: draw a scalar seed from it.
        shuffle_seed = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(shuffle_key, epoch),
                                                   minval=0, maxval=_INT64_MAX, dtype=tf.int64)
        return ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

    # Whole epochs before the restart point are skipped arithmetically.
    first = start_step * local_batch
    epoch, offset = 0, first
    while True:
        length = len(shard) if copies is None else int(tf.reduce_sum(repeats(tf.constant(epoch, tf.int64))))
        if offset < length:
            break
        offset -= length
        epoch += 1
    ds = tf.data.Dataset.range(epoch, _INT64_MAX).flat_map(_plain(epoch_dataset)).skip(offset)
    aug_key = _augment_key(seed)

    def element(local_i, ex):
        g = local_i * process_count + process_index   # unique over hosts
        return {"image": train_fn(ex["image"], tf.random.experimental.stateless_fold_in(aug_key, g)),
                "label": label_fn(ex["label"])}

    ds = ds.enumerate(start=first).map(_plain(element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True)


# ----------------------------------------------------------------------------- eval pass


def _eval_dataset(split: _Split, *, eval_fn, label_fn, pad_label, crop: int, image_dtype: tf.DType,
                  local_batch: int, process_index: int, process_count: int) -> tf.data.Dataset:
    m = len(split.positions)
    lo, hi = _host_range(m, process_index, process_count)
    batches = _ceil_div(_ceil_div(m, process_count), local_batch)  # the same on every host
    ds = _read_positions(split.source, split.positions[lo:hi], ordered=False)
    ds = ds.map(_plain(lambda ex: {"image": eval_fn(ex["image"]), "label": label_fn(ex["label"]),
                                   "mask": tf.constant(True)}), num_parallel_calls=tf.data.AUTOTUNE)
    pad = {"image": tf.zeros([crop, crop, 3], image_dtype), "label": pad_label, "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(batches * local_batch - (hi - lo)))
    return ds.batch(local_batch, drop_remainder=True)


# ----------------------------------------------------------------------------- entry point


def _check_config(config, process_count: int, start_step: int) -> None:
    pp = config.pp
    if pp.kind not in PP_KINDS:
        raise UserError(f"Unknown pp.kind {pp.kind!r}; valid: {list(PP_KINDS)}")
    preprocess.check_norm(pp.get("norm", "bit"))
    if int(pp.crop) <= 0:
        raise ValueError(f"pp.crop must be positive, got {pp.crop}")
    if pp.kind in ("bit", "inception") and int(pp.get("resize", 0) or 0) < int(pp.crop):
        raise ValueError(f"pp.resize ({pp.get('resize')}) must be >= pp.crop ({pp.crop}) for pp.kind {pp.kind!r}")
    for field in ("batch_size", "eval_batch_size"):
        value = int(config[field])
        if value <= 0 or value % process_count:
            raise ValueError(f"config.{field}={value} must be a positive multiple of the host count {process_count}")
    shots = int(config.data.get("shots", 0) or 0)
    if shots < 0:
        raise ValueError(f"data.shots must be >= 0, got {shots}")
    multilabel_shots = config.data.get("multilabel_shots", "single")
    if multilabel_shots not in MULTILABEL_SHOTS:
        raise ValueError(f"Unknown data.multilabel_shots {multilabel_shots!r}; valid: {list(MULTILABEL_SHOTS)}")
    if multilabel_shots == "per_label" and config.data.get("multilabel_force_classification", False):
        raise ValueError("data.multilabel_shots='per_label' keeps the target multi-label; it cannot be combined "
                         "with data.multilabel_force_classification=True (use multilabel_shots='single')")
    ratio = float(config.data.get("valid_ratio", 0.0) or 0.0)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"data.valid_ratio must be in [0, 1), got {ratio}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")


def _xray_names(name: str) -> list[str] | None:
    """The '+'-separated X-ray names of `name`, or None if it is not an X-ray source."""
    if name == IMAGE_FOLDER or name in NATURAL_TFDS_NAMES:
        return None
    from input_pipeline import xray  # imported on use: tests put a stand-in in its place
    parts = [p.strip() for p in name.split("+")]
    if all(p in xray.XRAY_DATASETS for p in parts):
        return parts
    if "+" in name:
        valid = sorted(xray.XRAY_DATASETS)
        raise ValueError(f"data.name {name!r}: only X-ray sources can be merged with '+'; X-ray names: {valid}")
    return None


def _unknown_name_error(name: str) -> UserError:
    from input_pipeline import xray  # imported on use: tests put a stand-in in its place
    xray_names = sorted(xray.XRAY_DATASETS)
    return UserError(f"Unknown data.name {name!r}; valid: {list(NATURAL_TFDS_NAMES)}, {IMAGE_FOLDER!r}, "
                      f"X-ray sources {xray_names} ('+'-joined to merge), or another registered TFDS "
                      "dataset with 'image' and 'label' features")


def _build_sources(config) -> tuple[Source, dict[str, Source]]:
    """The training Source and the named eval Sources (before any carving)."""
    data = config.data
    name = data.name
    eval_splits = dict(data.get("eval_splits", None) or {})
    if name == IMAGE_FOLDER:
        skip = bool(data.get("skip_corrupt", False))
        if not data.get("train_dir"):
            raise ValueError("data.name 'image_folder' needs data.train_dir")
        train = folder_source(data.train_dir, skip_corrupt=skip)
        evals = {}
        if data.get("val_dir"):
            evals[VALID_SPLIT_NAME] = folder_source(data.val_dir, class_names=train.label_names, skip_corrupt=skip)
        if eval_splits:
            logging.warning("data.eval_splits %s ignored for an image folder (eval = data.val_dir)", eval_splits)
        return train, evals
    xray_names = _xray_names(name)
    if xray_names is not None:
        kwargs = dict(data_dir=data.get("data_dir"), views=data.get("views"),
                      label_set=data.get("label_set", "intersection"),
                      builder_config=data.get("builder_config", "512"))
        train = xray_source(xray_names, data.train_split, **kwargs)
        return train, {k: xray_source(xray_names, v, **kwargs) for k, v in eval_splits.items()}
    try:
        builder = tfds.builder(name, data_dir=data.get("data_dir"))
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown_name_error(name) from None
    if not builder.is_prepared():
        # Natural sets download themselves (ImageNet asks for its manual download).
        builder.download_and_prepare()
    train = tfds_source(builder, data.train_split)
    return train, {k: tfds_source(builder, v) for k, v in eval_splits.items()}


def _options(threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return options


def get_datasets(config, *, start_step: int = 0, process_index: int | None = None,
                 process_count: int | None = None, cache_budget_bytes: int = DEFAULT_CACHE_BUDGET_BYTES,
                 threads: int | None = None) -> Datasets:
    """Builds this host's train iterator and eval passes for `config` (see module docstring).

    Args:
      config: ml_collections config with ``seed``, ``batch_size``, ``eval_batch_size``, ``data.*``
        and ``pp.*`` (schema in the README).
      start_step: the train stream starts at this global step, with exactly the batches an
        uninterrupted stream would give from there.
      process_index, process_count: this host and the number of hosts (default: jax's).
      cache_budget_bytes: largest training selection held in memory for random access.
      threads: tf.data thread pool size (default: TF's, i.e. all cores).
    """
    if process_index is None or process_count is None:
        import jax  # pylint: disable=g-import-not-at-top  (only needed for the defaults)
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    _check_config(config, process_count, start_step)
    data, pp = config.data, config.pp
    seed = int(config.seed)
    batch, eval_batch = int(config.batch_size), int(config.eval_batch_size)
    shots = int(data.get("shots", 0) or 0)
    ratio = float(data.get("valid_ratio", 0.0) or 0.0)
    force = bool(data.get("multilabel_force_classification", False))
    per_label = data.get("multilabel_shots", "single") == "per_label"
    oversample = bool(data.get("oversample", False))
    crop = int(pp.crop)

    train_source, eval_sources = _build_sources(config)
    if force and not train_source.multilabel:
        raise ValueError(f"data.multilabel_force_classification needs a multi-label source; {train_source.name} is not")
    if per_label and not train_source.multilabel:
        raise ValueError(f"data.multilabel_shots='per_label' needs a multi-label source; {train_source.name} is not")
    if shots and train_source.multilabel and not (force or per_label):
        raise ValueError("Few-shot on a multi-label source needs data.multilabel_force_classification=True "
                         "(the reference keeps images with exactly one positive label) or "
                         "data.multilabel_shots='per_label' (every label gets k positive images)")

    # Selection, in the reference's order: carve, single-label filter, k-shot (per class or per label).
    train_positions = np.arange(train_source.num_examples)
    evals = {k: _Split(s, np.arange(s.num_examples)) for k, s in eval_sources.items()}
    if ratio > 0:
        if VALID_SPLIT_NAME in evals:
            raise ValueError(f"data.valid_ratio carves eval split {VALID_SPLIT_NAME!r}, which data.eval_splits/val_dir "
                             "also define; use one of them")
        train_positions, valid_positions = fewshot.carve_validation(len(train_positions), ratio,
                                                                    int(data.get("valid_seed", 0)))
        evals[VALID_SPLIT_NAME] = _Split(train_source, np.sort(valid_positions))
    if force:
        train_positions = _single_label_filter(train_source, train_positions)
        for split in evals.values():
            split.positions = np.sort(_single_label_filter(split.source, split.positions))
    class_ids = None
    num_classes = len(train_source.label_names)
    if shots > 0 or oversample:
        all_labels = train_source.labels if train_source.labels is not None else train_source.read_labels()
        labels = all_labels[train_positions]
        if shots > 0 and per_label:
            train_positions = train_positions[fewshot.per_label_k_shot_indices(labels, shots, seed)]
        else:
            class_ids = _class_ids(labels, force)
            if shots > 0:
                pick = fewshot.k_shot_indices(class_ids, shots, seed, num_classes)
                train_positions, class_ids = train_positions[pick], class_ids[pick]
    if shots > 0 and oversample:
        logging.info("data.oversample ignored for a %d-shot set (the reference oversamples full sets only)", shots)
        oversample = False
    order = np.argsort(train_positions, kind="stable")
    train_positions = train_positions[order]
    class_ids = class_ids[order] if class_ids is not None else None
    if len(train_positions) == 0:
        raise ValueError(f"Empty training set from {train_source.name} after selection")
    for k, split in evals.items():
        if len(split.positions) == 0:
            raise ValueError(f"Eval split {k!r} ({split.source.name}) is empty")

    multilabel = train_source.multilabel and not force
    label_fn = _label_fn(train_source.multilabel, force)
    train_fn, eval_fn, image_dtype = _preprocessors(pp, train_source.kind)
    train_fn, eval_fn = _fixed_shape(train_fn, crop), _fixed_shape(eval_fn, crop)
    local_batch, local_eval_batch = batch // process_count, eval_batch // process_count
    n = len(train_positions)
    weights = fewshot.inverse_frequency_weights(class_ids, num_classes) if oversample else None

    store = None
    if train_source.paths is not None:
        store = (train_source.paths[train_positions], train_source.labels[train_positions])
    else:
        # A set smaller than the batch is drawn with replacement, which needs random access: it is
        # tiny, so it is cached whatever the budget.
        store = _materialise(train_source, train_positions, _NO_LIMIT if n < batch else cache_budget_bytes)
    if store is not None:
        sampler_kind = "weighted" if oversample else ("uniform" if n < batch else "permutation")
        logging.info("Train: %d examples from %s, indexed (%s)", n, train_source.name, sampler_kind)
        train = _indexed_train(store[0], store[1], from_files=train_source.paths is not None,
                               sampler=_sampler(sampler_kind, n, seed, weights), train_fn=train_fn,
                               label_fn=label_fn, seed=seed, global_batch=batch, local_batch=local_batch,
                               process_index=process_index, start_step=start_step)
    else:
        logging.info("Train: %d examples from %s, streamed per host", n, train_source.name)
        copies = n * weights / weights.sum() if oversample else None
        train = _streamed_train(train_source, train_positions, copies, train_fn=train_fn, label_fn=label_fn,
                                seed=seed, local_batch=local_batch, process_index=process_index,
                                process_count=process_count, start_step=start_step,
                                shuffle_buffer=int(data.get("shuffle_buffer", 10_000) or 10_000))
    options = _options(threads)
    train = train.prefetch(tf.data.AUTOTUNE).with_options(options)

    if multilabel:
        pad_label = tf.fill([num_classes], tf.constant(np.nan, tf.float32))
    else:
        pad_label = tf.constant(0, tf.int32)
    eval_fns = {}
    for k, split in evals.items():
        ds = _eval_dataset(split, eval_fn=eval_fn, label_fn=label_fn, pad_label=pad_label, crop=crop,
                           image_dtype=image_dtype, local_batch=local_eval_batch, process_index=process_index,
                           process_count=process_count)
        ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
        eval_fns[k] = (lambda d: lambda: d.as_numpy_iterator())(ds)
        logging.info("Eval %r: %d examples from %s", k, len(split.positions), split.source.name)

    info = DatasetInfo(num_classes=num_classes, label_names=list(train_source.label_names), multilabel=multilabel,
                       train_size=n, image_size=(crop, crop))
    return Datasets(train=iter(train.as_numpy_iterator()), evals=eval_fns, info=info)
