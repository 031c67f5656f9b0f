"""The `bit-medical` command as a user meets it: help, user errors without tracebacks, quiet start.

Every case runs the real command in a subprocess without TF_CPP_MIN_LOG_LEVEL (which
conftest.py sets for the tests themselves), so stderr is what a user would see.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest

from bit_medical import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFER = "--config=configs/transfer.py:target=cifar10,pretrained=BiT-M-R50x1"


def _cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("TF_CPP_MIN_LOG_LEVEL", main.VERBOSE_ENV)}
    full_env.update(PYTHONPATH=REPO, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bit_medical.main", *args], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=600)


def _assert_user_error(proc, *expected):
    """Exit status 2 and only `bit-medical COMMAND: message` on stderr, naming `expected`."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("bit-medical "), proc.stderr[-3000:]  # no start-up lines
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in proc.stderr, (text, proc.stderr)


def test_help_lists_the_commands_with_an_example():
    proc = _cli("--help")
    assert proc.returncode == 0
    for command, (summary, example) in main.COMMANDS.items():
        assert f"{command}  " in proc.stdout and " ".join(summary.split()[:3]) in proc.stdout
        assert example in proc.stdout


def test_command_help_shows_its_own_flags_only():
    proc = _cli("train", "--help")
    assert proc.returncode == 0
    assert "--config FILE.py[:ARGS]" in proc.stdout and "--workdir" in proc.stdout
    assert "--config.FIELD=VALUE" in proc.stdout and "optim.*" in proc.stdout
    assert "--manual_dir" not in proc.stdout and "--split" not in proc.stdout


def test_no_command_prints_the_usage():
    proc = _cli()
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: bit-medical") and "train, eval, export" in proc.stderr


def test_prepare_help_names_every_builder():
    from input_pipeline import datasets

    _, commands = main._parser()
    assert all(name in commands["prepare"].format_help() for name in datasets.BUILDERS)


def test_unknown_command_lists_the_commands():
    proc = _cli("fit", "--workdir=x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'fit'" in proc.stderr and all(f"'{c}'" in proc.stderr for c in main.COMMANDS)


def test_mistyped_config_field_lists_the_valid_fields(tmp_path):
    proc = _cli("train", TRANSFER, f"--workdir={tmp_path}", "--config.optim.base_rl=0.1")
    _assert_user_error(proc, "--config.optim.base_rl", "config.optim has no field 'base_rl'",
                       "did you mean 'base_lr'",
                       "valid: base_lr, clipping, eps, momentum, name, nesterov, unclipped")
    assert len(proc.stderr.splitlines()) == 1
    assert not os.listdir(tmp_path)  # nothing was written


def test_config_value_of_the_wrong_type(tmp_path):
    proc = _cli("train", TRANSFER, f"--workdir={tmp_path}", "--config.batch_size=abc")
    _assert_user_error(proc, "--config.batch_size='abc': expected int")


def test_unknown_target_lists_the_targets(tmp_path):
    proc = _cli("train", "--config=configs/transfer.py:target=mnist", f"--workdir={tmp_path}")
    _assert_user_error(proc, "unknown target 'mnist'; valid: cifar10, cifar100, pets")


def test_missing_image_folder_is_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    proc = _cli("train", f"--config=configs/transfer.py:target=image_folder,train_dir={missing},"
                f"val_dir={missing},pretrained=,model=BiT-R14x0.5", f"--workdir={tmp_path}/run")
    _assert_user_error(proc, f"Image folder '{missing}' does not exist")
    assert len(proc.stderr.splitlines()) == 1  # nor TensorFlow's or JAX's start-up lines


def test_missing_workdir_is_named(tmp_path):
    proc = _cli("eval", f"--workdir={tmp_path}/nothing")
    _assert_user_error(proc, f"{tmp_path}/nothing holds no run")
    assert len(proc.stderr.splitlines()) == 1


def test_prepare_without_the_download(tmp_path):
    proc = _cli("prepare", "chexpert_v1", f"--manual_dir={tmp_path}/nowhere",
                f"--data_dir={tmp_path}/tfds")
    _assert_user_error(proc, f"manual_dir '{tmp_path}/nowhere' is not a folder", "train.csv")
    assert not os.path.exists(tmp_path / "tfds")
    proc = _cli("prepare", "chexpert", f"--manual_dir={tmp_path}", f"--data_dir={tmp_path}")
    _assert_user_error(proc, "Unknown X-ray dataset 'chexpert'", "'chexpert_v1'")


@pytest.mark.parametrize("flag,env", [("--verbose", {}), (None, {main.VERBOSE_ENV: "1"})])
def test_verbose_shows_the_traceback(flag, env, tmp_path):
    proc = _cli("train", TRANSFER, f"--workdir={tmp_path}", "--config.optim.base_rl=0.1",
                *filter(None, [flag]), env=env)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("bit-medical train: --config.optim")


def test_tensorflow_log_level_is_a_default(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    importlib.reload(main)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    importlib.reload(main)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.fixture(scope="module")
def tuberculosis_data(tmp_path_factory):
    """The synthetic Tuberculosis set, prepared at full (tiny) resolution."""
    from input_pipeline import datasets
    from input_pipeline.datasets import synthetic

    root = tmp_path_factory.mktemp("tb")
    synthetic.write_tuberculosis(root / "manual", n_shenzhen=24, n_montgomery=8,
                                 image_size=(40, 36), seed=1)
    datasets.prepare("tuberculosis_cxr", manual_dir=root / "manual", data_dir=root / "tfds",
                     config="full", num_workers=1)
    return str(root / "tfds")


@pytest.mark.slow
def test_transfer_from_scratch_needs_no_extra_flags(tuberculosis_data, tmp_path):
    proc = _cli("train", f"--workdir={tmp_path}",
                "--config=configs/transfer.py:target=tuberculosis,pretrained=,"
                f"model=BiT-R14x0.5,smoke=true,data_dir={tuberculosis_data}",
                # The fixture is tiny: stored as is, 32 px, all 6 test images (smoke takes 32).
                "--config.data.builder_config=full", "--config.pp.resize=36",
                "--config.pp.crop=32", "--config.data.eval_splits.test=test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0 <= json.loads(proc.stdout)["test"]["acc"] <= 1
    with open(tmp_path / "export" / "model.json") as f:
        assert json.load(f)["preprocessing"]["norm"] == "bit"  # the schema's default
