"""The demo's two stages, on the synthetic chest X-rays `bit-medical demo` writes and prepares.

    bit-medical demo --workdir=/tmp/bit_demo            # everything below, in order

    bit-medical train --workdir=/tmp/bit_demo/runs/pretrain/demo_chexpert_bit14x0.5 \
      --config=configs/demo.py:stage=pretrain,data_dir=/tmp/bit_demo/tfds
    bit-medical train --workdir=/tmp/bit_demo/runs/tuberculosis_demo/demo_chexpert_bit14x0.5/10_shot/seed_0 \
      --config=configs/demo.py:stage=transfer,data_dir=/tmp/bit_demo/tfds,shots=10,seed=0,pretrained=/tmp/bit_demo/runs/pretrain/demo_chexpert_bit14x0.5
    bit-medical report /tmp/bit_demo/runs

Stage `pretrain`: a small BiT on a synthetic CheXpert (13 labels, multi-label BCE with unknown
labels, the X-ray preprocessing, SGD + AGC), with the linear few-shot probe on the synthetic
Tuberculosis set. Stage `transfer`: BiT-HyperRule fine-tuning on the synthetic Tuberculosis set
with `shots` images per class (or all), from `pretrained` (empty: from scratch), with the
paper's new-head init (`head_init` "reference", the schema default); its steps grow with the
training set (`transfer_steps`). Each CheXpert finding is a figure of its own; tuberculosis is
Lung Lesion's ring among a few other findings' figures (input_pipeline.datasets.synthetic,
style "shapes"), so a model that learnt the figures in pre-training transfers better than one
trained from scratch with few shots. Each stage runs in seconds to a minute on 2 CPU cores.
"""

from bit_medical import experiment

IMAGE_SIZE = 64
# Fine-tuning steps by images per class (then all images): like the BiT-HyperRule, whose schedule
# grows with the training set, scaled down for the CPU.
TRANSFER_STEPS = ((1, 20), (10, 40))
TRANSFER_STEPS_FULL = 100


def transfer_steps(shots: int) -> int:
    """Fine-tuning steps for ``shots`` images per class (0: all of them)."""
    return next((steps for most, steps in TRANSFER_STEPS if 0 < shots <= most), TRANSFER_STEPS_FULL)


def get_config(arg=None):
    args = experiment.parse(arg, stage="pretrain", data_dir="", pretrained="", shots="full",
                            seed=0, model="BiT-R14x0.5", steps=0, probe=True)
    experiment.choice("stage", args.stage, ("pretrain", "transfer"))
    c = experiment.base()
    c.seed = args.seed
    c.data.data_dir = args.data_dir or None
    c.data.builder_config = "full"  # the synthetic images are already small
    c.batch_size = c.eval_batch_size = 32
    c.log_every, c.checkpoint_every = 10, 50

    if args.stage == "pretrain":
        c.model = args.model
        c.data.name = "chexpert_v1"
        c.data.eval_splits = {"val": "validation"}
        c.pp.update(kind="xray", resize=IMAGE_SIZE, crop=IMAGE_SIZE, norm="bit")
        c.optim.update(name="sgd_agc", base_lr=0.8, weight_decay=1e-4)
        c.schedule.update(kind="cosine", epochs=10, warmup_epochs=1)
        c.total_steps = args.steps or 120
        c.eval_every = 60
        if args.probe:
            c.probe.targets = {"tuberculosis": experiment.probe_target(
                "tuberculosis_cxr", "train", "test", data_dir=c.data.data_dir, builder_config="full",
                pp=dict(kind="bit", resize=IMAGE_SIZE, crop=IMAGE_SIZE))}
        c.results.pretrained_model = "demo_chexpert_bit14x0.5"
    else:
        c.pretrained = args.pretrained
        c.model = "" if args.pretrained else args.model
        c.data.name = "tuberculosis_cxr"
        c.data.shots = 0 if args.shots == "full" else int(args.shots)
        c.pp.update(kind="bit", resize=IMAGE_SIZE + IMAGE_SIZE // 8, crop=IMAGE_SIZE,
                    norm="" if args.pretrained else "bit")
        c.optim.base_lr = 0.01
        # The paper's schedule shape (warm-up, three /10 decays), shortened for the CPU.
        c.total_steps = args.steps or transfer_steps(c.data.shots)
        c.eval_every = 0
        c.results.dataset = "tuberculosis_demo"
        if not args.pretrained:
            c.results.pretrained_model = "scratch_bit14x0.5"
    c.lock()
    return c
