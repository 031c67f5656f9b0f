"""Preparing X-ray datasets: this checkout's builders against another checkout's, same output.

    git archive <commit> | tar -x -C /tmp/base          # e.g. the commit before a change
    python -m benchmarks.prepare_workers --baseline /tmp/base --root /tmp/prep_bench

Writes two synthetic sources (`input_pipeline.datasets.synthetic`) of --n images of
--size x --size pixels: CheXpert (8-bit JPEG) and PadChest (16-bit PNG; its random rows drop
some projections). Then, for each source and builder config (512, 224), prepares it with each
checkout's code in turn, --rounds times alternating (the machine may be shared), each in its own
`python -c` process with --num_workers. Prints wall and CPU seconds (the whole process tree,
worker processes included, sampled with psutil) and checks that both checkouts wrote the same
examples, feature by feature, in the same order.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time

import psutil

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
    may be missed)."""
    root = psutil.Process(proc.pid)
    last = {}
    while proc.poll() is None:
        try:
            for p in [root] + root.children(recursive=True):
                t = p.cpu_times()
                last[p.pid] = t.user + t.system + t.children_user + t.children_system
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


def main() -> None:
    """Prints one line per prepare and a summary table (best of the rounds: the machine may be busy)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="root of the checkout to compare against")
    parser.add_argument("--root", required=True, help="folder for the sources and prepared data")
    parser.add_argument("--n", type=int, default=300, help="images per source")
    parser.add_argument("--size", type=int, default=1024, help="side of the source images")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    manual = _write_sources(args.root, args.n, args.size)
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
