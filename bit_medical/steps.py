"""The compiled steps of the train loop: train (SGD + AGC update), evaluation, features.

``train.train_and_evaluate`` and ``benchmarks/`` build them with the same functions
(``jit_train_step``, ``jit_eval_step``, ``jit_features_step``), so a benchmark times the
program the loop runs. This module needs only jax, flax, optax and numpy (no TensorFlow,
ml_collections or clu), so the benchmarks run on machines that have nothing else.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bit_medical import losses, optim, parallel
from bit_medical.models import bit
from input_pipeline.normalize import model_input

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # config.dtype -> compute dtype


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    # The first step (counted from 1, as logged) whose loss or gradients were not finite; -1
    # while all were. Such steps leave params unchanged, and the host stops the run.
    nonfinite_step: jax.Array


def train_step(state: TrainState, batch: dict, lr: jax.Array, mixup_lambda: jax.Array,
               rng: jax.Array, *, model: bit.BiT, tx: optax.GradientTransformation,
               norm: str = "bit", mixup_alpha: float = 0.0, batch_split: int = 1
               ) -> tuple[TrainState, dict]:
    """One optimiser update on a global batch; ``batch_split`` micro-batches accumulate.

    ``tx`` has a unit learning rate (see ``make_optimizer``); ``lr`` scales its update here,
    which for SGD equals PyTorch's ``p -= lr * step``. The step's mixup coefficient (one per
    optimiser step, shared by its micro-batches, as in the reference) also comes from the host
    (``mixup_lambda``, see ``mixup_lambdas``). Both keep the compiled step independent of the
    schedule, so runs that differ only in it share one compilation (and Beta sampling, slow to
    compile, stays out of the graph). ``norm`` turns uint8 images into model inputs on device
    (resizing the crop windows that 'bit' train batches ship, see ``input_pipeline.normalize``).

    Weight standardisation runs once per step, before the micro-batch loop, and its gradient
    once after it (``bit.standardize_params``): the same function, without ``batch_split``
    copies of the standardisation and its backward pass.
    """
    batch = dict(batch, image=model_input(batch["image"], norm, batch.get("window")))
    step_rng = jax.random.fold_in(rng, state.step)
    net = model.clone(standardize_weights=False)

    def loss_fn(ws_params, micro, micro_rng):
        if mixup_alpha > 0:
            mixed = losses.mixup(micro_rng, micro, mixup_alpha, model.num_classes,
                                 lam=mixup_lambda)
            logits = net.apply({"params": ws_params}, mixed["image"])
            return losses.mixup_loss(logits, mixed["label_a"], mixed["label_b"], mixed["lam"])
        return losses.classification_loss(net.apply({"params": ws_params}, micro["image"]),
                                          micro["label"])

    grad_fn = jax.value_and_grad(loss_fn)
    ws_params, standardize_vjp = jax.vjp(bit.standardize_params, state.params)
    if batch_split == 1:
        loss, ws_grads = grad_fn(ws_params, batch, step_rng)
    else:
        # Micro-batch i takes rows i, i + k, i + 2k, ...: every device keeps an equal share of
        # each micro-batch under the batch sharding.
        micro_batches = jax.tree_util.tree_map(
            lambda x: jnp.swapaxes(x.reshape((-1, batch_split) + x.shape[1:]), 0, 1), batch)

        def accumulate(carry, xs):
            micro, i = xs
            loss, grads = grad_fn(ws_params, micro, jax.random.fold_in(step_rng, i))
            return jax.tree_util.tree_map(jnp.add, carry, (loss, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, ws_params))
        total, _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(batch_split)))
        loss, ws_grads = jax.tree_util.tree_map(lambda x: x / batch_split, total)
    (grads,) = standardize_vjp(ws_grads)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(lambda p, u: p + lr * u, state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = functools.partial(jax.tree_util.tree_map, lambda new, old: jnp.where(finite, new, old))
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step + 1,
                                 state.nonfinite_step),
    )
    step_metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr,
                    "param_norm": optax.tree.norm(params),
                    "update_norm": lr * optax.tree.norm(updates)}
    return new_state, step_metrics


def eval_step(params: Any, batch: dict, *, model: bit.BiT, multilabel: bool,
              norm: str = "bit") -> dict:
    """Probabilities (softmax, or sigmoid for multi-label) and the masked loss of a batch."""
    images = model_input(batch["image"], norm)
    logits = model.apply({"params": params}, images).astype(jnp.float32)
    probs = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)
    loss = losses.classification_loss(logits, batch["label"], mask=batch["mask"])
    return {"probs": probs, "label": batch["label"], "mask": batch["mask"], "loss": loss}


def features_step(params: Any, batch: dict, *, model: bit.BiT, norm: str = "bit") -> dict:
    """Pre-logit features of a batch (for the linear probe)."""
    images = model_input(batch["image"], norm)
    feats = model.apply({"params": params}, images, pre_logits=True)
    return {"features": feats, "label": batch["label"], "mask": batch["mask"]}


def mixup_lambdas(alpha: float, seed: int) -> Callable[[int], np.float32]:
    """The mixup coefficient of each step: Beta(alpha, alpha), a pure function of (seed, step)."""
    def draw(step: int) -> np.float32:
        return np.float32(np.random.default_rng([seed, step]).beta(alpha, alpha))
    return draw


def make_optimizer(o) -> optax.GradientTransformation:
    """The optimiser of a config's ``optim`` section, with a unit learning rate (``train_step``
    applies the lr). ``o`` needs the attributes of ``experiment.base().optim``."""
    kwargs = dict(momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    if o.name == "sgd_agc":
        kwargs.update(clipping=o.clipping, eps=o.eps, unclipped=tuple(o.unclipped))
    return optim.get_optimizer(o.name, 1.0, **kwargs)


def fresh_state(tx: optax.GradientTransformation, params: Any) -> TrainState:
    """The train state at step 0: ``params``, ``tx``'s initial state, no non-finite step."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      nonfinite_step=jnp.full((), -1, jnp.int32))


def state_layout(model: bit.BiT, tx, mesh, image_size) -> tuple[Any, Any]:
    """The train state's shapes (with shardings, the target of a restore) and shardings.

    Derived from shapes alone, so nothing large is materialised on a single device.
    """
    param_shapes = bit.param_shapes(model, image_size=min(image_size))
    shapes = jax.eval_shape(functools.partial(fresh_state, tx), param_shapes)
    shardings = parallel.state_sharding(mesh, shapes)
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return abstract, shardings


def jit_train_step(model: bit.BiT, tx: optax.GradientTransformation, state_shardings: Any,
                   batch_sharding, *, norm: str, mixup_alpha: float = 0.0,
                   batch_split: int = 1) -> Callable:
    """``train_step`` jitted as the loop runs it: ``fn(state, batch, lr, mixup_lambda, rng)``.

    The state keeps its shardings (replicated or FSDP) and is donated (updated in place); the
    batch is split over every device; uint8 images are normalised inside the step.
    """
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx, norm=norm, mixup_alpha=mixup_alpha,
                          batch_split=batch_split),
        in_shardings=(state_shardings, batch_sharding, None, None, None),
        out_shardings=(state_shardings, None), donate_argnums=0)


def jit_eval_step(model: bit.BiT, *, multilabel: bool, norm: str) -> Callable:
    """``eval_step`` jitted as the loop runs it: ``fn(params, batch)``."""
    return jax.jit(functools.partial(eval_step, model=model, multilabel=multilabel, norm=norm))


def jit_features_step(model: bit.BiT, *, norm: str) -> Callable:
    """``features_step`` jitted as the loop runs it: ``fn(params, batch)``."""
    return jax.jit(functools.partial(features_step, model=model, norm=norm))


def step_scalars(lr_fn: Callable, lam_fn: Callable, step: int) -> tuple[jax.Array, jax.Array]:
    """The step's learning rate and mixup coefficient, as device scalars.

    One explicit transfer of the step number and the coefficient per step: the loop makes no
    implicit host-to-device transfer (``jax.transfer_guard``); ``lr_fn`` is jitted.
    """
    step_dev, lam = jax.device_put((np.int32(step), np.float32(lam_fn(step))))
    return lr_fn(step_dev), lam
