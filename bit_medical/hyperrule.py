"""BiT-HyperRule: fine-tuning resolution, schedule and mixup chosen from the dataset size.

Reference: SLAMPAI/large-scale-pretraining-transfer ``transfer_learning/finetuning/
bit_hyperrule.py`` (itself from google-research/big_transfer) and how ``finetune.py`` uses
it. The facts followed here, each named after the reference function:

* ``get_resolution``: area ``h * w < 96 * 96`` -> (resize 160, crop 128), else (512, 480).
* ``get_mixup``: alpha 0.0 below 20 000 training images, else 0.1.
* ``get_schedule``: supports (warm-up end, three decays, end) by size class
  ``< 20 000``: (100, 200, 300, 400, 500); ``< 500 000``: (500, 3000, 6000, 9000, 10 000);
  else (500, 6000, 12 000, 18 000, 20 000).
* ``get_lr(step)``: ``base_lr * step / warmup`` while ``step < warmup`` (0 at step 0); then
  ``base_lr`` divided by 10 for every decay support ``s`` with ``s < step`` -- strictly: the
  drop comes on the step *after* the support (step 201, not 200); ``None`` (stop) from
  ``step >= end``.
* ``get_max_train_set(steps)``: the fixed-length runs of the paper pass ``--steps`` (500
  for few-shot, 10 000 for full transfer, also 20 000) and the size rule is then evaluated
  at 19 999, 499 999 or infinity -- schedule *and* mixup come from that size class, not
  from the real dataset size.
* ``get_final_lr``: when training continues past the schedule end, the lr stays at the
  value of the last scheduled step (base_lr / 1000).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import optax

from bit_medical.optim import linear_warmup

# (size class upper bound, exclusive; supports). Sizes below the bound use the supports.
_SIZE_CLASSES = (
    (20_000, (100, 200, 300, 400, 500)),
    (500_000, (500, 3_000, 6_000, 9_000, 10_000)),
    (math.inf, (500, 6_000, 12_000, 18_000, 20_000)),
)
_MIXUP_MIN_SIZE = 20_000
_MIXUP_ALPHA = 0.1
_SMALL_AREA = 96 * 96
_SMALL_RESOLUTION = (160, 128)
_LARGE_RESOLUTION = (512, 480)
# The paper's fixed lengths: few-shot runs 500 steps, full runs 10 000.
FEWSHOT_STEPS = 500
FULL_STEPS = 10_000
RULES = ("paper", "bit")


def _check_size(dataset_size) -> float:
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, (int, float)):
        raise ValueError(f"dataset_size must be a number of images, got {dataset_size!r}")
    if not dataset_size >= 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size!r}")
    return dataset_size


def resolution(original_resolution: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the source images -> (resize, crop) for training (``get_resolution``).

    Evaluation resizes straight to ``crop``.
    """
    try:
        h, w = original_resolution
    except (TypeError, ValueError):
        raise ValueError(
            f"resolution expects (height, width), got {original_resolution!r}"
        ) from None
    if not (h > 0 and w > 0):
        raise ValueError(f"resolution expects positive (height, width), got {(h, w)!r}")
    return _SMALL_RESOLUTION if h * w < _SMALL_AREA else _LARGE_RESOLUTION


def mixup_alpha(dataset_size: float) -> float:
    """Mixup Beta(alpha, alpha) parameter: 0.0 below 20 000 images, else 0.1 (``get_mixup``)."""
    return 0.0 if _check_size(dataset_size) < _MIXUP_MIN_SIZE else _MIXUP_ALPHA


def schedule_boundaries(dataset_size: float) -> tuple[int, int, int, int, int]:
    """(warm-up end, decay 1, decay 2, decay 3, end) for ``dataset_size`` (``get_schedule``)."""
    size = _check_size(dataset_size)
    for upper, supports in _SIZE_CLASSES[:-1]:
        if size < upper:
            return supports
    return _SIZE_CLASSES[-1][1]  # the reference's ``else``: any larger size, inf included


def train_steps(dataset_size: float) -> int:
    """Number of optimiser steps of the size rule: the last support (500, 10 000 or 20 000)."""
    return schedule_boundaries(dataset_size)[-1]


def size_for_steps(steps: int) -> float:
    """The dataset size the rule is evaluated at for a fixed-length run (``get_max_train_set``).

    500 -> 19 999, 10 000 -> 499 999, 20 000 -> inf: the largest size of the class whose
    schedule ends at ``steps``.
    """
    valid = [supports[-1] for _, supports in _SIZE_CLASSES]
    for upper, supports in _SIZE_CLASSES:
        if steps == supports[-1]:
            return upper - 1 if math.isfinite(upper) else math.inf
    raise ValueError(f"fixed-length runs must use one of {valid} steps, got {steps!r}")


def lr_schedule(base_lr: float, dataset_size: float) -> optax.Schedule:
    """The BiT-HyperRule learning rate per optimiser step: ``get_lr(step)`` as a schedule.

    Linear warm-up from 0 (``base_lr * step / warmup``), then ``base_lr / 10**k`` where ``k``
    counts decay supports strictly below the step. Past the end the reference stops (or,
    continuing with ``--steps``, keeps ``get_final_lr``); the schedule returns that final
    value, ``base_lr / 1000``. For the paper's fixed-length runs pass
    ``finetune_schedule(...).rule_size`` (or ``size_for_steps(steps)``) as ``dataset_size``.
    """
    if not base_lr >= 0:
        raise ValueError(f"base_lr must be >= 0, got {base_lr}")
    warmup, *decays, _end = schedule_boundaries(dataset_size)
    # piecewise_constant_schedule scales from count >= key; the joined piece counts from the
    # warm-up end and the reference drops one step after each support: key = s + 1 - warmup.
    staircase = optax.piecewise_constant_schedule(
        base_lr, {s + 1 - warmup: 0.1 for s in decays}
    )
    return optax.join_schedules([linear_warmup(base_lr, warmup), staircase], [warmup])


class FinetuneSchedule(NamedTuple):
    """Everything the size rule fixes for one fine-tuning run."""

    total_steps: int
    boundaries: tuple[int, int, int, int, int]  # as schedule_boundaries
    rule_size: float  # dataset size the rule was evaluated at (19 999 for 500 steps, ...)
    mixup_alpha: float

    def lr_schedule(self, base_lr: float) -> optax.Schedule:
        """This run's learning-rate schedule (``lr_schedule(base_lr, rule_size)``)."""
        return lr_schedule(base_lr, self.rule_size)


def schedule_for_steps(steps: int) -> FinetuneSchedule:
    """A fixed-length run of ``steps`` (500, 10 000 or 20 000), as ``finetune.py --steps``."""
    size = size_for_steps(steps)
    return FinetuneSchedule(steps, schedule_boundaries(size), size, mixup_alpha(size))


def finetune_schedule(
    dataset_size: int, *, shots: int | None = None, rule: str = "paper"
) -> FinetuneSchedule:
    """Length, supports and mixup of a fine-tuning run.

    ``rule="paper"``: the fixed lengths of the paper's runs -- 500 steps when ``shots`` is
    given (few-shot), 10 000 otherwise -- with the schedule and mixup of the matching size
    class (``get_max_train_set``); ``dataset_size`` is only validated. ``rule="bit"``: the
    official size rule on ``dataset_size``, the number of training images actually used
    (for a few-shot run, the size of the k-shot subset).
    """
    _check_size(dataset_size)
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ValueError(f"shots must be None or an int >= 1, got {shots!r}")
    if rule == "paper":
        return schedule_for_steps(FEWSHOT_STEPS if shots is not None else FULL_STEPS)
    if rule == "bit":
        supports = schedule_boundaries(dataset_size)
        return FinetuneSchedule(supports[-1], supports, dataset_size, mixup_alpha(dataset_size))
    raise ValueError(f"unknown fine-tuning rule {rule!r}; valid names: {list(RULES)}")


__all__ = [
    "FEWSHOT_STEPS",
    "FULL_STEPS",
    "FinetuneSchedule",
    "RULES",
    "finetune_schedule",
    "lr_schedule",
    "mixup_alpha",
    "resolution",
    "schedule_boundaries",
    "schedule_for_steps",
    "size_for_steps",
    "train_steps",
]
