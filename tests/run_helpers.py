"""Shared by the train-loop tests: a tiny demo run, through the CLI or in process.

The runs use the demo's synthetic chest X-rays and its smallest BiT at 32 px (the fixtures
``data_dir``, ``small_npz`` and ``reference_run`` in conftest.py), so a run takes seconds once
compiled. The command-line runs fine-tune a small random "pre-trained" model with plain SGD.
"""

import contextlib
import glob
import os
import socket
import subprocess
import sys

import numpy as np

from bit_medical.models import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def random_npz(path, num_classes: int, seed: int = 0) -> dict:
    """Writes a random BiT-R14x0.5 with ``num_classes`` outputs in the official .npz layout,
    standing in for a pre-trained model; returns its parameters."""
    import jax

    from bit_medical.models import bit, convert

    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
        bit.param_shapes(bit.create_model("BiT-R14x0.5", num_classes)))
    convert.save_npz(params, path)
    return params


def overrides(**extra):
    """CLI overrides making the demo's transfer stage tiny (32 px, batch 8, 6 steps, SGD)."""
    values = {"batch_size": 8, "eval_batch_size": 8, "log_every": 1, "checkpoint_every": 2,
              "total_steps": STEPS, "pp.crop": 32, "pp.resize": 36, "pp.norm": "bit",
              "optim.name": "sgd", **extra}
    return [f"--config.{k}={v}" for k, v in values.items()]


def config(data_dir, **extra):
    """A tiny pre-training run as a ConfigDict, for in-process calls."""
    from bit_medical import demo

    cfg = demo.demo_config(stage="pretrain", data_dir=data_dir, probe=False)
    for key, value in {"batch_size": 8, "eval_batch_size": 8, "log_every": 1, "eval_every": 0,
                       "checkpoint_every": 2, "total_steps": STEPS, **extra}.items():
        cfg[key] = value
    cfg.pp.crop = cfg.pp.resize = 32
    return cfg


def cli(args, *, env=None, timeout=600, check=True, cwd=REPO):
    """Runs ``python -m bit_medical.main ARGS``; fails the test on a non-zero exit if ``check``."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "bit_medical.main", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def train_args(data_dir, pretrained, workdir, *extra):
    """``train`` arguments of the tiny transfer run (configs/demo.py) from ``pretrained``."""
    return ["train", f"--config={REPO}/configs/demo.py:stage=transfer,data_dir={data_dir},"
            f"pretrained={pretrained}", f"--workdir={workdir}", *overrides(), *extra]


def processes(argv, n, *, env=None, timeout=600):
    """Runs ``python ARGV --coordinator_address=... --num_processes=n --process_id=i`` for each
    of ``n`` processes joined by jax.distributed; all must succeed. Returns their outputs."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    full_env = {**os.environ, **(env or {})}
    procs = [subprocess.Popen(
        [sys.executable, *argv,
         f"--coordinator_address=localhost:{port}", f"--num_processes={n}", f"--process_id={i}"],
        cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}\n{err[-5000:]}"
    return outputs


def train_processes(args, n, **kwargs):
    """``bit-medical ARGS`` as ``n`` processes (see ``processes``)."""
    return processes(["-m", "bit_medical.main", *args], n, **kwargs)


def scalars(workdir, tag="loss"):
    """{step: value} of a scalar the run logged to TensorBoard."""
    import tensorflow as tf

    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = float(tf.make_ndarray(value.tensor))
    return out


def params(workdir):
    """The parameters of a finished run's export."""
    return export.load(workdir)[0]


def assert_same_params(a, b, **tol):
    import jax

    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


@contextlib.contextmanager
def fake_gcs(root):
    """``gs://BUCKET/...`` paths taken by ``etils.epath`` land in ``root/BUCKET/...``.

    The project's file access (``bit_medical.paths.path``) goes through epath; this swaps
    epath's cloud backends for the local one with URLs mapped onto ``root``, so tests run the
    very code a TPU VM runs on a bucket. Orbax's TensorStore has its own GCS driver and is not
    covered: checkpoints are tested on local paths.
    """
    from unittest import mock

    from etils.epath import gpath, testing

    root = os.fspath(root)

    def local(p):
        p = os.fspath(p)
        return os.path.join(root, p[len("gs://"):]) if p.startswith("gs://") else p

    def url(p):
        p = os.fspath(p)
        return "gs://" + os.path.relpath(p, root) if p.startswith(root + os.sep) else p

    def one(fn, p, *args, **kwargs):
        return fn(local(p), *args, **kwargs)

    def two(fn, p, dst, *args, **kwargs):
        return fn(local(p), local(dst), *args, **kwargs)

    def glob_(fn, p):
        return [url(m) for m in fn(local(p))]

    def walk(fn, top, **kwargs):
        for here, dirs, files in fn(local(top), **kwargs):
            yield url(here), dirs, files

    # epath picks TensorFlow's GCS client whenever TensorFlow is importable, past the mock.
    with mock.patch.object(gpath, "_is_tf_installed", lambda: False), testing.mock_epath(
            open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
            rmtree=one, stat=one, rename=two, replace=two, copy=two, glob=glob_, walk=walk):
        yield


def store_tfds(data_dir, name, images, labels, splits, class_names):
    """Stores 32x32 RGB ``images`` with ``labels`` as the TFDS dataset ``name`` in ``data_dir``.

    ``splits`` maps a split name to its ``(start, stop)`` rows.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", data_dir=os.fspath(data_dir),
        split_datasets={split: tf.data.Dataset.from_tensor_slices(
            {"image": images[lo:hi], "label": labels[lo:hi]}) for split, (lo, hi) in splits.items()},
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=images.shape[1:]),
            "label": tfds.features.ClassLabel(names=list(class_names))}))
