"""The experiment config schema, the config files' arguments and command-line overrides.

``base()`` holds every field the train loop and the input pipeline read, with defaults; the
files in ``configs/`` start from it, set what their kind of experiment needs and lock it, so a
mistyped override (``--config.optim.base_lr``) fails. ``load`` runs a config file with its
``file.py:key=value`` argument (read by ``parse``); ``override`` applies ``--config.FIELD=value``.
Bad input raises ``UserError`` naming the valid choices.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any

import ml_collections

from input_pipeline import options
from input_pipeline.errors import UserError

_TRUE = ("1", "true", "yes", "y")
_FALSE = ("0", "false", "no", "n")


def _convert(label: str, text: str, kind: type) -> Any:
    """``text`` as a ``kind`` (bool, int, float, tuple, dict; anything else stays a str)."""
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise UserError(f"{label}={text!r}: expected true or false")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise UserError(f"{label}={text!r}: expected {kind.__name__}") from None
    if kind is tuple:  # (1, 5) / [1, 5] / 1,5 / PA,AP
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if kind in (dict, ml_collections.ConfigDict):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, dict):
            raise UserError(f"{label}={text!r}: expected a dict such as {{'test': 'test'}}")
        return value
    return text


def parse(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses ``"key=value,key=value"`` into the defaults' types; unknown keys fail."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"config argument {item!r} is not key=value")
        if key not in defaults:
            raise UserError(f"unknown config argument {key!r}; valid: {', '.join(defaults)}")
        values[key] = _convert(f"config argument {key}", text.strip(), type(defaults[key]))
    return ml_collections.ConfigDict(values)


def choice(name: str, value: str, valid) -> str:
    """``value`` if it is one of ``valid``, else a UserError listing them."""
    if value not in valid:
        raise UserError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
    return value


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of ``FILE.py[:ARGUMENT]``: ``get_config(ARGUMENT)`` of the file."""
    path, colon, arg = spec.partition(":")
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        files = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(
            folder) else []
        raise UserError(f"no config file {path!r}" + (
            f"; {folder} holds {', '.join(files)}" if files else ""))
    name = "bit_medical_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if colon else module.get_config()


def override(config: ml_collections.ConfigDict, field: str, text: str | None) -> None:
    """Sets ``config.<field>`` (a dotted path) to ``text`` read as the field's type.

    ``text`` None (a bare ``--config.FIELD``) sets a bool field to true. An unknown field
    lists the valid ones at its level; a value of the wrong type names the expected one.
    """
    label = f"--config.{field}"
    parts = field.split(".")
    holder, where = config, "config"
    for depth, name in enumerate(parts):
        if not isinstance(holder, ml_collections.ConfigDict):
            raise UserError(f"{label}: {where} is {holder!r}, not a group of fields")
        if name not in holder:
            close = difflib.get_close_matches(name, list(holder), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{label}: {where} has no field {name!r}{hint}; valid: "
                            f"{', '.join(sorted(holder))}")
        if depth < len(parts) - 1:
            holder, where = holder[name], f"{where}.{name}"
    key = parts[-1]
    kind = holder.get_type(key)
    if text is None:
        if kind is not bool:
            raise UserError(f"{label} needs a value: {label}=VALUE")
        text = "true"
    try:
        holder[key] = _convert(label, text, kind)
    except TypeError as e:  # the config's own type check (e.g. a str for a tuple field)
        raise UserError(f"{label}={text!r}: {e}") from None


def data_section(**values: Any) -> ml_collections.ConfigDict:
    """A ``data`` section: the fields and defaults of `input_pipeline.options`, then `values`."""
    data = dict(options.DATA_DEFAULTS)
    # Typed references, so --config.data.views=... and --config.data.data_dir=... parse.
    data["data_dir"] = ml_collections.FieldReference(data["data_dir"], field_type=str)
    data["views"] = ml_collections.FieldReference(data["views"], field_type=tuple)
    section = ml_collections.ConfigDict(data)
    for key, value in values.items():   # assignment replaces a nested dict (update would merge)
        section[key] = value
    return section


def pp_section(**values: Any) -> ml_collections.ConfigDict:
    """A ``pp`` section: the fields and defaults of `input_pipeline.options`, then `values`."""
    return ml_collections.ConfigDict({**options.PP_DEFAULTS, **values})


def probe_target(name: str, train_split: str, test_split: str, *, pp: dict,
                 **data: Any) -> ml_collections.ConfigDict:
    """One linear-probe target with its own data and preprocessing (as big_vision's few-shot
    evaluators): ``data`` reads dataset `name` (other data fields from `data`, e.g. data_dir);
    one unaugmented pass over its train split (the k-shot pool) and one over its eval split
    ``test`` give the probe its features;
    ``pp`` (kind, resize, crop) prepares its images, normalised with the run's ``pp.norm`` (the
    features come from the run's model)."""
    section = data_section(name=name, train_split=train_split,
                           eval_splits={"test": test_split}, **data)
    images = pp_section(**pp)
    del images["norm"]
    return ml_collections.ConfigDict(dict(data=section, pp=images))


def base() -> ml_collections.ConfigDict:
    """Every config field with its default (see configs/*.py for the values of experiments)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ""             # architecture (BiT-R50x1, ...) when training from scratch
    c.pretrained = ""        # released BiT name, .npz / PyTorch file, or a run's workdir
    # The classifier head's init, for a model from scratch and for every transfer (which
    # always starts from a new head): reference (PyTorch's default, as the paper) | zero (BiT)
    c.head_init = "reference"
    c.dtype = "float32"      # compute dtype: float32 | bfloat16 (parameters stay float32)
    c.remat = False          # recompute activations in the backward pass (memory)
    c.fsdp = 1               # devices sharing each parameter tensor (1: replicated)

    c.batch_size = 128       # global, per optimiser step
    c.batch_split = 1        # micro-batches per step (gradient accumulation)
    c.eval_batch_size = 256
    c.total_steps = 0        # > 0 overrides the schedule's length
    c.mixup_alpha = -1.0     # >= 0 overrides the BiT-HyperRule mixup rule
    c.log_every = 10
    c.eval_every = 100       # 0: evaluate only at the end
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    # Eval split whose loss picks WORKDIR/export_best, the export `pretrained=WORKDIR` transfers
    # (the reference's pre-training keeps the best model by validation loss); empty: none.
    c.best_split = ""

    c.optim = ml_collections.ConfigDict(dict(
        name="sgd_agc", base_lr=0.001, momentum=0.9, nesterov=True, weight_decay=0.0,
        clipping=0.01, eps=1e-3, unclipped=("head/conv2d/kernel",)))
    c.schedule = ml_collections.ConfigDict(dict(
        kind="hyperrule",    # hyperrule (transfer) | step | cosine (pre-training)
        epochs=90, warmup_epochs=5, min_lr=0.0,
        # step/cosine warm-up start, as a fraction of the peak lr (the reference's Horovod
        # warm-up starts at peak / K for K workers)
        warmup_start_factor=0.0))

    c.data = data_section()
    c.pp = pp_section()

    # Linear few-shot probe on frozen features during pre-training: name -> `probe_target(...)`.
    c.probe = ml_collections.ConfigDict(dict(targets={}, shots=(1, 5, 10, 25), l2=1.0))
    # Names in results.csv (the paper's schema); empty: derived from the run.
    c.results = ml_collections.ConfigDict(dict(dataset="", pretrained_model=""))
    return c
