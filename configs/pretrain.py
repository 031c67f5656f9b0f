"""Pre-train a BiT on a natural or chest X-ray source (the paper's upstream runs).

    bit-medical train --workdir=runs/chexpert_mimic_nih_padchest_r50 \
      --config=configs/pretrain.py:source=chexpert_mimic_nih_padchest,model=BiT-S-R50x1

Arguments (after the colon, comma-separated):
  source     imagenet1k | imagenet21k | chexpert | mimic | nih | padchest | chexpert_mimic |
             chexpert_mimic_nih | chexpert_mimic_nih_padchest
  model      BiT-S-R50x1 | BiT-S-R152x4 (the paper's), or any bit_medical variant (those follow
             the source's R50x1 recipe)
  variant    paper (default) | optimized: the reference's later
             imagenet1k_bit*_optimized.yaml (imagenet1k only; without its RandAugment)
  batch      global batch; 0: the official one. The lr scales linearly with batch / 256, as
             the reference's
  probe      '+'-joined targets for the linear few-shot probe every eval_every steps
             (tuberculosis, covidx_cxr2, cifar10, pets); empty: none
  data_dir   TFDS data_dir; imagenet21k reads an image folder: train_dir=...
  seed       default 42, the official files' seed
  smoke      true: a few steps on tiny batches

Hyper-parameters: each (source, model) follows the official file named in ``RECIPES``
(SLAMPAI/large-scale-pretraining-transfer ``configs/<source>_bit<model>.yaml``), as its
``pretrain.py`` reads it: Nesterov momentum 0.9, L2 weight decay 1e-4 on every parameter,
optimiser ``SGD`` or ``SGD_AGC`` (clipping 0.01, the head kernel unclipped), and
``lr_scheduler/builder.py``'s lr ``base_lr * train_local_batch_size / base_batch_size * K *
gradient_accumulate`` with K Horovod workers, i.e. ``base_lr * global_batch / 256``: the
formula of `optim.pretrain_schedule`, so ``base_lr`` is the file's; its warm-up starts at
peak / K (``schedule.warmup_start_factor``). K = the nodes of the file's
``sbatch -N`` line x 4 GPUs per JUWELS Booster node (one worker per GPU, as the reference
README's ``horovodrun -np 4``); gradient_accumulate is 1 in every file.

  source, model          file (configs/)            optim    lr    warm-up  local x K = batch
  imagenet1k R50x1       imagenet1k_bit50x1.yaml    SGD      0.1   5        32 x 64 = 2048
  imagenet1k R152x4      imagenet1k_bit152x4.yaml   SGD_AGC  0.03  15       16 x 64 = 1024
  imagenet21k R50x1      imagenet21k_bit50x1.yaml   SGD_AGC  0.01  2        32 x 64 = 2048 (1)
  imagenet21k R152x4     imagenet21k_bit152x4.yaml  SGD_AGC  0.01  2        16 x 64 = 1024
  X-ray <source> R50x1   <source>_bit50x1.yaml      SGD_AGC  0.01  15       16 x 64 = 1024
  X-ray <source> R152x4  <source>_bit152x4.yaml     SGD_AGC  0.01  15       16 x 64 = 1024
  padchest R50x1         padchest_bit152x4.yaml (2) SGD_AGC  0.01  15       16 x 64 = 1024

All: 90 epochs, lr /10 at epochs 30, 60 and 80, 224 px. ``variant=optimized`` follows
imagenet1k_bit{50x1,152x4}_optimized.yaml: SGD_AGC lr 0.03, 15 warm-up epochs, cosine to 0,
120 (R50x1) / 90 (R152x4) epochs, batch as the paper's files (they have no sbatch line).
Data as the files: ImageNet: random-resized crop + flip, eval resize 256 / centre crop 224,
ImageNet mean/std, softmax cross-entropy. X-ray: the torchxrayvision crop/resize to 224, the
``cohen_chexpert_aug`` augmentation, (x - 0.5) / 0.5, BCE over the known (non-NaN) labels:
CheXpert and MIMIC 13, NIH 14, PadChest 27, chexpert_mimic CheXpert's 13, the larger unions
the 7 shared ones; views PA/AP, the five-view list for PadChest and the four-way union.

Validation ("val": the split the reference's ``validate()`` reads each epoch, keeping the
lowest-loss model): CheXpert ``valid.csv``, MIMIC the official ``validate`` split, NIH
``test_list.txt``, PadChest the reference's RandomState(42) 10 % image-level carve (made by
the padchest builder, hence no ``data.valid_ratio``), a union the union of its sources',
ImageNet-1k the validation set; ImageNet-21k none (``validate: false``, ``val_dir: null``).

Deliberate deviations from the official files:
(1) imagenet21k_bit50x1.yaml has no ``sbatch`` line: it takes the 16 nodes every other
    file's line states (the node count fixes the global batch and so the lr).
(2) There is no padchest_bit50x1.yaml: padchest_bit152x4.yaml is the nearest (every other
    source's R50x1 and R152x4 files have the same optim block).
- The ``sbatch`` lines are copies (most name another file's ``--config-file``); 16 nodes is
  what they all state. scripts/juwels_booster.sh is not in the repository: 4 GPUs per node
  is JUWELS Booster's hardware.
- imagenet1k_bit152x4.yaml says ``nb_classes: 10000``; the head here has imagenet2012's 1000.
  The imagenet21k files name BiT-M-R50x1 / BiT-M-R152x4: the same architectures as BiT-S.
- The reference autocasts to float16; here float32 unless ``--config.dtype=bfloat16``. The
  seed (42, the files') seeds a different random stream than PyTorch's.
- The reference validates and checkpoints once per epoch; here every ``eval_every`` steps.
- The ``_optimized`` files' RandAugment(2, 9) is not implemented: ``variant=optimized``
  runs without it.
- ImageNet-21k: the reference reads its 21,842-class TFRecords through DALI; here an image
  folder (``train_dir``) with the same random-resized-crop training pipeline.
Expected result: the transfer numbers of bit_medical/paper_results for ``<source>_bit50x1``
(``results.pretrained_model``; ``_bit152x4`` for R152x4).
"""

import dataclasses

from bit_medical import experiment
from bit_medical.models import bit
from input_pipeline import registry

GPUS_PER_NODE = 4  # JUWELS Booster: 4 A100 per node, one Horovod worker per GPU.


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One official pre-training file's optimisation (its ``optim:`` block and ``sbatch -N``)."""

    optim: str            # optim.type: sgd | sgd_agc
    base_lr: float        # per base_batch_size (256) images
    warmup_epochs: int
    local_batch: int      # optim.train_local_batch_size (gradient_accumulate is 1 everywhere)
    nodes: int            # sbatch -N
    epochs: int = 90
    schedule: str = "step"
    weight_decay: float = 1e-4

    @property
    def workers(self) -> int:
        return self.nodes * GPUS_PER_NODE

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.workers


# One record per official pre-training file (configs/<source>_bit<model>[_optimized].yaml).
RECIPES = {
    "imagenet1k_bit50x1.yaml": Recipe("sgd", 0.1, 5, 32, 16),
    "imagenet1k_bit152x4.yaml": Recipe("sgd_agc", 0.03, 15, 16, 16),
    "imagenet1k_bit50x1_optimized.yaml": Recipe("sgd_agc", 0.03, 15, 32, 16, epochs=120,
                                                schedule="cosine"),
    "imagenet1k_bit152x4_optimized.yaml": Recipe("sgd_agc", 0.03, 15, 16, 16, schedule="cosine"),
    "imagenet21k_bit50x1.yaml": Recipe("sgd_agc", 0.01, 2, 32, 16),
    "imagenet21k_bit152x4.yaml": Recipe("sgd_agc", 0.01, 2, 16, 16),
    "chexpert_bit50x1.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "chexpert_bit152x4.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "mimic_bit50x1.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "mimic_bit152x4.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "nih_bit50x1.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "nih_bit152x4.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "padchest_bit152x4.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "chexpert_mimic_bit50x1.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "chexpert_mimic_bit152x4.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "chexpert_mimic_nih_bit50x1.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "chexpert_mimic_nih_bit152x4.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "chexpert_mimic_nih_padchest_bit50x1.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
    "chexpert_mimic_nih_padchest_bit152x4.yaml": Recipe("sgd_agc", 0.01, 15, 16, 16),
}
# A (source, model) without an official file -> the file it follows.
NEAREST = {"padchest_bit50x1.yaml": "padchest_bit152x4.yaml"}

# Preprocessing by the source's registry kind: the torchxrayvision transform for X-rays, the
# random-resized crop with ImageNet's mean/std for natural images.
_PP = {"xray": dict(kind="xray", resize=224, crop=224, norm="bit"),
       "natural": dict(kind="inception", resize=256, crop=224, norm="imagenet")}
_PP["image_folder"] = _PP["natural"]
# source -> '+'-joined builder names (facts in input_pipeline.registry) and the label set.
SOURCES = {
    "imagenet1k": dict(name="imagenet2012"),
    "imagenet21k": dict(name="image_folder"),
    "chexpert": dict(name="chexpert_v1"),
    "mimic": dict(name="mimic_cxr_jpg"),
    "nih": dict(name="nih_chest_xray14"),
    "padchest": dict(name="padchest"),
    # The reference's 'chexpert_mimic' keeps CheXpert's 13 labels; the larger unions keep
    # the sorted intersection (7 labels).
    "chexpert_mimic": dict(name="chexpert_v1+mimic_cxr_jpg", label_set="chexpert_mimic_13"),
    "chexpert_mimic_nih": dict(name="chexpert_v1+mimic_cxr_jpg+nih_chest_xray14"),
    "chexpert_mimic_nih_padchest": dict(
        name="chexpert_v1+mimic_cxr_jpg+nih_chest_xray14+padchest"),
}


def _eval_splits(builder: str, kind: str) -> dict:
    """Validation: X-ray 'validation' is each builder's reference evaluation split (the
    registry's eval_split), for a union the union of its sources'; an image folder has none."""
    if kind == "image_folder":
        return {}
    return {"val": "validation" if kind == "xray" else registry.DATASETS[builder].eval_split}


# Probe targets: dataset, train split (the k-shot pool), test split; bounded, so a probe costs
# seconds to minutes. Each brings its own preprocessing, whatever the source's: the reference's
# transfer eval transform (finetune.py with augmentation type bit: Resize((crop, crop))) at the
# run's resolution, grey X-rays read as RGB, normalised as the run's model expects.
PROBE_TARGETS = {
    "tuberculosis": ("tuberculosis_cxr", "train", "test"),
    "covidx_cxr2": ("covidx_cxr2", "train[:4000]", "test"),
    "cifar10": ("cifar10", "train[:5000]", "test[:2000]"),
    "pets": ("oxford_iiit_pet", "train", "test[:2000]"),
}
VARIANTS = ("paper", "optimized")


def recipe_file(source: str, model: str, variant: str = "paper") -> str:
    """The official file (source, model, variant) follows; models other than R152x4: R50x1's."""
    tag = "152x4" if bit.architecture(model).tag == "R152x4" else "50x1"
    file = f"{source}_bit{tag}{'' if variant == 'paper' else '_' + variant}.yaml"
    file = NEAREST.get(file, file)
    if file not in RECIPES:  # Every source has a paper recipe: only 'optimized' gets here.
        valid = [f for f in RECIPES if f.endswith(f"_{variant}.yaml")]
        raise ValueError(f"no official {variant} recipe for source={source!r}, model={model!r} "
                         f"({file} does not exist); valid: {', '.join(valid)}")
    return file


def get_config(arg=None):
    args = experiment.parse(arg, source="chexpert", model="BiT-S-R50x1", variant="paper", batch=0,
                            probe="", data_dir="", train_dir="", seed=42, smoke=False)
    source = SOURCES[experiment.choice("source", args.source, SOURCES)]
    experiment.choice("model", args.model, bit.VARIANTS)
    experiment.choice("variant", args.variant, VARIANTS)
    r = RECIPES[recipe_file(args.source, args.model, args.variant)]

    c = experiment.base()
    c.seed = args.seed
    c.model = args.model
    c.batch_size = args.batch or r.global_batch
    # AGC leaves the head kernel unclipped (the schema's default): the reference's SGD_AGC
    # skips the tensors whose first dimension is nb_classes.
    c.optim.update(name=r.optim, base_lr=r.base_lr, weight_decay=r.weight_decay)
    # The reference's warm-up starts at peak / K, K the Horovod workers of the official run.
    c.schedule.update(kind=r.schedule, epochs=r.epochs, warmup_epochs=r.warmup_epochs,
                      warmup_start_factor=1 / r.workers)
    c.eval_every = 1000
    c.checkpoint_every = 1000

    first = source["name"].split("+")[0]
    kind = registry.DATASETS[first].kind
    c.data.name = source["name"]
    c.data.eval_splits = _eval_splits(first, kind)
    # The reference keeps the lowest-validation-loss model (model.pth.tar) and transfers it:
    # WORKDIR/export_best, which `pretrained=WORKDIR` picks. Without validation, the last.
    c.best_split = "val" if "val" in c.data.eval_splits else ""
    if "label_set" in source:
        c.data.label_set = source["label_set"]
    c.data.data_dir = args.data_dir or None
    c.data.train_dir = args.train_dir
    c.pp.update(_PP[kind])
    suffix = "" if args.variant == "paper" else f"_{args.variant}"
    c.results.pretrained_model = (
        f"{args.source}_bit{bit.architecture(args.model).tag[1:]}{suffix}")

    if args.smoke:
        c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 16
        c.log_every, c.eval_every, c.checkpoint_every = 2, 0, 4
        c.pp.update(resize=72, crop=64)
        c.data.eval_splits = {k: f"{v}[:32]" for k, v in c.data.eval_splits.items()}
    for name in filter(None, args.probe.split("+")):
        builder, train_split, test_split = PROBE_TARGETS[experiment.choice("probe target", name, PROBE_TARGETS)]
        c.probe.targets[name] = experiment.probe_target(
            builder, train_split, test_split, data_dir=c.data.data_dir,
            pp=dict(kind="bit", resize=c.pp.crop, crop=c.pp.crop))
    c.lock()
    return c
