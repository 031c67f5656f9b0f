"""What the compiled train step runs: weight standardisation once per optimiser step whatever
``batch_split``, bfloat16 convolutions with float32 GroupNorm statistics, and the same update
as differentiating the plain model.

The HLO checks read op names: ``bit.standardize`` runs under the name ``weight_standardization``
and GroupNorm under its module's ``group_norm`` scope; compiled instructions keep those names.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_medical import experiment, losses, parallel, steps
from bit_medical.models import bit

SIZE, BATCH, NUM_CLASSES = 32, 8, 3
_SCALAR = jax.ShapeDtypeStruct((), jnp.float32)


def _abstract_batch():
    return {"image": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.uint8),
            "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32)}


def _lowered(dtype=jnp.float32, batch_split=1, mixup_alpha=0.0):
    model = bit.create_model("BiT-R14x0.5", NUM_CLASSES, dtype=dtype)
    tx = steps.make_optimizer(experiment.base().optim)
    mesh = parallel.make_mesh()
    abstract, shardings = steps.state_layout(model, tx, mesh, (SIZE, SIZE))
    fn = steps.jit_train_step(model, tx, shardings, parallel.batch_sharding(mesh), norm="bit",
                              mixup_alpha=mixup_alpha, batch_split=batch_split)
    return fn.lower(abstract, _abstract_batch(), _SCALAR, _SCALAR, jax.random.key(0))


def _computations(hlo: str) -> dict[str, list[str]]:
    """HLO module text -> {computation name: its instruction lines}."""
    out, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            name = head.group(1)
            out[name] = []
        elif name and line.strip() and line.strip() != "}":
            out[name].append(line)
    return out


def _loop_body_lines(hlo: str) -> list[str]:
    """Instructions of every while-loop body and of all the computations they call."""
    comps = _computations(hlo)
    todo = [m for lines in comps.values() for line in lines
            for m in re.findall(r"body=%?([\w.\-]+)", line)]
    seen = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            todo += re.findall(r"(?:calls|to_apply|body|condition|branch_computations)="
                               r"\{?%?([\w.\-]+)", line)
    return [line for name in seen for line in comps[name]]


def _ws_ops(lines):
    return [line for line in lines if "weight_standardization" in line]


def test_weight_standardisation_runs_once_per_step_with_micro_batches():
    # The program of test_host_transfers' loop (shared through the compilation cache).
    hlo = _lowered(batch_split=2, mixup_alpha=0.1).compile().as_text()
    body = _loop_body_lines(hlo)
    assert body, "the micro-batch loop is a while loop in the compiled step"
    assert _ws_ops(hlo.splitlines()), "the step standardises the weights"
    assert _ws_ops(body) == []
    # The detector: a standardised convolution applied inside a loop shows up in its body.
    conv = bit.StdConv(32, 3)
    kernel = conv.init(jax.random.key(0), jnp.zeros((1, 8, 8, 32)))

    def naive(kernel, images):
        def body(total, x):
            return total + jax.grad(lambda k: conv.apply(k, x).sum())(kernel)["params"]["kernel"], None
        return jax.lax.scan(body, jnp.zeros((3, 3, 32, 32)), images)[0]

    naive_hlo = jax.jit(naive).lower(kernel, jnp.zeros((2, 1, 8, 8, 32))).compile().as_text()
    assert _ws_ops(_loop_body_lines(naive_hlo))


def test_step_equals_sgd_agc_on_the_plain_models_gradient():
    """Standardising outside the model changes nothing: one step of ``train_step`` is the
    optimiser's update on ``jax.grad`` of the plain model (which standardises inside)."""
    model = bit.create_model("BiT-R14x0.5", NUM_CLASSES)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3), dtype=np.uint8),
             "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)}
    params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32))["params"]
    tx = steps.make_optimizer(experiment.base().optim)
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))
    state, metrics = step(steps.fresh_state(tx, params), batch, 0.5, 1.0, jax.random.key(1))

    @jax.jit
    def reference(params):
        loss, grads = jax.value_and_grad(lambda p: losses.classification_loss(
            model.apply({"params": p}, batch["image"] / 127.5 - 1.0), batch["label"]))(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        return loss, jax.tree_util.tree_map(lambda p, u: p + 0.5 * u, params, updates)

    loss, expected = reference(params)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _result_dtype(line: str) -> str:
    return re.search(r"= \(?(\w+)\[", line).group(1)


def test_bfloat16_convolutions_with_float32_group_norm_statistics():
    lowered = _lowered(dtype=jnp.bfloat16)
    # What XLA is asked to run: every convolution (forward and both gradients) in bfloat16.
    convs = [line for line in lowered.as_text(dialect="hlo").splitlines() if " convolution(" in line]
    assert len(convs) >= 3 * 14 and {_result_dtype(c) for c in convs} == {"bf16"}
    compiled = lowered.compile().as_text().splitlines()
    # GroupNorm's mean and variance (and their gradients) are float32 reductions.
    stats = [line for line in compiled if " reduce(" in line and "/group_norm/" in line]
    assert stats and {_result_dtype(s) for s in stats} == {"f32"}
    # What runs: XLA:CPU has no bfloat16 convolution and computes them in float32 on
    # bfloat16-rounded inputs; on GPU (cuDNN custom calls) and TPU they stay bfloat16.
    if jax.default_backend() != "cpu":
        ran = [line for line in compiled if " convolution(" in line or "cudnn$conv" in line]
        assert ran and {_result_dtype(c) for c in ran} == {"bf16"}
