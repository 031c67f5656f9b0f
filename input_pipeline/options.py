"""The data and preprocessing part of the config schema: its defaults, read once, and the checks.

Pure Python at import: `bit_medical.experiment.base()` builds ``config.data`` and ``config.pp``
from `DATA_DEFAULTS` and `PP_DEFAULTS`; `resolve` turns a config (which may set only some of
these fields) into one checked `Options` that the pipeline's stages read.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from input_pipeline.errors import UserError

DATA_DEFAULTS: dict[str, Any] = dict(
    name="", train_split="train", eval_splits={"test": "test"},
    valid_ratio=0.0, valid_seed=0, train_dir="", val_dir="", shots=0, oversample=False,
    multilabel_force_classification=False, skip_corrupt=False,
    label_set="intersection", builder_config="512", shuffle_buffer=10_000,
    # Few-shot on a multi-label target: "single" (the reference: needs
    # multilabel_force_classification, single-positive images as classes) | "per_label" (stays
    # multi-label, masked BCE; every label gets >= shots positive images; not in the reference).
    multilabel_shots="single",
    data_dir=None,   # TFDS data_dir
    views=None,      # X-ray views to keep; None: the reference's default (input_pipeline.registry)
)
PP_DEFAULTS: dict[str, Any] = dict(
    kind="bit",      # bit | inception | xray
    resize=512, crop=480,
    norm="bit")      # bit ([-1, 1]) | imagenet (mean/std) | "" (as the pre-trained model)

MULTILABEL_SHOTS = ("single", "per_label")


@dataclasses.dataclass(frozen=True)
class Options:
    """What get_datasets reads from a config, with the schema's defaults filled in."""
    seed: int
    batch: int
    eval_batch: int
    data: types.SimpleNamespace   # every DATA_DEFAULTS field
    pp: types.SimpleNamespace     # every PP_DEFAULTS field


def _with_defaults(section, defaults: dict, label: str) -> types.SimpleNamespace:
    given = dict(section) if section is not None else {}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UserError(f"Unknown config.{label} field(s) {unknown}; valid: {sorted(defaults)}")
    return types.SimpleNamespace(**{**defaults, **given})


def resolve(config, process_count: int, start_step: int) -> Options:
    """The checked `Options` of `config`; ValueError/UserError naming the bad field."""
    # Imported here: the config schema (bit_medical.experiment) reads this module without TensorFlow.
    from input_pipeline import preprocess, transforms
    data = _with_defaults(config.data, DATA_DEFAULTS, "data")
    pp = _with_defaults(config.pp, PP_DEFAULTS, "pp")
    data.eval_splits = dict(data.eval_splits or {})
    if pp.kind not in transforms.TRANSFORMS:
        raise UserError(f"Unknown pp.kind {pp.kind!r}; valid: {list(transforms.TRANSFORMS)}")
    preprocess.check_norm(pp.norm)
    if int(pp.crop) <= 0:
        raise ValueError(f"pp.crop must be positive, got {pp.crop}")
    if pp.kind in ("bit", "inception") and int(pp.resize or 0) < int(pp.crop):
        raise ValueError(f"pp.resize ({pp.resize}) must be >= pp.crop ({pp.crop}) for pp.kind {pp.kind!r}")
    for field in ("batch_size", "eval_batch_size"):
        value = int(config[field])
        if value <= 0 or value % process_count:
            raise ValueError(f"config.{field}={value} must be a positive multiple of the host count {process_count}")
    if int(data.shots) < 0:
        raise ValueError(f"data.shots must be >= 0, got {data.shots}")
    if data.multilabel_shots not in MULTILABEL_SHOTS:
        raise ValueError(f"Unknown data.multilabel_shots {data.multilabel_shots!r}; valid: {list(MULTILABEL_SHOTS)}")
    if data.multilabel_shots == "per_label" and data.multilabel_force_classification:
        raise ValueError("data.multilabel_shots='per_label' keeps the target multi-label; it cannot be combined "
                         "with data.multilabel_force_classification=True (use multilabel_shots='single')")
    if not 0.0 <= float(data.valid_ratio) < 1.0:
        raise ValueError(f"data.valid_ratio must be in [0, 1), got {data.valid_ratio}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    return Options(seed=int(config.seed), batch=int(config.batch_size), eval_batch=int(config.eval_batch_size),
                   data=data, pp=pp)
