"""`bit-medical report`: the published cells, a fixture runs root against hand-computed numbers,
unfinished and missing runs, figures, and the command's user errors."""

import csv
import gzip
import importlib.resources
import json
import math
import os
import subprocess
import sys

import pytest

from bit_medical import main, report, results

import run_helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The CXR union the paper pre-trains R152x4 on (its largest X-ray source).
CXR_UNION_R152X4 = "chexpert_mimic_nih_padchest_bit152x4"


def _published_mean(dataset, model, shot, metric):
    """The paper's cell from the shipped CSV with the csv module alone: one value per run
    (its ``path``; the last row of a run logged twice), averaged over the runs."""
    resource = importlib.resources.files("bit_medical").joinpath(results.PAPER_RESULTS)
    per_run = {}
    with resource.open("rb") as raw, gzip.open(raw, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if (row["dataset"], row["pretrained_model"], row["shot"], row["metric"]) == (
                    dataset, model, shot, metric):
                per_run[row["path"]] = float(row["metric_value"])
    return sum(per_run.values()) / len(per_run), len(per_run)


def _cells(out_dir):
    with open(os.path.join(out_dir, "cells.csv"), newline="") as f:
        return {(r["dataset"], r["pretrained_model"], r["shot"], r["metric"]): r
                for r in csv.DictReader(f)}


def _assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, path


def _cli(*args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != main.VERBOSE_ENV}
    env["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable, "-m", "bit_medical.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_paper_report_gives_the_published_cell_means(tmp_path):
    cifar, n_cifar = _published_mean("cifar10", "imagenet21k_bit152x4", "1_shot", "test/acc")
    tb, n_tb = _published_mean("tuberculosis_full", CXR_UNION_R152X4, "full_shot",
                               "test/mean_auc")
    assert (round(cifar, 3), n_cifar) == (0.662, 5)  # the paper's numbers
    assert (round(tb, 3), n_tb) == (0.959, 5)

    out = tmp_path / "paper"
    proc = _cli("report", "--paper", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out / "report.md") in proc.stdout

    found = _cells(out)
    cell = found[("cifar10", "imagenet21k_bit152x4", "1_shot", "test/acc")]
    assert float(cell["mean"]) == pytest.approx(cifar, abs=1e-12) and cell["n"] == "5"
    cell = found[("tuberculosis_full", CXR_UNION_R152X4, "full_shot", "test/mean_auc")]
    assert float(cell["mean"]) == pytest.approx(tb, abs=1e-12) and cell["n"] == "5"

    table = (out / "table.md").read_text()
    assert "| CIFAR-10 | test/acc | R152x4 on ImageNet-21k | 0.662 ± 0.029 (5) |" in table
    # PadChest's headline is mean AUC, as in the paper's figures; every other target's accuracy.
    assert "| PadChest-Cl | test/mean_auc |" in table and "| PadChest-Cl | test/acc |" not in table
    with open(out / "table.csv", newline="") as f:
        wide = list(csv.DictReader(f))
    line = next(r for r in wide if (r["target"], r["pretrained_model"]) == (
        "cifar10", "imagenet21k_bit152x4"))
    assert float(line["1-shot mean"]) == pytest.approx(cifar, abs=1e-12)

    text = (out / "report.md").read_text()
    for dataset in report.TARGETS:
        assert f"(`{dataset}`)" in text
        for name in (f"{dataset}_test_acc_vs_shots.png", f"{dataset}_sources.png",
                     f"{dataset}_model_size.png"):
            assert f"figures/{name}" in text
            _assert_png(out / "figures" / name)
    assert "| Δ |" not in text and "[paper " not in text  # nothing set against itself


def _write_run(root, dataset, model, shot, seed, metrics_list):
    """A finished transfer run: its config and one results.csv append per entry (a resumed run
    appends again; the last counts)."""
    workdir = root / dataset / model / shot / f"seed_{seed}"
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"schedule": {"kind": "hyperrule"}}))
    for metrics in metrics_list:
        results.append(workdir / "results.csv", metrics, path=str(workdir), seed=seed, shot=shot,
                       pretrained_model=model, dataset=dataset, last_step=500)
    return workdir


def test_report_of_a_runs_root_matches_hand_computed_cells(tmp_path):
    root = tmp_path / "runs"
    big, small = "imagenet21k_bit152x4", "imagenet21k_bit50x1"
    for seed, acc in enumerate((0.60, 0.70, 0.65)):
        _write_run(root, "cifar10", big, "1_shot", seed, [{"test/acc": acc, "test/loss": 1.0}])
    _write_run(root, "cifar10", small, "1_shot", 0, [{"test/acc": 0.4}])
    _write_run(root, "tuberculosis_full", "chexpert_bit50x1", "10_shot", 0,
               [{"test/acc": 0.8, "test/mean_auc": 0.9}])
    _write_run(root, "tuberculosis_full", "chexpert_bit50x1", "10_shot", 1,
               [{"test/acc": 0.5, "test/mean_auc": 0.6}, {"test/acc": 0.9, "test/mean_auc": 0.7}])
    # Unfinished: started (config, checkpoints) without results.
    unfinished = root / "cifar10" / big / "5_shot" / "seed_0"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.json").write_text(json.dumps({"schedule": {"kind": "hyperrule"}}))
    # A pre-training run writes no results.csv and is not unfinished for that.
    pretrain = root / "pretrain" / "chexpert_bit50x1"
    (pretrain / "export").mkdir(parents=True)
    (pretrain / "config.json").write_text(json.dumps({"schedule": {"kind": "step"}}))
    missing = root / "cifar10" / big / "10_shot" / "seed_0"
    (missing / "logs").mkdir(parents=True)  # a folder without a run in it is still missing

    runs = report.scan(root, expected=[missing, unfinished, root / "cifar10" / big / "1_shot" /
                                       "seed_0"])
    assert runs.unfinished == [str(unfinished)] and runs.missing == [str(missing)]
    assert runs.pretraining == [str(pretrain)] and len(runs.finished) == 6

    path = report.report_runs(root, expected=[missing, unfinished])
    out = root / "report"
    assert os.fspath(path) == str(out / "report.md")
    found = _cells(out)
    cell = found[("cifar10", big, "1_shot", "test/acc")]
    assert float(cell["mean"]) == pytest.approx(0.65, abs=1e-12)  # (0.60 + 0.70 + 0.65) / 3
    assert float(cell["std"]) == pytest.approx(0.05, abs=1e-12)  # ddof = 1
    assert cell["n"] == "3"
    paper, _ = _published_mean("cifar10", big, "1_shot", "test/acc")
    assert float(cell["paper_mean"]) == pytest.approx(paper, abs=1e-12)
    assert float(cell["diff"]) == pytest.approx(0.65 - paper, abs=1e-12)
    cell = found[("tuberculosis_full", "chexpert_bit50x1", "10_shot", "test/acc")]
    assert float(cell["mean"]) == pytest.approx(0.85, abs=1e-12)  # the resumed run's last row
    assert float(cell["std"]) == pytest.approx(math.sqrt(2 * 0.05 ** 2), abs=1e-12)
    cell = found[("tuberculosis_full", "chexpert_bit50x1", "10_shot", "test/mean_auc")]
    assert float(cell["mean"]) == pytest.approx(0.8, abs=1e-12)
    assert not any(key[3] == "test/loss" for key in found)  # the paper's metrics only

    text = path.read_text()
    assert "6 finished runs" in text and "1 unfinished, 1 missing, 1 pre-training" in text
    assert f"`{unfinished}`" in text and f"`{missing}`" in text and f"`{pretrain}`" in text
    assert f"| `{big}` | 1 | 0.650 ± 0.050 (3) | {_fmt_paper('cifar10', big)} |" in text
    for name in ("cifar10_test_acc_vs_shots.png", "cifar10_sources.png",
                 "cifar10_model_size.png", "tuberculosis_full_test_mean_auc_vs_shots.png"):
        _assert_png(out / "figures" / name)
    assert not (out / "figures" / "tuberculosis_full_model_size.png").exists()  # one size only
    assert "| ImageNet-21k | 1 | 0.400 (1)" in text  # the model-size table: R50x1, R152x4, gain
    assert f"{0.65 - 0.4:+.3f} |" in text


def _fmt_paper(dataset, model):
    """The paper's cell as the report prints it, from the raw CSV."""
    resource = importlib.resources.files("bit_medical").joinpath(results.PAPER_RESULTS)
    per_run = {}
    with resource.open("rb") as raw, gzip.open(raw, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if (row["dataset"], row["pretrained_model"], row["shot"], row["metric"]) == (
                    dataset, model, "1_shot", "test/acc"):
                per_run[row["path"]] = float(row["metric_value"])
    values = list(per_run.values())
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.3f} ± {std:.3f} ({len(values)}) | {0.65 - mean:+.3f}"


def test_missing_root_is_a_one_line_error(tmp_path):
    proc = _cli("report", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr == f"bit-medical report: runs root {tmp_path / 'nowhere'} is not a folder\n"


def test_user_errors_of_the_command(tmp_path, capsys):
    assert main.main(["report"]) == 2
    assert "give a RUNS_ROOT or --paper" in capsys.readouterr().err
    assert main.main(["report", str(tmp_path), "--paper"]) == 2
    capsys.readouterr()
    started = tmp_path / "cifar10" / "m_bit50x1" / "1_shot" / "seed_0" / "checkpoints"
    started.mkdir(parents=True)
    assert main.main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"bit-medical report: no finished run under {tmp_path} (no results.csv); "
        "1 unfinished, 0 missing")


def test_report_reads_and_writes_cloud_urls(tmp_path):
    """A gs:// runs root and output, served from a local folder through epath's test backend:
    every read and write of the report goes through etils.epath, none through plain open."""
    bucket = tmp_path / "gcs" / "bucket"
    _write_run(bucket / "runs", "cifar10", "imagenet21k_bit152x4", "1_shot", 0,
               [{"test/acc": 0.6}])
    with run_helpers.fake_gcs(tmp_path / "gcs"):
        path = report.report_runs("gs://bucket/runs", "gs://bucket/out")
    assert os.fspath(path) == "gs://bucket/out/report.md"
    text = (bucket / "out" / "report.md").read_text()
    assert "# Transfer results of gs://bucket/runs" in text and "0.600 (1)" in text
    _assert_png(bucket / "out" / "figures" / "cifar10_sources.png")
