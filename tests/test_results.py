"""bit_medical.results: CSV schema round trip, paper data, summaries against pandas, plots."""

import glob
import math
import os

import numpy as np
import pandas as pd
import pytest

from bit_medical import results

PAPER_COLUMNS = ["metric_value", "metric", "path", "seed", "shot", "pretrained_model", "dataset",
                 "last_step"]
PAPER_ROWS = 17136  # 42 files of the official results/ folder, headers excluded
REFERENCE_DIR = "/work/shared/reference"  # the originals, where this checkout has them


def _run(csv_path, model, shot, seed, value, dataset="cifar10", metric="test/acc"):
    return results.append(
        csv_path, {metric: value}, path=f"runs/{dataset}/{model}/{shot}/seed_{seed}", seed=seed,
        shot=shot, pretrained_model=model, dataset=dataset, last_step=500)


def test_columns_are_the_paper_schema():
    assert list(results.COLUMNS) == PAPER_COLUMNS


def test_append_then_load_round_trips_and_matches_pandas(tmp_path):
    csv_path = tmp_path / "run" / "results.csv"
    m = {"test/acc": np.float32(0.8125), "test/mean_auc": 0.93125, "test/f1_0": float("nan")}
    n = results.append(csv_path, m, path="runs/a", seed=3, shot="10_shot",
                       pretrained_model="imagenet21k_bit50x1", dataset="pets", last_step=500)
    assert n == 3
    results.append(csv_path, {"test/acc": 0.5}, path="runs/b", seed=np.int64(4),
                   shot=results.shot_name(None), pretrained_model="imagenet21k_bit50x1",
                   dataset="pets", last_step=10000)
    text = csv_path.read_text()
    assert text.startswith(",".join(PAPER_COLUMNS) + "\n")
    assert text.count("metric_value") == 1  # header written once
    rows = results.load(csv_path)
    assert [r["metric"] for r in rows] == ["test/acc", "test/mean_auc", "test/f1_0", "test/acc"]
    assert rows[0]["metric_value"] == float(np.float32(0.8125))
    assert rows[1]["metric_value"] == 0.93125  # repr round trip is exact
    assert math.isnan(rows[2]["metric_value"])
    assert rows[3] == {"metric_value": 0.5, "metric": "test/acc", "path": "runs/b", "seed": 4,
                       "shot": "full_shot", "pretrained_model": "imagenet21k_bit50x1",
                       "dataset": "pets", "last_step": 10000}
    # An independent reader sees the same table.
    df = pd.read_csv(csv_path)
    assert list(df.columns) == PAPER_COLUMNS
    np.testing.assert_array_equal(df.metric_value.to_numpy(),
                                  [r["metric_value"] for r in rows])
    assert df.seed.tolist() == [3, 3, 3, 4] and df.last_step.tolist() == [500] * 3 + [10000]


def test_append_refuses_a_foreign_file(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"results\.csv.*not the results schema"):
        _run(csv_path, "m", "1_shot", 0, 0.5)
    assert csv_path.read_text() == "a,b\n1,2\n"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(shot="ten_shot"), "shot must look like"),
        (dict(shot="0_shot"), "shot must look like"),
        (dict(seed=-1), "seed must be a non-negative int"),
        (dict(last_step=1.5), "last_step must be a non-negative int"),
        (dict(dataset=""), "dataset must be a non-empty"),
        (dict(path="a\nb"), "path must be a non-empty single-line"),
        (dict(metrics={}), "metrics is empty"),
        (dict(metrics={"test/acc": "high"}), "'test/acc' has a non-numeric value"),
    ],
)
def test_append_rejects_bad_arguments(tmp_path, kwargs, match):
    args = dict(metrics={"test/acc": 0.5}, path="runs/x", seed=0, shot="5_shot",
                pretrained_model="m", dataset="d", last_step=500)
    args.update(kwargs)
    metrics = args.pop("metrics")
    with pytest.raises(ValueError, match=match):
        results.append(tmp_path / "results.csv", metrics, **args)
    assert not (tmp_path / "results.csv").exists()


def test_shot_names_and_order():
    assert results.shot_name(10) == "10_shot" and results.shot_name(None) == "full_shot"
    with pytest.raises(ValueError, match="positive int"):
        results.shot_name(0)
    shots = ["full_shot", "100_shot", "1_shot", "500_shot", "10_shot", "5_shot"]
    assert sorted(shots, key=results.shot_sort_key) == [
        "1_shot", "5_shot", "10_shot", "100_shot", "500_shot", "full_shot"]


def test_load_glob_and_errors(tmp_path):
    _run(tmp_path / "r1" / "results.csv", "m", "1_shot", 0, 0.25)
    _run(tmp_path / "r2" / "results.csv", "m", "1_shot", 1, 0.75)
    rows = results.load(str(tmp_path / "*" / "results.csv"))
    assert [r["metric_value"] for r in rows] == [0.25, 0.75]
    both = [tmp_path / "r1" / "results.csv", tmp_path / "r2" / "results.csv"]
    assert len(results.load(both)) == 2
    with pytest.raises(FileNotFoundError, match="no results file matches"):
        results.load(str(tmp_path / "nothing*" / "results.csv"))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        results.load(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(PAPER_COLUMNS) + "\n0.5,test/acc,p,zero,1_shot,m,d,500\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2, column 'seed': bad value 'zero'"):
        results.load(bad)
    bad.write_text(",".join(PAPER_COLUMNS) + "\n0.5,test/acc,p,0,one_shot,m,d,500\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2, column 'shot'"):
        results.load(bad)
    bad.write_text("value,metric\n0.5,test/acc\n")
    with pytest.raises(ValueError, match=r"bad\.csv: header"):
        results.load(bad)


def test_paper_results_are_the_published_rows():
    rows = results.load_paper_results()
    assert len(rows) == PAPER_ROWS
    first_padchest = next(r for r in rows if r["dataset"] == "padchest")
    assert first_padchest == {
        "metric_value": 0.08692511171102524, "metric": "test/acc",
        "path": "finetuning_results/padchest/chexpert_bit50x1/10_shot/seed_1", "seed": 1,
        "shot": "10_shot", "pretrained_model": "chexpert_bit50x1", "dataset": "padchest",
        "last_step": 500}
    assert {r["metric"] for r in rows} == {
        "test/acc", "test/mean_auc", "test/mean_average_precision",
        "test/average_precision_class_0", "test/f1_0", "test/recall_0"}
    assert len({r["dataset"] for r in rows}) == 7


@pytest.mark.skipif(not os.path.isdir(REFERENCE_DIR), reason="original CSVs not in this checkout")
def test_paper_results_equal_the_original_files():
    files = sorted(glob.glob(os.path.join(REFERENCE_DIR, "finetuning_results_*.csv")))
    assert len(files) == 42
    originals = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    ours = pd.DataFrame(results.load_paper_results())
    assert len(ours) == len(originals)
    pd.testing.assert_frame_equal(ours[PAPER_COLUMNS], originals[PAPER_COLUMNS],
                                  check_dtype=False)


def test_summarize_equals_pandas_on_the_paper_data():
    rows = results.load_paper_results()
    summary = results.summarize(rows, "test/acc")
    # The paper notebook's way: one row per run (last one kept), then mean/std per group.
    df = pd.DataFrame(rows)
    df = df[df.metric == "test/acc"].drop_duplicates(subset=["path"], keep="last")
    expected = df.groupby(["dataset", "pretrained_model", "shot"]).metric_value.agg(
        ["mean", "std", "count"])
    assert len(summary) == len(expected)
    for s in summary:
        e = expected.loc[(s["dataset"], s["pretrained_model"], s["shot"])]
        assert s["n"] == e["count"]
        assert s["mean"] == pytest.approx(e["mean"], abs=1e-12)
        if s["n"] > 1:
            assert s["std"] == pytest.approx(e["std"], abs=1e-12)
        else:
            assert math.isnan(s["std"])
    # Each published run counted once though it is logged twice.
    cifar = [s for s in summary if s["dataset"] == "cifar10" and s["shot"] == "1_shot"
             and s["pretrained_model"] == "imagenet21k_bit50x1"]
    assert cifar[0]["n"] == 5


def test_summarize_dedupes_by_path_keeps_last_and_skips_nan(tmp_path):
    csv_path = tmp_path / "results.csv"
    _run(csv_path, "m", "1_shot", 0, 0.1)
    _run(csv_path, "m", "1_shot", 0, 0.3)  # same path logged again (resume): the last counts
    _run(csv_path, "m", "1_shot", 1, 0.5)
    _run(csv_path, "m", "1_shot", 2, float("nan"))
    _run(csv_path, "m", "full_shot", 0, 0.9)
    summary = results.summarize(results.load(csv_path), "test/acc")
    assert [(s["shot"], s["n"]) for s in summary] == [("1_shot", 2), ("full_shot", 1)]
    assert summary[0]["mean"] == pytest.approx(0.4)
    assert summary[0]["std"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
    with pytest.raises(ValueError, match=r"metrics present: \['test/acc'\]"):
        results.summarize(results.load(csv_path), "test/mean_auc")


def test_table_markdown(tmp_path):
    csv_path = tmp_path / "results.csv"
    _run(csv_path, "imagenet21k_bit50x1", "1_shot", 0, 0.4)
    _run(csv_path, "imagenet21k_bit50x1", "1_shot", 1, 0.6)
    _run(csv_path, "imagenet21k_bit50x1", "full_shot", 0, 0.9)
    _run(csv_path, "chexpert_bit50x1", "full_shot", 0, 0.7)
    text = results.table(results.load(csv_path), "test/acc")
    lines = text.splitlines()
    assert lines[2] == "| dataset | pretrained_model | 1-shot | full-shot |"
    assert lines[3] == "|---|---|---|---|"
    assert "| cifar10 | chexpert_bit50x1 |  | 0.700 (1) |" in lines
    assert "| cifar10 | imagenet21k_bit50x1 | 0.500 ± 0.141 (2) | 0.900 (1) |" in lines


def test_plot_vs_shots_draws_the_summary(tmp_path):
    csv_path = tmp_path / "results.csv"
    for seed, (v1, vf) in enumerate([(0.4, 0.8), (0.6, 0.9)]):
        _run(csv_path, "imagenet21k_bit50x1", "1_shot", seed, v1)
        _run(csv_path, "imagenet21k_bit50x1", "full_shot", seed, vf)
    rows = results.load(csv_path)
    out = tmp_path / "plots" / "cifar10_acc.png"
    fig = results.plot_vs_shots(rows, "test/acc", out, reference_rows=results.load_paper_results())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    ours = lines["imagenet21k_bit50x1"]
    np.testing.assert_allclose(ours.get_ydata(), [0.5, 0.85])
    # The paper's runs of the same model, dashed, at the paper's means.
    bars = {c.get_label(): c for c in ax.containers}  # error-bar containers carry the label
    paper = bars["imagenet21k_bit50x1 (paper)"].lines[0]
    assert paper.get_linestyle() == "--"
    expected = {s["shot"]: s["mean"] for s in results.summarize(
        results.select(results.load_paper_results(), dataset="cifar10",
                       pretrained_model="imagenet21k_bit50x1"), "test/acc")}
    shots = [t.get_text() for t in ax.get_xticklabels()]
    assert shots == ["1", "5", "10", "100", "500", "full"]
    np.testing.assert_allclose(paper.get_ydata(), [expected[f"{s}_shot"] for s in shots])
    assert len([k for k in bars if k.endswith("(paper)")]) == len({
        r["pretrained_model"] for r in results.select(results.load_paper_results(),
                                                      dataset="cifar10")})


def test_plot_vs_shots_errors(tmp_path):
    csv_path = tmp_path / "results.csv"
    _run(csv_path, "m", "1_shot", 0, 0.5, dataset="cifar10")
    _run(csv_path, "m", "1_shot", 0, 0.5, dataset="pets")
    rows = results.load(csv_path)
    with pytest.raises(ValueError, match=r"several datasets \['cifar10', 'pets'\]"):
        results.plot_vs_shots(rows, "test/acc", tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"no 'test/acc' rows for dataset 'flowers'"):
        results.plot_vs_shots(rows, "test/acc", tmp_path / "x.png", dataset="flowers")
    own_xray = [dict(rows[0], dataset="my_xray")]  # a target the paper did not evaluate
    with pytest.raises(ValueError, match="reference_rows have no 'test/acc' rows for dataset"):
        results.plot_vs_shots(own_xray, "test/acc", tmp_path / "x.png",
                              reference_rows=results.load_paper_results())
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match="unknown column"):
        results.select(rows, model="m")
