"""One SGD train step (forward, backward, update) of BiT: this project (JAX) against timm (PyTorch).

Both run in one process on the same machine, same model, batch, resolution and optimiser
(Nesterov SGD, softmax cross-entropy), and the script prints images/s of each and the ratio.

CPU (the row in RESULTS.md):

    python benchmarks/train_step.py --image_size=128 --batch=8

GPU, bfloat16, against timm with AMP, channels-last and torch.compile, with model FLOP
utilisation (peak bf16 dense TFLOP/s of the card via --peak_tflops):

    python benchmarks/train_step.py --image_size=224 --batch=256 --dtype=bfloat16 \
        --torch_amp --channels_last --torch_compile --peak_tflops=989
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="BiT-S-R50x1", help="bit_medical variant name")
    p.add_argument("--timm_model", default="resnetv2_50x1_bit")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is kept")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true")
    p.add_argument("--torch_amp", action="store_true", help="timm: autocast to bfloat16")
    p.add_argument("--channels_last", action="store_true", help="timm: channels-last memory")
    p.add_argument("--torch_compile", action="store_true", help="timm: torch.compile the step")
    p.add_argument("--peak_tflops", type=float, default=0.0,
                   help="peak dense TFLOP/s of the device for MFU (0: not reported)")
    p.add_argument("--only", choices=["jax", "torch"], default=None)
    p.add_argument("--xla_defaults", action="store_true",
                   help="JAX: keep XLA's CPU defaults (no bit_medical.parallel.tune_xla_cpu)")
    return p.parse_args(argv)


def time_steps(step, args) -> float:
    """Median seconds per step over ``repeats`` runs of ``steps`` steps (after warm-up)."""
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            out = step()
        out()  # wait for the device
        times.append((time.perf_counter() - start) / args.steps)
    return statistics.median(times)


def bench_jax(args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from bit_medical import parallel
    from bit_medical.models import bit

    if not args.xla_defaults:
        parallel.tune_xla_cpu()  # as the bit-medical CLI does
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    model = bit.create_model(args.model, args.num_classes, dtype=dtype, remat=args.remat)
    rng = np.random.default_rng(0)
    # Random parameters from shapes: compiling model.init costs more than the benchmark.
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), jnp.float32),
        bit.param_shapes(model))
    tx = optax.sgd(0.01, momentum=0.9, nesterov=True)
    opt_state = tx.init(params)
    images = jnp.asarray(rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)),
                         jnp.float32)
    labels = jnp.asarray(rng.integers(0, args.num_classes, args.batch))

    def loss_fn(p):
        logits = model.apply({"params": p}, images).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def train_step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    step_fn = jax.jit(train_step, donate_argnums=(0, 1))
    start = time.perf_counter()
    compiled = step_fn.lower(params, opt_state).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    state = {"p": params, "s": opt_state}

    def step():
        state["p"], state["s"], loss = compiled(state["p"], state["s"])
        return loss.block_until_ready

    seconds = time_steps(step, args)
    return {"name": "bit_medical (JAX)", "seconds": seconds, "compile_s": compile_s,
            "flops": flops, "device": jax.devices()[0].device_kind}


def bench_torch(args):
    import timm
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(args.timm_model, pretrained=False, num_classes=args.num_classes)
    model = model.to(device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.empty(args.batch, 3, args.image_size, args.image_size,
                         device=device).uniform_(-1, 1).to(memory_format=memory_format)
    labels = torch.randint(0, args.num_classes, (args.batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.torch_amp):
            loss = loss_fn(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(train_step) if args.torch_compile else train_step
    start = time.perf_counter()
    fn()  # first call compiles (torch.compile) / allocates
    compile_s = time.perf_counter() - start
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        fn()
        return sync

    seconds = time_steps(step, args)
    flags = [f for f, on in (("AMP bf16", args.torch_amp), ("channels-last", args.channels_last),
                             ("compile", args.torch_compile)) if on]
    return {"name": f"timm (PyTorch {torch.__version__}{', ' + ', '.join(flags) if flags else ''})",
            "seconds": seconds, "compile_s": compile_s,
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


def main(argv=None):
    args = parse_args(argv)
    print(f"{args.model} vs {args.timm_model}: batch {args.batch}, {args.image_size}px, "
          f"{args.dtype}, {os.cpu_count()} CPU threads")
    results = []
    if args.only in (None, "jax"):
        results.append(bench_jax(args))
    if args.only in (None, "torch"):
        results.append(bench_torch(args))
    for r in results:
        line = (f"{r['name']:<50} {args.batch / r['seconds']:9.2f} images/s "
                f"({r['seconds'] * 1e3:.1f} ms/step, first call {r['compile_s']:.1f} s)")
        if r.get("flops") and args.peak_tflops:
            mfu = r["flops"] / r["seconds"] / (args.peak_tflops * 1e12)
            line += f", MFU {100 * mfu:.1f}%"
        print(line)
    if len(results) == 2:
        print(f"ratio (bit_medical / timm images/s): {results[1]['seconds'] / results[0]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
