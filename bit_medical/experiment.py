"""The experiment config schema and the arguments of the config files.

``base()`` holds every field the train loop and the input pipeline read, with defaults; the
files in ``configs/`` start from it, set what their kind of experiment needs and lock it, so a
mistyped override (``--config.optim.base_lr``) fails. ``parse`` reads the ``file.py:key=value``
argument of a config file.
"""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE = ("1", "true", "yes", "y")
_FALSE = ("0", "false", "no", "n")


def _convert(key: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"config argument {key}={text!r}: expected true or false")
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise ValueError(f"config argument {key}={text!r}: expected {kind.__name__}"
                                 ) from None
    return text


def parse(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses ``"key=value,key=value"`` into the defaults' types; unknown keys fail."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"config argument {item!r} is not key=value")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; valid: {', '.join(defaults)}")
        values[key] = _convert(key, text.strip(), defaults[key])
    return ml_collections.ConfigDict(values)


def choice(name: str, value: str, valid) -> str:
    """``value`` if it is one of ``valid``, else a ValueError listing them."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
    return value


def base() -> ml_collections.ConfigDict:
    """Every config field with its default (see configs/*.py for the values of experiments)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ""             # architecture (BiT-R50x1, ...) when training from scratch
    c.pretrained = ""        # released BiT name, .npz / PyTorch file, or a run's workdir
    c.zero_head = False      # zero-initialised head when training from scratch
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

    c.optim = ml_collections.ConfigDict(dict(
        name="sgd_agc", base_lr=0.001, momentum=0.9, nesterov=True, weight_decay=0.0,
        clipping=0.01, eps=1e-3, unclipped=("head/conv2d/kernel",)))
    c.schedule = ml_collections.ConfigDict(dict(
        kind="hyperrule",    # hyperrule (transfer) | step | cosine (pre-training)
        rule="paper",        # hyperrule: paper (500 / 10000 steps) | bit (size rule)
        epochs=90, warmup_epochs=5, min_lr=0.0))

    c.data = ml_collections.ConfigDict(dict(
        name="", train_split="train", eval_splits={"test": "test"},
        valid_ratio=0.0, valid_seed=0, train_dir="", val_dir="", shots=0, oversample=False,
        multilabel_force_classification=False, skip_corrupt=False,
        label_set="intersection", builder_config="512", shuffle_buffer=10_000))
    # Few-shot on a multi-label target: "single" (the reference: needs
    # multilabel_force_classification, single-positive images as classes) | "per_label" (stays
    # multi-label, masked BCE; every label gets >= shots positive images; not in the reference).
    c.data.multilabel_shots = "single"
    # Typed references, so --config.data.views=... and --config.data.data_dir=... parse.
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data_dir
    c.data.views = ml_collections.FieldReference(None, field_type=tuple)  # X-ray; None: ref default
    c.pp = ml_collections.ConfigDict(dict(
        kind="bit",          # bit | inception | xray
        resize=512, crop=480,
        norm="bit"))         # bit ([-1, 1]) | imagenet (mean/std) | "" (as the pre-trained model)

    # Linear few-shot probe on frozen features during pre-training: name -> target.
    c.probe = ml_collections.ConfigDict(dict(targets={}, shots=(1, 5, 10, 25), l2=1.0))
    # Names in results.csv (the paper's schema); empty: derived from the run.
    c.results = ml_collections.ConfigDict(dict(dataset="", pretrained_model=""))
    return c
