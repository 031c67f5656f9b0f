"""Stage 4b, the eval passes: every selected example exactly once, padded to full batches.

Host ``p`` takes a contiguous share of the positions and pads it with masked zero examples so
that every host yields the same number of full batches.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline.selection import Split, host_range
from input_pipeline.transforms import Transforms

# The tf.data functions here have no Python control flow on tensors: skip AutoGraph.
_plain = tf.autograph.experimental.do_not_convert


def build(split: Split, transforms: Transforms, label_fn, *, multilabel: bool, num_classes: int, crop: int,
          local_batch: int, process_index: int, process_count: int) -> tf.data.Dataset:
    """This host's batches of one eval pass; ``mask`` is False on padding rows (zero image,
    label 0, or all-NaN for a multi-label target)."""
    m = len(split.positions)
    lo, hi = host_range(m, process_index, process_count)
    per_host = -(-m // process_count)          # ceil: the largest share
    batches = -(-per_host // local_batch)      # the same on every host
    ds = split.source.read_positions(split.positions[lo:hi], ordered=False)
    ds = ds.map(_plain(lambda ex: {"image": transforms.eval(ex["image"]), "label": label_fn(ex["label"]),
                                   "mask": tf.constant(True)}), num_parallel_calls=tf.data.AUTOTUNE)
    if multilabel:
        pad_label = tf.fill([num_classes], tf.constant(np.nan, tf.float32))
    else:
        pad_label = tf.constant(0, tf.int32)
    pad = {"image": tf.zeros([crop, crop, 3], transforms.dtype), "label": pad_label, "mask": tf.constant(False)}
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(batches * local_batch - (hi - lo)))
    return ds.batch(local_batch, drop_remainder=True)
