"""The grid: the paper's runs and their configs, the generated SLURM/TPU scripts (checked with
``bash -n`` and executed against fake ``srun``/``sbatch``/``scontrol``/``gcloud``), and the local
launcher skipping finished and resuming unfinished tiny runs."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from bit_medical import grid, results
from input_pipeline.errors import UserError

GRID = os.path.join(str(grid.REPO), "configs", "grid.py")


def load(args: str, **overrides):
    return grid.load(f"{GRID}:{args}", overrides.items())


def published_runs() -> set[str]:
    """The published results' run paths without their 'finetuning_results/' root."""
    return {r["path"].split("/", 1)[1] for r in results.load_paper_results()}


# ----------------------------------------------------------------------------- the grid


def test_paper_grid_is_the_published_runs_and_every_config_builds():
    runs = load("root=/runs,imagenet=pretrain,data_dir=/tfds")
    transfers = [r for r in runs if r.stage == grid.TRANSFER]
    pretrains = {r.name: r for r in runs if r.stage == grid.PRETRAIN}
    # Every published run; the grid adds the 5 seeds the paper lacks in 5 cells (all seeds 0-4).
    names = {r.name for r in transfers}
    assert len(names) == len(transfers)
    assert names >= published_runs()
    assert sorted(names - published_runs()) == [
        "padchest/chexpert_mimic_bit50x1/10_shot/seed_4", "pets/imagenet1k_bit50x1/10_shot/seed_4",
        "pets/imagenet1k_bit50x1/1_shot/seed_4", "pets/imagenet1k_bit50x1/5_shot/seed_4",
        "pets/imagenet1k_bit50x1/full_shot/seed_4"]
    # The 15 source x model pairs of the published results, pre-trained first.
    assert len(pretrains) == 15 and runs[:15] == list(pretrains.values())
    assert {f"pretrain/{r['pretrained_model']}" for r in results.load_paper_results()} == set(pretrains)

    for run in runs:  # every config builds, with the run's cell in it
        config = grid.run_config(run)
        parts = run.name.split("/")
        assert run.workdir == "/runs/" + run.name
        assert config.data.data_dir == "/tfds"
        if run.stage == grid.PRETRAIN:
            assert config.results.pretrained_model == parts[1]
            continue
        dataset, model, shot, seed = parts
        assert config.results.dataset == dataset
        assert results.shot_name(config.data.shots or None) == shot
        assert f"seed_{config.seed}" == seed
        assert config.pretrained == pretrains[f"pretrain/{model}"].workdir
        assert run.after == pretrains[f"pretrain/{model}"]


def test_released_imagenet_weights_are_not_pre_trained():
    runs = load("root=/runs,targets=pets,shots=1,seeds=0")
    assert [(r.name, grid.run_config(r).pretrained) for r in runs] == [
        ("pets/bit_s_r50x1/1_shot/seed_0", "BiT-S-R50x1"),
        ("pets/bit_s_r152x4/1_shot/seed_0", "BiT-S-R152x4"),
        ("pets/bit_m_r50x1/1_shot/seed_0", "BiT-M-R50x1"),
        ("pets/bit_m_r152x4/1_shot/seed_0", "BiT-M-R152x4")]
    assert all(not r.after for r in runs)
    # The default paper grid: 11 pre-trainings (15 pairs less the 4 ImageNet ones).
    assert sum(r.stage == grid.PRETRAIN for r in load("root=/runs")) == 11


def test_filters_full_grid_and_overrides():
    runs = load("root=/r,grid=full,sources=nih,models=BiT-S-R50x1,targets=cifar10+padchest,"
                "shots=1+full,seeds=3", overrides="dtype=bfloat16,remat=true")
    assert [r.name for r in runs] == [
        "pretrain/nih_bit50x1", "cifar10/nih_bit50x1/1_shot/seed_3",
        "cifar10/nih_bit50x1/full_shot/seed_3", "padchest/nih_bit50x1/1_shot/seed_3",
        "padchest/nih_bit50x1/full_shot/seed_3"]  # none of them is in the paper
    config = grid.run_config(runs[1])
    assert (config.dtype, config.remat, config.data.shots) == ("bfloat16", True, 1)
    assert load("root=/r,sources=nih,models=BiT-S-R50x1") == []  # nih R50x1: not published
    only = load("root=/r,grid=full,sources=nih,models=BiT-S-R50x1,targets=cifar10+padchest,"
                "shots=1+full,seeds=3,stages=transfer")
    assert [r.name for r in only] == [r.name for r in runs[1:]]
    assert [r.after.name for r in only] == ["pretrain/nih_bit50x1"] * 4


@pytest.mark.parametrize("args, message", [
    ("targets=cifar1", "unknown target 'cifar1'; valid: cifar10"),
    ("sources=chexpert+imagenet", "unknown source 'imagenet'; valid: imagenet1k"),
    ("seeds=a", "seeds='a': expected integers"),
    ("grid=all", "unknown grid 'all'; valid: paper, full"),
])
def test_grid_arguments_name_the_valid_choices(args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load(args)


# ----------------------------------------------------------------------------- scripts

_CASE = re.compile(r"^  (\d+)\) RUN=(.*?); MARKER=(.*?); AFTER=(.*?); CMD=\((.*)\) ;;$", re.M)


def parse_sbatch(text: str) -> tuple[dict[str, str], dict[int, list[str]]]:
    """(#SBATCH options, {array index: command argv})."""
    options = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, re.M))
    return options, {int(i): shlex.split(cmd) for i, _, _, _, cmd in _CASE.findall(text)}


def fake_bin(tmp_path, **scripts) -> dict:
    """A PATH with executables NAME -> python source (first, so they shadow real ones)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, source in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}


# Records its argv and SLURM_LOCALID; with FAKE_FINISH=1 writes the run's marker.
FAKE_TRAIN = """import json, os, sys
args = sys.argv[1:]
with open(os.environ["LOG"], "a") as f:
    f.write(json.dumps({"argv": args, "localid": os.environ.get("SLURM_LOCALID")}) + "\\n")
if os.environ.get("FAKE_FINISH"):
    workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
    marker = os.path.join(workdir, "results.csv" if "transfer.py" in args[1] else "export/model.json")
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()
"""
FAKE_SRUN = """import os, subprocess, sys
# One task of the step: process 0 on local GPU 0.
sys.exit(subprocess.call(sys.argv[1:], env={**os.environ, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}))
"""
FAKE_SCONTROL = """import os, sys
if sys.argv[1:3] == ["show", "hostnames"]:
    print("node7\\nnode8")
else:
    open(os.environ["LOG"] + ".scontrol", "a").write(" ".join(sys.argv[1:]) + "\\n")
"""
FAKE_SBATCH = """import os, sys
log = os.environ["LOG"]
n = sum(1 for _ in open(log)) if os.path.exists(log) else 0
open(log, "a").write(" ".join(sys.argv[1:]) + "\\n")
print(4200 + n)
"""


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def test_slurm_scripts_submit_transfers_after_their_pre_training(tmp_path):
    runs = load("root=/runs,data_dir=/tfds")
    files = grid.write_slurm(runs, str(tmp_path / "jobs"), grid.Slurm(
        nodes=16, gpus_per_node=4, partition="booster", account="proj", time="12:00:00",
        options=("--cpus-per-task=12",)))
    for file in files:
        subprocess.run(["bash", "-n", str(file)], check=True)
    sbatch = {f.name: parse_sbatch(f.read_text()) for f in files if f.suffix == ".sbatch"}
    options, pretrain = sbatch["pretrain.sbatch"]
    assert options == {"job-name": "bitm_pretrain", "array": "0-10", "nodes": "16",
                       "ntasks-per-node": "4", "gpus-per-node": "4", "time": "12:00:00",
                       "partition": "booster", "account": "proj", "cpus-per-task": "12", "requeue": "",
                       "signal": "TERM@300", "output": f"{tmp_path}/jobs/logs/%x_%A_%a.out",
                       "open-mode": "append"}
    # Every run exactly once, with its command.
    commands = [cmd for _, cases in sbatch.values() for cmd in cases.values()]
    assert sorted(cmd[3] for cmd in commands) == sorted(f"--workdir={r.workdir}" for r in runs)
    assert sorted(commands) == sorted(["bit-medical", *r.train_args()] for r in runs)

    env = fake_bin(tmp_path, sbatch=FAKE_SBATCH)
    log = tmp_path / "sbatch.log"
    subprocess.run(["bash", str(files[0])], env={**env, "LOG": str(log)}, check=True)
    submitted = log.read_text().splitlines()
    assert submitted[0] == "--parsable pretrain.sbatch"
    assert "transfer_released.sbatch" in submitted  # released weights wait for nothing
    dependent = [line.split() for line in submitted if line.startswith("--dependency")]
    assert len(dependent) == 11 and len(submitted) == 13
    for dependency, name in dependent:
        task = int(re.fullmatch(r"--dependency=afterok:4200_(\d+)", dependency).group(1))
        pre_workdir = pretrain[task][3].split("=", 1)[1]
        transfers = sbatch[name][1].values()
        assert transfers and all(f"pretrained={pre_workdir}," in cmd[2] for cmd in transfers)


@pytest.mark.parametrize("per", ["gpu", "node"])
def test_slurm_task_runs_once_and_requeues_until_finished(tmp_path, per):
    root = tmp_path / "runs"
    runs = load(f"root={root},targets=tuberculosis,shots=10,seeds=0+1,sources=chexpert,"
                "models=BiT-S-R50x1")
    files = grid.write_slurm(runs, str(tmp_path / "jobs"), grid.Slurm(per=per, nodes=2))
    pretrain = next(f for f in files if f.name == "pretrain.sbatch")
    assert parse_sbatch(pretrain.read_text())[0]["ntasks-per-node"] == ("4" if per == "gpu" else "1")
    log = tmp_path / "train.log"
    env = {**fake_bin(tmp_path, bit_medical=FAKE_TRAIN, srun=FAKE_SRUN, scontrol=FAKE_SCONTROL),
           "LOG": str(log), "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "77",
           "SLURM_JOB_ID": "78", "SLURM_JOB_NODELIST": "node[7-8]", "SLURM_NNODES": "2"}

    def task(**extra):
        subprocess.run(["bash", str(pretrain)], env={**env, **extra}, check=True)

    task()  # preempted (no marker at the end): the task requeues itself
    (call,) = read_log(log)
    expected = ["train", f"--config={runs[0].config}", f"--workdir={runs[0].workdir}"]
    if per == "gpu":  # JAX's SLURM detection binds GPU SLURM_LOCALID to each process
        assert call == {"argv": [*expected, "--distributed"], "localid": "0"}
    else:  # one process per node, every GPU: explicit addresses, no SLURM_LOCALID
        assert call == {"argv": [*expected, f"--coordinator_address=node7:{78 % 4096 + 61440}",
                                 "--num_processes=2", "--process_id=0"], "localid": None}
    assert (tmp_path / "train.log.scontrol").read_text() == "requeue 77_0\n"
    task(FAKE_FINISH="1")  # the requeued task finishes: no further requeue
    assert len(read_log(log)) == 2
    assert (tmp_path / "train.log.scontrol").read_text() == "requeue 77_0\n"
    task()  # a finished run is not started again
    assert len(read_log(log)) == 2

    # A transfer task never starts from a pre-training that did not finish (its export
    # would be partial), even without the dependency (stages=transfer).
    transfer = next(f for f in files if f.name == "transfer_chexpert_bit50x1.sbatch")
    runs[0].marker.unlink()
    waiting = subprocess.run(["bash", str(transfer)], env=env, capture_output=True, text=True)
    assert waiting.returncode == 1 and "has not finished" in waiting.stderr
    assert len(read_log(log)) == 2


FAKE_GCLOUD = """import os, subprocess, sys
args = sys.argv[1:]
open(os.environ["LOG"] + ".gcloud", "a").write(" ".join(a for a in args if not a.startswith("--command")) + "\\n")
command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
sys.exit(subprocess.call(["bash", "-c", command]))
"""


def test_tpu_script_runs_each_run_on_all_workers_and_skips_finished(tmp_path):
    root = tmp_path / "runs"
    runs = load(f"root={root},targets=tuberculosis,shots=10,seeds=0+1,sources=chexpert,"
                "models=BiT-S-R50x1")
    script = grid.write_tpu(runs, str(tmp_path / "jobs"), tpu="pod", zone="europe-west4-a",
                            project="proj", repo=str(tmp_path), setup="")
    subprocess.run(["bash", "-n", str(script)], check=True)
    log = tmp_path / "train.log"
    env = {**fake_bin(tmp_path, bit_medical=FAKE_TRAIN, gcloud=FAKE_GCLOUD), "LOG": str(log)}
    runs[1].marker.parent.mkdir(parents=True)
    runs[1].marker.write_text("")  # finished already

    subprocess.run(["bash", str(script)], env={**env, "FAKE_FINISH": "1"}, check=True)
    assert [c["argv"] for c in read_log(log)] == [
        [*r.train_args()[:3], "--distributed"] for r in (runs[0], runs[2])]
    ssh = "compute tpus tpu-vm ssh pod --zone=europe-west4-a --project=proj --worker=all"
    assert (tmp_path / "train.log.gcloud").read_text() == f"{ssh}\n" * 3
    # A run that does not finish (preempted) stops the script; running it again resumes.
    for run in runs:
        run.marker.unlink()
    stopped = subprocess.run(["bash", str(script)], env=env, capture_output=True)
    assert stopped.returncode != 0 and len(read_log(log)) == 3
    # Transfers alone (another pod): not from an unfinished pre-training.
    transfers = [r for r in runs if r.stage == grid.TRANSFER]
    script = grid.write_tpu(transfers, str(tmp_path / "jobs"), tpu="pod", zone="z", setup="",
                            repo=str(tmp_path))
    stopped = subprocess.run(["bash", str(script)], env={**env, "FAKE_FINISH": "1"},
                             capture_output=True)
    assert stopped.returncode != 0 and len(read_log(log)) == 3


# ----------------------------------------------------------------------------- local


def test_local_launcher_skips_finished_and_resumes_unfinished(tmp_path, data_dir, caplog):
    """A tiny pre-training and two transfers from it: one finished already (untouched), one
    cut short after its step-2 checkpoint (resumed from it, not from scratch)."""
    import logging

    runs = load(f"root={tmp_path},grid=full,sources=chexpert,models=BiT-R14x0.5,"
                f"targets=tuberculosis,shots=1,seeds=0+1,data_dir={data_dir}",
                # Tiny (the fixture's images and splits are small), a checkpoint every 2 steps.
                overrides="data.builder_config=full,total_steps=4,checkpoint_every=2,eval_every=0,"
                          "batch_size=8,eval_batch_size=8,pp.resize=32,pp.crop=32,log_every=2")
    pre, first, second = runs
    assert (pre.name, first.name) == ("pretrain/chexpert_bit14x0.5",
                                      "tuberculosis_full/chexpert_bit14x0.5/1_shot/seed_0")
    second.marker.parent.mkdir(parents=True)
    results.append(str(second.marker), {"test/acc": 0.25}, path=second.workdir, seed=1,
                   shot="1_shot", pretrained_model="chexpert_bit14x0.5",
                   dataset="tuberculosis_full", last_step=4)
    finished = second.marker.read_text()
    assert [grid.status(r) for r in runs] == [grid.NEW, grid.NEW, grid.FINISHED]

    outcomes = grid.run_local(runs)
    assert outcomes[second.name] == grid.FINISHED and second.marker.read_text() == finished
    rows = results.load(str(first.marker))
    # The directory layout names what the run recorded (the report reads both).
    assert {(r["dataset"], r["pretrained_model"], r["shot"], r["seed"]) for r in rows} == {
        ("tuberculosis_full", "chexpert_bit14x0.5", "1_shot", 0)}
    assert rows[0]["last_step"] == 4
    assert [grid.status(r) for r in runs] == [grid.FINISHED] * 3

    # Cut the first transfer back to its step-2 checkpoint: unfinished.
    checkpoints = first.marker.parent / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2", "4"]
    (checkpoints / "4").rmtree()
    first.marker.unlink()
    assert grid.status(first) == grid.UNFINISHED
    caplog.set_level(logging.INFO)
    outcomes = grid.run_local(runs, echo=lambda line: None)
    assert outcomes[pre.name] == outcomes[second.name] == grid.FINISHED
    assert "test" in outcomes[first.name]
    assert re.search(r"Resumed from \S+ at step 2", caplog.text)
    assert results.load(str(first.marker))[0]["last_step"] == 4
    assert second.marker.read_text() == finished


def test_dry_run_starts_nothing_and_waits_for_nothing(tmp_path):
    runs = load(f"root={tmp_path},targets=tuberculosis,shots=10,seeds=0,sources=chexpert,"
                "models=BiT-S-R50x1")
    lines = []
    outcomes = grid.run_local(runs, dry_run=True, echo=lines.append,
                              train_fn=lambda *_: pytest.fail("a dry run trained"))
    assert outcomes == {r.name: "start" for r in runs}
    assert lines[0] == f"[1/2] start {runs[0].name}: bit-medical " + " ".join(
        shlex.quote(a) for a in runs[0].train_args())
    assert not os.listdir(tmp_path)
    # Not dry: a transfer whose pre-training did not finish waits.
    calls = []
    outcomes = grid.run_local(runs, train_fn=lambda config, workdir: calls.append(workdir) or {})
    assert calls == [runs[0].workdir] and outcomes[runs[1].name] == f"waiting for {runs[0].name}"


def test_cli_writes_the_scripts_and_names_user_errors(tmp_path):
    import run_helpers

    grid_spec = f"--config={GRID}:root={tmp_path}/runs,targets=pets,shots=1,seeds=0"
    proc = run_helpers.cli(["grid", "slurm", grid_spec, f"--out={tmp_path}/jobs", "--nodes=2",
                            "--config.overrides=dtype=bfloat16", "--sbatch=--mem=0"])
    assert proc.stdout.endswith(f"4 runs (0 pre-training, 4 transfer): {tmp_path}/jobs/submit.sh, "
                                f"{tmp_path}/jobs/transfer_released.sbatch\n"
                                f"start with: bash {tmp_path}/jobs/submit.sh\n")
    script = (tmp_path / "jobs" / "transfer_released.sbatch").read_text()
    assert "--config.dtype=bfloat16" in script and "\n#SBATCH --mem=0\n" in script
    for args, message in [
            (["grid", "tpu", grid_spec], "bit-medical grid: grid tpu needs --tpu=NAME and --zone=ZONE"),
            (["grid", "local", f"--config={GRID}:targets=cifar1", "--dry_run"],
             "bit-medical grid: unknown target 'cifar1'; valid: cifar10, cifar100"),
            (["grid", "local", f"--config={GRID}:sources=nih,models=BiT-S-R50x1", "--dry_run"],
             f"bit-medical grid: {GRID}:sources=nih,models=BiT-S-R50x1 selects no runs")]:
        proc = run_helpers.cli(args, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
