"""The paper's optimisers as optax chains, gradient accumulation, pre-training schedules.

Reference: SLAMPAI/large-scale-pretraining-transfer, ``transfer_learning/optim/sgd_agc.py``
(``SGD_AGC.step``), ``transfer_learning/optim/builder.py`` and
``transfer_learning/lr_scheduler/builder.py``. DESIGN.md, "Reference semantics", section
"Optimiser", states the rules; each function says which line it follows.

Update order of ``SGD_AGC.step`` (and of ``torch.optim.SGD`` without the first part):

1. adaptive gradient clipping (AGC, NFNets) per output unit,
2. L2 weight decay added to the (clipped) gradient: ``d = g + wd * w``,
3. momentum with PyTorch semantics: ``buf = mu * buf + d`` (``buf = d`` on the first step),
   Nesterov step ``d + mu * buf``,
4. ``w -= lr * step``.

``optax.trace`` starts its buffer at zero, so its first update is ``buf = 0 * mu + d = d``:
the same as PyTorch's first-step ``buf = clone(d)``; tests/test_optim.py checks 20 steps
against ``torch.optim.SGD`` numerically.
"""

from __future__ import annotations

import math
import types
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

# The reference's SGD_AGC skips only tensors that are 2-D or 4-D *and* whose first PyTorch
# dimension equals the number of classes (``len(p.shape) in (2, 4) and p.shape[0] ==
# output_size``). In this project's tree that is exactly the classifier kernel; the head's
# bias (1-D) IS clipped by the reference, as one vector: its gradient's norm is held to
# clipping * max(||bias||, eps). With the reference's new head (PyTorch's default init, bias
# uniform in +-1/sqrt(C)) ||bias|| is about sqrt(K / (3 C)), 0.04 for 10 classes on R50x1's
# 2048 features, so its gradient may reach a norm of ~4e-4 and the bias moves (and its
# bound grows with it); with BiT's zero head the bound is clipping * eps = 1e-5, which keeps
# the bias near zero for a whole fine-tuning run. The random head thus also frees the bias.
# We reproduce the reference's rule by default; ``unclipped=("head",)`` leaves the whole
# head unclipped instead.
REFERENCE_UNCLIPPED = ("head/conv2d/kernel",)

# Largest parameter rank the AGC partition below has a transformation for.
_MAX_RANK = 8

_UNCLIPPED_LABEL = "unclipped"


def _path_names(path) -> tuple[str, ...]:
    """Turns a jax key path into plain names ('block1', 'unit01', ...)."""
    names = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            names.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            names.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            names.append(str(entry.idx))
        else:
            names.append(str(entry))
    return tuple(names)


def _unit_axes(rank: int) -> tuple[int, ...] | None:
    """Axes of a unit-wise norm: all but the last (HWIO / IO output axis); whole for rank <= 1."""
    # timm and the reference take the norm of the whole tensor for rank <= 1, and over all
    # PyTorch axes but the first (the output unit) otherwise; HWIO puts that unit last.
    return None if rank <= 1 else tuple(range(rank - 1))


def _validate_unclipped(unclipped: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    if isinstance(unclipped, str):
        raise ValueError(
            f"unclipped must be a sequence of parameter paths such as ('head',), "
            f"got the string {unclipped!r}"
        )
    prefixes = []
    for entry in unclipped:
        if not isinstance(entry, str) or not entry.strip("/"):
            raise ValueError(f"unclipped entries must be non-empty 'a/b/c' paths, got {entry!r}")
        prefixes.append(tuple(entry.strip("/").split("/")))
    return tuple(prefixes)


def adaptive_clip(
    clipping: float = 0.01,
    eps: float = 1e-3,
    *,
    unclipped: Sequence[str] = REFERENCE_UNCLIPPED,
) -> optax.GradientTransformation:
    """AGC (Brock et al. 2021) per output unit, as ``SGD_AGC.step``'s first loop does.

    For each parameter ``w`` with gradient ``g`` and each output unit (the last axis of an
    HWIO / IO kernel; the whole tensor for rank <= 1): ``max_norm = clipping *
    max(||w_unit||, eps)``; if ``||g_unit|| > max_norm`` then ``g_unit *= max_norm /
    max(||g_unit||, 1e-6)``.

    ``unclipped``: '/'-separated path prefixes of parameters left unclipped ("head" means
    everything under the top-level key ``head``; "head/conv2d/kernel" only that leaf). Each
    entry must match at least one parameter, so a typo fails loudly. The default reproduces
    the reference (see ``REFERENCE_UNCLIPPED``).

    Built from ``optax.adaptive_grad_clip`` with explicit axes, one per parameter rank,
    inside ``optax.partition``. Its default axis rule is not used because it first squeezes
    size-1 axes (a (1, 1, 1, O) kernel would be normed as a whole) and norms rank-3
    tensors over axis 0 only; the explicit axes give timm's/the reference's rule for any
    shape. The clip itself (``where(g_norm < max_norm, g, g * max_norm / max(g_norm,
    1e-6))``) is the reference's formula.
    """
    if clipping < 0 or eps < 0:
        raise ValueError(f"clipping and eps must be >= 0, got clipping={clipping}, eps={eps}")
    prefixes = _validate_unclipped(unclipped)

    def labels(tree):
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        used = [False] * len(prefixes)
        out = []
        for path, leaf in flat:
            names = _path_names(path)
            label = None
            for i, prefix in enumerate(prefixes):
                if names[: len(prefix)] == prefix:
                    used[i] = True
                    label = _UNCLIPPED_LABEL
            if label is None:
                rank = jnp.ndim(leaf)
                if rank > _MAX_RANK:
                    raise ValueError(
                        f"adaptive_clip: parameter {'/'.join(names)} has rank {rank}, "
                        f"at most {_MAX_RANK} is supported"
                    )
                label = f"rank{rank}"
            out.append(label)
        missing = [
            "/".join(prefix) for prefix, hit in zip(prefixes, used, strict=True) if not hit
        ]
        if missing:
            top = sorted({_path_names(path)[0] for path, _ in flat if path})
            raise ValueError(
                f"adaptive_clip: unclipped entries {missing} match no parameter; "
                f"top-level keys are {top}"
            )
        return jax.tree_util.tree_unflatten(treedef, out)

    transforms = {_UNCLIPPED_LABEL: optax.identity()}
    for rank in range(_MAX_RANK + 1):
        transforms[f"rank{rank}"] = optax.adaptive_grad_clip(
            clipping, eps=eps, axis=_unit_axes(rank)
        )
    return optax.partition(transforms, labels)


def _momentum_and_lr(learning_rate, momentum: float, nesterov: bool):
    if momentum < 0:
        raise ValueError(f"momentum must be >= 0, got {momentum}")
    parts = []
    if momentum:
        # optax.trace: buf = g + mu * buf (zero start == PyTorch's first buf = g);
        # nesterov: g + mu * buf, exactly torch.optim.SGD's d_p.add(buf, alpha=momentum).
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return parts


def _weight_decay(weight_decay: float):
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    # PyTorch's coupled L2: d_p = grad + wd * p, on every parameter (the reference passes
    # model.parameters() without groups, so GroupNorm scales and biases decay too).
    return [optax.add_decayed_weights(weight_decay)] if weight_decay else []


def sgd_agc(
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    clipping: float = 0.01,
    eps: float = 1e-3,
    unclipped: Sequence[str] = REFERENCE_UNCLIPPED,
) -> optax.GradientTransformation:
    """The reference's ``SGD_AGC``: AGC -> L2 decay -> SGD momentum (Nesterov) -> -lr.

    ``learning_rate`` is a float or an optax schedule evaluated at the optimiser step
    (0 on the first update, as the reference's ``get_lr(step)``). Defaults are the
    reference's (``builder.py`` passes ``nesterov=True``; ``SGD_AGC`` defaults
    ``clipping=1e-2, eps=1e-3``); fine-tuning uses ``weight_decay=0``, X-ray pre-training
    ``1e-4``. See ``adaptive_clip`` for ``unclipped``.
    """
    return optax.chain(
        adaptive_clip(clipping, eps, unclipped=unclipped),
        *_weight_decay(weight_decay),
        *_momentum_and_lr(learning_rate, momentum, nesterov),
    )


def sgd(
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """``torch.optim.SGD(momentum, weight_decay, nesterov=True)``: the ImageNet pre-training one.

    Same chain as ``sgd_agc`` without the clipping (the reference's ``optim.type: SGD``).
    """
    return optax.chain(
        *_weight_decay(weight_decay),
        *_momentum_and_lr(learning_rate, momentum, nesterov),
    )


# Config name -> constructor, as the reference's builder dispatches on ``optim.type``.
OPTIMIZERS = types.MappingProxyType({"sgd": sgd, "sgd_agc": sgd_agc})


def get_optimizer(
    name: str, learning_rate: float | optax.Schedule, **kwargs: Any
) -> optax.GradientTransformation:
    """Builds the optimiser called ``name`` ("sgd" or "sgd_agc", case-insensitive)."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[key](learning_rate, **kwargs)


def _as_float(count) -> jax.Array:
    return jnp.asarray(count, dtype=jnp.float32)


def linear_warmup(
    peak: float, warmup_steps: int, *, start_factor: float = 0.0, offset: int = 0
) -> optax.Schedule:
    """``peak * (f + (1 - f) * min(step + offset, W) / W)`` with ``f = start_factor``.

    Written out rather than ``optax.linear_schedule``, whose ``end - (end - init) * (1 -
    s/W)`` form loses up to ~1e-5 relative precision in float32 at the first steps; the
    reference evaluates ``base_lr * step / W`` directly. ``W == 0`` gives a constant peak.
    """
    if warmup_steps == 0:
        return optax.constant_schedule(peak)

    def schedule(count):
        progress = jnp.minimum(_as_float(count) + offset, warmup_steps)
        if start_factor == 0.0:
            return peak * progress / warmup_steps
        return peak * (start_factor + (1.0 - start_factor) * progress / warmup_steps)

    return schedule


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _step_schedule(peak, steps_per_epoch, epochs, warmup_steps, decay_epochs, min_lr, f):
    """The reference's ``adjust_learning_rate_step`` (``min_lr`` is not used)."""
    del epochs, min_lr
    boundaries = [e * steps_per_epoch for e in decay_epochs]
    # The reference compares integer epochs (``epoch < 30``), so the drop happens on the
    # first step of epoch 30: step >= 30 * steps_per_epoch. Inside the joined schedule the
    # count restarts at the warm-up end.
    decay = optax.piecewise_constant_schedule(
        peak, {b - warmup_steps: 0.1 for b in boundaries}
    )
    # Warm-up uses the fractional epoch ``epoch + (batch_idx + 1) / nb_iter``: offset 1.
    warmup = linear_warmup(peak, warmup_steps, start_factor=f, offset=1)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def _cosine_schedule(peak, steps_per_epoch, epochs, warmup_steps, decay_epochs, min_lr, f):
    """The reference's ``adjust_learning_rate_cosine``."""
    del decay_epochs
    total = epochs * steps_per_epoch
    if total <= warmup_steps:
        raise ValueError(
            f"cosine schedule needs epochs > warmup_epochs, got {epochs} epochs of "
            f"{steps_per_epoch} steps and {warmup_steps} warm-up steps"
        )
    # The reference's T_cur = (s + 1) / steps_per_epoch - warmup_epochs: the cosine is
    # already one step in at step W, and reaches min_lr on the last step (s = total - 1).
    # Joining at W - 1 feeds it s - W + 1; at s = W - 1 both pieces equal peak.
    cosine = optax.cosine_decay_schedule(
        peak, decay_steps=total - warmup_steps, alpha=min_lr / peak
    )
    warmup = linear_warmup(peak, warmup_steps, start_factor=f, offset=1)
    return optax.join_schedules([warmup, cosine], [warmup_steps - 1])


PRETRAIN_SCHEDULES = types.MappingProxyType(
    {"step": _step_schedule, "cosine": _cosine_schedule}
)


def pretrain_schedule(
    kind: str,
    *,
    base_lr: float,
    global_batch: int,
    steps_per_epoch: int,
    epochs: int = 90,
    warmup_epochs: int,
    base_batch: int = 256,
    decay_epochs: Sequence[int] = (30, 60, 80),
    min_lr: float = 0.0,
    warmup_start_factor: float = 0.0,
) -> optax.Schedule:
    """Pre-training learning rate per optimiser step, as ``lr_scheduler/builder.py``.

    Peak ``base_lr * global_batch / base_batch`` with ``global_batch`` the effective batch
    of one update (all devices and accumulation micro-batches). Warm-up over
    ``warmup_epochs`` from ``warmup_start_factor * peak`` to the peak, linear in the
    fractional epoch ``epoch + (batch_idx + 1) / steps_per_epoch`` (so step 0 is already
    1/W of the way). Then:

    * ``"step"``: peak, /10 at the first step of each of ``decay_epochs`` (30, 60, 80);
    * ``"cosine"``: ``min_lr + (peak - min_lr) * (1 + cos(pi * T_cur / T_max)) / 2`` with
      ``T_cur = (step + 1) / steps_per_epoch - warmup_epochs`` and ``T_max = epochs -
      warmup_epochs``, ``min_lr`` from the last step on.

    The reference (Horovod, K workers) warms up from ``peak / K``: pass
    ``warmup_start_factor=1 / K`` to reproduce a K-worker run exactly; the default 0 is the
    limit of many workers. Deviation: the reference's cosine peak omits its
    ``gradient_accumulate`` factor (its warm-up includes it, so the lr jumps at the warm-up
    end when accumulating); here both use the effective batch.
    """
    if kind not in PRETRAIN_SCHEDULES:
        raise ValueError(
            f"unknown pre-training schedule {kind!r}; valid names: {sorted(PRETRAIN_SCHEDULES)}"
        )
    if not base_lr > 0:
        raise ValueError(f"base_lr must be > 0, got {base_lr}")
    global_batch = _check_int("global_batch", global_batch, 1)
    base_batch = _check_int("base_batch", base_batch, 1)
    steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, 1)
    epochs = _check_int("epochs", epochs, 1)
    warmup_epochs = _check_int("warmup_epochs", warmup_epochs, 0)
    decay_epochs = tuple(_check_int("decay_epochs", e, 1) for e in decay_epochs)
    if list(decay_epochs) != sorted(set(decay_epochs)):
        raise ValueError(f"decay_epochs must be strictly increasing, got {decay_epochs}")
    if not 0.0 <= warmup_start_factor <= 1.0:
        raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
    if min_lr < 0 or not math.isfinite(min_lr):
        raise ValueError(f"min_lr must be a finite value >= 0, got {min_lr}")
    peak = base_lr * global_batch / base_batch
    return PRETRAIN_SCHEDULES[kind](
        peak,
        steps_per_epoch,
        epochs,
        warmup_epochs * steps_per_epoch,
        decay_epochs,
        min_lr,
        warmup_start_factor,
    )


__all__ = [
    "OPTIMIZERS",
    "PRETRAIN_SCHEDULES",
    "REFERENCE_UNCLIPPED",
    "adaptive_clip",
    "get_optimizer",
    "linear_warmup",
    "pretrain_schedule",
    "sgd",
    "sgd_agc",
]
