"""Transfer a pre-trained BiT to a target, with all its training data or k images per class.

    bit-medical train --workdir=runs/tb_10shot_s0 \
      --config=configs/transfer.py:target=tuberculosis,shots=10,seed=0,pretrained=runs/chexpert

Arguments (after the colon, comma-separated):
  target      cifar10 | cifar100 | pets | flowers | covidx_cxr2 | tuberculosis | padchest |
              image_folder (with train_dir=..., val_dir=...)
              beyond the paper, multi-label X-ray targets (all labels, mean AUC):
              padchest_multilabel | chexpert | mimic | nih
  shots       1 | 5 | 10 | 100 | 500 | full                 (default full)
  seed        the paper used 0..4; draws the k-shot subset, the order and augmentation
  pretrained  a released BiT (BiT-M-R50x1, ...), an official .npz, a PyTorch checkpoint of
              the reference code, or the workdir of a `bit-medical train` pre-training run;
              empty: train `model` from scratch
  model       architecture when training from scratch (default BiT-R50x1)
  rule        paper (500 steps for few-shot, 10000 for full runs; the paper's numbers) |
              bit (the official BiT-HyperRule length by dataset size)
  data_dir    TFDS data_dir holding the prepared datasets
  smoke       true: a few steps on a slice of the data, to check a set-up in seconds

Hyper-parameters as the paper's fine-tuning: SGD + AGC (clipping 0.01), lr 0.001 with batch
128, no weight decay, BiT-HyperRule warm-up, decays and mixup. Each run appends its test
metrics to WORKDIR/results.csv, to compare with `bit_medical.results.load_paper_results()`
(e.g. tuberculosis, 10 shots, from chexpert_bit50x1: the paper's mean test/acc over 5 seeds).
"""

from bit_medical import experiment, hyperrule
from bit_medical.models import bit

# target -> data settings, the original image size (for the BiT-HyperRule resolution), the
# dataset name in the paper's results files.
TARGETS = {
    "cifar10": dict(name="cifar10", size=(32, 32), results="cifar10"),
    "cifar100": dict(name="cifar100", size=(32, 32), results="cifar100"),
    "pets": dict(name="oxford_iiit_pet", size=(500, 375), results="pets"),
    # The reference's flowers split is a custom one (mod_train/mod_test); TFDS's train +
    # validation (2040 images) is the standard full training set.
    "flowers": dict(name="oxford_flowers102", train_split="train+validation", oversample=True,
                    size=(500, 500), results="flowers_oversampling"),
    "covidx_cxr2": dict(name="covidx_cxr2", oversample=True, size=(1024, 1024),
                        results="covidx_cxr2"),
    "tuberculosis": dict(name="tuberculosis_cxr", size=(3000, 3000), results="tuberculosis_full"),
    # The paper's PadChest transfer classifies images with exactly one positive label
    # (finetune.py --multilabel-force-classification; its accuracies are single-label), with
    # the X-ray preprocessing of pre-training.
    "padchest": dict(name="padchest", eval_splits={"test": "validation"},
                     multilabel_force_classification=True, pp="xray", results="padchest"),
    # Evaluates on val_dir, as the split 'val'.
    "image_folder": dict(name="image_folder", eval_splits={}, size=(500, 500),
                         results="image_folder"),

    # ---- Beyond the paper: multi-label X-ray targets kept multi-label. Trained with the masked
    # sigmoid BCE (NaN = unknown label), evaluated on all labels (mean_auc); few-shot draws give
    # every label >= k positive images (data.multilabel_shots="per_label"). X-ray preprocessing
    # as `padchest`; "validation" is the split the reference evaluates each source on (NIH:
    # test_list, MIMIC: validate, CheXpert: valid.csv, PadChest: its held-out part).
    "padchest_multilabel": dict(name="padchest", eval_splits={"test": "validation"},
                                multilabel_shots="per_label", pp="xray",
                                results="padchest_multilabel"),
    "chexpert": dict(name="chexpert_v1", eval_splits={"test": "validation"},
                     multilabel_shots="per_label", pp="xray", results="chexpert"),
    "mimic": dict(name="mimic_cxr_jpg", eval_splits={"test": "validation"},
                  multilabel_shots="per_label", pp="xray", results="mimic"),
    "nih": dict(name="nih_chest_xray14", eval_splits={"test": "validation"},
                multilabel_shots="per_label", pp="xray", results="nih"),
}
SHOTS = ("1", "5", "10", "100", "500", "full")


def get_config(arg=None):
    args = experiment.parse(arg, target="cifar10", shots="full", seed=0,
                            pretrained="BiT-M-R50x1", model="BiT-R50x1", rule="paper",
                            data_dir="", train_dir="", val_dir="", smoke=False)
    target = TARGETS[experiment.choice("target", args.target, TARGETS)]
    experiment.choice("shots", args.shots, SHOTS)
    experiment.choice("rule", args.rule, ("paper", "bit"))
    if not args.pretrained:
        experiment.choice("model", args.model, bit.VARIANTS)

    c = experiment.base()
    c.seed = args.seed
    c.pretrained = args.pretrained
    c.model = "" if args.pretrained else args.model
    c.zero_head = True
    c.schedule.rule = args.rule

    c.data.name = target["name"]
    c.data.train_split = target.get("train_split", "train")
    c.data.eval_splits = target.get("eval_splits", {"test": "test"})
    c.data.shots = 0 if args.shots == "full" else int(args.shots)
    # The reference oversamples full-data runs only; few-shot sets are balanced already.
    c.data.oversample = target.get("oversample", False) and c.data.shots == 0
    c.data.multilabel_force_classification = target.get("multilabel_force_classification",
                                                         False)
    c.data.multilabel_shots = target.get("multilabel_shots", c.data.multilabel_shots)
    c.data.data_dir = args.data_dir or None
    c.data.train_dir, c.data.val_dir = args.train_dir, args.val_dir
    if target.get("pp") == "xray":
        c.pp.update(kind="xray", resize=224, crop=224)
    else:
        c.pp.resize, c.pp.crop = hyperrule.resolution(target["size"])
    c.pp.norm = ""  # as the pre-trained model was trained (bit for released BiT models)
    c.results.dataset = target["results"]

    if args.smoke:
        c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 16
        c.log_every, c.eval_every, c.checkpoint_every = 2, 0, 4
        c.pp.resize, c.pp.crop = 80, 64
        c.data.eval_splits = {k: f"{v}[:32]" for k, v in c.data.eval_splits.items()}
    c.lock()
    return c
