"""Every config of the paper's grid builds; bad arguments fail early with the valid choices."""

import importlib.util
import itertools
import os
import subprocess
import sys

import pytest

from bit_medical import experiment, hyperrule
from bit_medical.models import bit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(name):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(REPO, "configs",
                                                                             f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRETRAIN, TRANSFER, DEMO = _module("pretrain"), _module("transfer"), _module("demo")


@pytest.mark.parametrize("source,model", list(itertools.product(
    PRETRAIN.SOURCES, ["BiT-S-R50x1", "BiT-S-R152x4"])))
def test_pretrain_grid(source, model):
    c = PRETRAIN.get_config(f"source={source},model={model}")
    assert bit.architecture(c.model) == bit.architecture(model)
    xray = source not in ("imagenet1k", "imagenet21k")
    assert c.pp.kind == ("xray" if xray else "inception")
    assert c.optim.weight_decay == 1e-4 and c.schedule.epochs == 90
    assert c.optim.name == ("sgd" if source == "imagenet1k" else "sgd_agc")
    assert c.optim.base_lr == (0.1 if source == "imagenet1k" else 0.01)
    assert c.schedule.warmup_epochs == {"imagenet1k": 5, "imagenet21k": 2}.get(source, 15)
    if xray:  # unions merge one builder per source
        assert len(c.data.name.split("+")) == source.count("_") + 1
    assert c.results.pretrained_model == f"{source}_bit{model.split('-R')[1]}"
    assert c.is_locked


@pytest.mark.parametrize("target,shots", list(itertools.product(TRANSFER.TARGETS, TRANSFER.SHOTS)))
def test_transfer_grid(target, shots):
    c = TRANSFER.get_config(f"target={target},shots={shots},seed=4,pretrained=BiT-M-R50x1")
    assert c.data.shots == (0 if shots == "full" else int(shots))
    assert (c.optim.name, c.optim.base_lr, c.optim.weight_decay, c.batch_size) == (
        "sgd_agc", 0.001, 0.0, 128)
    assert c.schedule.kind == "hyperrule" and c.seed == 4 and c.zero_head
    if target == "padchest":
        assert c.pp.kind == "xray" and c.data.multilabel_force_classification
    elif TRANSFER.TARGETS[target].get("multilabel_shots") == "per_label":   # multi-label X-ray
        assert c.pp.kind == "xray" and c.data.multilabel_shots == "per_label"
        assert not c.data.multilabel_force_classification
    else:
        size = TRANSFER.TARGETS[target]["size"]
        assert (c.pp.resize, c.pp.crop) == hyperrule.resolution(size)
    # The reference oversamples COVIDx and Flowers, on full data only.
    assert c.data.oversample == (target in ("covidx_cxr2", "flowers") and shots == "full")


def test_demo_stages_build():
    assert DEMO.get_config("stage=pretrain").data.name == "chexpert_v1"
    c = DEMO.get_config("stage=transfer,shots=10,pretrained=/x")
    assert (c.data.name, c.data.shots, c.pp.norm) == ("tuberculosis_cxr", 10, "")


@pytest.mark.parametrize("module,arg,message", [
    (TRANSFER, "target=imagenet", "valid: cifar10, cifar100, pets"),
    (TRANSFER, "shots=3", "valid: 1, 5, 10, 100, 500, full"),
    (TRANSFER, "pretrained=,model=BiT-R51x1", "valid: BiT-S-R50x1"),
    (TRANSFER, "shot=10", "unknown config argument 'shot'; valid: target, shots"),
    (TRANSFER, "seed=one", "seed='one': expected int"),
    (PRETRAIN, "source=chexpert_nih", "valid: imagenet1k"),
    (PRETRAIN, "probe=mnist", "unknown probe target 'mnist'; valid: tuberculosis"),
    (DEMO, "stage=finetune", "valid: pretrain, transfer"),
])
def test_bad_arguments_list_valid_choices(module, arg, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        module.get_config(arg)


def test_locked_config_rejects_typos():
    c = TRANSFER.get_config("target=cifar10")
    with pytest.raises(AttributeError, match='Did you mean "base_lr"'):
        c.optim.base_lrr = 0.1


def test_cli_reports_bad_config_before_heavy_work(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "bit_medical.main", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    proc = run("train", "--config=configs/transfer.py:target=cifar10",
               f"--workdir={tmp_path}", "--config.optim.base_lrr=0.1")
    assert proc.returncode != 0 and "base_lrr" in proc.stderr and "base_lr" in proc.stderr
    proc = run("train", "--config=configs/transfer.py:target=mnist", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "valid: cifar10" in proc.stderr
    proc = run("fit", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "train,eval,export,demo,prepare" in proc.stderr
    proc = run("prepare", "chexpert", "--manual_dir=/nowhere", f"--data_dir={tmp_path}")
    assert proc.returncode != 0 and "chexpert_v1" in proc.stderr
    assert not os.listdir(tmp_path)  # nothing was written


def test_schema_defaults_cover_every_field_the_pipeline_reads():
    c = experiment.base()
    for field in ("name", "data_dir", "train_split", "eval_splits", "valid_ratio", "shots",
                  "oversample", "multilabel_force_classification", "multilabel_shots",
                  "skip_corrupt", "views", "label_set", "builder_config", "shuffle_buffer",
                  "train_dir", "val_dir"):
        assert field in c.data, field


def test_pretrain_probe_targets():
    c = PRETRAIN.get_config("source=chexpert,probe=tuberculosis+cifar10")
    assert sorted(c.probe.targets) == ["cifar10", "tuberculosis"]
    assert c.probe.targets.tuberculosis.name == "tuberculosis_cxr"
