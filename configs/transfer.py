"""Transfer a pre-trained BiT to a target, with all its training data or k images per class.

    bit-medical train --workdir=runs/tb_10shot_s0 \
      --config=configs/transfer.py:target=tuberculosis,shots=10,seed=0,pretrained=runs/chexpert

Arguments (after the colon, comma-separated):
  target      cifar10 | cifar100 | pets | flowers | covidx_cxr2 | tuberculosis | padchest |
              flowers102 | image_folder (with train_dir=..., val_dir=...)
              beyond the paper, multi-label X-ray targets (all labels, mean AUC):
              padchest_multilabel | chexpert | mimic | nih
  shots       1 | 5 | 10 | 100 | 500 | full                 (default full)
  seed        the paper used 0..4; draws the k-shot subset, the new head, the order and
              augmentation
  pretrained  a released BiT (BiT-M-R50x1, ...), an official .npz, a PyTorch checkpoint of
              the reference code, or the workdir of a `bit-medical train` pre-training run;
              empty: train `model` from scratch
  model       architecture when training from scratch (default BiT-R50x1)
  head_init   reference (default: PyTorch's default init of a new nn.Conv2d head, as the
              paper's finetune.py) | zero (BiT's recipe)
  data_dir    TFDS data_dir holding the prepared datasets
  smoke       true: a few steps on a slice of the data, to check a set-up in seconds

The paper's protocol (SLAMPAI/large-scale-pretraining-transfer, finetune.py and
configs/finetune/*.yaml): SGD + AGC (clipping 0.01), lr 0.001 with batch 128, no weight decay;
the head is always replaced by a new one; BiT-HyperRule warm-up, decays, length and mixup
from the size of the training set actually used (k x classes for a k-shot run, the whole
training set for a full run: 500 steps except full CIFAR, full PadChest and CIFAR-100
500-shot, 10 000 steps with mixup 0.1); the reference's datasets and splits (Flowers trains
on the original test split and is evaluated on train + validation; PadChest classifies
images with exactly one positive label, with the X-ray preprocessing and [-1, 1] inputs).
Each run appends its test metrics to WORKDIR/results.csv, to compare with
`bit_medical.results.load_paper_results()`.

Deliberate deviations (see README, "Reproducing the paper"): `total_steps` and `smoke`
shorten the schedule; released BiT weights are tagged `bit_m_r50x1` etc. in results, not as
the paper's own ImageNet pre-trainings.
"""

from bit_medical import experiment, hyperrule
from bit_medical.models import bit
from input_pipeline import registry


def _target(dataset: str, **protocol) -> dict:
    """A target's settings: its dataset's registry record (builder, the reference's splits,
    classes, full training-set size, original image size, results name, oversampling), then
    the target's own protocol on top."""
    r = registry.DATASETS[dataset]
    target = dict(name=r.builder, train_split=r.train_split, eval_splits={"test": r.eval_split},
                  num_classes=r.num_classes, train_size=r.train_size, size=r.image_size,
                  results=r.results, oversample=r.oversample)
    if r.kind == "xray" and r.multilabel:
        # X-ray preprocessing and [-1, 1] inputs (padchest.yaml), whatever the source.
        target.update(pp="xray", eval_splits={"test": "validation"})
    if r.kind == "image_folder":
        target["eval_splits"] = {}  # evaluates on val_dir, as the split 'val'
    target.update(protocol)
    return target


# target -> its settings (`_target`). Sizes: TFDS catalogue; COVIDx and Tuberculosis as
# ../shared/datasets/FORMATS.md (Tuberculosis: 85% of each folder).
TARGETS = {
    "cifar10": _target("cifar10"),
    "cifar100": _target("cifar100"),
    "pets": _target("oxford_iiit_pet"),
    "flowers": _target("oxford_flowers102"),
    # The standard Flowers-102 protocol (not the paper's): train + validation, test on test.
    "flowers102": _target("oxford_flowers102", train_split="train+validation", eval_splits={"test": "test"},
                          oversample=False, train_size=2_040, results="flowers102"),
    "covidx_cxr2": _target("covidx_cxr2"),
    "tuberculosis": _target("tuberculosis_cxr"),
    # The paper's PadChest transfer classifies images with exactly one positive label
    # (finetune.py --multilabel-force-classification; its accuracies are single-label).
    "padchest": _target("padchest", multilabel_force_classification=True),
    "image_folder": _target("image_folder"),

    # ---- Beyond the paper: multi-label X-ray targets kept multi-label. Trained with the masked
    # sigmoid BCE (NaN = unknown label), evaluated on all labels (mean_auc); few-shot draws give
    # every label >= k positive images (data.multilabel_shots="per_label"); "validation" is the
    # split the reference evaluates each source on (registry eval_split).
    "padchest_multilabel": _target("padchest", multilabel_shots="per_label", num_classes=None,
                                   results="padchest_multilabel"),
    "chexpert": _target("chexpert_v1", multilabel_shots="per_label", num_classes=None),
    "mimic": _target("mimic_cxr_jpg", multilabel_shots="per_label", num_classes=None),
    "nih": _target("nih_chest_xray14", multilabel_shots="per_label", num_classes=None),
}
SHOTS = ("1", "5", "10", "100", "500", "full")


def rule_size(target: str, shots: str) -> int | None:
    """The training-set size BiT-HyperRule sees for (target, shots), as the reference's
    ``len(train_set)``; None where only the data tells (PadChest, image folders, per-label
    multi-label draws)."""
    t = TARGETS[target]
    if shots == "full":
        return t["train_size"]
    return int(shots) * t["num_classes"] if t["num_classes"] else None


def get_config(arg=None):
    args = experiment.parse(arg, target="cifar10", shots="full", seed=0,
                            pretrained="BiT-M-R50x1", model="BiT-R50x1", head_init="reference",
                            data_dir="", train_dir="", val_dir="", smoke=False)
    target = TARGETS[experiment.choice("target", args.target, TARGETS)]
    experiment.choice("shots", args.shots, SHOTS)
    experiment.choice("head_init", args.head_init, bit.HEAD_INITS)
    if not args.pretrained:
        experiment.choice("model", args.model, bit.VARIANTS)

    c = experiment.base()
    c.seed = args.seed
    c.pretrained = args.pretrained
    c.model = "" if args.pretrained else args.model
    c.head_init = args.head_init

    c.data.name = target["name"]
    c.data.train_split = target["train_split"]
    c.data.eval_splits = target["eval_splits"]
    c.data.shots = 0 if args.shots == "full" else int(args.shots)
    # The reference oversamples full-data runs only; few-shot sets are balanced already.
    c.data.oversample = target["oversample"] and c.data.shots == 0
    c.data.multilabel_force_classification = target.get("multilabel_force_classification",
                                                         False)
    c.data.multilabel_shots = target.get("multilabel_shots", c.data.multilabel_shots)
    c.data.data_dir = args.data_dir or None
    c.data.train_dir, c.data.val_dir = args.train_dir, args.val_dir
    if target.get("pp") == "xray":
        # The reference's X-ray datasets normalise to [-1, 1] themselves, whatever the
        # pre-trained model's mean/std (transfer_learning/datasets/padchest.py).
        c.pp.update(kind="xray", resize=224, crop=224, norm="bit")
    else:
        c.pp.resize, c.pp.crop = hyperrule.resolution(target["size"])
        # As the pre-trained model was trained (finetune.py takes the pre-training config's
        # mean/std); from scratch, the schema's default.
        if args.pretrained:
            c.pp.norm = ""
    c.results.dataset = target["results"]

    if args.smoke:
        c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 16
        c.log_every, c.eval_every, c.checkpoint_every = 2, 0, 4
        c.pp.resize, c.pp.crop = 80, 64
        c.data.eval_splits = {k: f"{v}[:32]" for k, v in c.data.eval_splits.items()}
    c.lock()
    return c
