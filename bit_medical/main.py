"""The ``bit-medical`` command (also ``python -m bit_medical.main``).

    bit-medical train   --config=configs/transfer.py:target=cifar10,shots=10 --workdir=DIR
    bit-medical eval    --workdir=DIR [--split=test]
    bit-medical export  --workdir=DIR
    bit-medical demo    --workdir=DIR
    bit-medical prepare NAME --manual_dir=ROOT --data_dir=DATA [--builder_config=512]

``train`` resumes from DIR's latest checkpoint when there is one; ``--config.<field>=value``
overrides any config field (a mistyped field is an error listing the valid ones).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

COMMANDS = ("train", "eval", "export", "demo", "prepare")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file and its arguments: configs/FILE.py:key=value,...",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, logs, results).")
_SPLIT = flags.DEFINE_string("split", None, "eval: the eval split to evaluate (default: all).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "prepare: the dataset's downloaded root.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "prepare: the TFDS data_dir to write to.")
_BUILDER_CONFIG = flags.DEFINE_string("builder_config", "512",
                                      "prepare: stored resolution (512, 224 or full).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "prepare: image worker processes.")
_SKIP_CORRUPT = flags.DEFINE_bool("skip_corrupt", False,
                                  "prepare: skip (and count) unreadable images instead of failing.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-process: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Join a cluster JAX detects by itself (TPU pod, SLURM).")


def _require(flag, command: str):
    if flag.value is None:
        raise app.UsageError(f"`bit-medical {command}` needs --{flag.name}")
    return flag.value


def _train(argv):
    from bit_medical import parallel, train

    config = _require(_CONFIG, "train")
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    auto=_DISTRIBUTED.value)
    final = train.train_and_evaluate(config, _require(_WORKDIR, "train"))
    _print(final)


def _eval(argv):
    from bit_medical import parallel, train

    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    auto=_DISTRIBUTED.value)
    _print(train.evaluate_workdir(_require(_WORKDIR, "eval"), split=_SPLIT.value))


def _export(argv):
    from bit_medical import train

    print(train.export_workdir(_require(_WORKDIR, "export")))


def _demo(argv):
    from bit_medical import demo

    demo.run(_require(_WORKDIR, "demo"))


def _prepare(argv):
    from bit_medical import paths
    from input_pipeline import datasets

    if len(argv) != 1:
        raise app.UsageError(
            f"`bit-medical prepare NAME ...` takes one dataset name: {', '.join(datasets.BUILDERS)}")
    # TFDS would take a leading ~ literally.
    builder = datasets.prepare(argv[0], manual_dir=paths.absolute(_require(_MANUAL_DIR, "prepare")),
                               data_dir=paths.absolute(_require(_DATA_DIR, "prepare")),
                               config=_BUILDER_CONFIG.value, num_workers=_NUM_WORKERS.value,
                               skip_corrupt=_SKIP_CORRUPT.value)
    print(f"Prepared {builder.info.full_name} in {builder.data_dir}: "
          + ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items()))


def _print(result) -> None:
    print(json.dumps(result, indent=2, default=float))


class _QuietLibraries(logging.Filter):
    """Drops the INFO chatter of Orbax and TFDS (kept: their warnings, and all of ours)."""

    NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(
            part in record.pathname for part in self.NOISY)


def _use_compilation_cache() -> None:
    """Keeps compiled programs across runs (a resumed or repeated run starts in seconds)."""
    import jax

    from bit_medical.models import pretrained

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir",
                          os.path.join(pretrained.cache_dir(), "jax_compilation_cache"))


def main(argv):
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_logger().addFilter(_QuietLibraries())
    from bit_medical import parallel

    parallel.tune_xla_cpu()
    _use_compilation_cache()
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"Usage: bit-medical {{{','.join(COMMANDS)}}} [flags]; see --help")
    command, rest = argv[1], argv[2:]
    if command != "prepare" and rest:
        raise app.UsageError(f"Unexpected arguments {rest}")
    {"train": _train, "eval": _eval, "export": _export, "demo": _demo,
     "prepare": _prepare}[command](rest)


def run():
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
