"""Start-up of the input pipeline on an X-ray source: time and TFDS records read before the first batch.

    python -m benchmarks.startup                   # 2000 train images of 256 x 256, prepared in a temp dir
    python -m benchmarks.startup --n_train 4000 --data_dir /tmp/startup_tfds   # keeps the data

Writes the synthetic CheXpert fixture (`input_pipeline.datasets.synthetic`), prepares it (config
`full`), then for each case builds `get_datasets` and takes what the case uses, timing it (best
of --rounds) and counting the records TFDS yields, with and without their image (background
prefetching may add a few to the train cases' counts):

- streamed: a full training set larger than the cache budget (here --budget bytes, standing in
  for the 1 GiB of a real collection), first train batch;
- eval: what the `eval` command builds and reads (default 1 GiB budget): one validation pass;
- few-shot: a 5-shot single-label draw (labels of the whole train split), first batch;
- last host: host 4 of 4 of the streamed case, first batch.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds


def _config(data_dir: str, **data) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        seed=0, batch_size=32, eval_batch_size=64,
        data=dict(name="chexpert_v1", data_dir=data_dir, builder_config="full",
                  eval_splits={"val": "validation"}, shuffle_buffer=256, **data),
        pp=dict(kind="xray", resize=64, crop=64, norm="bit")))


# case -> (data fields, host, what is read, cache budget: None = --budget, else this many bytes)
CASES = {
    "streamed": (dict(), dict(), "train", None),
    "eval": (dict(), dict(), "eval", 1 << 30),   # the `eval` command's default budget
    "few-shot": (dict(shots=5, multilabel_force_classification=True), dict(), "train", None),
    "last host": (dict(), dict(process_index=3, process_count=4), "train", None),
}


class _Counter:
    """Counts the examples every `DatasetBuilder.as_dataset` yields, by whether they hold an image."""

    def __init__(self):
        self.counts = collections.Counter()
        self._original = tfds.core.DatasetBuilder.as_dataset

    def __enter__(self):
        counter, original = self, self._original

        def as_dataset(builder, *args, **kwargs):
            ds = original(builder, *args, **kwargs)
            kind = "with image" if "image" in ds.element_spec else "without image"

            def count(ex):
                def add():
                    counter.counts[kind] += 1
                    return 0
                tf.py_function(add, [], tf.int32)
                return ex
            return ds.map(count)

        tfds.core.DatasetBuilder.as_dataset = as_dataset
        return self

    def __exit__(self, *exc):
        tfds.core.DatasetBuilder.as_dataset = self._original


def _run(data_dir: str, case: str, budget: int) -> None:
    from input_pipeline import get_datasets

    data, hosts, use, case_budget = CASES[case]
    hosts = {"process_index": 0, "process_count": 1, **hosts}
    datasets = get_datasets(_config(data_dir, **data), cache_budget_bytes=case_budget or budget, **hosts)
    if use == "train":
        next(datasets.train)
    else:
        for _ in datasets.evals["val"]():
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_valid", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--budget", type=int, default=1 << 20, help="cache budget in bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data_dir", default="", help="keep the prepared data here (reused if present)")
    args = parser.parse_args()

    from input_pipeline import datasets
    from input_pipeline.datasets import synthetic

    root = args.data_dir or tempfile.mkdtemp(prefix="startup_")
    tfds_dir = os.path.join(root, "tfds")
    if not os.path.isdir(os.path.join(tfds_dir, "chexpert_v1")):
        synthetic.write_chexpert(os.path.join(root, "raw"), n_train=args.n_train, n_valid=args.n_valid,
                                image_size=(args.size, args.size), seed=0)
        datasets.prepare("chexpert_v1", manual_dir=os.path.join(root, "raw"), data_dir=tfds_dir, config="full")
    info = tfds.builder("chexpert_v1", data_dir=tfds_dir, config="full").info
    print(f"chexpert_v1 fixture: {info.splits['train'].num_examples} train / "
          f"{info.splits['validation'].num_examples} validation examples, "
          f"{info.splits['train'].num_bytes / 2**20:.1f} MiB train; cache budget {args.budget} bytes")
    print("| case | seconds (best of %d) | records read with image | without image |" % args.rounds)
    print("|---|---|---|---|")
    for case in CASES:
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            _run(tfds_dir, case, args.budget)
            times.append(time.perf_counter() - start)
        with _Counter() as counter:
            _run(tfds_dir, case, args.budget)
        print(f"| {case} | {min(times):.2f} | {counter.counts['with image']} | {counter.counts['without image']} |")


if __name__ == "__main__":
    main()
