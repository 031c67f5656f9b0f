"""Many runs at once: the paper's grid (``configs/grid.py``) and three ways to launch it.

A grid is a list of :class:`Run`: each is one ``bit-medical train`` (a config spec, a workdir,
overrides) and may start from another run's export (``after``, that run). :func:`runs` builds the
paper's grid from a ``configs/grid.py`` config; any other list of runs (the demo's) works with
the same launchers:

- :func:`run_local` runs them in order in this process, skipping finished runs and resuming
  unfinished ones (``train.train_and_evaluate`` resumes from the workdir's checkpoints);
- :func:`write_slurm` writes sbatch job arrays (one for the pre-training runs, one per
  pre-trained model for the transfer runs, each depending on its pre-training task) and
  ``submit.sh``;
- :func:`write_tpu` writes a script starting each run on every worker of a TPU VM pod.

A run is finished when its marker exists: ``results.csv`` for a transfer run (written at its
end), ``export/model.json`` for a pre-training run. Files are read and written through
``etils.epath``, so roots may be ``gs://`` URLs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections
from etils import epath

from bit_medical import experiment, paths, results
from bit_medical.models import bit
from input_pipeline.errors import UserError

REPO = epath.Path(__file__).parent.parent
PRETRAIN_CONFIG = "configs/pretrain.py"
TRANSFER_CONFIG = "configs/transfer.py"
PRETRAIN, TRANSFER = "pretrain", "transfer"
STAGES = (PRETRAIN, TRANSFER)
# The released BiT families standing for a source with imagenet=released.
RELEASED = {"imagenet1k": "BiT-S", "imagenet21k": "BiT-M"}
FINISHED, UNFINISHED, NEW = "finished", "unfinished", "new"
MAX_ARRAY = 1000  # SLURM's default MaxArraySize is 1001 (indices 0..1000)
# Checks a marker through epath (local paths and gs:// alike) in the generated scripts.
_EXISTS = ("python -c 'import sys; from etils import epath; "
           "sys.exit(not epath.Path(sys.argv[1]).exists())'")


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``bit-medical train``: ``config`` is ``FILE.py:ARGS`` (FILE relative to the
    repository root, or absolute), ``overrides`` its ``--config.FIELD=VALUE`` pairs, ``after``
    the run whose export this one starts from (it must finish first)."""

    name: str
    stage: str  # PRETRAIN | TRANSFER: which file marks the run finished
    workdir: str
    config: str
    overrides: tuple[tuple[str, str], ...] = ()
    after: Run | None = None

    @property
    def marker(self) -> epath.Path:
        """The file whose presence says the run finished."""
        name = "results.csv" if self.stage == TRANSFER else "export/model.json"
        return epath.Path(self.workdir) / name

    def train_args(self) -> list[str]:
        """The arguments of ``bit-medical`` for this run (``train ...``)."""
        return ["train", f"--config={self.config}", f"--workdir={self.workdir}",
                *(f"--config.{k}={v}" for k, v in self.overrides)]


def config_module(path: str):
    """The module of a config file (``configs/...py``, relative to the repository root)."""
    file = REPO / path
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: the grid reads the repository's configs/ "
                                f"(install with `pip install -e .` from a clone)")
    spec = importlib.util.spec_from_file_location(f"bit_medical_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def paper_targets(targets: dict[str, dict]) -> tuple[str, ...]:
    """The targets (``configs/transfer.py`` keys) whose results name is in the paper's results."""
    published = {row["dataset"] for row in results.load_paper_results()}
    return tuple(t for t, spec in targets.items() if spec["results"] in published)


def pretrained_model(source: str, model: str, imagenet: str = "released") -> str:
    """The ``pretrained_model`` name of transfers from (source, model): ``<source>_bit<tag>``
    as configs/pretrain.py tags its runs, or a released BiT's own name (``bit_m_r50x1``, as
    ``train.pretrained_model_tag``) for ImageNet with ``imagenet=released``."""
    if imagenet == "released" and source in RELEASED:
        return bit.published_tag(released_name(source, model))
    return f"{source}_bit{bit.architecture(model).tag[1:]}"


def released_name(source: str, model: str) -> str:
    """The released BiT (``BiT-M-R152x4``) standing for (source, model)."""
    name = f"{RELEASED[source]}-{bit.architecture(model).tag}"
    if name not in bit.PUBLISHED:
        raise UserError(f"no released BiT for source={source}, model={model} ({name}); "
                        f"valid models: {', '.join(n for n in bit.PUBLISHED if n.startswith('BiT-S'))}")
    return name


def run_name(dataset: str, pretrained_model: str, shots: str | int, seed: int) -> str:
    """A transfer run's place under the runs root, the published results' ``path`` layout:
    ``<dataset>/<pretrained_model>/<k>_shot|full_shot/seed_<s>``."""
    return f"{dataset}/{pretrained_model}/{_shot(shots)}/seed_{seed}"


def _shot(shots: str | int) -> str:
    return results.shot_name(None if shots == "full" else int(shots))


def _spec(file: str, **args: Any) -> str:
    return f"{file}:" + ",".join(f"{k}={v}" for k, v in args.items() if v != "")


def runs(grid: ml_collections.ConfigDict) -> list[Run]:
    """The runs of a ``configs/grid.py`` config: pre-training runs first, then transfers.

    A pre-training run is in the list only if a selected transfer starts from it (with
    ``grid=full``: every selected source x model); ``grid.stages`` keeps the runs of those
    stages.
    """
    transfer = config_module(TRANSFER_CONFIG)
    root = paths.absolute(grid.root)
    smoke = "true" if grid.smoke else ""
    overrides = tuple(_field_value(item) for item in grid.overrides)
    cells = None
    if grid.grid == "paper":
        cells = {(r["dataset"], r["pretrained_model"], r["shot"])
                 for r in results.load_paper_results()}

    pretrain_runs: dict[tuple[str, str], Run] = {}
    transfer_runs = []
    for source in grid.sources:
        for model in grid.models:
            paper_name = pretrained_model(source, model, "pretrain")
            tag = pretrained_model(source, model, grid.imagenet)
            released = grid.imagenet == "released" and source in RELEASED
            for target in grid.targets:
                dataset = transfer.TARGETS[target]["results"]
                for shots in grid.shots:
                    if cells is not None and (dataset, paper_name, _shot(shots)) not in cells:
                        continue
                    if released:
                        pretrained, after = released_name(source, model), None
                    else:
                        pre = pretrain_runs.get((source, model)) or _pretrain_run(
                            grid, root, source, model, overrides, smoke)
                        pretrain_runs[source, model] = pre
                        pretrained, after = pre.workdir, pre
                    for seed in grid.seeds:
                        name = run_name(dataset, tag, shots, seed)
                        transfer_runs.append(Run(
                            name, TRANSFER, str(epath.Path(root) / name),
                            _spec(TRANSFER_CONFIG, target=target, shots=shots, seed=seed,
                                  pretrained=pretrained, data_dir=grid.data_dir, smoke=smoke),
                            overrides, after))
            if grid.grid == "full" and not released and (source, model) not in pretrain_runs:
                pretrain_runs[source, model] = _pretrain_run(grid, root, source, model, overrides,
                                                             smoke)
    return [run for run in [*pretrain_runs.values(), *transfer_runs] if run.stage in grid.stages]


def _field_value(item: str) -> tuple[str, str]:
    field, sep, value = item.partition("=")
    if not sep:
        raise UserError(f"override {item!r} is not FIELD=VALUE (e.g. dtype=bfloat16)")
    return field.strip(), value.strip()


def _pretrain_run(grid, root: str, source: str, model: str, overrides, smoke: str) -> Run:
    name = f"pretrain/{pretrained_model(source, model, 'pretrain')}"
    return Run(name, PRETRAIN, str(epath.Path(root) / name),
               _spec(PRETRAIN_CONFIG, source=source, model=model, data_dir=grid.data_dir,
                     train_dir=grid.train_dir if source == "imagenet21k" else "",
                     smoke=smoke),
               overrides)


def load(spec: str, overrides: Iterable[tuple[str, str | None]] = ()) -> list[Run]:
    """The runs of a grid config spec (``configs/grid.py:ARGS``) with ``--config.FIELD``
    overrides of the grid config."""
    config = experiment.load(spec)
    for field, text in overrides:
        experiment.override(config, field, text)
    return runs(config)


# ----------------------------------------------------------------------------- state


def status(run: Run) -> str:
    """``finished`` (its marker exists), ``unfinished`` (a checkpoint, no marker) or ``new``."""
    if run.marker.exists():
        return FINISHED
    checkpoints = epath.Path(run.workdir) / "checkpoints"
    if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return UNFINISHED
    return NEW


def run_config(run: Run) -> ml_collections.ConfigDict:
    """The experiment config of ``run`` (its file loaded, overrides applied)."""
    file, colon, arg = run.config.partition(":")
    config = experiment.load(f"{REPO / file}{colon}{arg}")  # an absolute FILE stays as is
    for field, text in run.overrides:
        experiment.override(config, field, text)
    return config


# ----------------------------------------------------------------------------- local


def run_local(grid_runs: Sequence[Run], *, dry_run: bool = False,
              train_fn: Callable[[ml_collections.ConfigDict, str], dict] | None = None,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs ``grid_runs`` in order in this process; returns ``{name: outcome}``.

    A finished run is skipped (outcome ``"finished"``); any other is started, or resumed from
    its latest checkpoint by the trainer, and its outcome is ``train_fn``'s result
    (``train.train_and_evaluate``: the final metrics). In-process rather than one process per
    run: JAX, TensorFlow and the compiled train steps are set up once for the thousands of
    transfer runs, which share their shapes. A run whose ``after`` is not finished is not
    started (outcome ``"waiting for NAME"``): its export would be a partial one. A preempted
    run (SIGTERM) stops the loop: the same call later resumes it. ``dry_run`` prints what
    would start and starts nothing.
    """
    if train_fn is None and not dry_run:
        from bit_medical import train

        train_fn = train.train_and_evaluate
    outcomes: dict[str, Any] = {}
    for i, run in enumerate(grid_runs):
        state = status(run)
        if state == FINISHED:
            outcomes[run.name] = FINISHED
            continue
        if run.after and status(run.after) != FINISHED and not dry_run:
            outcomes[run.name] = f"waiting for {run.after.name}"
            continue
        config = run_config(run)  # also in a dry run: a config error shows before any start
        verb = "resume" if state == UNFINISHED else "start"
        echo(f"[{i + 1}/{len(grid_runs)}] {verb} {run.name}: bit-medical "
             + " ".join(shlex.quote(a) for a in run.train_args()))
        if dry_run:
            outcomes[run.name] = verb
            continue
        outcome = train_fn(config, run.workdir)
        outcomes[run.name] = outcome
        if "preempted" in outcome:
            logging.warning("%s preempted at step %d: stopping the grid; run it again to resume",
                            run.name, outcome["preempted"])
            break
    return outcomes


# ----------------------------------------------------------------------------- slurm


def _groups(grid_runs: Sequence[Run]) -> list[tuple[str, str, list[Run]]]:
    """(job name, the pre-training run its runs start from or "", runs): the pre-training
    runs, then the transfer runs of each pre-training run (then those from released
    weights), in arrays of at most ``MAX_ARRAY`` runs."""
    by_after: dict[tuple[str, str], list[Run]] = {}
    for run in grid_runs:
        key = ("", "") if run.stage == PRETRAIN else (TRANSFER, run.after.name if run.after else "")
        by_after.setdefault(key, []).append(run)
    groups = []
    for (stage, after), group in sorted(by_after.items(), key=lambda kv: kv[0] != ("", "")):
        name = ("pretrain" if not stage else
                f"transfer_{after.split('/')[-1]}" if after else "transfer_released")
        chunks = [group[i:i + MAX_ARRAY] for i in range(0, len(group), MAX_ARRAY)]
        groups += [(name if len(chunks) == 1 else f"{name}_{k}", after, chunk)
                   for k, chunk in enumerate(chunks)]
    return groups


@dataclasses.dataclass(frozen=True)
class Slurm:
    """What each job asks SLURM for. ``per``: one process per ``gpu`` (JAX picks the GPU of
    ``SLURM_LOCALID``) or per ``node`` (all the node's GPUs; joined with the explicit
    ``--coordinator_address``, since JAX's SLURM detection would give it GPU 0 only)."""

    nodes: int = 1
    gpus_per_node: int = 4
    per: str = "gpu"
    time: str = "24:00:00"
    partition: str = ""
    account: str = ""
    transfer_nodes: int = 1
    transfer_time: str = "04:00:00"
    setup: str = ""           # shell lines before the run, e.g. `source .venv/bin/activate`
    options: tuple[str, ...] = ()  # more #SBATCH options, e.g. ("--cpus-per-task=12", "--mem=0")
    signal_seconds: int = 300  # SIGTERM this long before the time limit: save, then requeue


def _sbatch(name: str, group: list[Run], slurm: Slurm, nodes: int, time: str, repo: str,
            logs: epath.Path) -> str:
    tasks = slurm.gpus_per_node if slurm.per == "gpu" else 1
    lines = ["#!/bin/bash", f"#SBATCH --job-name=bitm_{name}",
             f"#SBATCH --array=0-{len(group) - 1}", f"#SBATCH --nodes={nodes}",
             f"#SBATCH --ntasks-per-node={tasks}", f"#SBATCH --gpus-per-node={slurm.gpus_per_node}",
             f"#SBATCH --time={time}"]
    lines += [f"#SBATCH --partition={slurm.partition}"] * bool(slurm.partition)
    lines += [f"#SBATCH --account={slurm.account}"] * bool(slurm.account)
    lines += [f"#SBATCH {option}" for option in slurm.options]
    lines += [
        # Requeued after preemption (or by the check below after a time-out), the task runs
        # the same command, which resumes from the workdir's checkpoints.
        "#SBATCH --requeue",
        # SIGTERM to every task before the time limit: the trainer saves and exits.
        f"#SBATCH --signal=TERM@{slurm.signal_seconds}",
        f"#SBATCH --output={logs}/%x_%A_%a.out", "#SBATCH --open-mode=append",
        "set -euo pipefail", f"cd {shlex.quote(repo)}", *filter(None, slurm.setup.splitlines()),
        f"finished() {{ {_EXISTS} \"$1\"; }}",
        'case "$SLURM_ARRAY_TASK_ID" in']
    for i, run in enumerate(group):
        command = " ".join(shlex.quote(a) for a in ["bit-medical", *run.train_args()])
        after = shlex.quote(str(run.after.marker)) if run.after else "''"
        lines.append(f"  {i}) RUN={shlex.quote(run.name)}; MARKER={shlex.quote(str(run.marker))}; "
                     f"AFTER={after}; CMD=({command}) ;;")
    lines += ['  *) echo "no run $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac",
              'if finished "$MARKER"; then echo "$RUN: finished already"; exit 0; fi',
              # Without the dependency (e.g. stages=transfer), never from a partial pre-training.
              'if [ -n "$AFTER" ] && ! finished "$AFTER"; then',
              '  echo "$RUN: $AFTER is missing: its pre-training has not finished" >&2; exit 1', "fi"]
    if slurm.per == "gpu":
        lines.append('srun "${CMD[@]}" --distributed')
    else:
        lines += [
            # sed reads all the names: `head` could end scontrol with SIGPIPE (pipefail).
            'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
            "PORT=$((SLURM_JOB_ID % 4096 + 61440))",
            # Without SLURM_LOCALID JAX does not bind each process to one GPU.
            'srun bash -c \'exec env -u SLURM_LOCALID "$@" --process_id=$SLURM_PROCID\' _ '
            '"${CMD[@]}" --coordinator_address="$HEAD:$PORT" --num_processes="$SLURM_NNODES"']
    lines += ['if ! finished "$MARKER"; then',
              '  echo "$RUN: not finished (preempted or out of time): requeueing"',
              '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"', "fi"]
    return "\n".join(lines) + "\n"


def write_slurm(grid_runs: Sequence[Run], out: str, slurm: Slurm = Slurm(),
                repo: str | None = None) -> list[epath.Path]:
    """Writes ``OUT/<job>.sbatch`` per job array and ``OUT/submit.sh`` submitting them in
    order (``sbatch --dependency=afterok:<pre-training job>_<task>``); returns their paths.

    ``repo``: the clone the jobs run from (default: this one).
    """
    if slurm.per not in ("gpu", "node"):
        raise UserError(f"unknown per {slurm.per!r}; valid: gpu, node")
    out_dir = paths.path(out)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    repo = repo or str(REPO)
    task_of = {}  # pre-training run name -> (its job's variable, its array index)
    submit = ["#!/bin/bash", "# Submits the grid's job arrays; transfers wait for their "
              "pre-training task.", "set -euo pipefail", f"cd {shlex.quote(str(out_dir))}"]
    written = []
    for name, after, group in _groups(grid_runs):
        pre = name.startswith("pretrain")
        file = out_dir / f"{name}.sbatch"
        file.write_text(_sbatch(name, group, slurm, slurm.nodes if pre else slurm.transfer_nodes,
                                slurm.time if pre else slurm.transfer_time, repo,
                                out_dir / "logs"))
        written.append(file)
        if pre:
            job = f"PRETRAIN{len(task_of) // MAX_ARRAY}"
            task_of.update({r.name: (job, i) for i, r in enumerate(group)})
            submit.append(f"{job}=$(sbatch --parsable {file.name})")
        elif after in task_of:
            job, task = task_of[after]
            submit.append(f"sbatch --dependency=afterok:${{{job}}}_{task} {file.name}")
        else:
            submit.append(f"sbatch {file.name}")
    script = out_dir / "submit.sh"
    script.write_text("\n".join(submit) + "\n")
    return [script, *written]


# ----------------------------------------------------------------------------- TPU VM


def write_tpu(grid_runs: Sequence[Run], out: str, *, tpu: str, zone: str, project: str = "",
              repo: str = "bit_medical", setup: str = "source .venv/bin/activate"
              ) -> epath.Path:
    """Writes ``OUT/run_tpu.sh``: each run in turn on every worker of the TPU VM ``tpu``
    (``gcloud compute tpus tpu-vm ssh --worker=all``), skipping finished runs; it stops at
    the first run that did not finish (preempted, failed), and running it again resumes.

    ``repo``: the clone on the workers (relative to the home directory); ``setup``: shell run
    there first.
    """
    out_dir = paths.path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/bash", "# Runs the grid on every worker of a TPU VM pod, one run after "
             "another; run it again to resume.", "set -euo pipefail",
             f"TPU={shlex.quote(tpu)}", f"ZONE={shlex.quote(zone)}",
             "on_all_workers() {",
             '  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE"'
             + (f" --project={shlex.quote(project)}" if project else "")
             + ' --worker=all --command="$1"', "}"]
    prefix = " && ".join(filter(None, [f"cd {shlex.quote(repo)}", setup]))
    for run in grid_runs:
        marker = shlex.quote(str(run.marker))
        train = " ".join(shlex.quote(a) for a in ["bit-medical", *run.train_args(), "--distributed"])
        if run.after:  # never from a partial pre-training
            train = f"{_EXISTS} {shlex.quote(str(run.after.marker))} && {train}"
        # Every worker checks the marker (the same file) so all of them skip or all train;
        # the final check fails the ssh, and the script, when the run did not finish.
        command = f"{prefix} && ({_EXISTS} {marker} || ({train})) && {_EXISTS} {marker}"
        lines += [f"echo {shlex.quote('== ' + run.name)}", f"on_all_workers {shlex.quote(command)}"]
    script = out_dir / "run_tpu.sh"
    script.write_text("\n".join(lines) + "\n")
    return script
