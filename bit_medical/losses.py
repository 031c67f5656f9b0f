"""Training losses: softmax cross-entropy, masked sigmoid BCE (NaN = unknown label), mixup.

Reference: SLAMPAI/large-scale-pretraining-transfer ``finetune.py`` (``cri``,
``mixup_data``, ``mixup_criterion``) and ``pretrain.py``
(``compute_loss``). Every loss takes logits of any float dtype (computed in float32),
returns a float32 scalar mean, and accepts ``mask`` [B] (0 for padded rows) so padded
examples count nowhere. A batch with nothing to average returns 0, not NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    # 0 / 0 -> 0 instead of NaN; the numerator is 0 whenever count is, so no bias.
    return total / jnp.where(count > 0, count, 1.0)


def _row_mask(mask, batch: int) -> jax.Array:
    if mask is None:
        return jnp.ones((batch,), jnp.float32)
    mask = jnp.asarray(mask)
    if mask.shape != (batch,):
        raise ValueError(f"mask must have shape ({batch},), got {mask.shape}")
    return mask.astype(jnp.float32)


def softmax_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean softmax cross-entropy on integer labels [B]; logits [B, C].

    Padded rows (``mask == 0``) count nowhere. Labels must lie in [0, C) (not checkable
    under jit). (The reference's optional ``class_weight: balanced`` is set by none of its
    fine-tuning configs, so it is not offered.)
    """
    logits = jnp.asarray(logits).astype(jnp.float32)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"softmax_cross_entropy expects logits [B, C] and integer labels [B], got "
            f"logits {logits.shape} and labels {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"softmax_cross_entropy expects integer labels, got {labels.dtype}")
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights = _row_mask(mask, logits.shape[0])
    return _safe_mean(jnp.sum(weights * nll), jnp.sum(weights))


def sigmoid_binary_cross_entropy(
    logits: jax.Array, targets: jax.Array, *, mask: jax.Array | None = None
) -> jax.Array:
    """Mean sigmoid BCE over the known entries of multi-label targets [B, C].

    NaN in ``targets`` marks an unknown label: it is left out of the mean, as the
    reference's ``F.binary_cross_entropy_with_logits(output[mask], target[mask])`` (one
    mean over all known entries of the batch, not per class). Targets may be soft (mixup).
    No known entry -> 0. Gradients stay finite: NaN targets never reach the arithmetic.
    """
    logits = jnp.asarray(logits).astype(jnp.float32)
    targets = jnp.asarray(targets)
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"sigmoid_binary_cross_entropy expects logits and targets of the same [B, C] "
            f"shape, got logits {logits.shape} and targets {targets.shape}"
        )
    targets = targets.astype(jnp.float32)
    known = ~jnp.isnan(targets)
    weights = known.astype(jnp.float32) * _row_mask(mask, logits.shape[0])[:, None]
    per_entry = optax.sigmoid_binary_cross_entropy(logits, jnp.where(known, targets, 0.0))
    return _safe_mean(jnp.sum(weights * per_entry), jnp.sum(weights))


def classification_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """The reference's criterion by label kind: int [B] -> softmax CE, float [B, C] -> BCE."""
    labels = jnp.asarray(labels)
    if labels.ndim == 1:
        return softmax_cross_entropy(logits, labels, mask=mask)
    if labels.ndim == 2:
        return sigmoid_binary_cross_entropy(logits, labels, mask=mask)
    raise ValueError(
        f"labels must be int [B] (single-label) or float [B, C] (multi-label), got shape "
        f"{labels.shape}"
    )


def sample_mixup_lambda(rng: jax.Array, alpha: float) -> jax.Array:
    """One mixing coefficient from Beta(alpha, alpha); 1.0 (no mixing) when alpha <= 0.

    The reference draws one lambda per optimiser step (shared by its accumulation
    micro-batches): draw it here once and pass it to ``mixup(..., lam=...)``.
    """
    if alpha <= 0:
        return jnp.ones((), jnp.float32)
    return jax.random.beta(rng, alpha, alpha, dtype=jnp.float32)


def _partner_permutation(rng: jax.Array, mask: jax.Array | None, batch: int) -> jax.Array:
    """A random permutation of the batch that pairs real rows with real rows only."""
    if mask is None:
        return jax.random.permutation(rng, batch)
    valid = jnp.asarray(mask) > 0
    # Real rows first (their positions in order), then padded rows; a random order of the
    # same split gives the partners: real -> real, padded -> padded.
    slots = jnp.argsort(jnp.where(valid, 0, 1), stable=True)
    noise = jax.random.uniform(rng, (batch,))
    partners = jnp.argsort(jnp.where(valid, noise, noise + 2.0))
    return jnp.zeros((batch,), jnp.int32).at[slots].set(partners.astype(jnp.int32))


def mixup(
    rng: jax.Array,
    batch: dict,
    alpha: float,
    num_classes: int,
    *,
    lam: jax.Array | None = None,
) -> dict:
    """Mixup of ``batch`` (``image`` [B, H, W, C], ``label`` int [B] or float [B, C]).

    As the reference's ``mixup_data``: ``image = lam * x + (1 - lam) * x[perm]`` with one
    ``lam`` ~ Beta(alpha, alpha) (or the given ``lam``) and ``perm`` a random permutation
    of the batch (of its real rows, when ``batch['mask']`` marks padding). Returns a new
    dict with the mixed ``image``, ``label_a`` (= ``label``), ``label_b`` (= ``label[perm]``),
    ``lam``, ``mixed_label`` (``lam * onehot(a) + (1 - lam) * onehot(b)`` for int labels, the
    same on multi-hot targets, NaN where either is unknown) and ``mask`` if given.
    ``alpha`` and ``num_classes`` are static (Python numbers); alpha <= 0 returns the batch
    unmixed (lam 1, partners = self). Runs under ``jax.jit``.
    """
    for key in ("image", "label"):
        if key not in batch:
            raise ValueError(f"mixup: batch has no {key!r} entry; keys are {sorted(batch)}")
    image = jnp.asarray(batch["image"])
    label = jnp.asarray(batch["label"])
    size = image.shape[0]
    if label.shape[0] != size:
        raise ValueError(f"mixup: image batch {size} but label batch {label.shape[0]}")
    mask = batch.get("mask")
    lam_rng, perm_rng = jax.random.split(rng)
    if alpha <= 0:
        lam = jnp.ones((), jnp.float32)
        perm = jnp.arange(size)
    else:
        lam = sample_mixup_lambda(lam_rng, alpha) if lam is None else jnp.asarray(lam)
        lam = lam.astype(jnp.float32)
        perm = _partner_permutation(perm_rng, mask, size)
    # Mix in float32 and give back the input's float dtype (bf16 stays bf16); integer
    # images (uint8) come back as float32, since a mixed pixel is no longer an integer.
    out_dtype = image.dtype if jnp.issubdtype(image.dtype, jnp.floating) else jnp.float32
    x = image.astype(jnp.float32)
    mixed_image = (lam * x + (1.0 - lam) * x[perm]).astype(out_dtype)
    label_b = label[perm]
    if label.ndim == 1:
        dense_a = jax.nn.one_hot(label, num_classes, dtype=jnp.float32)
        dense_b = jax.nn.one_hot(label_b, num_classes, dtype=jnp.float32)
    elif label.ndim == 2 and label.shape[1] == num_classes:
        dense_a, dense_b = label.astype(jnp.float32), label_b.astype(jnp.float32)
    else:
        raise ValueError(
            f"mixup: label must be int [B] or float [B, {num_classes}], got {label.shape}"
        )
    out = {
        "image": mixed_image,
        "label_a": label,
        "label_b": label_b,
        "lam": lam,
        "mixed_label": lam * dense_a + (1.0 - lam) * dense_b,
    }
    if mask is not None:
        out["mask"] = mask
    return out


def mixup_loss(
    logits: jax.Array,
    label_a: jax.Array,
    label_b: jax.Array,
    lam: jax.Array,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """``lam * loss(logits, a) + (1 - lam) * loss(logits, b)``: the reference's ``mixup_criterion``.

    ``loss`` is ``classification_loss``: softmax CE for int labels, masked BCE for
    multi-hot targets with NaN unknowns (each term masks its own unknown entries).
    """
    loss_a = classification_loss(logits, label_a, mask=mask)
    loss_b = classification_loss(logits, label_b, mask=mask)
    lam = jnp.asarray(lam, jnp.float32)
    return lam * loss_a + (1.0 - lam) * loss_b


__all__ = [
    "classification_loss",
    "mixup",
    "mixup_loss",
    "sample_mixup_lambda",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
]
