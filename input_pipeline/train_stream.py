"""Stage 4a, the train stream: infinite batches, resumable at any step.

Global element ``g`` (the j-th example of global batch s is ``g = s * batch + j``) gets its
augmentation from stateless ops keyed by ``(seed, g)``. Two ways to order examples:

- *indexed* (random access: image-folder files, or the selection cached in memory as encoded
  bytes when it fits `cache_budget_bytes`; few-shot sets always do): the example of ``g`` is a
  pure function of ``(seed, g)``: a permutation per epoch (``index_shuffle`` keyed by (seed,
  epoch)), or i.i.d. draws with replacement when the set is smaller than the global batch
  (reference: ``RandomSampler(replacement=True)``), or inverse-class-frequency draws when
  oversampling (reference: ``WeightedRandomSampler``). Host ``p`` computes rows ``[p*b, (p+1)*b)``
  of every global batch, so the global batches are the same for any host count and a restart
  at step s starts at ``g = s * batch``.
- *streamed* (large sets without random access, e.g. ImageNet or full X-ray collections): each
  host reads its own contiguous share of the positions once per epoch through a shuffle buffer
  seeded by (seed, host, epoch); oversampling repeats each example a stateless-random number of
  times whose expectation is the ``WeightedRandomSampler``'s. A restart skips whole epochs
  arithmetically and the rest of an epoch on encoded records (nothing skipped is decoded). The
  stream depends on the host count.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import tensorflow as tf

from input_pipeline.selection import Selection, host_range
from input_pipeline.sources import Source
from input_pipeline.transforms import Transforms

_INT64_MAX = np.iinfo(np.int64).max
# Purposes folded into the run seed so that the draws of different stages are independent.
_SEED_ORDER = 1
_SEED_AUGMENT = 2
_NO_LIMIT = 1 << 62
# The tf.data functions here have no Python control flow on tensors: skip AutoGraph.
_plain = tf.autograph.experimental.do_not_convert


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
    for batch in source.read_positions(positions, ordered=True).batch(256).as_numpy_iterator():
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
        return {**train_fn(encoded, tf.random.experimental.stateless_fold_in(aug_key, g)),
                "label": label_fn(tf.gather(labels_t, idx))}

    ds = tf.data.Dataset.range(start_step * local_batch, _INT64_MAX)
    ds = ds.map(_plain(element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True)


def _streamed_train(source: Source, positions: np.ndarray, copies: np.ndarray | None, *, train_fn, label_fn,
                    seed: int, local_batch: int, process_index: int, process_count: int,
                    start_step: int, shuffle_buffer: int) -> tf.data.Dataset:
    """Per-host epochs through a seeded shuffle buffer; `copies`: expected repeats per example.

    ``Dataset.shuffle`` combines its seed with TensorFlow's global seed, which this project never
    sets (``tf.random.set_seed`` elsewhere in a process would change the streamed order).
    """
    lo, hi = host_range(len(positions), process_index, process_count)
    if hi <= lo:
        raise ValueError(f"{len(positions)} training examples cannot be shared by {process_count} hosts")
    shard = positions[lo:hi]
    # Oversampling needs each example's label in stream order: read in position order then.
    examples = source.read_positions(shard, ordered=copies is not None)
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
        return {**train_fn(ex["image"], tf.random.experimental.stateless_fold_in(aug_key, g)),
                "label": label_fn(ex["label"])}

    ds = ds.enumerate(start=first).map(_plain(element), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True)




def build(selection: Selection, transforms: Transforms, label_fn, *, seed: int, global_batch: int,
          process_index: int, process_count: int, start_step: int, cache_budget_bytes: int,
          shuffle_buffer: int) -> tf.data.Dataset:
    """This host's train batches (``global_batch / process_count`` each) from `start_step` on."""
    source, positions, weights = selection.train.source, selection.train.positions, selection.weights
    n, local_batch = len(positions), global_batch // process_count
    if source.paths is not None:
        store = (source.paths[positions], source.labels[positions])
    else:
        # A set smaller than the batch is drawn with replacement, which needs random access: it is
        # tiny, so it is cached whatever the budget.
        store = _materialise(source, positions, _NO_LIMIT if n < global_batch else cache_budget_bytes)
    if store is not None:
        sampler_kind = "weighted" if weights is not None else ("uniform" if n < global_batch else "permutation")
        logging.info("Train: %d examples from %s, indexed (%s)", n, source.name, sampler_kind)
        return _indexed_train(store[0], store[1], from_files=source.paths is not None,
                              sampler=_sampler(sampler_kind, n, seed, weights), train_fn=transforms.train,
                              label_fn=label_fn, seed=seed, global_batch=global_batch, local_batch=local_batch,
                              process_index=process_index, start_step=start_step)
    logging.info("Train: %d examples from %s, streamed per host", n, source.name)
    copies = n * weights / weights.sum() if weights is not None else None
    return _streamed_train(source, positions, copies, train_fn=transforms.train, label_fn=label_fn, seed=seed,
                           local_batch=local_batch, process_index=process_index, process_count=process_count,
                           start_step=start_step, shuffle_buffer=shuffle_buffer)
