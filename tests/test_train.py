"""The train loop end to end: learning, sharding, multi-process, resumption, preemption, NaN.

Runs use the demo's synthetic chest X-rays (prepared once per session) and its smallest BiT at
32 px, so a run takes seconds once compiled; compilations are shared across processes through
the persistent cache that tests/conftest.py configures. The command-line runs fine-tune a small
random "pre-trained" model with plain SGD (no init or AGC to compile: that is what costs time
here); the in-process ones cover pre-training with AGC and multi-label BCE.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bit_medical import results, train
from bit_medical.models import export

from run_helpers import REPO, STEPS, train_processes
from run_helpers import assert_same_params as _assert_same_params
from run_helpers import cli as _cli
from run_helpers import config as _config
from run_helpers import params as _params
from run_helpers import scalars as _scalars
from run_helpers import train_args as _train_args


def test_tiny_run_lowers_the_loss(data_dir, tmp_path):
    config = _config(data_dir, total_steps=30)
    config.optim.base_lr = 0.8
    final = train.train_and_evaluate(config, str(tmp_path))
    loss = _scalars(str(tmp_path))
    assert len(loss) == 30
    first, last = np.mean([loss[s] for s in (1, 2, 3)]), np.mean([loss[s] for s in (28, 29, 30)])
    assert last < 0.9 * first, (first, last)
    assert set(final) == {"val"} and 0 <= final["val"]["mean_auc"] <= 1


def test_eight_devices_give_the_single_device_loss_curve(data_dir, small_npz, reference_run,
                                                         tmp_path):
    _cli(_train_args(data_dir, small_npz, tmp_path),
         env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    one, eight = _scalars(reference_run), _scalars(str(tmp_path))
    assert sorted(one) == sorted(eight) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([eight[s] for s in one], [one[s] for s in one], atol=1e-4)


@pytest.mark.parametrize("devices,fsdp", [(1, 1), (2, 4)], ids=["data_parallel", "fsdp"])
def test_two_processes_train_together(data_dir, small_npz, reference_run, tmp_path, devices,
                                      fsdp):
    """Two hosts give the single-device run. With fsdp over all 4 devices the parameters are
    split across the hosts, so gathering them (e.g. for the parameter overview) is a collective
    that every host must join."""
    train_processes(_train_args(data_dir, small_npz, tmp_path, f"--config.fsdp={fsdp}"), 2,
                    env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"})
    one, two = _scalars(reference_run), _scalars(str(tmp_path))
    np.testing.assert_allclose([two[s] for s in sorted(one)], [one[s] for s in sorted(one)],
                               atol=1e-4)
    _assert_same_params(_params(str(tmp_path)), _params(reference_run), atol=1e-5)


def test_killed_run_resumes_to_the_same_parameters(data_dir, small_npz, reference_run, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "bit_medical.main",
                             *_train_args(data_dir, small_npz, tmp_path)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not os.path.exists(tmp_path / "checkpoints" / "2") and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(tmp_path / "export"), "the run finished before it was killed"
    _cli(_train_args(data_dir, small_npz, tmp_path))
    _assert_same_params(_params(str(tmp_path)), _params(reference_run), rtol=0, atol=0)
    loss, reference = _scalars(str(tmp_path)), _scalars(reference_run)
    assert all(loss[s] == reference[s] for s in loss)


def test_sigterm_saves_and_exits_cleanly(data_dir, small_npz, tmp_path):
    config_args = _train_args(data_dir, small_npz, tmp_path)
    config_args = [a if not a.startswith("--config.total_steps") else "--config.total_steps=400"
                   for a in config_args]
    proc = subprocess.Popen([sys.executable, "-m", "bit_medical.main", *config_args,
                             "--config.checkpoint_every=1000"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while len(_scalars(str(tmp_path))) < 3:  # wait for a few logged steps
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped = json.loads(out)["preempted"]
    assert 3 <= stopped < 400
    assert [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()] == [str(stopped)]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    import jax
    import orbax.checkpoint as ocp

    train.train_and_evaluate(_config(data_dir, total_steps=4), str(tmp_path))  # saves 2 and 4
    config = _config(data_dir, total_steps=10, checkpoint_every=1)
    config.optim.base_lr = 1e30  # diverges after the resumed step 4
    with pytest.raises(train.NonFiniteLossError, match=r"at step (\d+)") as err:
        train.train_and_evaluate(config, str(tmp_path))
    bad = int(err.value.args[0].split("at step ")[1].split(";")[0])
    assert 5 <= bad <= 10
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert saved[-1] < bad and 4 in saved
    for step in saved:  # every checkpoint kept holds finite parameters
        state = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(step) / "default")
        assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state["params"]))


def test_eval_and_export_commands_reproduce_the_run(data_dir, reference_run, tmp_path):
    import orbax.checkpoint as ocp

    out = json.loads(_cli(["eval", f"--workdir={reference_run}"]).stdout)
    with open(os.path.join(reference_run, "config.json")) as f:
        assert json.load(f)["total_steps"] == STEPS
    # The run's own final evaluation was written to TensorBoard under test/...
    assert out["test"]["acc"] == pytest.approx(_scalars(reference_run, "test/acc")[STEPS],
                                               abs=1e-6)
    rows = {r["metric"]: r["metric_value"]
            for r in results.load(os.path.join(reference_run, "results.csv"))}
    assert rows["test/acc"] == pytest.approx(out["test"]["acc"], abs=1e-6)
    params = ocp.StandardCheckpointer().restore(os.path.join(reference_run, "export", "params"))
    meta = json.load(open(os.path.join(reference_run, "export", "model.json")))
    assert meta["num_classes"] == 2 and meta["label_names"] == ["normal", "tuberculosis"]
    assert {k: meta["preprocessing"][k] for k in ("kind", "resize", "crop", "norm")} == {
        "kind": "bit", "resize": 36, "crop": 32, "norm": "bit"}
    # The normalisation as numbers: (x / 255 - 0.5) / 0.5, i.e. [-1, 1].
    assert (meta["preprocessing"]["mean"], meta["preprocessing"]["std"]) == ([0.5] * 3, [0.5] * 3)
    assert (meta["model"], meta["format"], meta["image_size"]) == (
        "BiT-R14x0.5", export.FORMAT, [32, 32])
    assert meta["multilabel"] is False and meta["step"] == STEPS
    assert params["head"]["conv2d"]["kernel"].shape == (1, 1, 1024, 2)


def test_transfer_from_a_pretraining_run_writes_results_csv(data_dir, tmp_path):
    from bit_medical import demo

    pretrain_dir = str(tmp_path / "pretrain")
    train.train_and_evaluate(_config(data_dir, total_steps=2, checkpoint_every=2), pretrain_dir)
    config = demo.demo_config(stage="transfer", data_dir=data_dir, shots=2, seed=3,
                              pretrained=pretrain_dir, steps=4)
    config.batch_size = config.eval_batch_size = 8
    config.pp.crop, config.pp.resize = 32, 36
    final = train.train_and_evaluate(config, str(tmp_path / "transfer"))
    assert config.pp.norm == ""  # resolved from the pre-training run's export: bit
    rows = results.load(str(tmp_path / "transfer" / "results.csv"))
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["test/acc"]["metric_value"] == pytest.approx(final["test"]["acc"])
    row = by_metric["test/acc"]
    assert (row["shot"], row["seed"], row["last_step"], row["dataset"]) == (
        "2_shot", 3, 4, "tuberculosis_demo")
    assert row["pretrained_model"] == "demo_chexpert_bit14x0.5"


def test_best_validation_loss_export_is_what_a_workdir_transfers(data_dir, tmp_path):
    import orbax.checkpoint as ocp

    import bit_medical

    workdir = str(tmp_path)
    config = _config(data_dir, total_steps=6, eval_every=2, checkpoint_every=2,
                     keep_checkpoints=3, best_split="val")
    config.optim.base_lr = 0.8
    train.train_and_evaluate(config, workdir)
    val_loss = _scalars(workdir, "val/loss")
    assert sorted(val_loss) == [2, 4, 6]
    best_step = min(val_loss, key=lambda s: (val_loss[s], s))
    meta = export.load_meta(os.path.join(workdir, export.BEST_EXPORT_DIRNAME))
    assert (meta["step"], meta["best_split"]) == (best_step, "val")
    assert meta["best_loss"] == pytest.approx(val_loss[best_step], rel=1e-6)
    # The best export holds the parameters of that step's checkpoint.
    state = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(best_step), "default"))
    best = export.load(os.path.join(workdir, export.BEST_EXPORT_DIRNAME))[0]
    _assert_same_params(best, state["params"], rtol=0, atol=0)
    # pretrained=WORKDIR (and load_model(WORKDIR)) take the best; WORKDIR/export the last.
    _, from_workdir = bit_medical.load_model(workdir)
    _assert_same_params(from_workdir["params"], best, rtol=0, atol=0)
    _, last = bit_medical.load_model(os.path.join(workdir, "export"))
    final_state = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", "6", "default"))
    _assert_same_params(last["params"], final_state["params"], rtol=0, atol=0)


def test_batch_split_accumulates_to_the_full_batch_step():
    """The trainer's micro-batch accumulation (``lax.scan``) equals one step on the whole
    batch, as the reference's ``(loss / batch_split).backward()`` then ``optim.step()``."""
    import functools

    import jax

    from bit_medical import experiment, steps
    from bit_medical.models import bit

    model = bit.create_model("BiT-R14x0.5", 3)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 3, 8).astype(np.int32)}
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    tx = steps.make_optimizer(experiment.base().optim)
    out = {}
    for split in (1, 4):
        step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                         batch_split=split))
        state = steps.fresh_state(tx, params["params"])
        for _ in range(2):
            state, metrics = step(state, batch, 0.1, 1.0, jax.random.key(1))
        out[split] = (jax.device_get(state.params), float(metrics["loss"]))
    _assert_same_params(out[4][0], out[1][0], rtol=1e-4, atol=1e-6)
    assert out[4][1] == pytest.approx(out[1][1], rel=1e-5)
    assert not np.allclose(out[1][0]["head"]["conv2d"]["kernel"],
                           params["params"]["head"]["conv2d"]["kernel"])
