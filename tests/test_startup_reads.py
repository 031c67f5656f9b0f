"""Start-up reads only what it uses, counted on the demo's prepared CheXpert fixture.

A counting reader wraps `DatasetBuilder.as_dataset` and counts, per split, the records TFDS
yields with their image and without it. The expected numbers come from the builder's own
records (views read directly), not from the pipeline.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import input_pipeline
from input_pipeline import xray

_TRAIN = 48   # conftest's data_dir: write_chexpert(n_train=48, n_valid=12)


@pytest.fixture
def counts(monkeypatch):
    """(split, 'image' | 'no image') -> records yielded so far by every builder's as_dataset."""
    counter = collections.Counter()
    original = tfds.core.DatasetBuilder.as_dataset

    def as_dataset(builder, *args, **kwargs):
        ds = original(builder, *args, **kwargs)
        key = (str(kwargs["split"]).split("[")[0], "image" if "image" in ds.element_spec else "no image")

        def count(ex):
            def add():
                counter[key] += 1
                return 0
            tf.py_function(add, [], tf.int32)
            return ex
        return ds.map(count)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", as_dataset)
    return counter


def _config(data_dir, **data):
    import ml_collections

    return ml_collections.ConfigDict(dict(
        seed=0, batch_size=8, eval_batch_size=8,
        data=dict(name="chexpert_v1", data_dir=data_dir, builder_config="full",
                  eval_splits={"val": "validation"}, **data),
        pp=dict(kind="xray", resize=16, crop=16, norm="bit")))


def _kept_records(data_dir, split):
    """Record numbers (file order) of the split's PA/AP examples, read from the builder itself."""
    builder = tfds.builder("chexpert_v1", data_dir=data_dir, config="full")
    views = [ex["view"].decode() for ex in builder.as_dataset(
        split=split, shuffle_files=False, read_config=tfds.ReadConfig(interleave_cycle_length=1),
        decoders=tfds.decode.PartialDecoding({"view": True})).as_numpy_iterator()]
    return np.flatnonzero([v in ("PA", "AP") for v in views])


def test_eval_reads_no_training_image_and_labels_take_one_pass(data_dir, counts):
    config = _config(data_dir, shots=1, multilabel_force_classification=True)
    datasets = input_pipeline.get_datasets(config, process_index=0, process_count=1)
    n_val = sum(int(b["mask"].sum()) for b in datasets.evals["val"]())
    assert n_val > 0
    # Training: one pass over views and labels together (the k-shot draw needs the labels), no image.
    assert counts[("train", "no image")] == _TRAIN
    assert counts[("train", "image")] == 0
    next(datasets.train)   # the 1-shot store is read on the first batch only
    assert 0 < counts[("train", "image")] <= _TRAIN


def test_streamed_start_reads_nothing_and_the_size_hint_comes_from_the_builder(data_dir, counts):
    datasets = input_pipeline.get_datasets(_config(data_dir), process_index=0, process_count=2,
                                           cache_budget_bytes=1)
    assert counts[("train", "image")] == 0 and counts[("validation", "image")] == 0
    source = xray.read(["chexpert_v1"], "train", data_dir=data_dir, builder_config="full")
    info = tfds.builder("chexpert_v1", data_dir=data_dir, config="full").info.splits["train"]
    assert source.bytes_per_example == pytest.approx(info.num_bytes / info.num_examples)
    del datasets


@pytest.mark.parametrize("start,stop", [(0, 5), (7, 19), (20, None)])
def test_a_host_reads_its_own_range_without_the_records_before(data_dir, counts, start, stop):
    kept = _kept_records(data_dir, "train")
    stop = len(kept) if stop is None else stop
    source = xray.read(["chexpert_v1"], "train", data_dir=data_dir, builder_config="full")
    whole = [ex["image"] for ex in source.dataset.as_numpy_iterator()]
    counts.clear()
    part = [ex["image"] for ex in source.read_range(start, stop).as_numpy_iterator()]
    assert part == whole[start:stop]
    # Exactly the records from the first to the last kept one of the range, views filtered after.
    assert counts[("train", "image")] == kept[stop - 1] - kept[start] + 1
    assert counts[("train", "no image")] == 0
