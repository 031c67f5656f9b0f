"""Input pipeline speed: BiT-HyperRule train preprocessing from JPEG files, this project vs torchvision.

    python benchmarks/input_pipeline.py                       # 512 images, batch 32, 2 workers
    python benchmarks/input_pipeline.py --images 1024 --batch 64 --workers 4 --batches 30
    python benchmarks/input_pipeline.py --stages              # also time ours' per-image stages

Writes `--images` JPEGs of Pets-like size (about 500x375, structured content so the files have a
realistic size) into a temporary class-per-folder tree, then in one run times, with the same
number of workers:

1. the reference: torchvision ``ImageFolder`` + ``DataLoader(num_workers=--workers)`` with the
   reference's transforms (``Resize(512), RandomCrop(480), RandomHorizontalFlip(), ToTensor(),
   Normalize(mean, std)``, the mean/std of `--norm`), persistent forkserver workers, no pinned
   memory (a CPU-only measurement); it delivers normalised float32 batches;
2. this project: ``input_pipeline.get_datasets`` on the folder (``image_folder`` source, ``bit``
   preprocessing 512 -> random crop 480 + flip), tf.data thread pool of `--workers` threads, one
   op thread each; it delivers uint8 batches of the crops' source windows (each no larger than
   the crop here) with their sizes and flips, which the train step resizes and normalises on the
   device (``input_pipeline.model_input(image, norm, window)``): not timed here;
3. JPEG decode only: full decode of the same files through tf.data with the same threads (the
   same libjpeg and DCT as (2)): the floor no pipeline beats.

Each pipeline runs alone (the others' workers stopped), `--rounds` times in turns; each time it is
warmed up (`--warmup` batches) and timed over `--batches` batches. It prints each pipeline's best
rate (images/s, the rounds' rates listed) and the ratios of the best rates (goal on a 2-core
machine: ours >= 4x torchvision, and ours' time per image <= 1.5x the decode-only time), with the
machine's load average before and after. On a shared machine the rates follow the CPU time other
processes leave, so it also prints the CPU time per image (this process, its threads and its
worker processes; median of the rounds) and the ratios by CPU time, which depend far less on
the load. `--stages` adds per-image work alone, same threads, no batching: decoding the crop's
window; that plus packing it for the device (ours); that plus resizing it to 480x480 on the host
and rounding to uint8 (the pipeline before the resize moved to the device: the floor of host
resizing in TensorFlow ops); for grey sources (the X-ray path under ``bit``), the crop of the
full grey decode resized as RGB (before) and resized grey then tiled (ours); and the
``inception`` train op at 224 (pre-training), which still resizes on the host.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import os
import sys
import tempfile
import time
from typing import Iterator

import numpy as np
from PIL import Image

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `input_pipeline` package it measures.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

# --norm -> (mean, std) of torchvision's Normalize computing the same map as ours.
NORM_STATS = {"bit": ((0.5,) * 3, (0.5,) * 3),
              "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def write_images(root: str, n: int, seed: int = 0) -> None:
    """n JPEGs (quality 90) of about 500x375 in 4 class folders: gradients, shapes and noise."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (375, 500) if i % 3 else (500, 375)     # a third in portrait, as photo sets have
        h, w = h + int(rng.integers(-20, 21)), w + int(rng.integers(-20, 21))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([np.sin(x / rng.uniform(8, 40) + c) * np.cos(y / rng.uniform(8, 40)) for c in range(3)], -1)
        img = img * 60 + rng.uniform(60, 190, 3)
        for _ in range(6):   # a few flat blobs give edges, as objects do
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 120)
            img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape)
        folder = os.path.join(root, f"class{i % 4}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def _cpu_seconds() -> float:
    """CPU time (user + system) so far of this process and its live descendants (Linux /proc).

    The descendants include the DataLoader's workers, which are children of the forkserver.
    """
    total = time.process_time()
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:   # it ended meanwhile
                continue
            children[int(fields[1])].append((int(entry), fields))   # by parent pid
    ticks, stack = os.sysconf("SC_CLK_TCK"), [os.getpid()]
    while stack:
        for pid, fields in children.get(stack.pop(), []):
            total += (int(fields[11]) + int(fields[12])) / ticks    # utime + stime
            stack.append(pid)
    return total


def _timed(iterator, warmup: int, batches: int, batch: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) of `iterator` over `batches` batches after `warmup` ones."""
    for _ in range(warmup):
        next(iterator)
    start, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        next(iterator)
    images = batches * batch
    return images / (time.perf_counter() - start), 1000 * (_cpu_seconds() - cpu) / images


@contextlib.contextmanager
def torchvision_batches(root: str, args) -> Iterator:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision.transforms as T  # pylint: disable=g-import-not-at-top
    from torchvision.datasets import ImageFolder  # pylint: disable=g-import-not-at-top

    transform = T.Compose([T.Resize(512), T.RandomCrop((480, 480)), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(*NORM_STATS[args.norm])])
    loader = torch.utils.data.DataLoader(
        ImageFolder(root, transform=transform), batch_size=args.batch, shuffle=True, drop_last=True,
        num_workers=args.workers, multiprocessing_context="forkserver", persistent_workers=True,
        pin_memory=False)

    def forever():
        while True:
            yield from loader

    batches = forever()
    try:
        yield batches
    finally:
        batches.close()
        loader = None   # the last reference: its workers shut down before the next measurement
        gc.collect()


@contextlib.contextmanager
def ours_batches(root: str, args, setup: list) -> Iterator:
    """get_datasets' train batches; appends the set-up time (incl. the folder's file check) to `setup`."""
    import ml_collections  # pylint: disable=g-import-not-at-top

    from input_pipeline import get_datasets  # pylint: disable=g-import-not-at-top  (imports TensorFlow)

    config = ml_collections.ConfigDict(dict(
        seed=0, batch_size=args.batch, eval_batch_size=args.batch,
        data=dict(name="image_folder", train_dir=root, val_dir="", shots=0, oversample=False, valid_ratio=0.0,
                  skip_corrupt=False, shuffle_buffer=1000),
        pp=dict(kind="bit", resize=512, crop=480, norm=args.norm)))
    start = time.perf_counter()
    datasets = get_datasets(config, process_index=0, process_count=1, threads=args.workers)
    setup.append(time.perf_counter() - start)
    try:
        yield datasets.train
    finally:
        del datasets
        gc.collect()


@contextlib.contextmanager
def per_file_batches(root: str, args, fn) -> Iterator:
    """fn(index, encoded bytes) over the folder's files, tf.data with `--workers` threads.

    Only the first pixel leaves the map (which still computes all of fn's output, where its shape
    alone might be known without running it): what is timed is the work on each file, not batching.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from input_pipeline import image_folder  # pylint: disable=g-import-not-at-top

    paths = image_folder.list_image_folder(root).paths
    ds = tf.data.Dataset.from_tensor_slices(paths).repeat().enumerate()
    ds = ds.map(lambda i, p: fn(i, tf.io.read_file(p))[0, 0], num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(args.batch).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.private_threadpool_size = args.workers
    options.threading.max_intra_op_parallelism = 1
    batches = iter(ds.with_options(options))
    try:
        yield batches
    finally:
        del batches
        gc.collect()


def decode_only(root: str, args):
    """Full JPEG decode of each file (the same libjpeg and DCT as ours)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from input_pipeline import preprocess  # pylint: disable=g-import-not-at-top

    return per_file_batches(root, args, lambda i, enc: tf.io.decode_jpeg(enc, channels=3,
                                                                         dct_method=preprocess.JPEG_DCT_METHOD))


def stages(root: str, args) -> dict:
    """Per-image work alone: window decode; + packing (ours); + host resize (before); grey; inception."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from input_pipeline import preprocess  # pylint: disable=g-import-not-at-top

    def seed(i):
        return tf.random.experimental.stateless_fold_in(tf.constant([0, 2], tf.int64), i)

    def window_decode(i, enc):
        shape = tf.io.extract_jpeg_shape(enc)
        window, _ = preprocess.bit_crop_window(shape[0], shape[1], seed(i), resize=512, crop=480)
        return tf.io.decode_and_crop_jpeg(enc, window, channels=3, dct_method=preprocess.JPEG_DCT_METHOD)

    def window_packed(i, enc):
        return preprocess.decode_bit_window(enc, seed(i), resize=512, crop=480)["image"]

    def window_resize(i, enc):
        return preprocess.resize(window_decode(i, enc), 480, 480)

    def inception(i, enc):   # random-resized crop: its window mostly shrinks, so the host resizes it
        return preprocess.decode_and_inception_crop(enc, seed(i), crop=224)

    def grey(enc):   # an X-ray source's decode: one float plane in [0, 255]
        return tf.cast(tf.io.decode_jpeg(enc, channels=1, dct_method=preprocess.JPEG_DCT_METHOD), tf.float32)

    def grey_tiled_first(i, enc):
        return preprocess.bit_train(preprocess.grey_to_rgb(grey(enc)), seed(i), resize=512, crop=480)

    def grey_tiled_after(i, enc):
        return preprocess.grey_to_rgb(preprocess.bit_train(grey(enc), seed(i), resize=512, crop=480))

    return {"crop-window decode only": lambda: per_file_batches(root, args, window_decode),
            "+ pack for the device (ours)": lambda: per_file_batches(root, args, window_packed),
            "+ host resize to 480x480, round (before)": lambda: per_file_batches(root, args, window_resize),
            "grey: tile to RGB, then resize (before)": lambda: per_file_batches(root, args, grey_tiled_first),
            "grey: resize, then tile to RGB (ours)": lambda: per_file_batches(root, args, grey_tiled_after),
            "inception 224 (pre-training; host resize)": lambda: per_file_batches(root, args, inception)}


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="JPEG files to write")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers = tf.data threads")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each pipeline, interleaved")
    parser.add_argument("--norm", choices=sorted(NORM_STATS), default="bit",
                        help="torchvision's Normalize (bit: [-1, 1]; imagenet: mean/std); "
                             "ours applies it on the device")
    parser.add_argument("--stages", action="store_true", help="also time ours' per-image stages")
    args = parser.parse_args()

    # torchvision first: its triton import segfaults once TensorFlow is loaded.
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    load_before = _load()
    setup = []
    rates = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as root:
        write_images(root, args.images)
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs]
        print(f"{len(sizes)} JPEGs, mean {np.mean(sizes) / 1024:.0f} KiB; batch {args.batch}, "
              f"{args.workers} workers; per round and pipeline {args.batches} timed batches after {args.warmup}")
        pipelines = {"torchvision": lambda: torchvision_batches(root, args),
                     "ours": lambda: ours_batches(root, args, setup),
                     "decode": lambda: decode_only(root, args)}
        if args.stages:
            pipelines.update(stages(root, args))
        # One pipeline at a time (the others' workers stopped), in turns: a change in the load
        # of other processes then shows in every pipeline's numbers, and the best round of each
        # is the least disturbed.
        for _ in range(args.rounds):
            for name, make in pipelines.items():
                with make() as batches:
                    rates[name].append(_timed(batches, args.warmup, args.batches, args.batch))
    best = {name: max(rate for rate, _ in r) for name, r in rates.items()}
    cpu = {name: float(np.median([ms for _, ms in r])) for name, r in rates.items()}

    def line(label, name):
        spread = ", ".join(f"{rate:.0f}" for rate, _ in rates[name])
        return f"{label:46s} {best[name]:7.1f} images/s (rounds {spread}); CPU {cpu[name]:5.2f} ms/image"

    print(f"load average (1, 5, 15 min): {load_before} before, {_load()} after; {os.cpu_count()} CPUs")
    print(line("torchvision DataLoader (reference transforms):", "torchvision"))
    print(line("input_pipeline (bit 512/480, uint8 windows):", "ours"))
    print(line("JPEG decode only (tf.data):", "decode"))
    print(f"ours / torchvision: {best['ours'] / best['torchvision']:.2f}x   (goal >= 4; "
          f"by CPU time per image {cpu['torchvision'] / cpu['ours']:.2f}x)")
    print(f"ours' time per image / decode-only: {best['decode'] / best['ours']:.2f}x   (goal <= 1.5; "
          f"by CPU time {cpu['ours'] / cpu['decode']:.2f}x)")
    for name in pipelines:
        if name not in ("torchvision", "ours", "decode"):
            print(line(f"  stage: {name}", name) + f"; {cpu[name] / cpu['decode']:.2f}x decode's CPU time")
    print(f"ours' set-up (incl. the folder's file check): {setup[0]:.1f} s")


if __name__ == "__main__":
    main()
