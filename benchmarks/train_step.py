"""BiT train step (and eval) throughput: this project's compiled step against timm's.

The JAX side runs the step ``train.train_and_evaluate`` runs, built by the same function
(``bit_medical.steps.jit_train_step``): uint8 images normalised on the device, the state's
shardings over the device mesh, the state donated, the non-finite guard, SGD + AGC (the
reference's defaults; ``--optim=sgd`` for the pre-training optimiser), ``batch_split`` and
``remat``. The eval row runs ``steps.jit_eval_step`` (logits, probabilities, masked loss), the
feature row ``steps.jit_features_step``. timm's ``resnetv2_*_bit`` runs the same model, batch,
resolution and optimiser (Nesterov SGD with the same momentum; PyTorch has no AGC), with AMP,
channels-last and ``torch.compile`` as flags.

Printed per row: images/s (median of ``--repeats``), ms/step, first call (compilation), the
ratio to timm, MFU (FLOPs of the compiled step from XLA's cost analysis / time / ``--peak_tflops``)
and peak device memory (``device.memory_stats()``; not on CPU). ``--json`` writes the rows.

CPU (the rows in RESULTS.md):

    python benchmarks/train_step.py --image_size=128 --batch=8

GPU, bfloat16, against timm with AMP, channels-last and torch.compile; ``--batch=max`` takes
the largest batch XLA's memory analysis predicts to fit (see ``largest_batch``):

    python benchmarks/train_step.py --image_size=224 --batch=max --dtype=bfloat16 \\
        --torch_amp --channels_last --torch_compile --peak_tflops=989 --eval

On a GPU, run the two sides in separate processes (``--only=jax``, then ``--only=torch`` at the
batch JAX ran, as gpu.py does): JAX reserves most of the GPU's memory for itself.

Needs only jax, flax, optax, numpy (and torch + timm for the timm rows).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Room left for XLA's workspace and fragmentation when predicting the largest batch.
MEMORY_HEADROOM = 0.85


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="BiT-S-R50x1", help="bit_medical variant name")
    p.add_argument("--timm_model", default="resnetv2_50x1_bit", help="timm model ('' for none)")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--batch", default="8", help="global batch, or 'max': the largest that fits")
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is kept")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--optim", default="sgd_agc", choices=["sgd_agc", "sgd"])
    p.add_argument("--batch_split", type=int, default=1)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--fsdp", type=int, default=1)
    p.add_argument("--mixup_alpha", type=float, default=0.0)
    p.add_argument("--eval", action="store_true", help="also time evaluation (probabilities, loss)")
    p.add_argument("--features", action="store_true", help="also time feature extraction")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--torch_amp", action="store_true", help="timm: autocast to bfloat16")
    p.add_argument("--channels_last", action="store_true", help="timm: channels-last memory")
    p.add_argument("--torch_compile", action="store_true", help="timm: torch.compile the step")
    p.add_argument("--peak_tflops", type=float, default=0.0,
                   help="peak dense TFLOP/s of the device for MFU (0: not reported)")
    p.add_argument("--memory_gb", type=float, default=0.0,
                   help="device memory for --batch=max (0: the device's own limit)")
    p.add_argument("--max_batch", type=int, default=4096, help="cap of --batch=max")
    p.add_argument("--probe_batch", type=int, default=64,
                   help="--batch=max: the batch whose compilation predicts the largest")
    p.add_argument("--only", choices=["jax", "torch"], default=None)
    p.add_argument("--xla_defaults", action="store_true",
                   help="JAX: keep XLA's CPU defaults (no bit_medical.parallel.tune_xla_cpu)")
    p.add_argument("--json", default="", help="write the rows to this file")
    args = p.parse_args(argv)
    if args.batch != "max" and not args.batch.isdigit():
        p.error(f"--batch={args.batch!r}: expected a positive integer or 'max'")
    return args


def time_steps(step, args) -> float:
    """Median seconds per call of ``step`` over ``repeats`` runs of ``steps`` calls (after
    ``warmup``); ``step`` returns a function that waits for the device."""
    for _ in range(args.warmup):
        step()()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            wait = step()
        wait()
        times.append((time.perf_counter() - start) / args.steps)
    return statistics.median(times)


# ----------------------------------------------------------------------------- JAX


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _peak_memory(jax) -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _memory_limit(jax, args) -> float:
    """Bytes of device memory (``--memory_gb``, else the device's limit; 0 if unknown)."""
    if args.memory_gb:
        return args.memory_gb * 2**30
    stats = jax.local_devices()[0].memory_stats()
    return float(stats["bytes_limit"]) if stats and "bytes_limit" in stats else 0.0


def _program_bytes(m) -> int:
    """Device memory of a compiled program: inputs, outputs not aliased to them, temporaries."""
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes + m.generated_code_size_in_bytes)


def predicted_max_batch(memory, batch: int, limit_bytes: float, multiple: int) -> int:
    """The largest batch (a multiple of ``multiple``) that XLA's memory analysis ``memory`` of
    the step compiled at ``batch`` predicts to fit in ``MEMORY_HEADROOM`` of ``limit_bytes``.

    Memory = a fixed part (state, outputs) + temporaries taken as proportional to the batch
    (they also hold workspaces, so the prediction errs small).
    """
    fixed = _program_bytes(memory) - memory.temp_size_in_bytes
    per_example = max(memory.temp_size_in_bytes / batch, 1.0)
    return max(int((MEMORY_HEADROOM * limit_bytes - fixed) / per_example), 0) // multiple * multiple


def largest_batch(compile_at, limit_bytes: float, *, probe: int, multiple: int, cap: int) -> int:
    """The largest batch the step compiled by ``compile_at(batch)`` fits in (see
    ``predicted_max_batch``), from a compilation at ``probe``, checked by compiling it and
    stepping down by 10% while it does not fit. ``compile_at`` should cache, so that the
    benchmark runs the last compilation.
    """
    budget = MEMORY_HEADROOM * limit_bytes
    batch = min(predicted_max_batch(compile_at(probe).memory_analysis(), probe, limit_bytes,
                                    multiple), cap // multiple * multiple)
    while batch >= multiple and _program_bytes(compile_at(batch).memory_analysis()) > budget:
        batch = int(batch * 0.9) // multiple * multiple
    if batch < multiple:
        raise SystemExit(f"not even a batch of {multiple} fits in {limit_bytes / 2**30:.2f} GiB")
    return batch


def bench_jax(args) -> list[dict]:
    """Rows for the JAX train step (and eval/features with ``--eval``); sets ``args.batch``."""
    if not args.xla_defaults:
        from bit_medical import parallel
        parallel.tune_xla_cpu()  # as the bit-medical CLI does; before the backend starts
    import jax
    import numpy as np

    from bit_medical import optim, parallel, steps
    from bit_medical.models import bit

    model = bit.create_model(args.model, args.num_classes, dtype=steps.DTYPES[args.dtype],
                             remat=args.remat)
    tx = optim.get_optimizer(args.optim, 1.0)  # unit lr, the reference's defaults, as the loop
    mesh = parallel.make_mesh(args.fsdp)
    batch_sharding = parallel.batch_sharding(mesh)
    size = (args.image_size, args.image_size)
    abstract, shardings = steps.state_layout(model, tx, mesh, size)
    step_fn = steps.jit_train_step(model, tx, shardings, batch_sharding, norm="bit",
                                   mixup_alpha=args.mixup_alpha, batch_split=args.batch_split)
    scalar = jax.ShapeDtypeStruct((), np.float32)
    rng = jax.random.key(0)

    def abstract_batch(batch, mask=False):
        out = {"image": jax.ShapeDtypeStruct((batch, *size, 3), np.uint8, sharding=batch_sharding),
               "label": jax.ShapeDtypeStruct((batch,), np.int32, sharding=batch_sharding)}
        if mask:
            out["mask"] = jax.ShapeDtypeStruct((batch,), np.bool_, sharding=batch_sharding)
        return out

    compile_seconds = {}

    @functools.cache
    def compile_train(batch):
        start = time.perf_counter()
        compiled = step_fn.lower(abstract, abstract_batch(batch), scalar, scalar, rng).compile()
        compile_seconds[batch] = time.perf_counter() - start
        return compiled

    multiple = jax.device_count() * args.batch_split * 8
    limit = _memory_limit(jax, args)
    if args.batch == "max":
        if not limit:
            raise SystemExit("--batch=max needs a device that reports its memory (or --memory_gb)")
        probe = max(args.probe_batch // multiple, 1) * multiple
        args.batch = str(largest_batch(compile_train, limit, probe=probe, multiple=multiple,
                                       cap=args.max_batch))
    batch_size = int(args.batch)
    host = np.random.default_rng(0)
    local = {"image": host.integers(0, 256, (batch_size, *size, 3), dtype=np.uint8),
             "label": host.integers(0, args.num_classes, batch_size).astype(np.int32),
             "mask": np.ones(batch_size, bool)}
    batch = parallel.global_batch(local, batch_sharding)
    # Random parameters from shapes: compiling model.init costs more than a benchmark step.
    params = jax.tree_util.tree_map(
        lambda s, sh: jax.device_put((0.05 * host.standard_normal(s.shape)).astype(s.dtype), sh),
        bit.param_shapes(model), shardings.params)
    device = jax.devices()[0].device_kind
    rows = []

    if args.train:
        state = jax.jit(lambda p: steps.fresh_state(tx, p), out_shardings=shardings)(params)
        lr, lam = jax.device_put((np.float32(0.01), np.float32(1.0)))
        compiled = compile_train(batch_size)
        compile_s = compile_seconds[batch_size]
        box = {"state": state}

        def train():
            box["state"], metrics = compiled(box["state"], {"image": batch["image"],
                                                             "label": batch["label"]}, lr, lam, rng)
            return metrics["loss"].block_until_ready

        seconds = time_steps(train, args)
        # XLA's cost analysis counts a loop body once: with batch_split > 1 the FLOPs are not
        # the step's, so no MFU.
        rows.append(dict(kind="train", name="bit_medical (JAX)", batch=batch_size,
                         seconds=seconds, compile_s=compile_s, device=device,
                         flops=_flops(compiled) if args.batch_split == 1 else 0.0,
                         peak_bytes=_peak_memory(jax),
                         max_batch=predicted_max_batch(compiled.memory_analysis(), batch_size,
                                                       limit, multiple) if limit else None))
        del box, state

    evals = {"eval": lambda: steps.jit_eval_step(model, multilabel=False, norm="bit"),
             "features": lambda: steps.jit_features_step(model, norm="bit")}
    for kind in [k for k in evals if getattr(args, k)]:
        start = time.perf_counter()
        compiled = evals[kind]().lower(params, abstract_batch(batch_size, mask=True)).compile()
        compile_s = time.perf_counter() - start

        def run(compiled=compiled):
            return jax.tree_util.tree_leaves(compiled(params, batch))[0].block_until_ready

        rows.append(dict(kind=kind, name="bit_medical (JAX)", batch=batch_size,
                         seconds=time_steps(run, args), compile_s=compile_s, device=device,
                         flops=_flops(compiled), peak_bytes=_peak_memory(jax)))
    return rows


# ----------------------------------------------------------------------------- timm


def bench_torch(args) -> list[dict]:
    """Rows for timm's model at the JAX rows' batch (halved while it runs out of memory)."""
    import timm
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = timm.create_model(args.timm_model, pretrained=False, num_classes=args.num_classes)
    model = model.to(device).to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    flags = [f for f, on in (("AMP bf16", args.torch_amp), ("channels-last", args.channels_last),
                             ("compile", args.torch_compile)) if on]
    name = f"timm (PyTorch {torch.__version__.split('+')[0]}{', ' + ', '.join(flags) if flags else ''})"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train_step(images, labels):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.torch_amp):
            loss = loss_fn(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    @torch.inference_mode()
    def eval_step(images, labels):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.torch_amp):
            return torch.softmax(model(images).float(), dim=-1)

    @torch.inference_mode()
    def features_step(images, labels):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.torch_amp):
            return model.forward_head(model.forward_features(images), pre_logits=True)

    kinds = [k for k, on in (("train", args.train), ("eval", args.eval), ("features", args.features)) if on]
    fns = {"train": train_step, "eval": eval_step, "features": features_step}
    rows = []
    for kind in kinds:
        model.train(kind == "train")
        fn = torch.compile(fns[kind]) if args.torch_compile else fns[kind]
        batch = int(args.batch)
        while True:
            try:
                images = torch.empty(batch, 3, args.image_size, args.image_size, device=device
                                     ).uniform_(-1, 1).to(memory_format=memory_format)
                labels = torch.randint(0, args.num_classes, (batch,), device=device)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                fn(images, labels)  # compiles (torch.compile) / allocates
                sync()
                compile_s = time.perf_counter() - start
                seconds = time_steps(lambda: (fn(images, labels), sync)[1], args)
                break
            except torch.cuda.OutOfMemoryError:
                if batch <= 1:
                    raise
                batch //= 2
                torch.cuda.empty_cache()
        rows.append(dict(kind=kind, name=name, batch=batch, seconds=seconds, compile_s=compile_s,
                         device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                         peak_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None))
    return rows


# ----------------------------------------------------------------------------- report


def describe(row: dict, peak_tflops: float) -> dict:
    """Adds images/s, MFU (%) and peak memory (GiB) to a row."""
    row = dict(row, images_per_s=row["batch"] / row["seconds"])
    row["mfu"] = (100 * row["flops"] / row["seconds"] / (peak_tflops * 1e12)
                  if row.get("flops") and peak_tflops else None)
    row["peak_gib"] = row["peak_bytes"] / 2**30 if row.get("peak_bytes") else None
    return row


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    print(f"{args.model} vs {args.timm_model or 'nothing'}: batch {args.batch}, "
          f"{args.image_size}px, {args.dtype}, batch_split {args.batch_split}, remat {args.remat}, "
          f"{os.cpu_count()} CPU threads", flush=True)
    rows = []
    if args.only in (None, "jax"):
        rows += bench_jax(args)
    if args.only in (None, "torch") and args.timm_model:
        if args.batch == "max":
            raise SystemExit("--batch=max sizes the JAX step; with --only=torch give a number")
        rows += bench_torch(args)
    rows = [describe(r, args.peak_tflops) for r in rows]
    for r in rows:
        line = (f"{r['kind']:<8} {r['name']:<50} batch {r['batch']:>4} {r['images_per_s']:9.2f} images/s "
                f"({r['seconds'] * 1e3:.1f} ms/step, first call {r['compile_s']:.1f} s)")
        if r["mfu"] is not None:
            line += f", MFU {r['mfu']:.1f}%"
        if r["peak_gib"] is not None:
            line += f", peak {r['peak_gib']:.1f} GiB"
        if r.get("max_batch"):
            line += f", largest batch predicted {r['max_batch']}"
        print(line)
    for kind in ("train", "eval", "features"):
        pair = [r for r in rows if r["kind"] == kind]
        if len(pair) == 2:
            ratio = pair[0]["images_per_s"] / pair[1]["images_per_s"]
            print(f"ratio {kind} (bit_medical / timm images/s): {ratio:.2f}x")
            pair[0]["ratio"] = ratio
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
