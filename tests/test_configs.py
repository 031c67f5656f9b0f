"""Every config of the paper's grid builds; bad arguments fail early with the valid choices."""

import importlib.util
import itertools
import os
import re

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
    # The optimisation follows the official file: tests/test_pretrain_recipes.py.
    assert c.schedule.kind == "step" and c.seed == 42
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
    assert c.schedule.kind == "hyperrule" and c.seed == 4 and c.head_init == "reference"
    if target == "padchest":
        assert c.pp.kind == "xray" and c.data.multilabel_force_classification
        assert c.pp.norm == "bit"  # [-1, 1] whatever the pre-trained model (padchest.yaml)
    elif TRANSFER.TARGETS[target].get("multilabel_shots") == "per_label":   # multi-label X-ray
        assert c.pp.kind == "xray" and c.data.multilabel_shots == "per_label"
        assert c.pp.norm == "bit"
        assert not c.data.multilabel_force_classification
    else:
        size = TRANSFER.TARGETS[target]["size"]
        assert (c.pp.resize, c.pp.crop) == hyperrule.resolution(size)
        assert c.pp.norm == ""  # as the pre-trained model
    # The reference oversamples COVIDx and Flowers, on full data only.
    assert c.data.oversample == (target in ("covidx_cxr2", "flowers") and shots == "full")


def test_flowers_is_the_papers_split():
    # flowers_oversampling.yaml: train on mod_train (the original test split, 6149 images),
    # evaluate on mod_test (train + validation, 2040 images), oversampling full runs.
    c = TRANSFER.get_config("target=flowers")
    assert (c.data.name, c.data.train_split) == ("oxford_flowers102", "test")
    assert c.data.eval_splits.to_dict() == {"test": "train+validation"} and c.data.oversample
    assert c.results.dataset == "flowers_oversampling"
    standard = TRANSFER.get_config("target=flowers102")
    assert standard.data.train_split == "train+validation" and not standard.data.oversample


def test_head_init_and_scratch_norm():
    assert TRANSFER.get_config("head_init=zero").head_init == "zero"
    with pytest.raises(ValueError, match="unknown head_init 'one'; valid: reference, zero"):
        TRANSFER.get_config("head_init=one")
    scratch = TRANSFER.get_config("pretrained=,model=BiT-R50x1")
    assert scratch.pp.norm == "bit" and scratch.model == "BiT-R50x1"


def test_demo_stages_build():
    assert DEMO.get_config("stage=pretrain").data.name == "chexpert_v1"
    c = DEMO.get_config("stage=transfer,shots=10,pretrained=/x")
    assert (c.data.name, c.data.shots, c.pp.norm) == ("tuberculosis_cxr", 10, "")


def test_demo_transfer_steps_grow_with_the_training_set():
    steps = {shots: DEMO.get_config(f"stage=transfer,shots={shots}").total_steps
             for shots in (1, 2, 10, "full")}
    assert steps == {1: 20, 2: 40, 10: 40, "full": 100}
    assert DEMO.get_config("stage=transfer,shots=1,steps=7").total_steps == 7


def test_demo_runs_are_a_grid_in_the_published_layout():
    from bit_medical import demo, grid

    runs = demo.runs("/r", "/d")
    pre = runs[0]
    assert (pre.name, pre.stage, pre.workdir) == (
        "pretrain/demo_chexpert_bit14x0.5", grid.PRETRAIN, "/r/pretrain/demo_chexpert_bit14x0.5")
    names = {run.name: run for run in runs[1:]}
    assert len(names) == 18 and all(run.stage == grid.TRANSFER for run in runs[1:])
    first = names["tuberculosis_demo/demo_chexpert_bit14x0.5/1_shot/seed_0"]
    last = names["tuberculosis_demo/scratch_bit14x0.5/full_shot/seed_2"]
    assert first.after is pre and last.after is None
    assert first.workdir == "/r/tuberculosis_demo/demo_chexpert_bit14x0.5/1_shot/seed_0"
    config = grid.run_config(first)
    assert (config.pretrained, config.data.shots, config.seed, config.total_steps) == (
        "/r/pretrain/demo_chexpert_bit14x0.5", 1, 0, 20)
    config = grid.run_config(last)
    assert (config.pretrained, config.data.shots, config.seed, config.data.data_dir) == (
        "", 0, 2, "/d")


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
    with pytest.raises(experiment.UserError, match=message.replace("(", r"\(")):
        module.get_config(arg)


def test_locked_config_rejects_typos():
    c = TRANSFER.get_config("target=cifar10")
    with pytest.raises(AttributeError, match='Did you mean "base_lr"'):
        c.optim.base_lrr = 0.1


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
    assert c.probe.targets.tuberculosis.data.name == "tuberculosis_cxr"
    # Each target brings its own preprocessing: an X-ray run probes CIFAR-10 with the BiT eval
    # transform (not the run's pp.kind 'xray'), and an ImageNet run probes X-rays the same way.
    assert c.pp.kind == "xray"
    for target in c.probe.targets.values():
        assert (target.pp.kind, target.pp.crop) == ("bit", 224) and "norm" not in target.pp
    cifar = c.probe.targets.cifar10.data
    assert (cifar.train_split, dict(cifar.eval_splits)) == ("train[:5000]", {"test": "test[:2000]"})
    natural = PRETRAIN.get_config("source=imagenet1k,probe=tuberculosis")
    assert natural.pp.kind == "inception" and natural.probe.targets.tuberculosis.pp.kind == "bit"


@pytest.mark.parametrize("field,text,expected", [
    ("optim.base_lr", "3e-3", 0.003),
    ("optim.base_lr", "1", 1.0),              # an int for a float field
    ("remat", None, True),                    # a bare --config.remat
    ("optim.nesterov", "false", False),
    ("data.views", "PA,AP", ("PA", "AP")),    # a typed None reference
    ("probe.shots", "(1, 5)", (1, 5)),
    ("data.data_dir", "/data/tfds", "/data/tfds"),
    ("data.eval_splits.test", "test[:10]", "test[:10]"),
    ("data.eval_splits", "{'val': 'validation'}", {"val": "validation"}),
])
def test_override_reads_the_field_type(field, text, expected):
    c = TRANSFER.get_config("target=cifar10")
    experiment.override(c, field, text)
    value = c
    for name in field.split("."):
        value = value[name]
    assert (value.to_dict() if hasattr(value, "to_dict") else value) == expected


@pytest.mark.parametrize("field,text,message", [
    ("optim.base_rl", "0.1", ("config.optim has no field 'base_rl' (did you mean 'base_lr'?); "
                              "valid: base_lr, clipping, eps")),
    ("nope.x", "1", "config has no field 'nope'; valid: batch_size, batch_split"),
    ("seed.x", "1", "config.seed is 0, not a group of fields"),
    ("batch_size", "abc", "--config.batch_size='abc': expected int"),
    ("remat", "maybe", "--config.remat='maybe': expected true or false"),
    ("batch_size", None, "--config.batch_size needs a value"),
    ("data.eval_splits", "test", "expected a dict"),
])
def test_override_errors_name_the_valid_choices(field, text, message):
    c = TRANSFER.get_config("target=cifar10")
    with pytest.raises(experiment.UserError, match=re.escape(message)):
        experiment.override(c, field, text)


def test_load_runs_a_config_file_with_its_argument():
    c = experiment.load(os.path.join(REPO, "configs", "transfer.py") + ":target=pets,shots=5")
    assert (c.data.name, c.data.shots) == ("oxford_iiit_pet", 5)
    assert experiment.load(os.path.join(REPO, "configs", "demo.py")).data.name == "chexpert_v1"
    with pytest.raises(experiment.UserError, match="no config file .*; .* holds demo.py, "
                                                   "grid.py, pretrain.py, transfer.py"):
        experiment.load(os.path.join(REPO, "configs", "transfr.py:target=pets"))


@pytest.mark.parametrize("field,value,valid", [
    ("model", "BiT-R51x1", "BiT-S-R50x1"),
    ("head_init", "ones", "reference, zero"),
    ("dtype", "float16", "float32, bfloat16"),
    ("schedule.kind", "linear", "hyperrule, step, cosine"),
    ("optim.name", "adam", "sgd, sgd_agc"),
])
def test_overridden_fields_are_checked_before_any_data_is_read(field, value, valid):
    from bit_medical import train

    c = TRANSFER.get_config("pretrained=,model=BiT-R50x1")
    experiment.override(c, field, value)
    with pytest.raises(experiment.UserError, match=f"unknown {field} '{value}'; valid: {valid}"):
        train.check_config(c)
