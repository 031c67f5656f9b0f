"""Input pipeline speed: BiT-HyperRule train preprocessing from JPEG files, this project vs torchvision.

    python benchmarks/input_pipeline.py                       # 512 images, batch 32, 2 workers
    python benchmarks/input_pipeline.py --images 1024 --batch 64 --workers 4 --batches 30

Writes `--images` JPEGs of Pets-like size (about 500x375, structured content so the files have a
realistic size) into a temporary class-per-folder tree, then in one run times, with the same
number of workers:

1. this project: ``input_pipeline.get_datasets`` on the folder (``image_folder`` source, ``bit``
   preprocessing 512 -> random crop 480 + flip, `--norm`), tf.data thread pool of `--workers`
   threads, one op thread each;
2. the reference: torchvision ``ImageFolder`` + ``DataLoader(num_workers=--workers)`` with the
   reference's transforms (``Resize(512), RandomCrop(480), RandomHorizontalFlip(), ToTensor(),
   Normalize(mean, std)``, the same mean/std as `--norm`), worker processes started with
   forkserver as the reference does;
3. JPEG decode only of the same files through tf.data with the same threads (the same libjpeg
   and DCT as (1)): the floor no pipeline beats.

Each is warmed up (`--warmup` batches) and then timed over `--batches` batches; it prints
images/s and the ratios (goal on a 2-core machine: ours >= 4x torchvision, and ours' time per
image <= 1.5x the decode-only time).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

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


def _timed(iterator, warmup: int, batches: int, batch: int) -> float:
  """Images/s of `iterator` over `batches` batches after `warmup` ones."""
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch / (time.perf_counter() - start)


def torchvision_rate(root: str, args) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision.transforms as T  # pylint: disable=g-import-not-at-top
  from torchvision.datasets import ImageFolder  # pylint: disable=g-import-not-at-top

  transform = T.Compose([T.Resize(512), T.RandomCrop((480, 480)), T.RandomHorizontalFlip(), T.ToTensor(),
                         T.Normalize(*NORM_STATS[args.norm])])
  loader = torch.utils.data.DataLoader(
      ImageFolder(root, transform=transform), batch_size=args.batch, shuffle=True, drop_last=True,
      num_workers=args.workers, multiprocessing_context="forkserver", persistent_workers=True)

  def forever():
    while True:
      yield from loader

  return _timed(forever(), args.warmup, args.batches, args.batch)


def ours_rate(root: str, args) -> tuple[float, float]:
  import ml_collections  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(dict(
      seed=0, batch_size=args.batch, eval_batch_size=args.batch,
      data=dict(name="image_folder", train_dir=root, val_dir="", shots=0, oversample=False, valid_ratio=0.0,
                skip_corrupt=False, shuffle_buffer=1000),
      pp=dict(kind="bit", resize=512, crop=480, norm=args.norm)))
  start = time.perf_counter()
  datasets = input_pipeline.get_datasets(config, process_index=0, process_count=1, threads=args.workers)
  setup = time.perf_counter() - start   # includes the one-off corrupt-file check of the folder
  return _timed(datasets.train, args.warmup, args.batches, args.batch), setup


def decode_only_rate(root: str, args) -> float:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from input_pipeline import image_folder, preprocess  # pylint: disable=g-import-not-at-top

  paths = image_folder.list_image_folder(root).paths
  ds = tf.data.Dataset.from_tensor_slices(paths).repeat()
  ds = ds.map(lambda p: tf.shape(tf.io.decode_jpeg(tf.io.read_file(p), channels=3,
                                                    dct_method=preprocess.JPEG_DCT_METHOD)),
              num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.threading.private_threadpool_size = args.workers
  options.threading.max_intra_op_parallelism = 1
  return _timed(iter(ds.with_options(options)), args.warmup, args.batches, args.batch)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=512, help="JPEG files to write")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--workers", type=int, default=2, help="DataLoader workers = tf.data threads")
  parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--norm", choices=sorted(NORM_STATS), default="bit",
                      help="normalisation, the same map on both sides (bit: [-1, 1]; imagenet: mean/std)")
  args = parser.parse_args()

  # torchvision first: its triton import segfaults once TensorFlow is loaded.
  import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  with tempfile.TemporaryDirectory() as root:
    write_images(root, args.images)
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs]
    print(f"{len(sizes)} JPEGs, mean {np.mean(sizes) / 1024:.0f} KiB; batch {args.batch}, "
          f"{args.workers} workers, {args.batches} timed batches after {args.warmup}")
    reference = torchvision_rate(root, args)
    ours, setup = ours_rate(root, args)
    decode = decode_only_rate(root, args)
  print(f"torchvision DataLoader (reference transforms): {reference:8.1f} images/s")
  print(f"input_pipeline (bit 512/480, {args.norm} norm): {ours:8.1f} images/s   "
        f"(setup incl. file check {setup:.1f} s)")
  print(f"JPEG decode only (tf.data):                   {decode:8.1f} images/s")
  print(f"ours / torchvision: {ours / reference:.2f}x   (goal >= 4)")
  print(f"ours' time per image / decode-only: {decode / ours:.2f}x   (goal <= 1.5)")


if __name__ == "__main__":
  main()
