"""`get_datasets(config)`: the train stream and the eval passes of one experiment (tf.data).

The data flow, one module per stage, composed top to bottom in `get_datasets`:

1. `input_pipeline.options`: the config's data/pp fields with the schema's defaults, checked.
2. `input_pipeline.sources`: each split as an ordered, re-readable list of *encoded* examples
   ``{'image': bytes, 'label': raw label}`` (TFDS natural sets, image folders, X-ray builders).
3. `input_pipeline.selection`: the positions used (validation carve, single-label filter,
   k-shot draws, oversampling weights); numpy on labels, identical on every host.
4. `input_pipeline.transforms`: ``pp.kind`` -> the train/eval image functions.
5. `input_pipeline.train_stream` (resumable at any step) and `input_pipeline.eval_stream`
   (every selected example once, padded per host).

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
import logging
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from input_pipeline import eval_stream, options, selection, sources, train_stream, transforms

# Largest training selection (encoded bytes) kept in host memory for random access. Kept under
# the 2 GiB protobuf limit that tf.data graph rewrites hit with captured constants.
DEFAULT_CACHE_BUDGET_BYTES = 1 << 30
VALID_SPLIT_NAME = sources.VALID_SPLIT_NAME


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

    train: infinite, built on the first batch asked for; ``image`` [b, H, W, 3], ``label`` int32 [b] or float32 [b, C].
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
        and ``pp.*`` (schema: `input_pipeline.options`; fields left out take their defaults).
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
    opt = options.resolve(config, process_count, start_step)

    train_source, eval_sources = sources.build(opt.data)
    chosen = selection.select(opt.data, opt.seed, train_source, eval_sources)
    fns = transforms.for_source(opt.pp, train_source.kind)
    label_fn = transforms.label_transform(train_source.multilabel, chosen.force_classification)

    tf_options = _options(threads)

    def train():   # built on the first batch asked for: eval-only users never read the train set
        ds = train_stream.build(chosen, fns, label_fn, seed=opt.seed, global_batch=opt.batch,
                                process_index=process_index, process_count=process_count, start_step=start_step,
                                cache_budget_bytes=cache_budget_bytes, shuffle_buffer=int(opt.data.shuffle_buffer))
        return ds.prefetch(tf.data.AUTOTUNE).with_options(tf_options).as_numpy_iterator()

    evals = {}
    for name, split in chosen.evals.items():
        ds = eval_stream.build(split, fns, label_fn, multilabel=chosen.multilabel, num_classes=chosen.num_classes,
                               crop=int(opt.pp.crop), local_batch=opt.eval_batch // process_count,
                               process_index=process_index, process_count=process_count)
        evals[name] = _passes(ds.prefetch(tf.data.AUTOTUNE).with_options(tf_options))
        logging.info("Eval %r: %d examples from %s", name, len(split.positions), split.source.name)

    info = DatasetInfo(num_classes=chosen.num_classes, label_names=list(train_source.label_names),
                       multilabel=chosen.multilabel, train_size=len(chosen.train.positions),
                       image_size=(int(opt.pp.crop), int(opt.pp.crop)))
    return Datasets(train=_Lazy(train), evals=evals, info=info)


class _Lazy:
    """An iterator that `build`s its source on the first `next`."""

    def __init__(self, build: Callable[[], Iterator]):
        self._build, self._iterator = build, None

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._build()
        return next(self._iterator)


def _passes(ds: tf.data.Dataset) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    return lambda: ds.as_numpy_iterator()
