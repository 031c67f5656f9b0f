"""The params-only export: what a trained run hands to other code.

A run's workdir ``DIR`` holds ``DIR/export`` (the last parameters) and, when the run picks a
best checkpoint by validation loss (pre-training, ``config.best_split``), ``DIR/export_best``,
both laid out as::

    model.json   {"format", "model", "block_units", "width", "num_classes", "label_names",
                  "multilabel", "image_size", "preprocessing": {..., "mean", "std"}, ...}
    params/      an Orbax checkpoint of the parameter tree, saved as host numpy arrays

Any JAX code restores it without importing this project (Orbax takes only absolute paths)::

    import json, os, orbax.checkpoint as ocp
    DIR = os.path.abspath(os.path.expanduser(DIR))
    params = ocp.StandardCheckpointer().restore(f"{DIR}/export/params")
    meta = json.load(open(f"{DIR}/export/model.json"))
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath

from bit_medical import paths

FORMAT = "bit_medical.export/2"
# Version 1 lacked "model", the normalisation's mean/std and the best-export fields; what
# this project reads from an export is in both.
READABLE_FORMATS = ("bit_medical.export/1", FORMAT)
EXPORT_DIRNAME = "export"
BEST_EXPORT_DIRNAME = "export_best"
META_FILENAME = "model.json"
PARAMS_DIRNAME = "params"


def export_dir(directory: str | os.PathLike) -> epath.Path:
    """The export a path names: itself if it is one, else a workdir's ``export_best`` (the
    best by validation loss, as the reference's fine-tuning loads) or else its ``export``.

    The result is absolute (``paths.path``), as Orbax needs; it may be a ``gs://`` URL.
    """
    directory = paths.path(directory)
    for candidate in (directory, directory / BEST_EXPORT_DIRNAME):
        if (candidate / META_FILENAME).exists():
            return candidate
    return directory / EXPORT_DIRNAME


def save(directory: str | os.PathLike, params: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """Writes ``params`` and ``meta`` (JSON-serialisable) to ``directory``; returns its path."""
    import orbax.checkpoint as ocp  # deferred: orbax is slow to import and only needed here

    directory = paths.path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    host_params = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), params)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / PARAMS_DIRNAME, host_params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:  # every process joins the Orbax save; one writes the JSON
        (directory / META_FILENAME).write_text(json.dumps({"format": FORMAT, **meta}, indent=2))
    return os.fspath(directory)


def load_meta(directory: str | os.PathLike) -> dict:
    """The ``model.json`` of an export (or of a workdir holding ``export/``)."""
    meta_path = export_dir(directory) / META_FILENAME
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No export at {directory}: {META_FILENAME} is missing (run `bit-medical export`)"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON: {e}") from e
    if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{meta_path}: unknown export format {meta.get('format')!r}, "
                         f"expected one of {', '.join(READABLE_FORMATS)}")
    return meta


def load(directory: str | os.PathLike) -> tuple[dict, dict]:
    """Reads an export (or a workdir's, see ``export_dir``): returns ``(params, meta)``, the
    order of ``pretrained.load_params``."""
    import orbax.checkpoint as ocp

    meta = load_meta(directory)
    params = ocp.StandardCheckpointer().restore(export_dir(directory) / PARAMS_DIRNAME)
    return params, meta
