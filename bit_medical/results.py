"""Run results in the paper's CSV schema: append, load, summarise, tabulate and plot.

Every transfer run appends its final metrics to ``results.csv``, one row per metric, in the
schema of the paper's published CSVs (``COLUMNS``)::

    metric_value,metric,path,seed,shot,pretrained_model,dataset,last_step
    0.9776,test/f1_0,runs/cifar10/seed_1,1,500_shot,imagenet21k_bit152x4,cifar10,500

``path`` identifies one run (its output folder); ``shot`` is ``"<k>_shot"`` or ``"full_shot"``.
Rows are plain dicts: ``metric_value`` float, ``seed`` and ``last_step`` int, the rest str.
The paper's own results ship with the package (``load_paper_results()``) so that runs of this
project can be set against them in ``table`` and ``plot_vs_shots``.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import io
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import numpy as np

from bit_medical import paths

COLUMNS = (
    "metric_value", "metric", "path", "seed", "shot", "pretrained_model", "dataset", "last_step",
)
FULL_SHOT = "full_shot"
PAPER_RESULTS = "paper_results/paper_results.csv.gz"  # inside the bit_medical package

_SHOT_RE = re.compile(r"^(?:[1-9][0-9]*_shot|full_shot)$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_STR_FIELDS = ("metric", "path", "shot", "pretrained_model", "dataset")

Row = dict[str, Any]
PathLike = str | os.PathLike


def shot_name(examples_per_class: int | None) -> str:
    """``"<k>_shot"`` for k examples per class, ``"full_shot"`` for None (the whole set)."""
    if examples_per_class is None:
        return FULL_SHOT
    k = examples_per_class
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"examples_per_class must be a positive int or None, got {k!r}")
    return f"{int(k)}_shot"


def shot_sort_key(shot: str) -> float:
    """Orders shots 1, 5, 10, ..., full (full last)."""
    if not _SHOT_RE.match(shot):
        raise ValueError(f"shot must look like '10_shot' or 'full_shot', got {shot!r}")
    return math.inf if shot == FULL_SHOT else float(shot.split("_")[0])


def append(
    csv_path: PathLike,
    metrics: Mapping[str, float],
    *,
    path: str,
    seed: int,
    shot: str,
    pretrained_model: str,
    dataset: str,
    last_step: int,
) -> int:
    """Appends one row per metric to ``csv_path`` (created with the header if new).

    Metric names are written as given: pass ``bit_medical.metrics.with_prefix(m, "test")`` to
    get the paper's ``test/acc`` names. All rows go out in a single write. Only process 0
    should call this (there is no file lock). Returns the number of rows written.

    Raises:
      ValueError: an existing file whose header is not ``COLUMNS``, or a bad argument (named).
    """
    if not metrics:
        raise ValueError("metrics is empty: nothing to append")
    meta = {"path": path, "shot": shot, "pretrained_model": pretrained_model, "dataset": dataset}
    for key, value in meta.items():
        _check_text(key, value)
    shot_sort_key(shot)
    for key, value in (("seed", seed), ("last_step", last_step)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{key} must be a non-negative int, got {value!r}")
    lines = io.StringIO()
    writer = csv.writer(lines, lineterminator="\n")
    for name, value in metrics.items():
        _check_text("metric name", name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"metric {name!r} has a non-numeric value {value!r}") from None
        writer.writerow(
            [repr(number), name, path, int(seed), shot, pretrained_model, dataset, int(last_step)]
        )

    csv_path = paths.path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    old = csv_path.read_text() if csv_path.exists() else ""
    if old:
        header = next(csv.reader(io.StringIO(old)), [])
        if tuple(header) != COLUMNS:
            raise ValueError(
                f"{csv_path}: header {header} is not the results schema {list(COLUMNS)}; "
                "refusing to append"
            )
    # Object stores cannot append: the file is rewritten whole, through a temporary beside it,
    # so an interrupted write never leaves a truncated results file.
    partial = csv_path.with_name(csv_path.name + ".partial")
    partial.write_text((old or ",".join(COLUMNS) + "\n") + lines.getvalue())
    partial.replace(csv_path)
    return len(metrics)


def load(paths_or_glob: PathLike | Iterable[PathLike]) -> list[Row]:
    """Reads results CSVs (plain or ``.gz``) into rows, in file then line order.

    Args:
      paths_or_glob: a path, a glob pattern (``"runs/*/results.csv"``), or a list of either.

    Raises:
      FileNotFoundError: a path that does not exist or a pattern that matches nothing.
      ValueError: a wrong header or a bad value, naming the file, line and column.
    """
    if isinstance(paths_or_glob, (str, os.PathLike)):
        paths_or_glob = [paths_or_glob]
    files: list = []
    for item in paths_or_glob:
        item = os.fspath(item)
        if _GLOB_CHARS.search(item) and not paths.path(item).exists():
            matched = _glob(item)
            if not matched:
                raise FileNotFoundError(f"no results file matches {item!r}")
            files.extend(matched)
        elif paths.path(item).is_file():
            files.append(paths.path(item))
        else:
            raise FileNotFoundError(f"results file not found: {item!r}")
    return [row for name in files for row in read(name)]


def read(csv_path: PathLike) -> list[Row]:
    """Reads one results CSV (plain or ``.gz``), local or on cloud storage (``gs://...``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a wrong header or a bad value, naming the file, line and column.
    """
    csv_path = paths.path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"results file not found: {os.fspath(csv_path)!r}")
    with csv_path.open("rb") as raw:
        data = raw.read()
    if csv_path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return _parse(io.StringIO(data.decode("utf-8"), newline=""), os.fspath(csv_path))


def _glob(pattern: str) -> list:
    """Files matching ``pattern`` (local or a URL), sorted: the part before the first wildcard
    is the folder searched."""
    head, _, _ = _GLOB_CHARS.split(pattern, 1)[0].rpartition("/")
    root = paths.path(head or ".")
    rest = pattern[len(head) + 1:] if head else pattern
    return sorted(p for p in root.glob(rest) if p.is_file())


def load_paper_results() -> list[Row]:
    """The paper's published results (17,136 rows as published; most runs logged twice).

    Source: the ``results/`` folder of SLAMPAI/large-scale-pretraining-transfer (MIT,
    Copyright (c) 2021 Mehdi Cherti and Jenia Jitsev); see ``bit_medical/paper_results``.
    """
    resource = importlib.resources.files("bit_medical").joinpath(PAPER_RESULTS)
    with resource.open("rb") as raw, gzip.open(raw, "rt", newline="") as f:
        return _parse(f, f"bit_medical/{PAPER_RESULTS}")


def select(rows: Iterable[Row], **equals: Any) -> list[Row]:
    """Rows whose columns equal every given value, e.g. ``select(rows, dataset="cifar10")``."""
    unknown = sorted(set(equals) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; columns are {list(COLUMNS)}")
    return [r for r in rows if all(r[k] == v for k, v in equals.items())]


def summarize(rows: Iterable[Row], metric: str) -> list[dict[str, Any]]:
    """Mean and std of ``metric`` per (dataset, pretrained_model, shot), one value per run.

    A run is a unique ``path``: when it has several rows (the paper's CSVs log most runs
    twice; a resumed run appends again) the last one counts, as in the paper's notebook.
    NaN values (undefined metrics) are left out. ``std`` is the sample standard deviation
    (ddof=1, as pandas), NaN for a single run.

    Returns:
      dicts with ``dataset, pretrained_model, shot, mean, std, n``, sorted by dataset, model
      and shot (1, 5, ..., full).

    Raises:
      ValueError: no row has this metric (the error lists the metrics present).
    """
    rows = list(rows)
    chosen = [r for r in rows if r["metric"] == metric]
    if not chosen:
        present = sorted({r["metric"] for r in rows})
        raise ValueError(f"no rows with metric {metric!r}; metrics present: {present}")
    per_run: dict[tuple[str, str, str, str], float] = {}
    for r in chosen:
        per_run[(r["dataset"], r["pretrained_model"], r["shot"], r["path"])] = r["metric_value"]
    groups: dict[tuple[str, str, str], list[float]] = {}
    for (dataset, model, shot, _), value in per_run.items():
        values = groups.setdefault((dataset, model, shot), [])
        if not math.isnan(value):
            values.append(value)
    out = []
    for (dataset, model, shot), values in groups.items():
        arr = np.asarray(values, dtype=np.float64)
        out.append({
            "dataset": dataset,
            "pretrained_model": model,
            "shot": shot,
            "mean": float(arr.mean()) if arr.size else math.nan,
            "std": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
            "n": int(arr.size),
        })
    out.sort(key=lambda s: (s["dataset"], s["pretrained_model"], shot_sort_key(s["shot"])))
    return out


def table(rows: Iterable[Row], metric: str, *, digits: int = 3) -> str:
    """A Markdown table of ``metric``: one line per (dataset, pretrained_model), one column
    per shot, cells ``mean ± std (n)``. Returns the text; ``print`` it.
    """
    summary = summarize(rows, metric)
    shots = sorted({s["shot"] for s in summary}, key=shot_sort_key)
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for s in summary:
        if s["n"] == 0:
            text = "nan (0)"
        elif s["n"] == 1:
            text = f"{s['mean']:.{digits}f} (1)"
        else:
            text = f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} ({s['n']})"
        cells.setdefault((s["dataset"], s["pretrained_model"]), {})[s["shot"]] = text
    header = ["dataset", "pretrained_model"] + [_shot_label(s) + "-shot" for s in shots]
    lines = [
        f"{metric}: mean ± std (n runs)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for (dataset, model), by_shot in cells.items():
        values = [by_shot.get(shot, "") for shot in shots]
        lines.append("| " + " | ".join([dataset, model] + values) + " |")
    return "\n".join(lines) + "\n"


def plot_vs_shots(
    rows: Iterable[Row],
    metric: str,
    out_png: PathLike,
    *,
    dataset: str | None = None,
    reference_rows: Iterable[Row] | None = None,
):
    """Plots mean ± std of ``metric`` against shots, one line per pretrained_model, to a PNG.

    Shots are placed on a categorical axis (1, 5, 10, 100, 500, full: whichever occur). Runs
    are solid lines with a shaded ± std band; ``reference_rows`` (e.g. ``load_paper_results()``)
    are overlaid as dashed lines with error bars, same colour for the same model name.
    Uses matplotlib's object API (no pyplot), so the caller's backend is left alone.

    Args:
      dataset: which target to plot; may be omitted when the rows hold only one.

    Returns:
      the matplotlib ``Figure`` (already saved to ``out_png``).

    Raises:
      ValueError: several datasets and no ``dataset``, or no rows for the dataset/metric in
        ``rows`` or ``reference_rows``.
    """
    from matplotlib.figure import Figure  # imported here: only plotting needs matplotlib

    summary = summarize(rows, metric)
    datasets = sorted({s["dataset"] for s in summary})
    if dataset is None:
        if len(datasets) != 1:
            raise ValueError(f"rows hold several datasets {datasets}; pass dataset=")
        dataset = datasets[0]
    ours = [s for s in summary if s["dataset"] == dataset]
    if not ours:
        raise ValueError(f"no {metric!r} rows for dataset {dataset!r}; datasets: {datasets}")
    ref: list[dict[str, Any]] = []
    if reference_rows is not None:
        ref_summary = summarize(reference_rows, metric)
        ref = [s for s in ref_summary if s["dataset"] == dataset]
        if not ref:
            raise ValueError(
                f"reference_rows have no {metric!r} rows for dataset {dataset!r}; datasets "
                f"there: {sorted({s['dataset'] for s in ref_summary})}"
            )

    shots = sorted({s["shot"] for s in ours + ref}, key=shot_sort_key)
    x_of = {shot: i for i, shot in enumerate(shots)}
    models = sorted({s["pretrained_model"] for s in ours + ref})
    if len(models) <= 10:
        palette = [f"C{i}" for i in range(10)]
    else:
        import matplotlib

        palette = [matplotlib.colormaps["tab20"](i % 20) for i in range(len(models))]
    colour = {m: palette[i % len(palette)] for i, m in enumerate(models)}

    fig = Figure(figsize=(8, 4.8))
    ax = fig.add_subplot()
    for model in models:
        for group, is_ref in ((ours, False), (ref, True)):
            points = [s for s in group if s["pretrained_model"] == model and s["n"] > 0]
            if not points:
                continue
            x = np.array([x_of[s["shot"]] for s in points], dtype=float)
            mean = np.array([s["mean"] for s in points])
            std = np.nan_to_num(np.array([s["std"] for s in points]))
            if is_ref:
                ax.errorbar(x, mean, yerr=std, color=colour[model], linestyle="--", marker="x",
                            capsize=3, alpha=0.8, label=f"{model} (paper)")
            else:
                ax.plot(x, mean, color=colour[model], marker="o", label=model)
                ax.fill_between(x, mean - std, mean + std, color=colour[model], alpha=0.2,
                                linewidth=0)
    ax.set_xticks(range(len(shots)), [_shot_label(s) for s in shots])
    ax.set_xlabel("examples per class (shots)")
    ax.set_ylabel(metric)
    ax.set_title(f"{dataset}: {metric} (mean ± std over runs)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    save_png(fig, out_png)
    return fig


def save_png(fig, out_png: PathLike) -> None:
    """Writes a matplotlib figure as a PNG, to a local or cloud path (parents created)."""
    out_png = paths.path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # one write: cloud files are written whole
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    out_png.write_bytes(buffer.getvalue())


def _shot_label(shot: str) -> str:
    return shot.split("_")[0]


def _check_text(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value or "\n" in value or "\r" in value:
        raise ValueError(f"{key} must be a non-empty single-line string, got {value!r}")


def _parse(f: TextIO, source: str) -> list[Row]:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{source}: empty file, expected the header {list(COLUMNS)}")
    if tuple(header) != COLUMNS:
        raise ValueError(f"{source}: header {header} is not the results schema {list(COLUMNS)}")
    rows = []
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if len(fields) != len(COLUMNS):
            raise ValueError(
                f"{source}, line {line}: {len(fields)} fields, expected {len(COLUMNS)}"
            )
        row: Row = dict(zip(COLUMNS, fields))
        for column, convert in (("metric_value", float), ("seed", int), ("last_step", int)):
            try:
                row[column] = convert(row[column])
            except ValueError:
                raise ValueError(
                    f"{source}, line {line}, column {column!r}: bad value {row[column]!r}"
                ) from None
        for column in _STR_FIELDS:
            if not row[column]:
                raise ValueError(f"{source}, line {line}, column {column!r}: empty")
        if not _SHOT_RE.match(row["shot"]):
            raise ValueError(
                f"{source}, line {line}, column 'shot': {row['shot']!r} is not '<k>_shot' or "
                "'full_shot'"
            )
        rows.append(row)
    return rows
