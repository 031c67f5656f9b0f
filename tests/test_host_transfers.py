"""No hidden host work in the loop: between log steps the host only feeds the device.

A training step (the loop's three calls: ``parallel.global_batch``, ``steps.step_scalars``, the
step jitted by ``steps.jit_train_step``) makes no implicit host-to-device transfer
(``jax.transfer_guard_host_to_device("disallow")``; the batch and the step's scalars go as
explicit transfers) and reads nothing back from the device. Evaluation and feature extraction
queue every batch before the first read from the device.

XLA:CPU arrays live in host memory, so JAX's device-to-host guard never fires on CPU; reads
are counted instead where every one of them passes (``ArrayImpl._value``: ``np.asarray``,
``float``, ``jax.device_get``, ...). Each test also shows that its detector catches the
transfer it forbids.
"""

import contextlib
import functools

import jax
import numpy as np
import pytest
from jax._src.array import ArrayImpl
from sklearn.metrics import log_loss

from bit_medical import experiment, parallel, steps, train
from bit_medical.models import bit

NUM_CLASSES, SIZE, BATCH = 3, 32, 8


@contextlib.contextmanager
def device_reads(events: list):
    """Appends ``("read", shape)`` to ``events`` for every copy of a device array to the host."""
    original = ArrayImpl._value

    def counted(self):
        events.append(("read", self.shape))
        return original.fget(self)

    ArrayImpl._value = property(counted)
    try:
        yield events
    finally:
        ArrayImpl._value = original


def _batches(n, seed=0, masked_rows=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = np.ones(BATCH, bool)
        mask[BATCH - masked_rows:] = False
        out.append({"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
                    "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
                    "mask": mask})
    return out


@pytest.fixture(scope="module")
def setup():
    model = bit.create_model("BiT-R14x0.5", NUM_CLASSES)
    mesh = parallel.make_mesh()
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32))
    return model, mesh, parallel.batch_sharding(mesh), params["params"]


def test_train_steps_between_log_steps_make_no_implicit_transfer_and_no_read(setup):
    model, mesh, sharding, params = setup
    config = experiment.base()
    config.total_steps = 10
    tx = steps.make_optimizer(config.optim)
    _, shardings = steps.state_layout(model, tx, mesh, (SIZE, SIZE))
    state = jax.jit(functools.partial(steps.fresh_state, tx), out_shardings=shardings)(params)
    lr_fn, _, _ = train.make_schedule(config, train_size=100)
    lam_fn = steps.mixup_lambdas(0.1, seed=0)
    step_fn = steps.jit_train_step(model, tx, shardings, sharding, norm="bit", mixup_alpha=0.1,
                                   batch_split=2)
    rng = jax.random.key(0)
    batches = [{k: v for k, v in b.items() if k != "mask"} for b in _batches(4)]

    def run(step, state):  # the loop's body up to the log step (train.py)
        batch = parallel.global_batch(batches[step], sharding)
        return step_fn(state, batch, *steps.step_scalars(lr_fn, lam_fn, step), rng)

    state, _ = run(0, state)  # compiles
    events, pending = [], []
    with jax.transfer_guard_host_to_device("disallow"), device_reads(events):
        for step in range(1, 4):
            state, metrics = run(step, state)
            pending.append(metrics)
    assert events == []
    assert np.isfinite(train._mean(pending)["loss"])  # the log step reads them, once
    # The detectors: a Python scalar is an implicit transfer; a logged value is a read.
    with jax.transfer_guard_host_to_device("disallow"), pytest.raises(Exception, match="Disallowed"):
        step_fn(state, parallel.global_batch(batches[0], sharding), 0.1, 1.0, rng)
    with device_reads(events):
        float(pending[-1]["loss"])
    assert events == [("read", ())]


def _recording(fn, events):
    def call(*args):
        events.append(("dispatch", None))
        return fn(*args)
    return call


def test_evaluation_queues_every_batch_before_reading_results_once(setup):
    model, _, sharding, params = setup
    batches = _batches(3, seed=1, masked_rows=3)  # the last rows of each batch are padding
    eval_fn = steps.jit_eval_step(model, multilabel=False, norm="bit")
    events = []
    with jax.transfer_guard_host_to_device("disallow"), device_reads(events):
        result = train.evaluate(_recording(eval_fn, events), params, batches, sharding,
                                multilabel=False)
    kinds = [kind for kind, _ in events]
    assert kinds.count("dispatch") == 3 and "read" in kinds
    assert kinds.index("read") > max(i for i, k in enumerate(kinds) if k == "dispatch")
    # The numbers are those of the model on the real rows (sklearn's log loss, accuracy).
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    logits = np.asarray(model.apply({"params": params}, images / 127.5 - 1.0), np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert result["loss"] == pytest.approx(log_loss(labels, probs, labels=range(NUM_CLASSES)),
                                           rel=1e-4)
    assert result["acc"] == pytest.approx(np.mean(probs.argmax(1) == labels))


def test_feature_extraction_queues_every_batch_before_reading(setup):
    model, _, sharding, params = setup
    batches = _batches(3, seed=2, masked_rows=2)
    features_fn = steps.jit_features_step(model, norm="bit")
    events = []
    with jax.transfer_guard_host_to_device("disallow"), device_reads(events):
        features, labels = train._features(_recording(features_fn, events), params, batches,
                                           sharding)
    kinds = [kind for kind, _ in events]
    assert kinds.index("read") > max(i for i, k in enumerate(kinds) if k == "dispatch")
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    expected = model.apply({"params": params}, images / 127.5 - 1.0, pre_logits=True)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels, np.concatenate([b["label"][b["mask"]] for b in batches]))
