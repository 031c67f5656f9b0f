"""The paper's study as one grid: pre-training runs and the transfer runs that start from them.

    bit-medical grid local --config=configs/grid.py:root=runs,data_dir=$TFDS --dry_run
    bit-medical grid slurm --config=configs/grid.py:root=/scratch/runs,data_dir=$TFDS --out=jobs
    bit-medical grid tpu   --config=configs/grid.py:root=gs://BUCKET/runs,data_dir=gs://BUCKET/tfds \
      --tpu=NAME --zone=ZONE --out=jobs

Arguments (after the colon, comma-separated; lists are '+'-joined):
  root        the runs root: pre-training runs in ROOT/pretrain/<source>_bit<model>, transfer
              runs in ROOT/<results name>/<pretrained_model>/<k>_shot/seed_<s>, the layout of
              the published results' ``path`` column (a gs:// URL is fine)
  grid        paper (default): the (target, pre-trained model, shots) cells the paper
              published (bit_medical/paper_results), 289 cells x 5 seeds | full: every source x
              model x target x shots x seed
  sources     filter, e.g. chexpert+nih (default: the 9 of configs/pretrain.py)
  models      filter (default: BiT-S-R50x1+BiT-S-R152x4, the paper's two sizes); any
              bit_medical variant with grid=full
  targets     filter (default: the paper's 7: cifar10, cifar100, pets, flowers, covidx_cxr2,
              tuberculosis, padchest); any target of configs/transfer.py with grid=full
  shots       filter (default: 1+5+10+100+500+full)
  seeds       (default: 0+1+2+3+4, the paper's)
  stages      pretrain+transfer (default) | pretrain | transfer: which runs of the selection
              (e.g. pre-train on a large pod, transfer on a small one)
  imagenet    released (default): imagenet1k and imagenet21k are Google's released BiT-S and
              BiT-M weights (not pre-trained here; their runs are tagged bit_s_r50x1, ...) |
              pretrain: pre-train them too, with configs/pretrain.py's recipes
  data_dir    TFDS data_dir of every run
  train_dir   the ImageNet-21k image folder (imagenet=pretrain only)
  smoke       true: every run is its config's smoke=true (seconds; to check a set-up)

``--config.overrides=dtype=bfloat16,remat=true`` adds ``--config.dtype=bfloat16
--config.remat=true`` to every run.
The runs themselves are built by ``bit_medical.grid.runs``.
"""

import ml_collections

from bit_medical import experiment
from bit_medical import grid as grid_lib
from bit_medical.models import bit

PAPER_MODELS = ("BiT-S-R50x1", "BiT-S-R152x4")
PAPER_SEEDS = (0, 1, 2, 3, 4)
GRIDS = ("paper", "full")
IMAGENET = ("released", "pretrain")


def _pick(name: str, text: str, default, valid) -> tuple:
    """The '+'-joined names of ``text``, each one of ``valid``; ``default`` when empty."""
    if not text:
        return tuple(default)
    return tuple(experiment.choice(name, item, valid) for item in text.split("+"))


def get_config(arg=None):
    args = experiment.parse(arg, root="runs", grid="paper", sources="", models="", targets="",
                            shots="", seeds="", stages="", imagenet="released", data_dir="", train_dir="",
                            smoke=False)
    experiment.choice("grid", args.grid, GRIDS)
    experiment.choice("imagenet", args.imagenet, IMAGENET)
    pretrain = grid_lib.config_module(grid_lib.PRETRAIN_CONFIG)
    transfer = grid_lib.config_module(grid_lib.TRANSFER_CONFIG)

    c = ml_collections.ConfigDict()
    c.root = args.root
    c.grid = args.grid
    c.imagenet = args.imagenet
    c.sources = _pick("source", args.sources, pretrain.SOURCES, pretrain.SOURCES)
    c.models = _pick("model", args.models, PAPER_MODELS, bit.VARIANTS)
    c.targets = _pick("target", args.targets, grid_lib.paper_targets(transfer.TARGETS),
                      transfer.TARGETS)
    c.shots = _pick("shots", args.shots, transfer.SHOTS, transfer.SHOTS)
    try:
        c.seeds = tuple(int(s) for s in args.seeds.split("+")) if args.seeds else PAPER_SEEDS
    except ValueError:
        raise experiment.UserError(f"seeds={args.seeds!r}: expected integers joined by '+', "
                                   f"e.g. 0+1+2") from None
    c.stages = _pick("stage", args.stages, grid_lib.STAGES, grid_lib.STAGES)
    c.data_dir = args.data_dir
    c.train_dir = args.train_dir
    c.smoke = args.smoke
    c.overrides = ()  # "FIELD=VALUE" for every run
    c.lock()
    return c
