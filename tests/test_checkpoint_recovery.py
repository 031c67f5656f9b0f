"""Resuming past a damaged checkpoint: set aside (never deleted), one log line, same result.

Each test starts from a copy of the reference run's checkpoints (steps 2, 4 and 6 of 6; see
conftest.py) with files of some steps damaged as a full disk or a lost node leaves them.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from bit_medical import checkpoint, train
from bit_medical.models import export

from run_helpers import REPO, STEPS, assert_same_params, cli, params, processes, scalars, train_args

LAST, PREVIOUS = STEPS, STEPS - 2


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble(path):
    data = bytearray(open(path, "rb").read())
    data[::97] = bytes(b ^ 0xFF for b in data[::97])
    with open(path, "wb") as f:
        f.write(data)


DAMAGE = {"truncated": _truncate, "deleted": os.remove, "garbled": _garble}


def _copy_run(reference_run, workdir):
    """The reference run's config and checkpoints, as if it had stopped after saving step 6."""
    os.makedirs(workdir)
    shutil.copy(os.path.join(reference_run, "config.json"), workdir)
    shutil.copytree(os.path.join(reference_run, "checkpoints"), os.path.join(workdir, "checkpoints"))


def _damage(workdir, step, how):
    """Damages the largest file of a step (array data, whatever Orbax's layout); returns its
    path relative to the step directory."""
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    files = [p for p in glob.glob(os.path.join(step_dir, "**"), recursive=True) if os.path.isfile(p)]
    largest = max(files, key=os.path.getsize)
    DAMAGE[how](largest)
    return os.path.relpath(largest, step_dir)


def _steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def _files(directory):
    return sorted(os.path.relpath(p, directory)
                  for p in glob.glob(os.path.join(directory, "**"), recursive=True)
                  if os.path.isfile(p))


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes(
        how, data_dir, small_npz, reference_run, tmp_path):
    workdir = str(tmp_path / "run")
    _copy_run(reference_run, workdir)
    damaged = _damage(workdir, LAST, how)
    files_after_damage = _files(os.path.join(workdir, "checkpoints", str(LAST)))

    err = cli(train_args(data_dir, small_npz, workdir)).stderr

    notes = [line for line in err.splitlines() if "unreadable" in line]
    assert len(notes) == 1, err[-5000:]
    bad_dir = os.path.join(workdir, checkpoint.BAD_DIRNAME, str(LAST))
    assert re.search(rf"Checkpoint step {LAST} in \S+ is unreadable \(\w+: .+\); moved it to "
                     rf"{re.escape(bad_dir)}, using step {PREVIOUS} instead$", notes[0]), notes[0]
    assert f"at step {PREVIOUS}" in err  # "Resumed from ... at step 4"
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-5000:]
    # Set aside exactly as it was found, and the step saved anew by the resumed run.
    assert _files(bad_dir) == files_after_damage
    if how != "deleted":
        assert damaged in files_after_damage
    assert _steps(workdir) == [2, 4, 6]
    # Steps 5 and 6 retrained: the uninterrupted run's losses and final parameters, exactly.
    loss, reference = scalars(workdir), scalars(reference_run)
    assert sorted(loss) == [PREVIOUS + 1, LAST]
    assert all(loss[s] == reference[s] for s in loss)
    assert_same_params(params(workdir), params(reference_run), rtol=0, atol=0)


def test_no_readable_checkpoint_is_one_clear_error_and_nothing_moves(data_dir, small_npz,
                                                                     reference_run, tmp_path):
    workdir = str(tmp_path / "run")
    _copy_run(reference_run, workdir)
    for step, how in zip((2, 4, 6), ("truncated", "deleted", "garbled")):
        _damage(workdir, step, how)
    checkpoints = os.path.join(workdir, "checkpoints")
    before = _files(checkpoints)

    proc = cli(train_args(data_dir, small_npz, workdir), check=False)

    assert proc.returncode != 0
    err = proc.stderr
    match = re.search(rf"No readable checkpoint in {re.escape(checkpoints)}: "
                      r"step 6: (.+); step 4: (.+); step 2: (.+)\. Nothing was moved", err)
    assert match, err[-5000:]
    assert all(match.groups())
    # One error, no echoes of the abandoned reads or of torn-down saves.
    assert err.count("Traceback (most recent call last)") <= 1, err[-5000:]
    assert "Event loop is closed" not in err and "interpreter shutdown" not in err, err[-5000:]
    assert _files(checkpoints) == before
    assert not os.path.exists(os.path.join(workdir, checkpoint.BAD_DIRNAME))


def test_export_and_eval_recover_the_same_way(reference_run, tmp_path, caplog):
    import orbax.checkpoint as ocp

    workdir = str(tmp_path / "run")
    _copy_run(reference_run, workdir)
    _damage(workdir, LAST, "truncated")
    expected = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(PREVIOUS), "default"))["params"]

    with caplog.at_level("WARNING"):
        exported = train.export_workdir(workdir)  # eval restores through the same function

    notes = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(notes) == 1 and f"step {LAST} in" in notes[0], notes
    assert os.path.isdir(os.path.join(workdir, checkpoint.BAD_DIRNAME, str(LAST)))
    assert _steps(workdir) == [2, PREVIOUS]
    exported_params, meta = export.load(exported)
    assert meta["step"] == PREVIOUS
    assert_same_params(exported_params, expected, rtol=0, atol=0)


_KILLED_MID_SAVE = """
import os, signal, sys, glob, time
import jax
from bit_medical import checkpoint

mgr = checkpoint.manager(sys.argv[1], keep=3)
checkpoint.save(mgr, 1, {"w": jax.numpy.zeros((4,))})
mgr.wait_until_finished()
# 256 MB of random numbers (no compression shortcut), written in the background.
checkpoint.save(mgr, 2, {"w": jax.random.normal(jax.random.key(0), (64, 1024, 1024))})
tmp = os.path.join(sys.argv[1], "checkpoints", "2.orbax-checkpoint-tmp*")
while not glob.glob(os.path.join(tmp, "**", "*"), recursive=True):
    time.sleep(0.001)
os.kill(os.getpid(), signal.SIGKILL)  # the node is lost while step 2 is being written
"""


def test_a_save_cut_short_never_looks_complete(tmp_path):
    import jax
    import jax.numpy as jnp

    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_SAVE, str(tmp_path)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    directory = tmp_path / "checkpoints"
    assert not (directory / "2").exists()
    assert [p.name for p in directory.iterdir() if p.name.startswith("2.")], "no save in flight"

    mgr = checkpoint.manager(str(tmp_path), keep=3)
    try:
        assert mgr.all_steps() == [1]
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        step, state = checkpoint.restore_latest(
            mgr, {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)})
    finally:
        mgr.close()
    assert step == 1 and np.array_equal(state["w"], np.zeros(4))


_HOST = """
import glob, json, os, sys
import jax, numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from bit_medical import checkpoint, parallel

workdir = sys.argv[1]
flags = dict(a.lstrip("-").split("=") for a in sys.argv[2:])
parallel.initialize_distributed(flags["coordinator_address"], int(flags["num_processes"]),
                                int(flags["process_id"]))
sharding = NamedSharding(parallel.make_mesh(2), P(parallel.FSDP_AXIS))  # split across hosts
values = np.arange(1 << 20, dtype=np.float32)
state = {"w": jax.make_array_from_callback(values.shape, sharding, lambda i: values[i])}
mgr = checkpoint.manager(workdir, keep=3)
checkpoint.save(mgr, 1, state)
checkpoint.save(mgr, 2, {"w": state["w"] * 2})
mgr.close()
multihost_utils.sync_global_devices("saved")
if jax.process_index() == 1:  # only host 1 reads this: host 0's own shard is intact
    for path in glob.glob(f"{workdir}/checkpoints/2/**/ocdbt.process_1/d/*", recursive=True):
        os.truncate(path, os.path.getsize(path) // 2)
multihost_utils.sync_global_devices("damaged")
mgr = checkpoint.manager(workdir, keep=3)
step, restored = checkpoint.restore_latest(
    mgr, {"w": jax.ShapeDtypeStruct(values.shape, np.float32, sharding=sharding)})
mgr.close()
shards = {str(s.index[0].start): np.asarray(s.data)[:2].tolist()
          for s in restored["w"].addressable_shards}
print(json.dumps({"step": step, "shards": shards}))
"""


def test_hosts_agree_when_only_one_cannot_read_its_shard(tmp_path):
    """With parameters split across hosts each reads only its shard: a step that one host
    cannot read is set aside by all, and all resume from the same earlier step."""
    outputs = processes(["-c", _HOST, str(tmp_path)], 2, env={
        "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
        timeout=300)
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [r["step"] for r in results] == [1, 1]
    half = 1 << 19
    assert results[0]["shards"] == {"0": [0.0, 1.0]}
    assert results[1]["shards"] == {str(half): [float(half), float(half + 1)]}
    assert _steps(str(tmp_path)) == [1]
    assert os.listdir(tmp_path / checkpoint.BAD_DIRNAME) == ["2"]
    reasons = [re.search(r"step 2 in \S+ is unreadable \((.*)\); moved", err).group(1)
               for _, err in outputs]
    assert reasons[0] == "unreadable on another process"
    assert f"{tmp_path}/checkpoints/2/" in reasons[1], reasons[1]  # TensorStore names the file
