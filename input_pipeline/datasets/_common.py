"""What the six X-ray builders share: configs, CSV reading, drop counting, the base builder.

A dataset module supplies `_read_records(root)`: the examples of each split
(everything but the image) and the counts of rows it left out, by reason. The
base class decodes, crops and resizes the images in a thread pool, keeps the
split's order, and stores the kept / dropped counts in `info.metadata`.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import gzip
import itertools
import math
import os
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from input_pipeline import imaging, registry
from input_pipeline.errors import UserError

VERSION = tfds.core.Version("1.0.0")
RELEASE_NOTES = {"1.0.0": "First release."}
DEFAULT_CONFIG = "512"

# Split key for rows left out before any split was assigned to them.
UNASSIGNED = "unassigned"

# Images decoded ahead of the writer per worker: bounds memory, keeps workers busy.
_WINDOW_PER_WORKER = 16


@dataclasses.dataclass(eq=False)
class XrayConfig(tfds.core.BuilderConfig):
    """Stored resolution of an X-ray builder.

    Attributes:
      size: side of the stored square (square_crop) or its shorter side; None keeps
        the original pixels.
      square_crop: centre-crop to a square of side min(H, W) before resizing.
    """

    size: Optional[int] = None
    square_crop: bool = True


def make_configs(square_crop: bool) -> list:
    """The `full`, `512` and `224` configs, cropping to a square or keeping the aspect."""
    if square_crop:
        how = "centre-cropped to a square of side min(H, W), then area-resized to {0}x{0}"
    else:
        how = "shorter side area-resized to {0} (aspect ratio kept, no crop)"
    return [
        XrayConfig(
            name="full",
            size=None,
            square_crop=square_crop,
            description="Original pixels (lossless PNG; PNG sources of the right depth copied).",
        ),
        XrayConfig(name="512", size=512, square_crop=square_crop, description=how.format(512)),
        XrayConfig(name="224", size=224, square_crop=square_crop, description=how.format(224)),
    ]


class DropLog:
    """Counts of images left out, per split and reason (no mutable module state)."""

    def __init__(self):
        self._counts = collections.defaultdict(collections.Counter)

    def add(self, split: str, reason: str, n: int = 1) -> None:
        """Counts `n` images of `split` (or UNASSIGNED) left out for `reason`."""
        if n:
            self._counts[split][reason] += n

    def as_dict(self) -> dict:
        """A JSON-ready {split: {reason: count}} copy."""
        return {split: dict(sorted(c.items())) for split, c in sorted(self._counts.items())}


@dataclasses.dataclass(frozen=True)
class Record:
    """One example before its image is read.

    Attributes:
      key: unique key within its split.
      image_file: absolute path of the source image.
      example: every feature but `image` (image_path, view, patient_id, labels/label ...).
    """

    key: str
    image_file: str
    example: Mapping


class UnreadableImageError(UserError):
    """An image could not be decoded and skip_corrupt was off (a missing one raises
    FileNotFoundError)."""


def missing_file_error(dataset: str, path: os.PathLike, instructions: str) -> FileNotFoundError:
    """A FileNotFoundError naming the missing file and repeating the download instructions."""
    return FileNotFoundError(
        f"{dataset}: required file {os.fspath(path)} not found. The manual_dir must be the "
        f"dataset's own root folder, laid out as follows:\n{instructions}"
    )


def open_text(path: os.PathLike):
    """Opens a text file for the csv module, decompressing .gz files."""
    path = os.fspath(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def read_csv(
    path: os.PathLike,
    columns: Sequence[str],
    *,
    dataset: str,
    instructions: str,
    optional_columns: Sequence[str] = (),
) -> list:
    """Reads the named columns of a CSV (quoted multi-line fields allowed) into dicts.

    Args:
      path: the .csv or .csv.gz file.
      columns: the columns to return; each must be in the header.
      dataset: builder name, for messages.
      instructions: the manual download instructions, repeated if the file is missing.
      optional_columns: further columns returned when present ("" when absent).

    Returns:
      One dict per record, with the requested columns only; a short record gets "".

    Raises:
      FileNotFoundError: the file is missing.
      ValueError: a column is missing (naming column and file), or the file is not
        UTF-8 / not gzip / not CSV (naming the file).
    """
    if not os.path.isfile(path):
        raise missing_file_error(dataset, path, instructions)
    try:
        with open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{dataset}: {os.fspath(path)} is empty (expected a header line).")
            header = [h.strip() for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise ValueError(
                    f"{dataset}: column(s) {missing} missing from {os.fspath(path)}; "
                    f"its header has {header}."
                )
            wanted = list(columns) + [c for c in optional_columns if c in header]
            positions = [header.index(c) for c in wanted]
            absent = {c: "" for c in optional_columns if c not in header}
            rows = []
            for record in reader:
                if not record:
                    continue  # blank line (pandas skips these too)
                row = {c: (record[p] if p < len(record) else "") for c, p in zip(wanted, positions)}
                row.update(absent)
                rows.append(row)
            return rows
    except UnicodeDecodeError as e:
        raise ValueError(f"{dataset}: {os.fspath(path)} is not valid UTF-8 text: {e}") from e
    except (gzip.BadGzipFile, EOFError, csv.Error) as e:
        raise ValueError(f"{dataset}: cannot read {os.fspath(path)}: {e}") from e


def parse_float(value: str, *, dataset: str, path: os.PathLike, column: str, row: int) -> float:
    """A CSV cell as pandas reads a numeric column: blank -> NaN; non-numbers are errors."""
    value = value.strip()
    if value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"{dataset}: {os.fspath(path)} record {row}: column {column!r} holds {value!r}, "
            "not a number."
        ) from None


def label_vector(values: Iterable[float]) -> np.ndarray:
    """A float32 label vector."""
    return np.asarray(list(values), dtype=np.float32)


def _iter_results(tasks: Sequence[imaging.ImageTask], num_workers: int) -> Iterator:
    """process_image over tasks, in order, with up to `num_workers` threads (at most a window ahead).

    Threads, not processes: Pillow and numpy release the GIL while decoding, resizing and
    encoding, so threads decode as fast as worker processes did (benchmarks/RESULTS.md,
    "Preparing X-ray datasets") and need no importable main program; a builder therefore
    prepares from an unguarded script, standard input or a notebook alike.
    """
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(imaging.process_image, tasks)
        return
    jobs = iter(tasks)
    with concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="xray-image") as pool:
        pending = collections.deque(pool.submit(imaging.process_image, job)
                                    for job in itertools.islice(jobs, num_workers * _WINDOW_PER_WORKER))
        try:
            while pending:
                result = pending.popleft().result()
                nxt = next(jobs, None)
                if nxt is not None:
                    pending.append(pool.submit(imaging.process_image, nxt))
                yield result
        finally:
            for future in pending:  # stopped early (an error): drop queued work
                future.cancel()


class XrayBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class: a manual-download X-ray dataset stored as grayscale PNG examples.

    Subclasses set the class attributes below and implement `_read_records`; label names,
    single/multi-label and default views come from the builder's `input_pipeline.registry`
    record.
    Builder options (also accepted by `tfds.builder(name, **kwargs)`):
      skip_corrupt: leave out unreadable or missing images and count them
        (default: stop with an error naming the file).
      num_workers: threads decoding/resizing images (default os.cpu_count()).
    """

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    DEFAULT_BUILDER_CONFIG_NAME = DEFAULT_CONFIG
    BITS = 8
    CHANNEL_RULE = "bgr0"
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    def __init__(self, *, skip_corrupt: bool = False, num_workers: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self._skip_corrupt = bool(skip_corrupt)
        self._num_workers = num_workers or os.cpu_count() or 1
        # Pickling rebuilds the builder from _original_state: keep the options there.
        self._original_state = dict(
            self._original_state, skip_corrupt=skip_corrupt, num_workers=num_workers
        )

    def _extra_features(self) -> dict:
        """Features beyond the common ones (override to add, e.g. COVIDx's source)."""
        return {}

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(
                shape=(None, None, 1),
                dtype=np.uint16 if self.BITS == 16 else np.uint8,
                encoding_format="png",
            ),
            "image_path": tfds.features.Text(),
            "view": tfds.features.Text(),
            "patient_id": tfds.features.Text(),
        }
        record = registry.DATASETS[self.name]
        metadata = {"default_views": list(record.views or ()), "kept": {}, "dropped": {},
                    "label_names": list(record.label_names)}
        if record.multilabel:
            features["labels"] = tfds.features.Tensor(shape=(len(record.label_names),), dtype=np.float32)
        else:
            features["label"] = tfds.features.ClassLabel(names=list(record.label_names))
        features.update(self._extra_features())
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=None,
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(metadata),
        )

    @abc.abstractmethod
    def _read_records(self, root: str) -> tuple:
        """Reads the dataset's files under root.

        Returns:
          ({split: [Record, ...]}, DropLog) with the rows left out before any image
          is read.
        """

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        splits, drops = self._read_records(root)
        self.info.metadata["dropped"] = drops.as_dict()
        self.info.metadata["kept"] = {}
        empty = [split for split, records in splits.items() if not records]
        for split in empty:
            # TFDS cannot write a split without examples; say so instead of failing later.
            logging.warning("%s: split %r has no images after the row filters; it is not written.",
                            self.name, split)
            self.info.metadata["kept"][split] = 0
        return {
            split: self._generate_examples(split, records, drops)
            for split, records in splits.items() if records
        }

    def _generate_examples(self, split: str, records: Sequence[Record], drops: DropLog):
        size = self.builder_config.size
        tasks = [
            imaging.ImageTask(
                path=r.image_file,
                bits=self.BITS,
                channel_rule=self.CHANNEL_RULE,
                size=size,
                square_crop=self.builder_config.square_crop,
            )
            for r in records
        ]
        kept = 0
        low_bit_depth = 0
        # Closed on an error too, so queued images are dropped at once.
        with contextlib.closing(_iter_results(tasks, self._num_workers)) as results:
            for record, result in zip(records, results):
                if result.error_kind is not None:
                    if not self._skip_corrupt:
                        missing = result.error_kind == "missing file"
                        exc = FileNotFoundError if missing else UnreadableImageError
                        raise exc(
                            f"{self.name}: {result.error_kind} {record.image_file} ({result.message}). "
                            "Pass --skip_corrupt (skip_corrupt=True in Python) to leave such images "
                            "out and count them."
                        )
                    logging.warning("%s: leaving out %s: %s (%s)", self.name, record.image_file,
                                    result.error_kind, result.message)
                    drops.add(split, result.error_kind)
                    continue
                kept += 1
                low_bit_depth += result.low_bit_depth
                yield record.key, dict(record.example, image=result.png)
        # The generator is exhausted before TFDS writes dataset_info, so these persist.
        self.info.metadata["kept"][split] = kept
        self.info.metadata["dropped"] = drops.as_dict()
        if low_bit_depth:
            self.info.metadata.setdefault("low_bit_depth_images", {})[split] = low_bit_depth
            logging.warning("%s/%s: %d 8-bit images stored with their raw values (0..255) in a "
                            "16-bit dataset, as the reference reads them.", self.name, split,
                            low_bit_depth)
        logging.info("%s/%s (%s): kept %d images; left out: %s", self.name, split,
                     self.builder_config.name, kept, drops.as_dict())
