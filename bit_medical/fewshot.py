"""Linear few-shot probe: closed-form ridge regression on frozen features.

During pre-training, every ``eval_every`` steps, the pre-logit features of k = 1, 5, 10, 25
examples per class of a target dataset are regressed onto one-hot targets with ridge
regression, and the accuracy of the resulting linear classifier on the target's test features
is logged: a cheap view of transfer quality while pre-training runs (the idea of big_vision's
few-shot evaluator; this is an independent implementation).

``fit_ridge`` and ``probe_accuracy`` are jitted (``num_classes`` static, ``l2`` traced, so an
l2 sweep does not recompile) and run where their inputs live. The probe's k examples per
class are drawn by ``input_pipeline.fewshot.k_shot_indices``, as the transfer runs' subsets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

DEFAULT_L2 = 1.0
SHOTS = (1, 5, 10, 25)

# The Gram matrix needs full float32 matmuls: TPUs and GPUs default to bf16/tf32 passes.
_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("num_classes",))
def fit_ridge(
    features: jax.Array,
    labels: jax.Array,
    num_classes: int,
    l2: float = DEFAULT_L2,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Ridge regression of one-hot targets on features, with an unpenalised intercept.

    Solves ``min_{W,b} ||X W + b - Y||^2 + l2 ||W||^2`` with ``Y = one_hot(labels)``, which is
    ``sklearn.linear_model.Ridge(alpha=l2, fit_intercept=True)``: centre X and Y, then
    ``W = (Xc^T Xc + l2 I)^-1 Xc^T Yc`` (primal, D x D) or, when N <= D, the equal dual form
    ``W = Xc^T (Xc Xc^T + l2 I)^-1 Yc`` (N x N; the few-shot case: N small, D up to 8192);
    ``b = mean(Y) - mean(X) W``. Computed in float32 whatever the features' dtype.

    Args:
      features: ``[N, D]`` frozen features.
      labels: ``[N]`` int class indices in ``[0, num_classes)``.
      num_classes: C (static).
      l2: ridge penalty, > 0.
      mask: optional ``[N]`` bool/0-1 weights; rows with 0 (padding) are left out exactly.

    Returns:
      ``(W [D, C], b [C])``, float32.
    """
    x = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels)
    if x.ndim != 2 or labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"features must be [N, D] and labels [N]; got {x.shape} and {labels.shape}"
        )
    n, d = x.shape
    y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    w = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    total = jnp.maximum(w.sum(), 1.0)
    x_mean = (w @ x) / total
    y_mean = (w @ y) / total
    xc = (x - x_mean) * w[:, None]
    yc = (y - y_mean) * w[:, None]
    l2 = jnp.asarray(l2, jnp.float32)
    if n <= d:
        gram = jnp.matmul(xc, xc.T, precision=_HIGHEST) + l2 * jnp.eye(n, dtype=jnp.float32)
        alpha = cho_solve(cho_factor(gram), yc)
        weights = jnp.matmul(xc.T, alpha, precision=_HIGHEST)
    else:
        gram = jnp.matmul(xc.T, xc, precision=_HIGHEST) + l2 * jnp.eye(d, dtype=jnp.float32)
        weights = cho_solve(cho_factor(gram), jnp.matmul(xc.T, yc, precision=_HIGHEST))
    bias = y_mean - jnp.matmul(x_mean, weights, precision=_HIGHEST)
    return weights, bias


@functools.partial(jax.jit, static_argnames=("num_classes",))
def probe_accuracy(
    train_features: jax.Array,
    train_labels: jax.Array,
    test_features: jax.Array,
    test_labels: jax.Array,
    num_classes: int,
    l2: float = DEFAULT_L2,
    train_mask: jax.Array | None = None,
    test_mask: jax.Array | None = None,
) -> jax.Array:
    """Top-1 accuracy on the test features of the ridge classifier fit on the train features.

    The prediction is ``argmax(test_features @ W + b)``. Masks (``[N]``, 0 = padding) leave
    rows out of the fit and of the accuracy. Returns a float32 scalar.
    """
    weights, bias = fit_ridge(train_features, train_labels, num_classes, l2, train_mask)
    logits = jnp.matmul(jnp.asarray(test_features, jnp.float32), weights, precision=_HIGHEST)
    correct = (jnp.argmax(logits + bias, axis=-1) == test_labels).astype(jnp.float32)
    if test_mask is None:
        return correct.mean()
    m = jnp.asarray(test_mask, jnp.float32)
    return (correct * m).sum() / jnp.maximum(m.sum(), 1.0)
