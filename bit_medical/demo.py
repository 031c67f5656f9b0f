"""``bit-medical demo``: the paper's experiment in miniature, offline, on 2 CPU cores.

1. Write small synthetic chest X-ray collections in the exact CheXpert and Tuberculosis layouts
   (``input_pipeline.datasets.synthetic``, style "shapes"): each CheXpert finding is a small
   figure of its own (a disc, a bar, a ring, ...) at a random place and angle; tuberculosis shows
   as Lung Lesion's ring, with a few other findings' figures in both classes (some of them
   look-alikes: a ring with a dot, a square, a dark ring) and a few labels wrong. A model that
   learnt the figures in pre-training finds the ring from a pair of images; from scratch that
   takes hundreds.
2. Prepare them with the real TFDS builders.
3. Pre-train a small BiT on the synthetic CheXpert (``configs/demo.py:stage=pretrain``).
4. Transfer it to the synthetic Tuberculosis set with 1 and 10 images per class and with all
   of them, 3 seeds each, and the same runs from scratch (``stage=transfer``).
5. Write the report of the runs (``bit_medical.report``: ``report.md``, its table and a figure
   of each metric against shots) and print the test accuracy table.

Steps 3 and 4 are a grid run by the grid's local launcher (``grid.run_local``), each run in
the published layout under ``WORKDIR/runs`` (``<dataset>/<pretrained_model>/<k>_shot/seed_<s>``,
the pre-training under ``pretrain/``), so ``bit-medical report WORKDIR/runs`` reads them and a
second ``demo`` skips finished runs and resumes an interrupted one.
"""

from __future__ import annotations

import logging
import os
import time

import jax

from bit_medical import experiment, grid, paths, report, results

CONFIG = "configs/demo.py"  # relative to the repository root, as the grid's runs name theirs
SHOTS = (1, 10, "full")
SEEDS = (0, 1, 2)


def demo_config(**args):
    """``configs/demo.py:key=value,...`` for ``args``."""
    return experiment.load(f"{grid.REPO / CONFIG}:" + ",".join(f"{k}={v}" for k, v in args.items()))


def write_data(workdir: os.PathLike) -> str:
    """Writes and prepares the synthetic collections under ``workdir``; returns the TFDS
    data_dir."""
    from input_pipeline import datasets
    from input_pipeline.datasets import synthetic

    manual = paths.path(workdir) / "manual"
    chexpert = manual / "CheXpert-v1.0-small"
    tuberculosis = manual / "Tuberculosis_dataset"
    if not chexpert.exists():
        synthetic.write_chexpert(chexpert, n_train=640, n_valid=64, image_size=(72, 64),
                                 small=True, seed=0, style="shapes")
    if not tuberculosis.exists():
        # 600 images: 510 to train on, 90 to test (the builder's 85/15 split per collection).
        # A clear ring with few other figures: pre-trained features tell it from a pair of
        # images, while from scratch the look-alikes and 2% wrong labels take many more.
        synthetic.write_tuberculosis(tuberculosis, n_shenzhen=480, n_montgomery=120,
                                     image_size=(72, 68), seed=1, signal=1.0, style="shapes",
                                     distractors=0.05, label_noise=0.02)
    data_dir = os.fspath(paths.path(workdir) / "tfds")
    for name, root in (("chexpert_v1", chexpert), ("tuberculosis_cxr", tuberculosis)):
        datasets.prepare(name, manual_dir=os.fspath(root), data_dir=data_dir, config="full")
    return data_dir


def runs(root: str, data_dir: str) -> list[grid.Run]:
    """The demo's runs under the runs root ``root``, as the grid names them: the pre-training
    (``pretrain/<pretrained_model>``), then each transfer from it and from scratch
    (``grid.run_name``: ``<dataset>/<pretrained_model>/<k>_shot/seed_<s>``)."""
    pretrained_model = demo_config(stage="pretrain").results.pretrained_model
    scratch = demo_config(stage="transfer").results  # names of the runs from scratch
    name = f"pretrain/{pretrained_model}"
    pre = grid.Run(name, grid.PRETRAIN, f"{root}/{name}",
                   f"{CONFIG}:stage=pretrain,data_dir={data_dir}")
    transfers = []
    for after, model in ((pre, pretrained_model), (None, scratch.pretrained_model)):
        for shots in SHOTS:
            for seed in SEEDS:
                name = grid.run_name(scratch.dataset, model, shots, seed)
                transfers.append(grid.Run(
                    name, grid.TRANSFER, f"{root}/{name}",
                    f"{CONFIG}:stage=transfer,data_dir={data_dir},shots={shots},seed={seed},"
                    f"pretrained={after.workdir if after else ''}", after=after))
    return [pre, *transfers]


def run(workdir: str) -> list[results.Row]:
    """Runs the whole demo in ``workdir`` with the grid's local launcher (re-running skips
    finished runs and resumes unfinished ones); returns the transfer runs' results."""
    start = time.time()
    workdir = paths.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Transfer runs differ only in data and schedule, so their compiled steps are identical:
    # the persistent cache compiles each once.
    jax.config.update("jax_compilation_cache_dir", os.fspath(workdir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    data_dir = write_data(workdir)
    logging.info("Synthetic data prepared in %s (%.0f s)", data_dir, time.time() - start)
    root, out = os.fspath(workdir / "runs"), os.fspath(workdir / "report")
    demo_runs = runs(root, data_dir)
    grid.run_local(demo_runs)
    if any(grid.status(run) != grid.FINISHED for run in demo_runs):  # preempted (SIGTERM)
        print(f"The demo stopped before its last run; `bit-medical demo --workdir={workdir}` "
              f"resumes it.")
        return []
    rows = results.load([run.marker for run in demo_runs if run.stage == grid.TRANSFER])
    report_md = report.report_runs(root, out)
    print(results.table(rows, "test/acc"))
    print(f"\nDemo finished in {time.time() - start:.0f} s.\n"
          f"  report:      {report_md} (again: bit-medical report {root} --out={out})\n"
          f"  pre-trained: {demo_runs[0].workdir} (export/ loads with bit_medical.load_model)\n"
          f"  runs:        {root}/<dataset>/<pretrained_model>/<k>_shot/seed_<s> "
          f"(TensorBoard logs inside)")
    return rows
