"""Preparing X-ray datasets: this checkout's builders against another checkout's, same output.

    git archive <commit> | tar -x -C /tmp/base          # e.g. the commit before a change
    python -m benchmarks.prepare_workers --baseline /tmp/base --root /tmp/prep_bench
    python -m benchmarks.prepare_workers --decode_only --root /tmp/prep_bench

Writes two synthetic sources (`input_pipeline.datasets.synthetic`) of --n images of
--size x --size pixels: CheXpert (8-bit JPEG) and PadChest (16-bit PNG; its random rows drop
some projections). Then, for each source and builder config (512, 224), prepares it with each
checkout's code in turn, --rounds times alternating (the machine may be shared), each in its own
`python -c` process with --num_workers. Prints wall and CPU seconds (the whole process tree,
worker processes included, sampled with psutil) and checks that both checkouts wrote the same
examples, feature by feature, in the same order.

With --decode_only: `imaging.process_image` alone on the first 80 images of each source (config
512, then 224), in this process, serially, in --num_workers threads and in --num_workers forked
processes (no TensorFlow loaded here, so fork is safe), rounds alternating; best wall seconds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time

import psutil

from input_pipeline import imaging
from input_pipeline.datasets import synthetic

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("chexpert_v1", "padchest")
CONFIGS = ("512", "224")
PREPARE = ("from input_pipeline import datasets; "
           "datasets.prepare({name!r}, manual_dir={manual!r}, data_dir={data!r}, config={config!r}, "
           "num_workers={workers})")


def _write_sources(root: str, n: int, size: int) -> dict:
    manual = {name: os.path.join(root, "manual", name) for name in SOURCES}
    if not os.path.isdir(manual["chexpert_v1"]):
        synthetic.write_chexpert(manual["chexpert_v1"], n_train=n - n // 10, n_valid=n // 10,
                                 image_size=(size, size), seed=0)
    if not os.path.isdir(manual["padchest"]):
        synthetic.write_padchest(manual["padchest"], n_images=n, image_size=(size, size), seed=0)
    return manual


def _tree_cpu(proc: subprocess.Popen) -> float:
    """CPU seconds of proc and its descendants, sampled until it exits (a worker's last <50 ms
    may be missed). Each process's own time only: a parent's children_* times would count its
    reaped workers twice."""
    root = psutil.Process(proc.pid)
    last = {}
    while proc.poll() is None:
        try:
            for p in [root] + root.children(recursive=True):
                t = p.cpu_times()
                last[p.pid] = t.user + t.system
        except psutil.Error:
            pass
        time.sleep(0.05)
    return sum(last.values())


def _prepare(code: str, name: str, manual: str, data: str, config: str, workers: int) -> tuple:
    shutil.rmtree(data, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=code, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", PREPARE.format(name=name, manual=manual, data=data, config=config,
                                              workers=workers)],
        env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu = _tree_cpu(proc)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{code}: prepare {name}/{config} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return wall, cpu, _digest(glob.glob(os.path.join(data, name, config, "*", "*.tfrecord*")))


def _digest(files: list) -> str:
    """A hash of the examples in file and record order, each feature by feature (an Example's
    serialized bytes are not canonical: its map of features may come out in any order)."""
    import tensorflow as tf  # only here: the prepares run in their own processes

    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(os.path.basename(path).encode())
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            for key in sorted(features):
                digest.update(key.encode() + features[key].SerializeToString())
    return digest.hexdigest()


def _decode_only(manual: dict, rounds: int, workers: int) -> None:
    """Times process_image serially, in threads and in processes; checks they give the same PNGs."""
    files = {"chexpert_v1": (sorted(glob.glob(os.path.join(manual["chexpert_v1"], "train", "*", "*", "*.jpg"))),
                             8, "bgr0"),
             "padchest": (sorted(glob.glob(os.path.join(manual["padchest"], "*.png"))), 16, "rgb0")}
    pools = {"threads": lambda: concurrent.futures.ThreadPoolExecutor(workers),
             "processes": lambda: concurrent.futures.ProcessPoolExecutor(
                 workers, mp_context=multiprocessing.get_context("fork"))}
    for name, (paths, bits, rule) in files.items():
        for size in (512, 224):
            tasks = [imaging.ImageTask(p, bits, rule, size, True) for p in paths[:80]]
            best, pngs = {}, set()
            for r in range(rounds):
                modes = ["serial", "threads", "processes"]
                for mode in modes if r % 2 == 0 else modes[::-1]:
                    start = time.perf_counter()
                    if mode == "serial":
                        results = list(map(imaging.process_image, tasks))
                    else:
                        with pools[mode]() as pool:
                            results = list(pool.map(imaging.process_image, tasks))
                    best[mode] = min(best.get(mode, math.inf), time.perf_counter() - start)
                    pngs.add(hashlib.sha256(b"".join(x.png for x in results)).hexdigest())
            print(f"{name} {size}: {len(tasks)} images, best wall s "
                  + ", ".join(f"{m} {t:.2f}" for m, t in best.items())
                  + f"; outputs {'identical' if len(pngs) == 1 else 'DIFFER'}", flush=True)


def main() -> None:
    """Prints one line per prepare and a summary table (best of the rounds: the machine may be busy)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="root of the checkout to compare against")
    parser.add_argument("--decode_only", action="store_true", help="time process_image alone")
    parser.add_argument("--root", required=True, help="folder for the sources and prepared data")
    parser.add_argument("--n", type=int, default=300, help="images per source")
    parser.add_argument("--size", type=int, default=1024, help="side of the source images")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    manual = _write_sources(args.root, args.n, args.size)
    if args.decode_only:
        return _decode_only(manual, args.rounds, args.num_workers)
    if not args.baseline:
        parser.error("--baseline is required (or pass --decode_only)")
    codes = {"baseline": os.path.abspath(args.baseline), "this": HERE}
    times = {}
    for name in SOURCES:
        for config in CONFIGS:
            digests = {}
            for r in range(args.rounds):
                order = list(codes) if r % 2 == 0 else list(codes)[::-1]
                for label in order:
                    wall, cpu, digest = _prepare(codes[label], name, manual[name],
                                                 os.path.join(args.root, "data", label), config,
                                                 args.num_workers)
                    digests.setdefault(label, set()).add(digest)
                    times.setdefault((name, config, label), []).append((wall, cpu))
                    print(f"{name} {config} {label:8s} round {r}: wall {wall:6.2f} s  cpu {cpu:6.2f} s",
                          flush=True)
            same = len(digests["baseline"] | digests["this"]) == 1
            print(f"{name} {config}: TFRecords {'identical' if same else 'DIFFER'}", flush=True)
            if not same:
                raise SystemExit(1)
    print("\n| source | config | code | wall s (best) | CPU s (best) |\n|---|---|---|---|---|")
    for (name, config, label), values in times.items():
        print(f"| {name} | {config} | {label} | {min(v[0] for v in values):.2f} | {min(v[1] for v in values):.2f} |")


if __name__ == "__main__":
    main()
