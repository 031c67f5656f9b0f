"""Workdirs, results and exports on cloud storage (gs://) go through one path API (epath).

``run_helpers.fake_gcs`` maps ``gs://`` onto a local folder inside epath, so these run the code
a TPU VM runs against a bucket; Orbax checkpoints (TensorStore's own GCS driver) are covered
by the local-path tests.
"""

import json
import os

import ml_collections

from bit_medical import checkpoint, paths, results, train
from bit_medical.models import export

import run_helpers


def test_absolute_keeps_urls_and_path_gives_epath(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.absolute("gs://b/runs/x") == "gs://b/runs/x"
    assert paths.absolute("runs/x") == str(tmp_path / "runs" / "x")
    assert os.fspath(paths.path("gs://b/runs/x") / "results.csv") == "gs://b/runs/x/results.csv"
    assert paths.is_url("gs://b") and not paths.is_url(tmp_path)


def _append(where, seed, acc):
    results.append(where, {"test/acc": acc, "test/mean_auc": acc / 2}, path=os.path.dirname(where),
                   seed=seed, shot="1_shot", pretrained_model="m", dataset="d", last_step=10)


def test_results_append_load_and_plot_on_a_bucket(tmp_path):
    with run_helpers.fake_gcs(tmp_path / "gcs"):
        for seed, acc in ((0, 0.5), (1, 0.75)):
            _append(f"gs://bkt/runs/d/m/1_shot/seed_{seed}/results.csv", seed, acc)
        _append("gs://bkt/runs/d/m/1_shot/seed_1/results.csv", 1, 0.25)  # a second run's rows
        rows = results.load("gs://bkt/runs/d/m/*/seed_*/results.csv")
        fig = results.plot_vs_shots(rows, "test/acc", "gs://bkt/report/acc.png")
        fig.clf()
    # The same bytes a local run writes, under the bucket's folder.
    local = tmp_path / "local" / "results.csv"
    _append(str(local), 0, 0.5)
    written = tmp_path / "gcs" / "bkt" / "runs" / "d" / "m" / "1_shot" / "seed_0" / "results.csv"
    assert written.read_text().replace("gs://bkt/runs/d/m/1_shot/seed_0", "P") == \
        local.read_text().replace(str(local.parent), "P")
    assert [(r["seed"], r["metric"], r["metric_value"]) for r in rows] == [
        (0, "test/acc", 0.5), (0, "test/mean_auc", 0.25), (1, "test/acc", 0.75),
        (1, "test/mean_auc", 0.375), (1, "test/acc", 0.25), (1, "test/mean_auc", 0.125)]
    assert not list((tmp_path / "gcs").rglob("*.partial"))
    png = tmp_path / "gcs" / "bkt" / "report" / "acc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_meta_and_run_config_on_a_bucket(tmp_path):
    run = tmp_path / "gcs" / "bkt" / "run"
    for name, step in ((export.EXPORT_DIRNAME, 9), (export.BEST_EXPORT_DIRNAME, 4)):
        (run / name).mkdir(parents=True)
        (run / name / export.META_FILENAME).write_text(json.dumps(
            {"format": export.FORMAT, "step": step}))
    (run / "config.json").write_text(json.dumps({"seed": 3, "data": {"name": "x"}}))
    with run_helpers.fake_gcs(tmp_path / "gcs"):
        assert os.fspath(export.export_dir("gs://bkt/run")) == "gs://bkt/run/export_best"
        assert export.load_meta("gs://bkt/run")["step"] == 4  # the best, as fine-tuning loads
        assert export.load_meta("gs://bkt/run/export")["step"] == 9
        config = train.load_config("gs://bkt/run")
    assert isinstance(config, ml_collections.ConfigDict) and config.seed == 3


def test_damaged_checkpoint_is_set_aside_on_a_bucket(tmp_path):
    steps = tmp_path / "gcs" / "bkt" / "run" / "checkpoints"
    (steps / "20").mkdir(parents=True)
    (steps / "20" / "f").write_text("garbled")
    (tmp_path / "gcs" / "bkt" / "run" / checkpoint.BAD_DIRNAME / "20").mkdir(parents=True)
    with run_helpers.fake_gcs(tmp_path / "gcs"):
        target = checkpoint._set_aside("gs://bkt/run/checkpoints", 20)
    assert os.fspath(target) == f"gs://bkt/run/{checkpoint.BAD_DIRNAME}/20.1"  # 20 was taken
    assert (tmp_path / "gcs" / "bkt" / "run" / checkpoint.BAD_DIRNAME / "20.1" / "f").read_text() == "garbled"
    assert not (steps / "20").exists()


def test_image_folder_lists_a_bucket(tmp_path):
    from input_pipeline import image_folder

    for rel in ("cat/a.jpg", "cat/sub/b.png", "dog/c.jpeg", "dog/notes.txt"):
        (tmp_path / "gcs" / "bkt" / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "gcs" / "bkt" / "train" / rel).write_bytes(b"")
    with run_helpers.fake_gcs(tmp_path / "gcs"):
        listing = image_folder.list_image_folder("gs://bkt/train")
    assert listing.class_names == ["cat", "dog"]
    assert list(listing.paths) == ["gs://bkt/train/cat/a.jpg", "gs://bkt/train/cat/sub/b.png",
                                   "gs://bkt/train/dog/c.jpeg"]
    assert list(listing.labels) == [0, 0, 1]
