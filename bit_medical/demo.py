"""``bit-medical demo``: the paper's experiment in miniature, offline, on 2 CPU cores.

1. Write small synthetic chest X-ray collections in the exact CheXpert and Tuberculosis layouts
   (``input_pipeline.datasets.synthetic``, style "shapes"): each CheXpert finding is a small
   figure of its own (a disc, a bar, a ring, ...) at a random place and angle; tuberculosis shows
   as Lung Lesion's faint ring, among other findings' figures in both classes, with a few
   labels wrong. Telling the ring from its look-alikes (a ring with a dot, a square, a dark
   ring) takes many examples unless the features were learnt before.
2. Prepare them with the real TFDS builders.
3. Pre-train a small BiT on the synthetic CheXpert (``configs/demo.py:stage=pretrain``).
4. Transfer it to the synthetic Tuberculosis set with 1 and 10 images per class and with all
   of them, 3 seeds each, and the same runs from scratch (``stage=transfer``).
5. Write ``results.csv`` (the paper's schema) and a plot of test accuracy against shots.
"""

from __future__ import annotations

import logging
import os
import time

import jax

from bit_medical import experiment, paths, results, train

SHOTS = (1, 10, "full")
SEEDS = (0, 1, 2)
TB_SIGNAL = 0.6


def _config_file() -> str:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "demo.py")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: the demo reads the repository's configs/ (install with "
            f"`pip install -e .` from a clone)")
    return path


def demo_config(**args):
    """``configs/demo.py:key=value,...`` for ``args``."""
    return experiment.load(_config_file() + ":" + ",".join(f"{k}={v}" for k, v in args.items()))


def write_data(workdir: str) -> str:
    """Writes and prepares the synthetic collections; returns the TFDS data_dir."""
    from input_pipeline import datasets
    from input_pipeline.datasets import synthetic

    manual = os.path.join(workdir, "manual")
    data_dir = os.path.join(workdir, "tfds")
    chexpert = os.path.join(manual, "CheXpert-v1.0-small")
    tuberculosis = os.path.join(manual, "Tuberculosis_dataset")
    if not os.path.exists(chexpert):
        synthetic.write_chexpert(chexpert, n_train=640, n_valid=64, image_size=(72, 64),
                                 small=True, seed=0, style="shapes")
    if not os.path.exists(tuberculosis):
        # 600 images: 510 to train on, 90 to test (the builder's 85/15 split per collection).
        synthetic.write_tuberculosis(tuberculosis, n_shenzhen=480, n_montgomery=120,
                                     image_size=(72, 68), seed=1, signal=TB_SIGNAL,
                                     style="shapes", distractors=0.15, label_noise=0.05)
    for name, root in (("chexpert_v1", chexpert), ("tuberculosis_cxr", tuberculosis)):
        datasets.prepare(name, manual_dir=root, data_dir=data_dir, config="full",
                         num_workers=1)
    return data_dir


def run(workdir: str) -> list[dict]:
    """Runs the whole demo in ``workdir`` (re-running skips finished stages)."""
    start = time.time()
    workdir = paths.absolute(workdir)
    os.makedirs(workdir, exist_ok=True)
    # Transfer runs differ only in data and schedule, so their compiled steps are identical:
    # the persistent cache compiles each once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    data_dir = write_data(workdir)
    logging.info("Synthetic data prepared in %s (%.0f s)", data_dir, time.time() - start)
    pretrain_dir = os.path.join(workdir, "pretrain")
    if not os.path.exists(os.path.join(pretrain_dir, "export", "model.json")):
        train.train_and_evaluate(demo_config(stage="pretrain", data_dir=data_dir), pretrain_dir)
    logging.info("Pre-training done (%.0f s)", time.time() - start)

    runs = []
    for init in ("pretrained", "scratch"):
        for shots in SHOTS:
            for seed in SEEDS:
                run_dir = os.path.join(workdir, "transfer", f"{init}_{shots}shot_seed{seed}")
                csv = os.path.join(run_dir, "results.csv")
                if not os.path.exists(csv):
                    config = demo_config(stage="transfer", data_dir=data_dir, shots=shots,
                                         seed=seed,
                                         pretrained=pretrain_dir if init == "pretrained" else "")
                    train.train_and_evaluate(config, run_dir)
                runs.append(results.load(csv))
    summary_csv = os.path.join(workdir, "results.csv")
    _write_summary(summary_csv, runs)
    rows = [row for run_rows in runs for row in run_rows]
    plot = os.path.join(workdir, "accuracy_vs_shots.png")
    results.plot_vs_shots(rows, "test/acc", plot)
    print(results.table(rows, "test/acc"))
    print(f"\nDemo finished in {time.time() - start:.0f} s.\n"
          f"  results:     {summary_csv}\n  plot:        {plot}\n"
          f"  pre-trained: {pretrain_dir} (export/ loads with bit_medical.load_model)\n"
          f"  runs:        {os.path.join(workdir, 'transfer')}/*  (TensorBoard logs inside)")
    return rows


def _write_summary(path: str, runs: list[list[dict]]) -> None:
    """One CSV with every run's rows (each run's own results.csv stays in its workdir)."""
    if os.path.exists(path):
        os.remove(path)
    for run_rows in runs:
        first = run_rows[0]
        results.append(path, {r["metric"]: r["metric_value"] for r in run_rows},
                       **{k: first[k] for k in ("path", "seed", "shot", "pretrained_model",
                                                "dataset", "last_step")})
