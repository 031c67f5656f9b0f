"""The ``bit-medical`` command (also ``python -m bit_medical.main``).

    bit-medical train   --config=configs/transfer.py:target=cifar10,shots=10 --workdir=DIR
    bit-medical eval    --workdir=DIR [--split=test]
    bit-medical export  --workdir=DIR
    bit-medical demo    --workdir=DIR
    bit-medical prepare NAME --manual_dir=ROOT --data_dir=DATA [--builder_config=512]
    bit-medical report  RUNS_ROOT [--out=DIR]  |  bit-medical report --paper [--out=DIR]
    bit-medical grid    local|slurm|tpu --config=configs/grid.py:root=RUNS [--dry_run]

``bit-medical --help`` lists the commands, ``bit-medical COMMAND --help`` the flags of one.
``train`` resumes from DIR's latest checkpoint when there is one; ``--config.FIELD=value``
overrides any config field (``experiment.override``). Input the user can correct (a bad
config field or value, an unknown name, a missing folder, workdir or checkpoint: the
``USER_ERRORS`` below) prints one message naming the valid choices, exit status 2; with
``--verbose`` (or ``BIT_MEDICAL_VERBOSE=1``) its traceback too. Any other error is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up notices (CPU instructions, oneDNN) would open every command's
# output; its warnings stay. Set before anything imports TensorFlow; a user's value wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import traceback  # noqa: E402

from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from bit_medical import experiment  # noqa: E402
from bit_medical.models.convert import CheckpointError  # noqa: E402
from input_pipeline.errors import UserError  # noqa: E402

# What a user fixes by changing the command or the files it names.
USER_ERRORS = (UserError, CheckpointError, FileNotFoundError, NotADirectoryError)
VERBOSE_ENV = "BIT_MEDICAL_VERBOSE"

COMMANDS = {  # name: (what it does, an example)
    "train": ("pre-train on a source or transfer to a target; resumes from the workdir",
              ("bit-medical train --workdir=runs/tb_10shot_s0 --config=configs/transfer.py:"
               "target=tuberculosis,shots=10,pretrained=BiT-M-R50x1")),
    "eval": ("metrics of a run's latest checkpoint on its eval splits",
             "bit-medical eval --workdir=runs/tb_10shot_s0 --split=test"),
    "export": ("write the params-only export of a run's latest checkpoint",
               "bit-medical export --workdir=runs/tb_10shot_s0"),
    "demo": ("the paper's experiment in miniature on synthetic chest X-rays (offline, minutes)",
             "bit-medical demo --workdir=/tmp/bit_demo"),
    "grid": ("run or write the scripts of many runs: the paper's grid (configs/grid.py)",
             ("bit-medical grid slurm --config=configs/grid.py:root=/scratch/runs,"
              "data_dir=/data/tfds --out=jobs --nodes=16 --gpus_per_node=4")),
    "prepare": ("build a chest X-ray dataset (TFDS) from its manual download",
                ("bit-medical prepare chexpert_v1 --manual_dir=/data/CheXpert-v1.0 "
                 "--data_dir=/data/tfds")),
    "report": ("the paper's tables and figures from a runs root, beside the published results",
               "bit-medical report runs --out=runs/report"),
}


def _overrides_help() -> str:
    config = experiment.base()
    fields = ", ".join(f"{k}.*" if isinstance(v, type(config)) else k for k, v in config.items())
    return "\n".join([
        "config overrides:",
        "  --config.FIELD=VALUE  set a field of the config (a mistyped field lists the valid",
        "                        ones), e.g. --config.dtype=bfloat16 --config.optim.base_lr=0.003",
        *textwrap.wrap(f"fields: {fields}", 88, initial_indent="  ", subsequent_indent="    ")])


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one parser per command."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a command's default must not reset a --verbose given before the command.
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=f"show the traceback of errors (also {VERBOSE_ENV}=1)")
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="bit-medical", parents=[common], formatter_class=formatter, allow_abbrev=False,
        description="BiT pre-training and few-shot transfer for natural and chest X-ray images.",
        epilog="examples:\n" + "\n".join(f"  {example}" for _, example in COMMANDS.values())
               + "\n\n`bit-medical COMMAND --help` lists the flags of a command.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    commands = {}
    for name, (summary, example) in COMMANDS.items():
        commands[name] = subparsers.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + ".",
            epilog=f"example:\n  {example}", formatter_class=formatter, allow_abbrev=False,
            parents=[common])

    train = commands["train"]
    train.add_argument("--config", required=True, metavar="FILE.py[:ARGS]",
                       help="experiment config file and its arguments (configs/FILE.py:key=value,"
                            "...; each file's docstring lists its arguments)")
    train.add_argument("--workdir", required=True,
                       help="directory of the run (config, checkpoints, logs, results)")
    train.epilog = f"{_overrides_help()}\n\n{train.epilog}"
    commands["eval"].add_argument("--workdir", required=True, help="directory of the run")
    commands["eval"].add_argument("--split", help="the eval split to evaluate (default: all)")
    for name in ("train", "eval"):
        group = commands[name].add_argument_group("many hosts (start the same command on each)")
        group.add_argument("--coordinator_address", metavar="HOST:PORT",
                           help="address of process 0")
        group.add_argument("--num_processes", type=int, metavar="N", help="number of processes")
        group.add_argument("--process_id", type=int, metavar="I", help="this process's index")
        group.add_argument("--distributed", action="store_true",
                           help="join a cluster JAX detects by itself (TPU pod, SLURM)")
    commands["export"].add_argument("--workdir", required=True, help="directory of the run")
    commands["demo"].add_argument("--workdir", required=True,
                                  help="where the demo writes its data, runs and results")
    grid = commands["grid"]
    grid.add_argument("launcher", choices=("local", "slurm", "tpu"),
                      help="local: run in order here (skips finished runs, resumes unfinished "
                           "ones); slurm: write sbatch job arrays; tpu: write a TPU VM pod script")
    grid.add_argument("--config", required=True, metavar="FILE.py[:ARGS]",
                      help="the grid (configs/grid.py:root=RUNS,...; its docstring lists the "
                           "arguments); --config.FIELD=VALUE overrides a field")
    grid.add_argument("--dry_run", action="store_true", help="print what would start")
    grid.add_argument("--out", default="grid_jobs", help="slurm, tpu: folder of the scripts")
    group = grid.add_argument_group("slurm")
    for flag, default, text in (
            ("nodes", 16, "nodes per pre-training run"), ("gpus_per_node", 4, "GPUs per node"),
            ("transfer_nodes", 1, "nodes per transfer run")):
        group.add_argument(f"--{flag}", type=int, default=default, help=f"{text} ({default})")
    group.add_argument("--per", choices=("gpu", "node"), default="gpu",
                       help="srun starts one process per GPU (default) or per node")
    group.add_argument("--time", default="24:00:00", help="time limit of a pre-training task")
    group.add_argument("--transfer_time", default="04:00:00", help="of a transfer task")
    group.add_argument("--partition", default="", help="SLURM partition")
    group.add_argument("--account", default="", help="SLURM account")
    group.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="another #SBATCH option, e.g. --sbatch=--cpus-per-task=12 (repeatable)")
    group.add_argument("--setup", default="",
                       help="slurm, tpu: shell run before each run, e.g. 'source .venv/bin/activate'")
    group = grid.add_argument_group("tpu")
    group.add_argument("--tpu", help="TPU VM name")
    group.add_argument("--zone", help="its zone")
    group.add_argument("--project", default="", help="its Google Cloud project (default: gcloud's)")
    group.add_argument("--repo", default="bit_medical",
                       help="the clone on the workers, from the home directory (bit_medical)")
    prepare = commands["prepare"]
    prepare.add_argument("name", metavar="NAME",
                         help="chexpert_v1, mimic_cxr_jpg, nih_chest_xray14, padchest, "
                              "covidx_cxr2 or tuberculosis_cxr")
    prepare.add_argument("--manual_dir", required=True, help="the dataset's downloaded root folder")
    prepare.add_argument("--data_dir", required=True, help="the TFDS data_dir to write to")
    prepare.add_argument("--builder_config", default="512",
                         help="stored resolution: 512, 224 or full (default: 512)")
    prepare.add_argument("--num_workers", type=int,
                         help="image decoding threads (default: one per CPU)")
    prepare.add_argument("--skip_corrupt", action="store_true",
                         help="leave out (and count) unreadable images instead of failing")
    report = commands["report"]
    report.add_argument("root", metavar="RUNS_ROOT", nargs="?",
                        help="folder (or gs:// URL) holding the runs' workdirs")
    report.add_argument("--paper", action="store_true",
                        help="report the paper's published results alone (no RUNS_ROOT)")
    report.add_argument("--out", help="where report.md and its figures go (default: "
                                      "RUNS_ROOT/report; with --paper: ./paper_report)")
    return parser, commands


def _split_overrides(extra: list[str], name: str, command: argparse.ArgumentParser
                     ) -> list[tuple[str, str | None]]:
    """``(field, text)`` of each ``--config.FIELD[=VALUE]`` (train only); other leftovers fail."""
    overrides = []
    for arg in extra:
        flag, sep, text = arg.partition("=")
        if name not in ("train", "grid") or not flag.startswith("--config."):
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        overrides.append((flag[len("--config."):], text if sep else None))
    return overrides


# ----------------------------------------------------------------------------- commands


def _initialize_distributed(args) -> None:
    from bit_medical import parallel

    parallel.initialize_distributed(args.coordinator_address, args.num_processes,
                                    args.process_id, auto=args.distributed)


def _train(args, overrides) -> None:
    config = experiment.load(args.config)
    for field, text in overrides:
        experiment.override(config, field, text)
    from bit_medical import train

    _initialize_distributed(args)
    _print(train.train_and_evaluate(config, args.workdir))


def _eval(args, overrides) -> None:
    from bit_medical import train

    _initialize_distributed(args)
    _print(train.evaluate_workdir(args.workdir, split=args.split))


def _export(args, overrides) -> None:
    from bit_medical import train

    print(train.export_workdir(args.workdir))


def _demo(args, overrides) -> None:
    from bit_medical import demo

    demo.run(args.workdir)


def _grid(args, overrides) -> None:
    from bit_medical import grid

    runs = grid.load(args.config, overrides)
    if not runs:
        raise UserError(f"{args.config} selects no runs (the paper has no such cell: grid=full "
                        f"takes every source x model x target x shots x seed)")
    if args.launcher == "local":
        grid.run_local(runs, dry_run=args.dry_run)
        return
    if args.launcher == "slurm":
        files = grid.write_slurm(runs, args.out, grid.Slurm(
            nodes=args.nodes, gpus_per_node=args.gpus_per_node, per=args.per, time=args.time,
            partition=args.partition, account=args.account, transfer_nodes=args.transfer_nodes,
            transfer_time=args.transfer_time, setup=args.setup, options=tuple(args.sbatch)))
        start = f"bash {files[0]}"
    else:
        if not (args.tpu and args.zone):
            raise UserError("grid tpu needs --tpu=NAME and --zone=ZONE")
        files = [grid.write_tpu(runs, args.out, tpu=args.tpu, zone=args.zone,
                                project=args.project, repo=args.repo,
                                **({"setup": args.setup} if args.setup else {}))]
        start = f"bash {files[0]}"
    if args.dry_run:
        for file in files:
            print(f"==> {file}\n{file.read_text()}")
    pre = sum(r.stage == grid.PRETRAIN for r in runs)
    print(f"{len(runs)} runs ({pre} pre-training, {len(runs) - pre} transfer): "
          f"{', '.join(str(f) for f in files)}\nstart with: {start}")


def _prepare(args, overrides) -> None:
    from bit_medical import paths
    from input_pipeline import datasets

    # TFDS would take a leading ~ literally.
    builder = datasets.prepare(args.name, manual_dir=paths.absolute(args.manual_dir),
                               data_dir=paths.absolute(args.data_dir),
                               config=args.builder_config, num_workers=args.num_workers,
                               skip_corrupt=args.skip_corrupt)
    print(f"Prepared {builder.info.full_name} in {builder.data_dir}: "
          + ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items()))


def _report(args, overrides) -> None:
    from bit_medical import report

    if args.paper == bool(args.root):
        raise UserError("give a RUNS_ROOT or --paper (the published results), one of them")
    path = (report.report_paper(args.out or "paper_report") if args.paper
            else report.report_runs(args.root, args.out))
    print(f"Report written to {path}")


RUN = {"train": _train, "eval": _eval, "export": _export, "demo": _demo, "prepare": _prepare,
       "report": _report, "grid": _grid}


def _print(result) -> None:
    print(json.dumps(result, indent=2, default=float))


# ----------------------------------------------------------------------------- set-up


class _QuietLibraries(logging.Filter):
    """Drops the INFO chatter of JAX, Orbax and TFDS (kept: their warnings, and all of ours)."""

    NOISY = tuple(f"{os.sep}{name}{os.sep}" for name in ("jax", "orbax", "tensorflow_datasets"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(
            part in record.pathname for part in self.NOISY)


def _set_up_logging() -> None:
    """absl's log format at INFO, as ``absl.app`` would set it up."""
    flags.FLAGS.mark_as_parsed()  # this command has no absl flags; libraries read defaults
    absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO)
    # On the handler: JAX logs through the standard logging module, not absl's logger.
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with the process's stderr (fd 2) closed.

    Some of its C++ start-up notices (oneDNN on CPUs that have it) are written before its
    logging reads TF_CPP_MIN_LOG_LEVEL, so only this keeps them off every command's output. A
    failed import is left for the module that needs TensorFlow to report, visibly.
    """
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except Exception:  # noqa: BLE001  re-raised, with its output, where it is imported
            pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _use_compilation_cache() -> None:
    """Keeps compiled programs across runs (a resumed or repeated run starts in seconds)."""
    import jax

    from bit_medical.models import pretrained

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir",
                          os.path.join(pretrained.cache_dir(), "jax_compilation_cache"))


def main(argv: list[str] | None = None) -> int:
    """Runs ``bit-medical ARGV``; returns the exit status (2: a usage or user error)."""
    argv = sys.argv[1:] if argv is None else argv
    parser, commands = _parser()
    if not argv:
        parser.print_usage(sys.stderr)
        print(f"commands: {', '.join(COMMANDS)}; `bit-medical --help` says more",
              file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.error(f"a command is needed: {', '.join(COMMANDS)}")
    overrides = _split_overrides(extra, args.command, commands[args.command])
    verbose = getattr(args, "verbose", False) or os.environ.get(VERBOSE_ENV, "") not in ("", "0")

    _set_up_logging()
    if args.command != "report":  # the report reads CSVs only
        _import_tensorflow_quietly()
    if args.command not in ("prepare", "report"):  # JAX is not needed there
        from bit_medical import parallel

        parallel.tune_xla_cpu()
        _use_compilation_cache()
    try:
        RUN[args.command](args, overrides)
    except USER_ERRORS as e:
        if verbose:
            traceback.print_exc()
        print(f"bit-medical {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


def run() -> int:
    """Console-script entry point."""
    return main()


if __name__ == "__main__":
    sys.exit(run())
