"""configs/pretrain.py reproduces the official pre-training files, transcribed here by hand.

Every row of ``OFFICIAL`` is one file of SLAMPAI/large-scale-pretraining-transfer @fe6232b
``configs/`` (the pre-training ones; ``configs/finetune/`` is transfer), copied from its
``optim:`` block, ``data.image_size`` and first-line ``sbatch -N`` comment. The learning rate is
checked against a port of the reference's ``transfer_learning/lr_scheduler/builder.py``,
evaluated with K = nodes x 4 Horovod workers (JUWELS Booster: 4 GPUs per node).
"""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_medical import train
from input_pipeline import pipeline, xray
from input_pipeline.datasets import chexpert, mimic, nih, padchest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("cfg_pretrain_recipes",
                                               os.path.join(REPO, "configs", "pretrain.py"))
PRETRAIN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(PRETRAIN)

GPUS_PER_NODE = 4
# Files without an sbatch line: the node count every other file's line states.
UNSTATED_NODES = 16

# file, source, model, variant | optim.type, momentum, base_lr, base_batch_size,
# train_local_batch_size, gradient_accumulate, epochs, warmup_epochs, weight_decay,
# lr_scheduler.type | data.image_size | sbatch -N (None: no sbatch line in the file)
OFFICIAL = [
    ("configs/imagenet1k_bit50x1.yaml", "imagenet1k", "BiT-S-R50x1", "paper",
     "SGD", 0.9, 0.1, 256, 32, 1, 90, 5, 0.0001, "step", 224, 16),
    ("configs/imagenet1k_bit152x4.yaml", "imagenet1k", "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.03, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/imagenet1k_bit50x1_optimized.yaml", "imagenet1k", "BiT-S-R50x1", "optimized",
     "SGD_AGC", 0.9, 0.03, 256, 32, 1, 120, 15, 0.0001, "cosine", 224, None),
    ("configs/imagenet1k_bit152x4_optimized.yaml", "imagenet1k", "BiT-S-R152x4", "optimized",
     "SGD_AGC", 0.9, 0.03, 256, 16, 1, 90, 15, 0.0001, "cosine", 224, None),
    ("configs/imagenet21k_bit50x1.yaml", "imagenet21k", "BiT-S-R50x1", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 32, 1, 90, 2, 0.0001, "step", 224, None),
    ("configs/imagenet21k_bit152x4.yaml", "imagenet21k", "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 2, 0.0001, "step", 224, 16),
    ("configs/chexpert_bit50x1.yaml", "chexpert", "BiT-S-R50x1", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/chexpert_bit152x4.yaml", "chexpert", "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/mimic_bit50x1.yaml", "mimic", "BiT-S-R50x1", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/mimic_bit152x4.yaml", "mimic", "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/nih_bit50x1.yaml", "nih", "BiT-S-R50x1", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/nih_bit152x4.yaml", "nih", "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/padchest_bit152x4.yaml", "padchest", "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/chexpert_mimic_bit50x1.yaml", "chexpert_mimic", "BiT-S-R50x1", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/chexpert_mimic_bit152x4.yaml", "chexpert_mimic", "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/chexpert_mimic_nih_bit50x1.yaml", "chexpert_mimic_nih", "BiT-S-R50x1", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/chexpert_mimic_nih_bit152x4.yaml", "chexpert_mimic_nih", "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/chexpert_mimic_nih_padchest_bit50x1.yaml", "chexpert_mimic_nih_padchest",
     "BiT-S-R50x1", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
    ("configs/chexpert_mimic_nih_padchest_bit152x4.yaml", "chexpert_mimic_nih_padchest",
     "BiT-S-R152x4", "paper",
     "SGD_AGC", 0.9, 0.01, 256, 16, 1, 90, 15, 0.0001, "step", 224, 16),
]
# configs/padchest_bit50x1.yaml does not exist: the config follows padchest_bit152x4.yaml.
MISSING = {("padchest", "BiT-S-R50x1"): "configs/padchest_bit152x4.yaml"}


def reference_lr(row, workers, nb_iter_per_epoch, epoch, batch_idx):
    """``adjust_learning_rate`` of lr_scheduler/builder.py at (epoch, batch_idx)."""
    (_, _, _, _, _, _, base_lr, base_batch_size, local_batch, accumulate, epochs, warmup, _,
     kind, _, _) = row
    k = workers
    init_lr = base_lr * local_batch / base_batch_size
    if epoch < warmup:
        e = epoch + float(batch_idx + 1) / nb_iter_per_epoch
        return init_lr * k * accumulate * (1.0 / k * (e * (k - 1) / warmup + 1))
    if kind == "step":
        adj = 1.0 if epoch < 30 else 1e-1 if epoch < 60 else 1e-2 if epoch < 80 else 1e-3
        return init_lr * k * accumulate * adj
    t_cur = (epoch - warmup) + float(batch_idx + 1) / nb_iter_per_epoch
    max_lr = init_lr * k  # min_lr is unset (0) in every file
    return 0.5 * max_lr * (1 + math.cos(math.pi * (t_cur / (epochs - warmup))))


def _config(source, model, variant="paper", extra=""):
    return PRETRAIN.get_config(f"source={source},model={model},variant={variant}{extra}")


def test_every_official_file_has_a_row_and_a_recipe():
    files = {row[0].removeprefix("configs/") for row in OFFICIAL}
    assert files == set(PRETRAIN.RECIPES)
    # The paper's grid: every source with both models, each from its file or the nearest one.
    for source in PRETRAIN.SOURCES:
        for model in ("BiT-S-R50x1", "BiT-S-R152x4"):
            file = PRETRAIN.recipe_file(source, model)
            want = MISSING.get((source, model),
                               f"configs/{source}_bit{model.split('-R')[1]}.yaml")
            assert "configs/" + file == want


@pytest.mark.parametrize("row", OFFICIAL, ids=[row[0] for row in OFFICIAL])
def test_config_follows_the_official_file(row):
    (file, source, model, variant, optim_type, momentum, base_lr, _, local_batch, accumulate,
     epochs, warmup, weight_decay, kind, image_size, nodes) = row
    nodes = UNSTATED_NODES if nodes is None else nodes
    workers = nodes * GPUS_PER_NODE
    c = _config(source, model, variant)

    assert "configs/" + PRETRAIN.recipe_file(source, model, variant) == file
    assert c.optim.name == optim_type.lower()
    assert (c.optim.momentum, c.optim.nesterov) == (momentum, True)  # builder: nesterov=True
    assert c.optim.weight_decay == weight_decay
    assert (c.schedule.kind, c.schedule.epochs, c.schedule.warmup_epochs) == (kind, epochs, warmup)
    assert c.batch_size == local_batch * accumulate * workers
    assert c.batch_split == 1 and c.pp.crop == image_size

    # Our lr at every step of a run with 3 steps per epoch against the reference's.
    nb_iter = 3
    lr_fn, total, _ = train.make_schedule(c, train_size=c.batch_size * nb_iter)
    assert total == epochs * nb_iter
    ours = np.asarray(jax.vmap(lr_fn)(jnp.arange(total)))
    ref = np.array([reference_lr(row, workers, nb_iter, s // nb_iter, s % nb_iter)
                    for s in range(total)])
    after = warmup * nb_iter
    # The effective lr at the end of warm-up (and, for 'step', until epoch 30): base_lr
    # scaled to the official global batch.
    peak = base_lr * local_batch * accumulate * workers / 256
    np.testing.assert_allclose(ours[after - 1], peak, rtol=1e-6)
    if kind == "step":
        np.testing.assert_allclose(ours[after:30 * nb_iter], peak, rtol=1e-6)
    # Warm-up from peak / K included. float32: near the end of a cosine only peak-relative
    # precision is left.
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * peak)


def test_missing_padchest_r50_and_other_models_follow_the_nearest_file():
    want = _config("padchest", "BiT-S-R152x4")
    for model in ("BiT-S-R50x1", "BiT-R14x0.5"):
        c = _config("padchest", model)
        assert (c.optim, c.schedule, c.batch_size) == (want.optim, want.schedule, want.batch_size)
    # Any variant other than R152x4 takes the source's R50x1 recipe.
    assert _config("imagenet1k", "BiT-R26x0.5").optim.name == "sgd"
    assert _config("imagenet1k", "BiT-R26x0.5").batch_size == 2048


def test_batch_override_scales_the_lr_linearly_as_the_reference():
    c = _config("chexpert", "BiT-S-R50x1", extra=",batch=256")
    lr_fn, _, _ = train.make_schedule(c, train_size=256 * 2)
    np.testing.assert_allclose(float(lr_fn(15 * 2)), 0.01, rtol=1e-6)  # base_lr at batch 256


def test_optimized_variant_exists_only_where_a_file_does():
    with pytest.raises(ValueError, match=r"chexpert_bit50x1_optimized.yaml does not exist\); "
                                         r"valid: imagenet1k_bit50x1_optimized.yaml"):
        _config("chexpert", "BiT-S-R50x1", "optimized")
    with pytest.raises(ValueError, match="unknown variant 'best'; valid: paper, optimized"):
        _config("chexpert", "BiT-S-R50x1", "best")
    assert _config("imagenet1k", "BiT-S-R50x1", "optimized").results.pretrained_model == (
        "imagenet1k_bit50x1_optimized")


# What transfer_learning/datasets/builder.py validates each source on: the dataset class call
# of its val_dataset, as (builder, builder split, the reference's file / split it comes from).
REFERENCE_VALIDATION = {
    "chexpert_v1": ("validation", "valid.csv"),              # ChexPert(split="valid")
    "mimic_cxr_jpg": ("validation", "validate"),             # MIMIC(split="validate")
    "nih_chest_xray14": ("test", "test_list.txt"),           # NIH(train=False)
    "padchest": ("validation", "RandomState(42) last 10%"),  # PadChest(train=False)
}


@pytest.mark.parametrize("source", [s for s in PRETRAIN.SOURCES if not s.startswith("imagenet")])
def test_xray_sources_validate_on_the_reference_split(source):
    c = _config(source, "BiT-S-R50x1")
    assert list(c.data.eval_splits) == [pipeline.VALID_SPLIT_NAME] == ["val"]
    assert c.data.valid_ratio == 0.0  # no carve on top of the builders' splits
    names = c.data.name.split("+")
    assert len(names) == source.count("_") + 1  # a union reads every source's split
    for name in names:
        split, origin = REFERENCE_VALIDATION[name]
        assert xray.resolve_split(name, c.data.eval_splits["val"],
                                  ["train", "validation", "test"]) == split
        # The builder's split is made of the reference's file / split.
        if name == "chexpert_v1":
            assert chexpert.CSV_FILES[split] == origin
        elif name == "mimic_cxr_jpg":
            assert mimic.SPLIT_NAMES[origin] == split
        elif name == "nih_chest_xray14":
            assert nih.SPLIT_FILES[split] == origin


def test_padchest_validation_is_the_reference_carve():
    # padchest.py: inds = arange(n); RandomState(42).shuffle(inds); val = inds[int(0.9 n):]
    n = 1001
    inds = np.arange(n)
    np.random.RandomState(42).shuffle(inds)
    train_pos, val_pos = padchest.split_positions(n)
    np.testing.assert_array_equal(val_pos, inds[int(n * 0.9):])
    np.testing.assert_array_equal(train_pos, inds[:int(n * 0.9)])


def test_imagenet_validation_as_the_reference():
    # imagenet1k: val_dir = the ImageNet validation lmdb; imagenet21k: val_dir null,
    # logging.validate false.
    assert dict(_config("imagenet1k", "BiT-S-R50x1").data.eval_splits) == {"val": "validation"}
    c = _config("imagenet21k", "BiT-S-R50x1")
    assert dict(c.data.eval_splits) == {} and not c.data.val_dir
