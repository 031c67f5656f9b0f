"""Pre-train a BiT on a natural or chest X-ray source (the paper's upstream runs).

    bit-medical train --workdir=runs/chexpert_mimic_nih_padchest_r50 \
      --config=configs/pretrain.py:source=chexpert_mimic_nih_padchest,model=BiT-S-R50x1

Arguments (after the colon, comma-separated):
  source     imagenet1k | imagenet21k | chexpert | mimic | nih | padchest | chexpert_mimic |
             chexpert_mimic_nih | chexpert_mimic_nih_padchest
  model      BiT-S-R50x1 | BiT-S-R152x4 (the paper's), or any bit_medical variant
  batch      global batch (the lr scales linearly with batch / 256, as the reference's)
  probe      '+'-joined targets for the linear few-shot probe every eval_every steps
             (tuberculosis, covidx_cxr2, cifar10, pets); empty: none
  data_dir   TFDS data_dir; imagenet21k reads an image folder: train_dir=...
  seed
  smoke      true: a few steps on tiny batches

Hyper-parameters of the reference configs: ImageNet-1k: SGD, lr 0.1, 5 warm-up epochs;
ImageNet-21k: SGD + AGC, lr 0.01, 2 warm-up epochs; X-ray: SGD + AGC, lr 0.01, 15 warm-up
epochs, 224 px, multi-label BCE over the (intersected) labels, NaN = unknown; all: momentum
0.9 (Nesterov), weight decay 1e-4, 90 epochs, /10 at epochs 30, 60, 80.
Expected result: the transfer numbers of bit_medical/paper_results for `<source>_bit50x1`.
"""

from bit_medical import experiment
from bit_medical.models import bit

_XRAY = dict(pp=dict(kind="xray", resize=224, crop=224, norm="bit"), optim="sgd_agc",
             base_lr=0.01, warmup_epochs=15, batch=1024)
SOURCES = {
    "imagenet1k": dict(name="imagenet2012", eval_splits={"val": "validation"},
                       pp=dict(kind="inception", resize=256, crop=224, norm="imagenet"),
                       optim="sgd", base_lr=0.1, warmup_epochs=5, batch=2048),
    "imagenet21k": dict(name="image_folder", eval_splits={},
                        pp=dict(kind="inception", resize=256, crop=224, norm="imagenet"),
                        optim="sgd_agc", base_lr=0.01, warmup_epochs=2, batch=2048),
    "chexpert": dict(name="chexpert_v1", **_XRAY),
    "mimic": dict(name="mimic_cxr_jpg", **_XRAY),
    "nih": dict(name="nih_chest_xray14", **_XRAY),
    "padchest": dict(name="padchest", **_XRAY),
    # The reference's 'chexpert_mimic' keeps CheXpert's 13 labels; the larger unions keep
    # the sorted intersection (7 labels).
    "chexpert_mimic": dict(name="chexpert_v1+mimic_cxr_jpg", label_set="chexpert_mimic_13",
                           **_XRAY),
    "chexpert_mimic_nih": dict(name="chexpert_v1+mimic_cxr_jpg+nih_chest_xray14", **_XRAY),
    "chexpert_mimic_nih_padchest": dict(
        name="chexpert_v1+mimic_cxr_jpg+nih_chest_xray14+padchest", **_XRAY),
}
# Probe targets: their splits (bounded, so a probe costs seconds to minutes).
PROBE_TARGETS = {
    "tuberculosis": dict(name="tuberculosis_cxr", train_split="train", test_split="test"),
    "covidx_cxr2": dict(name="covidx_cxr2", train_split="train[:4000]", test_split="test"),
    "cifar10": dict(name="cifar10", train_split="train[:5000]", test_split="test[:2000]"),
    "pets": dict(name="oxford_iiit_pet", train_split="train", test_split="test[:2000]"),
}


def get_config(arg=None):
    args = experiment.parse(arg, source="chexpert", model="BiT-S-R50x1", batch=0, probe="",
                            data_dir="", train_dir="", seed=0, smoke=False)
    source = SOURCES[experiment.choice("source", args.source, SOURCES)]
    experiment.choice("model", args.model, bit.VARIANTS)

    c = experiment.base()
    c.seed = args.seed
    c.model = args.model
    c.batch_size = args.batch or source["batch"]
    c.eval_batch_size = 256
    c.optim.update(name=source["optim"], base_lr=source["base_lr"], weight_decay=1e-4,
                   # Pre-training heads are not the reference's `num_classes` heads of
                   # transfer; every parameter is clipped but the classifier kernel.
                   unclipped=("head/conv2d/kernel",))
    c.schedule.update(kind="step", epochs=90, warmup_epochs=source["warmup_epochs"])
    c.eval_every = 1000
    c.checkpoint_every = 1000

    c.data.name = source["name"]
    c.data.eval_splits = source.get("eval_splits", {"val": "validation"})
    c.data.label_set = source.get("label_set", "intersection")
    c.data.data_dir = args.data_dir or None
    c.data.train_dir = args.train_dir
    c.pp.update(source["pp"])
    for name in filter(None, args.probe.split("+")):
        experiment.choice("probe target", name, PROBE_TARGETS)
        c.probe.targets[name] = PROBE_TARGETS[name]
    c.results.pretrained_model = f"{args.source}_bit{bit.architecture(args.model).tag[1:]}"

    if args.smoke:
        c.total_steps, c.batch_size, c.eval_batch_size = 4, 8, 16
        c.log_every, c.eval_every, c.checkpoint_every = 2, 0, 4
        c.pp.update(resize=72, crop=64)
        c.data.eval_splits = {k: f"{v}[:32]" for k, v in c.data.eval_splits.items()}
    c.lock()
    return c
