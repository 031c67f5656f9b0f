"""``bit-medical report``: a runs root's results as the paper's tables and figures.

    report_runs(ROOT)         every finished run under ROOT beside the paper's published cells
    report_paper(OUT)         the same report from the published numbers alone

A transfer run's workdir holds ``results.csv`` once it has finished (``train._append_results``);
one with ``config.json`` or ``checkpoints/`` and no ``results.csv`` is unfinished. Pre-training
runs (any schedule but BiT-HyperRule) never write results and are listed apart. Runs a grid
expects (``expected=``) that never started are missing.

The report (``OUT/report.md``) has, per target and metric, mean ± std over seeds with the
number of seeds for each pre-trained model and shot count, the paper's value for the same cell
and the difference, and a score-against-shots figure; then, on the target's headline metric
(mean AUC for PadChest, accuracy elsewhere: the official ``notebooks/plots.ipynb``), the
paper's two comparisons drawn as that notebook draws them: a bar per pre-trained model at each
shot count (source scale and domain), and the score of R50x1 against R152x4 per source (model
size). ``table.md`` / ``table.csv`` are the headline table to paste into a paper, ``cells.csv``
every cell with its numbers. Every file is read and written through ``etils.epath``, so roots
and outputs may be ``gs://`` URLs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from etils import epath

from bit_medical import paths, results
from input_pipeline.errors import UserError

REPORT_METRICS = ("test/acc", "test/mean_auc", "test/mean_average_precision")
# Pre-training sources in the paper's order: natural (scale), then chest X-rays (unions grow).
SOURCES = {
    "imagenet1k": "ImageNet-1k", "imagenet21k": "ImageNet-21k", "chexpert": "CheXpert",
    "mimic": "MIMIC-CXR", "nih": "NIH", "padchest": "PadChest",
    "chexpert_mimic": "CheXpert-MIMIC", "chexpert_mimic_nih": "CheXpert-MIMIC-NIH",
    "chexpert_mimic_nih_padchest": "CheXpert-MIMIC-NIH-PadChest",
}
NATURAL_SOURCES = ("imagenet1k", "imagenet21k")
ARCHS = ("50x1", "152x4")  # the paper's two model sizes
TARGETS = {  # results' dataset name: caption (the official notebook's)
    "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "pets": "Pets",
    "flowers_oversampling": "Flowers-102", "covidx_cxr2": "COVIDx",
    "tuberculosis_full": "Tuberculosis", "padchest": "PadChest-Cl",
}
RESULTS_FILE = "results.csv"
_MODEL_RE = re.compile(r"^(?P<source>.+)_bit(?P<arch>\d+x[\d.]+)$")

Cell = dict[str, Any]


@dataclasses.dataclass
class Runs:
    """What a runs root holds (paths as strings, sorted)."""

    rows: list[results.Row]  # every row of every results file found
    finished: list[str]  # run workdirs with results.csv
    unfinished: list[str]  # transfer workdirs with config.json or checkpoints, no results.csv
    missing: list[str]  # expected workdirs that do not exist
    pretraining: list[str]  # pre-training workdirs (they write no results.csv)


def split_model(pretrained_model: str) -> tuple[str, str]:
    """``("chexpert_mimic", "152x4")`` for ``chexpert_mimic_bit152x4``; ``(name, "")`` for a
    name without a BiT suffix (``bit_m_r50x1``, Google's released weights)."""
    match = _MODEL_RE.match(pretrained_model)
    return (match["source"], match["arch"]) if match else (pretrained_model, "")


def model_caption(pretrained_model: str) -> str:
    """``R152x4 on CheXpert-MIMIC``, the paper's legend, for ``chexpert_mimic_bit152x4``."""
    source, arch = split_model(pretrained_model)
    return f"R{arch} on {SOURCES.get(source, source)}" if arch else pretrained_model


def headline_metric(dataset: str, metrics: Iterable[str]) -> str:
    """The metric the paper plots for a target: mean AUC for PadChest (and for runs without
    accuracy), accuracy elsewhere."""
    metrics = set(metrics)
    if dataset != "padchest" and "test/acc" in metrics:
        return "test/acc"
    return "test/mean_auc" if "test/mean_auc" in metrics else sorted(metrics)[0]


def scan(root: results.PathLike, expected: Iterable[results.PathLike] = ()) -> Runs:
    """Finds the runs under ``root`` (a folder, local or ``gs://``) and reads their results.

    Args:
      expected: run workdirs a grid will write; those never started (no results.csv,
        config.json or checkpoints) are ``missing``.

    Raises:
      UserError: ``root`` is not a folder.
    """
    root = paths.path(root)
    if not root.is_dir():
        raise UserError(f"runs root {os.fspath(root)} is not a folder")
    rows: list[results.Row] = []
    finished, unfinished, pretraining = [], [], []
    stack = [root]
    while stack:
        folder = stack.pop()
        children = {child.name: child for child in folder.iterdir()}
        if RESULTS_FILE in children:
            rows.extend(results.read(children[RESULTS_FILE]))
        is_run = "config.json" in children or "checkpoints" in children
        if not is_run:  # a folder of runs (or of collected results.csv files)
            stack.extend(child for child in children.values() if child.is_dir())
        elif RESULTS_FILE in children:
            finished.append(os.fspath(folder))
        elif _is_pretraining(children.get("config.json")):
            pretraining.append(os.fspath(folder))
        else:
            unfinished.append(os.fspath(folder))
    missing = []
    for workdir in (paths.path(p) for p in expected):
        name = os.fspath(workdir)
        if (workdir / RESULTS_FILE).exists() or name in unfinished:
            continue
        if (workdir / "config.json").exists() or (workdir / "checkpoints").exists():
            unfinished.append(name)  # started, outside the root
        else:
            missing.append(name)
    return Runs(rows, sorted(finished), sorted(unfinished), sorted(missing), sorted(pretraining))


def _is_pretraining(config_json: epath.Path | None) -> bool:
    """Whether a run's config is a pre-training (only BiT-HyperRule runs write results)."""
    if config_json is None:
        return False
    try:
        return json.loads(config_json.read_text())["schedule"]["kind"] != "hyperrule"
    except (ValueError, KeyError, TypeError):
        return False


def cells(rows: Sequence[results.Row], metric: str,
          reference_rows: Sequence[results.Row] | None = None) -> list[Cell]:
    """``results.summarize`` of ``metric`` with the reference's cell beside each of ours.

    Every summary dict gains ``metric``, ``source``, ``arch`` and ``paper_mean``,
    ``paper_std``, ``paper_n``, ``diff`` (ours minus the paper's; NaN and 0 where the paper
    has no such cell or no ``reference_rows`` are given).
    """
    ours = results.summarize(rows, metric)
    paper = {}
    if reference_rows is not None and any(r["metric"] == metric for r in reference_rows):
        paper = {(s["dataset"], s["pretrained_model"], s["shot"]): s
                 for s in results.summarize(reference_rows, metric)}
    out = []
    for s in ours:
        ref = paper.get((s["dataset"], s["pretrained_model"], s["shot"]))
        source, arch = split_model(s["pretrained_model"])
        out.append(dict(
            s, metric=metric, source=source, arch=arch,
            paper_mean=ref["mean"] if ref else math.nan,
            paper_std=ref["std"] if ref else math.nan, paper_n=ref["n"] if ref else 0,
            diff=s["mean"] - ref["mean"] if ref else math.nan))
    return out


def report_runs(root: results.PathLike, out_dir: results.PathLike | None = None, *,
                expected: Iterable[results.PathLike] = ()) -> epath.Path:
    """Writes the report of the runs under ``root`` (default ``ROOT/report``), beside the
    paper's published cells; returns the path of ``report.md``.

    Raises:
      UserError: ``root`` is not a folder, or holds no finished run.
    """
    runs = scan(root, expected)
    if not runs.rows:
        raise UserError(
            f"no finished run under {paths.absolute(os.fspath(root))} (no {RESULTS_FILE}); "
            f"{len(runs.unfinished)} unfinished, {len(runs.missing)} missing")
    out_dir = paths.path(out_dir) if out_dir else (
        paths.path(root) / "report")
    paper = results.load_paper_results()
    title = f"Transfer results of {paths.absolute(os.fspath(root))}"
    return write(runs.rows, out_dir, reference_rows=paper, runs=runs, title=title)


def report_paper(out_dir: results.PathLike) -> epath.Path:
    """Writes the report of the paper's published results alone; returns ``report.md``."""
    return write(results.load_paper_results(), paths.path(out_dir),
                 title="Published results of Cherti & Jitsev (arXiv 2106.00116)")


def write(rows: Sequence[results.Row], out_dir: epath.Path, *, title: str,
          reference_rows: Sequence[results.Row] | None = None,
          runs: Runs | None = None) -> epath.Path:
    """Writes ``report.md``, ``table.md``, ``table.csv``, ``cells.csv`` and ``figures/*.png``
    of ``rows`` to ``out_dir``, each of our cells beside ``reference_rows``' (the paper's)."""
    out_dir = epath.Path(out_dir)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    present = {r["metric"] for r in rows}
    metrics = [m for m in REPORT_METRICS if m in present] or sorted(present)
    all_cells = [c for m in metrics for c in cells(rows, m, reference_rows)]
    compare = reference_rows is not None
    datasets = sorted({c["dataset"] for c in all_cells}, key=_dataset_key)

    md = [f"# {title}", ""]
    if runs is not None:
        md += _runs_section(runs)
    md += ["Each cell: mean ± std over seeds (n seeds; the last row of a run counts)."
           + (" *paper*: the published value for the same cell (Cherti & Jitsev, arXiv "
              "2106.00116); Δ = ours − paper." if compare else ""),
           "", "Headline table (paste-ready): [table.md](table.md), [table.csv](table.csv); "
           "every cell: [cells.csv](cells.csv).", ""]
    headline = []
    for dataset in datasets:
        mine = [c for c in all_cells if c["dataset"] == dataset]
        main_metric = headline_metric(dataset, {c["metric"] for c in mine})
        headline += [c for c in mine if c["metric"] == main_metric]
        md += [f"## {TARGETS.get(dataset, dataset)} (`{dataset}`)", ""]
        for metric in metrics:
            metric_cells = [c for c in mine if c["metric"] == metric]
            if not metric_cells:
                continue
            png = figures / f"{dataset}_{_slug(metric)}_vs_shots.png"
            ref = _reference_for(reference_rows, dataset, metric,
                                 {c["pretrained_model"] for c in metric_cells})
            results.plot_vs_shots(rows, metric, png, dataset=dataset, reference_rows=ref)
            md += [f"### {metric}", "", f"![{dataset} {metric}](figures/{png.name})", "",
                   *_cell_table(metric_cells, compare), ""]
        main_cells = [c for c in mine if c["metric"] == main_metric]
        md += [f"### Source scale and domain, model size ({main_metric})", ""]
        bars, size = figures / f"{dataset}_sources.png", figures / f"{dataset}_model_size.png"
        _plot_bars(main_cells, bars, compare)
        md += [f"![{dataset} by source](figures/{bars.name})", ""]
        if _plot_model_size(main_cells, size, compare):
            md += [f"![{dataset} model size](figures/{size.name})", "",
                   *_model_size_table(main_cells, compare), ""]
        md += [*_source_table(main_cells, compare), ""]

    table_md, table_rows = _paper_table(headline)
    (out_dir / "table.md").write_text(table_md)
    (out_dir / "table.csv").write_text(_csv_text(table_rows))
    (out_dir / "cells.csv").write_text(_csv_text(
        [["dataset", "metric", "pretrained_model", "source", "arch", "shot", "mean", "std", "n",
          "paper_mean", "paper_std", "paper_n", "diff"]]
        + [[c[k] for k in ("dataset", "metric", "pretrained_model", "source", "arch", "shot",
                           "mean", "std", "n", "paper_mean", "paper_std", "paper_n", "diff")]
           for c in all_cells]))
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    return report


# ----------------------------------------------------------------------------- text


def _runs_section(runs: Runs) -> list[str]:
    n_runs = len({r["path"] for r in runs.rows})
    lines = [f"{n_runs} finished runs ({len(runs.finished)} workdirs with {RESULTS_FILE}), "
             f"{len(runs.unfinished)} unfinished, {len(runs.missing)} missing, "
             f"{len(runs.pretraining)} pre-training runs.", ""]
    for name, listed in (("Unfinished (a workdir without results.csv: run its command "
                          "again to resume)", runs.unfinished),
                         ("Missing (expected, never started)", runs.missing),
                         ("Pre-training runs", runs.pretraining)):
        if listed:
            lines += [f"**{name}:**", "", *(f"- `{p}`" for p in listed), ""]
    return lines


def _fmt(mean: float, std: float, n: int, digits: int = 3) -> str:
    if n == 0 or math.isnan(mean):
        return "–"
    if n == 1 or math.isnan(std):
        return f"{mean:.{digits}f} (1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({n})"


def _ours_and_paper(c: Cell | None, compare: bool) -> str:
    if c is None:
        return "–"
    text = _fmt(c["mean"], c["std"], c["n"])
    if compare and c["paper_n"]:
        text += f" [paper {c['paper_mean']:.3f}]"
    return text


def _cell_table(metric_cells: list[Cell], compare: bool) -> list[str]:
    header = ["pre-trained model", "shots", "ours" if compare else "mean ± std (n)"]
    if compare:
        header += ["paper", "Δ"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in sorted(metric_cells, key=_cell_key):
        row = [f"`{c['pretrained_model']}`", _shot_label(c["shot"]),
               _fmt(c["mean"], c["std"], c["n"])]
        if compare:
            row += [_fmt(c["paper_mean"], c["paper_std"], c["paper_n"]),
                    f"{c['diff']:+.3f}" if not math.isnan(c["diff"]) else "–"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _model_size_table(main_cells: list[Cell], compare: bool) -> list[str]:
    by_key = {(c["source"], c["arch"], c["shot"]): c for c in main_cells}
    sources = sorted({c["source"] for c in main_cells if c["arch"] in ARCHS}, key=_source_key)
    lines = ["| source | shots | R50x1 | R152x4 | R152x4 − R50x1 |", "|---|---|---|---|---|"]
    for source in sources:
        for shot in _shots(c for c in main_cells if c["source"] == source):
            small, large = (by_key.get((source, arch, shot)) for arch in ARCHS)
            gain = f"{large['mean'] - small['mean']:+.3f}" if small and large else "–"
            lines.append(f"| {SOURCES.get(source, source)} | {_shot_label(shot)} | "
                         f"{_ours_and_paper(small, compare)} | {_ours_and_paper(large, compare)}"
                         f" | {gain} |")
    return lines


def _source_table(main_cells: list[Cell], compare: bool) -> list[str]:
    by_key = {(c["pretrained_model"], c["shot"]): c for c in main_cells}
    shots = _shots(main_cells)
    lines = ["| pre-trained model \\ shots | " + " | ".join(_shot_label(s) for s in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for model in _models(main_cells):
        lines.append(f"| {model_caption(model)} | " + " | ".join(
            _ours_and_paper(by_key.get((model, s)), compare) for s in shots) + " |")
    return lines


def _paper_table(headline: list[Cell]) -> tuple[str, list[list[Any]]]:
    """The headline metric per target: one line per pre-trained model, one column per shot."""
    shots = _shots(headline)
    labels = [f"{_shot_label(s)}-shot" if s != results.FULL_SHOT else "full" for s in shots]
    md = ["| target | metric | pre-trained model | " + " | ".join(labels) + " |",
          "|---|---|---|" + "---|" * len(shots)]
    table = [["target", "metric", "pretrained_model"]
             + [f"{label} {part}" for label in labels for part in ("mean", "std", "n")]]
    by_key = {(c["dataset"], c["pretrained_model"], c["shot"]): c for c in headline}
    for dataset in sorted({c["dataset"] for c in headline}, key=_dataset_key):
        mine = [c for c in headline if c["dataset"] == dataset]
        metric = mine[0]["metric"]
        for model in _models(mine):
            found = [by_key.get((dataset, model, s)) for s in shots]
            md.append(f"| {TARGETS.get(dataset, dataset)} | {metric} | {model_caption(model)} | "
                      + " | ".join(_fmt(c["mean"], c["std"], c["n"]) if c else "" for c in found)
                      + " |")
            table.append([dataset, metric, model] + [
                v for c in found for v in ((c["mean"], c["std"], c["n"]) if c else ("", "", ""))])
    return "\n".join(md) + "\n", table


def _csv_text(table: list[list[Any]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for row in table:
        writer.writerow(repr(v) if isinstance(v, float) else v for v in row)
    return text.getvalue()


# ----------------------------------------------------------------------------- figures


def _reference_for(reference_rows, dataset: str, metric: str, models: set[str]):
    """The reference rows of our models' cells, or None where the paper has none."""
    if reference_rows is None:
        return None
    ref = [r for r in reference_rows if r["dataset"] == dataset and r["metric"] == metric
           and r["pretrained_model"] in models]
    return ref or None


def _colour(pretrained_model: str):
    """The paper's scheme: one hue per source, light for R50x1 and dark for R152x4."""
    import matplotlib

    source, arch = split_model(pretrained_model)
    order = list(SOURCES)
    index = order.index(source) if source in order else len(order) + sum(map(ord, source)) % 4
    return matplotlib.colormaps["tab20"]((2 * index + (arch != "152x4")) % 20)


def _plot_bars(main_cells: list[Cell], out_png: epath.Path, compare: bool) -> None:
    """The paper's bar plot: at each shot count one bar per pre-trained model (± std); the
    paper's mean for the same cell as a white diamond."""
    from matplotlib.figure import Figure

    shots, models = _shots(main_cells), _models(main_cells)
    by_key = {(c["pretrained_model"], c["shot"]): c for c in main_cells}
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(6.0, 1.6 * len(shots) + 0.25 * len(models)), 4.8))
    ax = fig.add_subplot()
    marked = False
    for i, model in enumerate(models):
        found = [(j, by_key[(model, s)]) for j, s in enumerate(shots) if (model, s) in by_key]
        x = np.array([j for j, _ in found]) - 0.4 + width * (i + 0.5)
        means = np.array([c["mean"] for _, c in found])
        stds = np.nan_to_num(np.array([c["std"] for _, c in found]))
        ax.bar(x, means, width, yerr=stds, capsize=2, color=_colour(model), ecolor="dimgray",
               edgecolor="white", label=model_caption(model))
        paper = [(xi, c["paper_mean"]) for xi, (_, c) in zip(x, found) if c["paper_n"]]
        if compare and paper:
            ax.scatter(*zip(*paper), marker="D", s=28, facecolor="white", edgecolor="black",
                       zorder=3, label=None if marked else "paper (mean)")
            marked = True
    ax.set_xticks(range(len(shots)), [f"{_shot_label(s)} shot" for s in shots])
    ax.set_xlabel("shots during transfer")
    ax.set_ylabel(main_cells[0]["metric"])
    ax.set_title(f"{TARGETS.get(main_cells[0]['dataset'], main_cells[0]['dataset'])}: "
                 "pre-training source and model (mean ± std over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    results.save_png(fig, out_png)


def _plot_model_size(main_cells: list[Cell], out_png: epath.Path, compare: bool) -> bool:
    """The paper's model-size plot: score of R50x1 and R152x4, one line per source, one panel
    per shot count. False (nothing drawn) without a source in both sizes."""
    from matplotlib.figure import Figure

    by_key = {(c["source"], c["arch"], c["shot"]): c for c in main_cells}
    sources = sorted({c["source"] for c in main_cells if c["arch"] in ARCHS}, key=_source_key)
    shots = [s for s in _shots(main_cells)
             if any(all((src, a, s) in by_key for a in ARCHS) for src in sources)]
    if not shots:
        return False
    fig = Figure(figsize=(2.6 * len(shots) + 2.5, 4.2))
    axes = fig.subplots(1, len(shots), sharey=True, squeeze=False)[0]
    for ax, shot in zip(axes, shots):
        for source in sources:
            found = [by_key.get((source, a, shot)) for a in ARCHS]
            if not all(found):
                continue
            colour = _colour(f"{source}_bit152x4")
            label = SOURCES.get(source, source)
            ax.errorbar([0, 1], [c["mean"] for c in found], fmt="-o", capsize=3, color=colour,
                        yerr=[0 if math.isnan(c["std"]) else c["std"] for c in found],
                        label=label if ax is axes[0] else None)
            if compare and all(c["paper_n"] for c in found):
                ax.plot([0, 1], [c["paper_mean"] for c in found], "--x", color=colour,
                        alpha=0.7, label=f"{label} (paper)" if ax is axes[0] else None)
        ax.set_xticks([0, 1], [f"R{a}" for a in ARCHS])
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(f"{_shot_label(shot)} shot")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(main_cells[0]["metric"])
    fig.suptitle(f"{TARGETS.get(main_cells[0]['dataset'], main_cells[0]['dataset'])}: "
                 "model size per pre-training source")
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    results.save_png(fig, out_png)
    return True


# ----------------------------------------------------------------------------- ordering


def _slug(metric: str) -> str:
    return metric.replace("/", "_")


def _shot_label(shot: str) -> str:
    return shot.split("_")[0]


def _shots(group: Iterable[Cell]) -> list[str]:
    return sorted({c["shot"] for c in group}, key=results.shot_sort_key)


def _source_key(source: str) -> tuple[int, str]:
    order = list(SOURCES)
    return (order.index(source) if source in order else len(order), source)


def _model_sort_key(pretrained_model: str) -> tuple:
    """The paper's legend order: X-ray sources first (R50x1, then R152x4), then natural."""
    source, arch = split_model(pretrained_model)
    natural = source in NATURAL_SOURCES
    return (natural, ARCHS.index(arch) if arch in ARCHS else len(ARCHS), _source_key(source),
            arch)


def _models(group: Iterable[Cell]) -> list[str]:
    return sorted({c["pretrained_model"] for c in group}, key=_model_sort_key)


def _cell_key(c: Cell) -> tuple:
    return (_model_sort_key(c["pretrained_model"]), results.shot_sort_key(c["shot"]))


def _dataset_key(dataset: str) -> tuple[int, str]:
    order = list(TARGETS)
    return (order.index(dataset) if dataset in order else len(order), dataset)
