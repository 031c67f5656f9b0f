"""bit_medical.optim against PyTorch's SGD and timm's AGC, and the reference's lr formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from timm.utils.agc import adaptive_clip_grad, unitwise_norm

from bit_medical import optim
from bit_medical.models import convert
from bit_medical.models.convert import unflatten as nest

NUM_CLASSES = 10

# A small tree named like the project's BiT parameters (kernels HWIO).
SHAPES = {
    "root_block/standardized_conv2d/kernel": (3, 3, 3, 8),
    "block1/unit01/a/group_norm/gamma": (8,),
    "block1/unit01/a/group_norm/beta": (8,),
    "block1/unit01/a/proj/standardized_conv2d/kernel": (1, 1, 8, 16),
    "block1/unit01/b/standardized_conv2d/kernel": (3, 3, 8, 16),
    "group_norm/gamma": (16,),
    "group_norm/beta": (16,),
    "head/conv2d/kernel": (1, 1, 16, NUM_CLASSES),
    "head/conv2d/bias": (NUM_CLASSES,),
}


def flatten(tree):
    return {k: np.asarray(v) for k, v in convert.flatten(tree).items()}


def hwio_to_torch(x):
    return np.transpose(x, (3, 2, 0, 1)) if x.ndim == 4 else x


def torch_to_hwio(x):
    return np.transpose(x, (2, 3, 1, 0)) if x.ndim == 4 else x


def initial_params(rng):
    flat = {}
    for path, shape in SHAPES.items():
        if path.startswith("head/"):
            flat[path] = np.zeros(shape, np.float32)  # transfer: zero-initialised head
        elif path.endswith("gamma"):
            flat[path] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            flat[path] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return flat


def random_grads(rng, params):
    """Gradients whose unit norms span 1e-4..1 of the weights: some clip, some do not."""
    grads = {}
    for path, p in params.items():
        unit_shape = (1,) * (p.ndim - 1) + (p.shape[-1],) if p.ndim > 1 else (1,)
        scale = 10.0 ** rng.uniform(-4, 0, size=unit_shape)
        size = max(np.sqrt(np.mean(p**2)), 1e-3)
        grads[path] = (rng.standard_normal(p.shape) * scale * size).astype(np.float32)
    return grads


def official_hyperrule_lr(step, base_lr, supports):
    """get_lr of the reference (bit_hyperrule.py) as its documented rule, past-end = final."""
    warmup, *decays, end = supports
    step = min(step, end - 1)
    if step < warmup:
        return base_lr * step / warmup
    return base_lr / 10 ** sum(1 for s in decays if s < step)


BASE_LR = 3.0
SUPPORTS = (5, 8, 12, 16, 40)  # a short size-rule-like schedule so 20 steps cross it all


def lr_at(step):
    return official_hyperrule_lr(step, BASE_LR, SUPPORTS)


def optax_lr(count):
    # The same rule as an optax schedule, built from the pieces bit_medical.hyperrule uses.
    warmup, *decays, _ = SUPPORTS
    staircase = optax.piecewise_constant_schedule(BASE_LR, {s + 1 - warmup: 0.1 for s in decays})
    return optax.join_schedules([optim.linear_warmup(BASE_LR, warmup), staircase], [warmup])(
        count
    )


def reference_skips(name, tensor, unclipped):
    """Which torch tensors escape clipping: the reference's rule, or whole path prefixes."""
    if unclipped == "reference":
        # SGD_AGC.step: `len(p.shape) in (2, 4) and p.shape[0] == output_size`.
        return tensor.ndim in (2, 4) and tensor.shape[0] == NUM_CLASSES
    return any(name == u or name.startswith(u + "/") for u in unclipped)


@pytest.mark.parametrize(
    "kind, weight_decay, unclipped",
    [
        ("sgd_agc", 0.0, "reference"),  # fine-tuning settings of the paper
        ("sgd_agc", 5e-3, "reference"),  # pre-training uses L2 decay (larger here to matter)
        ("sgd_agc", 5e-3, ("head",)),
        ("sgd", 5e-3, ()),
    ],
)
def test_twenty_steps_match_torch_sgd_after_timm_agc(kind, weight_decay, unclipped):
    rng = np.random.default_rng(0)
    params0 = initial_params(rng)
    grads_per_step = [random_grads(rng, params0) for _ in range(20)]

    # --- PyTorch: timm AGC on the non-skipped tensors, then SGD(nesterov) with the lr of
    # the official rule set before every step, as finetune.py does.
    names = list(params0)
    tensors = [torch.nn.Parameter(torch.tensor(hwio_to_torch(params0[n]))) for n in names]
    opt = torch.optim.SGD(
        tensors, lr=lr_at(0), momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    clipped_units = total_units = 0
    for step, grads in enumerate(grads_per_step):
        for name, t in zip(names, tensors, strict=True):
            t.grad = torch.tensor(hwio_to_torch(grads[name]))
        if kind == "sgd_agc":
            to_clip = [
                t for n, t in zip(names, tensors, strict=True)
                if not reference_skips(n, t, unclipped)
            ]
            for t in to_clip:
                max_norm = unitwise_norm(t.detach()).clamp(min=1e-3) * 0.01
                trig = unitwise_norm(t.grad) > max_norm
                clipped_units += int(trig.sum())
                total_units += trig.numel()
            adaptive_clip_grad(to_clip, clip_factor=0.01, eps=1e-3)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.step()
    expected = {n: torch_to_hwio(t.detach().numpy()) for n, t in zip(names, tensors, strict=True)}
    if kind == "sgd_agc":
        # The test means something only if clipping both fires and does not.
        assert 0.1 < clipped_units / total_units < 0.9, (clipped_units, total_units)

    # --- optax.
    kwargs = {} if unclipped == "reference" or kind == "sgd" else {"unclipped": unclipped}
    tx = optim.get_optimizer(kind, optax_lr, weight_decay=weight_decay, **kwargs)
    params = nest({k: jnp.asarray(v) for k, v in params0.items()})
    state = tx.init(params)

    @jax.jit
    def step_fn(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for grads in grads_per_step:
        params, state = step_fn(params, state, nest({k: jnp.asarray(v) for k, v in grads.items()}))
    got = flatten(params)

    for name in names:
        moved = np.abs(expected[name] - params0[name]).max()
        assert moved > 0, f"{name} never moved; the comparison would be vacuous"
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_head_bias_is_clipped_by_default_as_in_the_reference():
    """The reference skips only 2-D/4-D tensors of the class count: the head bias is clipped."""
    params = nest({k: jnp.zeros(s) for k, s in SHAPES.items()})
    grads = jax.tree.map(jnp.ones_like, params)

    def clip(tx):
        return jax.jit(tx.update)(grads, tx.init(params), params)[0]

    default = clip(optim.adaptive_clip())
    no_head = clip(optim.adaptive_clip(unclipped=("head",)))
    bias_norm = float(jnp.linalg.norm(default["head"]["conv2d"]["bias"]))
    np.testing.assert_allclose(bias_norm, 0.01 * 1e-3, rtol=1e-6)  # clipping * eps
    np.testing.assert_array_equal(default["head"]["conv2d"]["kernel"], 1.0)
    np.testing.assert_array_equal(no_head["head"]["conv2d"]["bias"], 1.0)


@pytest.mark.parametrize(
    "shape",
    [(), (5,), (1,), (6, 4), (2, 3, 4), (3, 3, 2, 4), (1, 1, 1, 4), (1, 1, 7, 1), (2, 1, 3, 1, 5)],
)
def test_unit_wise_clip_matches_timm_for_any_rank(shape):
    """Output unit = last JAX axis = first torch axis; whole tensor for rank <= 1."""
    rng = np.random.default_rng(1)
    p = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    g = rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, -2, size=shape)
    if g.ndim > 1:
        g[..., 0] *= 1000.0  # one unit far over its limit, the others mostly under
    else:
        g = g * 1000.0
    g = g.astype(np.float32)
    tp = torch.nn.Parameter(torch.tensor(np.moveaxis(p, -1, 0) if p.ndim > 1 else p))
    tp.grad = torch.tensor(np.moveaxis(g, -1, 0) if g.ndim > 1 else g)
    adaptive_clip_grad([tp], clip_factor=0.01, eps=1e-3)
    want = tp.grad.numpy()
    want = np.moveaxis(want, 0, -1) if want.ndim > 1 else want
    tx = optim.adaptive_clip(unclipped=())
    got, _ = tx.update({"w": jnp.asarray(g)}, tx.init({"w": p}), {"w": jnp.asarray(p)})
    np.testing.assert_allclose(got["w"], want, rtol=1e-6, atol=1e-9)
    assert not np.allclose(want, g), "nothing was clipped; the test would be vacuous"


def reference_pretrain_lr(kind, *, base_lr, local_batch, workers, steps_per_epoch, epochs,
                          warmup_epochs, min_lr=0.0):
    """lr_scheduler/builder.py's per-(epoch, batch_idx) formulas, gradient_accumulate = 1."""
    init_lr = base_lr * local_batch / 256
    out = []
    for epoch in range(epochs):
        for batch_idx in range(steps_per_epoch):
            if epoch < warmup_epochs:
                e = epoch + (batch_idx + 1) / steps_per_epoch
                out.append(init_lr * workers * (e * (workers - 1) / warmup_epochs + 1) / workers)
            elif kind == "step":
                adj = 1.0 if epoch < 5 else 0.1 if epoch < 8 else 0.01 if epoch < 10 else 1e-3
                out.append(init_lr * workers * adj)
            else:
                t_cur = (epoch - warmup_epochs) + (batch_idx + 1) / steps_per_epoch
                t_max = epochs - warmup_epochs
                max_lr = init_lr * workers
                cos = math.cos(math.pi * t_cur / t_max)
                out.append(min_lr + 0.5 * (max_lr - min_lr) * (1 + cos))
    return np.array(out)


@pytest.mark.parametrize("kind", ["step", "cosine"])
def test_pretrain_schedules_match_the_reference_formulas(kind):
    workers, local_batch, spe, epochs, warmup = 4, 32, 7, 12, 3
    min_lr = 1e-3 if kind == "cosine" else 0.0
    want = reference_pretrain_lr(
        kind, base_lr=0.1, local_batch=local_batch, workers=workers, steps_per_epoch=spe,
        epochs=epochs, warmup_epochs=warmup, min_lr=min_lr,
    )
    schedule = optim.pretrain_schedule(
        kind, base_lr=0.1, global_batch=local_batch * workers, steps_per_epoch=spe,
        epochs=epochs, warmup_epochs=warmup, decay_epochs=(5, 8, 10), min_lr=min_lr,
        warmup_start_factor=1 / workers,
    )
    got = np.array(jax.jit(jax.vmap(schedule))(jnp.arange(epochs * spe)))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    # Past the end the last value holds (min_lr for cosine, peak / 1000 for step).
    np.testing.assert_allclose(float(schedule(epochs * spe + 50)), want[-1], rtol=2e-6, atol=1e-9)


def test_pretrain_step_schedule_of_the_imagenet_config():
    # ImageNet R50x1: base_lr 0.1, batch 1024 -> peak 0.4; warm-up 5 epochs; /10 at 30/60/80.
    spe = 1251
    s = optim.pretrain_schedule("step", base_lr=0.1, global_batch=1024, steps_per_epoch=spe,
                                warmup_epochs=5)
    np.testing.assert_allclose(float(s(0)), 0.4 / (5 * spe), rtol=1e-6)
    np.testing.assert_allclose(float(s(5 * spe - 1)), 0.4, rtol=1e-6)
    np.testing.assert_allclose(float(s(30 * spe - 1)), 0.4, rtol=1e-6)
    np.testing.assert_allclose(float(s(30 * spe)), 0.04, rtol=1e-6)
    np.testing.assert_allclose(float(s(60 * spe)), 0.004, rtol=1e-6)
    np.testing.assert_allclose(float(s(90 * spe - 1)), 0.0004, rtol=1e-6)


def test_pretrain_schedule_errors_name_the_problem():
    kw = dict(base_lr=0.1, global_batch=256, steps_per_epoch=10, warmup_epochs=1)
    with pytest.raises(ValueError, match=r"'linear'.*\['cosine', 'step'\]"):
        optim.pretrain_schedule("linear", **kw)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.pretrain_schedule("step", **{**kw, "steps_per_epoch": 0})
    with pytest.raises(ValueError, match="decay_epochs"):
        optim.pretrain_schedule("step", decay_epochs=(60, 30), **kw)
    with pytest.raises(ValueError, match="epochs > warmup_epochs"):
        optim.pretrain_schedule("cosine", epochs=1, **kw)


def test_optimizer_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"'adam'.*\['sgd', 'sgd_agc'\]"):
        optim.get_optimizer("adam", 0.1)
    params = nest({k: jnp.zeros(s) for k, s in SHAPES.items()})
    with pytest.raises(ValueError, match=r"\['Head'\] match no parameter.*'head'"):
        optim.sgd_agc(0.1, unclipped=("Head",)).init(params)
    with pytest.raises(ValueError, match="string 'head'"):
        optim.sgd_agc(0.1, unclipped="head")
    with pytest.raises(ValueError, match="weight_decay"):
        optim.sgd(0.1, weight_decay=-1.0)
