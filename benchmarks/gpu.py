"""Every GPU row of benchmarks/RESULTS.md in one call, within a time budget, as a markdown table.

    python benchmarks/gpu.py --out=gpu_results.md        # or: benchmarks/gpu.sh

Rows (bfloat16, SGD + AGC, the loop's compiled step; see train_step.py):

- BiT-R50x1 train at 224 and 128 px, the largest batch that fits, against timm's
  resnetv2_50x1_bit with AMP, channels-last and torch.compile at the same batch; eval rows
  (probabilities and loss) at 224 px against timm's, likewise;
- BiT-R152x4 train at 224 px and fine-tune at 480 px with remat (batch 16, the goal per
  80 GB GPU), with peak memory and the largest batch XLA's memory analysis predicts.

Each row runs ``train_step.py`` in its own processes, JAX first, then timm at the batch JAX
ran (a fresh device each: peak memory is the row's and neither allocator holds memory the other
needs; an out-of-memory error costs only that row), under what is left of ``--budget_s`` (480 s);
a row that does not finish in time is listed as such. Compilations are cached on disk, so a
second run spends its time on the rows. MFU uses the device's peak dense bfloat16 TFLOP/s
(``--peak_tflops``, else looked up from the GPU's name).

``--toy`` runs the same rows on CPU at toy sizes (tests/test_benchmarks.py).
Needs only jax, flax, optax, numpy, torch and timm.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Peak dense bfloat16 TFLOP/s (vendor data sheets), matched on the GPU's name, first hit wins.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))

TIMM = ["--torch_amp", "--channels_last", "--torch_compile"]
# (label, train_step.py arguments)
ROWS = (
    ("BiT-R50x1 train 224 px", ["--model=BiT-S-R50x1", "--timm_model=resnetv2_50x1_bit",
                                "--image_size=224", "--batch=max", "--eval", *TIMM]),
    ("BiT-R152x4 fine-tune 480 px, remat", ["--model=BiT-S-R152x4", "--timm_model=",
                                            "--image_size=480", "--batch=16", "--remat"]),
    ("BiT-R152x4 train 224 px", ["--model=BiT-S-R152x4", "--timm_model=", "--image_size=224",
                                 "--batch=max", "--probe_batch=16"]),
    ("BiT-R50x1 train 128 px", ["--model=BiT-S-R50x1", "--timm_model=resnetv2_50x1_bit",
                                "--image_size=128", "--batch=max", *TIMM]),
)
COMMON = ["--dtype=bfloat16", "--steps=5", "--repeats=3", "--warmup=2"]
# JAX takes 75% of GPU memory by default; the largest batch per GPU should see nearly all.
JAX_ENV = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"}
# CPU, tiny: the smallest BiT for every model, small images, one timed step, a made-up memory
# size so that --batch=max searches, and no torch.compile.
TOY = {"--model": "BiT-R14x0.5", "--image_size": {"224": "32", "480": "48", "128": "24"},
       "--batch": "8", "--probe_batch": "8"}
TOY_COMMON = ["--dtype=bfloat16", "--num_classes=10", "--steps=1", "--repeats=1", "--warmup=0",
              "--memory_gb=0.07"]
TOY_PEAK_TFLOPS = 1.0


def toy_args(args: list[str]) -> list[str]:
    """A row's arguments at toy size (see ``TOY``)."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if arg == "--torch_compile":
            continue
        if key == "--model":
            value = TOY["--model"]
        elif key == "--image_size":
            value = TOY["--image_size"][value]
        elif key == "--batch" and value != "max":
            value = TOY["--batch"]
        elif key == "--probe_batch":
            value = TOY["--probe_batch"]
        out.append(f"{key}={value}" if value else arg)
    return out


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def peak_tflops(name: str) -> float:
    return next((tflops for key, tflops in PEAK_TFLOPS if key in name), 0.0)


def _run(args: list[str], deadline: float, out: str, log) -> dict:
    """Runs train_step.py (writing ``out``) until ``deadline``; its JSON or why it has none."""
    timeout = deadline - time.perf_counter()
    if timeout < 5:
        return {"error": "not run: time budget spent"}
    cmd = [sys.executable, os.path.join(HERE, "train_step.py"), *args, f"--json={out}"]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                              env=dict(os.environ, **JAX_ENV))
    except subprocess.TimeoutExpired:
        return {"error": f"not finished in the time budget ({timeout:.0f} s left)"}
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"error": f"failed (exit {proc.returncode}, see the log)", "wall_s": wall}
    with open(out) as f:
        return dict(json.load(f), wall_s=wall)


def run_row(args: list[str], deadline: float, workdir: str, log) -> dict:
    """One row: the JAX side, then timm (if the row has it) in its own process at the batch
    JAX ran, so that neither side's allocator holds memory the other needs."""
    ours = _run([*args, "--only=jax"], deadline, os.path.join(workdir, "jax.json"), log)
    has_timm = not any(a == "--timm_model=" for a in args)
    if "error" in ours or not has_timm:
        return ours
    batch = ours["rows"][0]["batch"]
    theirs = _run([*(a for a in args if not a.startswith("--batch=")), f"--batch={batch}",
                   "--only=torch"], deadline, os.path.join(workdir, "torch.json"), log)
    rows = ours["rows"] + theirs.get("rows", [])
    for row in ours["rows"]:
        peer = [r for r in theirs.get("rows", []) if r["kind"] == row["kind"]]
        if peer:
            row["ratio"] = row["images_per_s"] / peer[0]["images_per_s"]
    return {"rows": rows, "timm_error": theirs.get("error")}


def _fmt(value, spec):
    return format(value, spec) if value is not None else "n/a"


def table(results: list[tuple[str, dict]]) -> str:
    """The markdown table of the rows' results."""
    lines = ["| row | kind | batch | bit_medical images/s | timm images/s (batch) | ratio | MFU | "
             "peak memory GiB | largest batch (predicted) | first call s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, result in results:
        if "error" in result:
            lines.append(f"| {label} | | | {result['error']} | | | | | | |")
            continue
        for kind in ("train", "eval", "features"):
            ours = [r for r in result["rows"] if r["kind"] == kind and "JAX" in r["name"]]
            theirs = [r for r in result["rows"] if r["kind"] == kind and "timm" in r["name"]]
            if not ours:
                continue
            o = ours[0]
            t = (f"{theirs[0]['images_per_s']:.1f} ({theirs[0]['batch']})" if theirs
                 else result.get("timm_error") or "")
            ratio = f"{o['ratio']:.2f}x" if o.get("ratio") else ""
            mfu = f"{o['mfu']:.1f}%" if o.get("mfu") is not None else "n/a"
            lines.append(
                f"| {label} | {kind} | {o['batch']} | {o['images_per_s']:.1f} | {t} | {ratio} | {mfu} | "
                f"{_fmt(o.get('peak_gib'), '.1f')} | {o.get('max_batch') or 'n/a'} | "
                f"{o['compile_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_results.md", help="markdown file to write")
    p.add_argument("--budget_s", type=float, default=480.0, help="wall-clock budget for all rows")
    p.add_argument("--peak_tflops", type=float, default=0.0,
                   help="peak dense bf16 TFLOP/s (0: from the GPU's name)")
    p.add_argument("--toy", action="store_true", help="CPU, toy sizes (a test of this script)")
    p.add_argument("--rows", default="", help="comma-separated row numbers (1-based) to run")
    args = p.parse_args(argv)

    start = time.perf_counter()
    device = "CPU (toy sizes)" if args.toy else gpu_name() or "unknown device"
    peak = args.peak_tflops or (TOY_PEAK_TFLOPS if args.toy else peak_tflops(device))
    chosen = [int(i) for i in args.rows.split(",") if i] or range(1, len(ROWS) + 1)
    env_cache = os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "bit_medical_bench_jax_cache"))
    results = []
    with tempfile.TemporaryDirectory() as workdir, open(args.out + ".log", "w") as log:
        for i in chosen:
            label, row_args = ROWS[i - 1]
            row_args = (toy_args(row_args) + TOY_COMMON if args.toy else row_args + COMMON
                        ) + ([f"--peak_tflops={peak}"] if peak else [])
            row_dir = os.path.join(workdir, f"row{i}")
            os.makedirs(row_dir)
            results.append((label, run_row(row_args, start + args.budget_s, row_dir, log)))
            print(f"{label}: {results[-1][1].get('error') or 'done'}", flush=True)
    header = (f"# GPU benchmark: {device}\n\n"
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()}, {time.perf_counter() - start:.0f} s in all; "
              f"MFU from XLA's cost analysis of the compiled step at {peak or 'unknown'} peak "
              f"TFLOP/s; timm with AMP, channels-last{'' if args.toy else ', torch.compile'} in its own "
              f"process at the JAX row's batch; JAX compilation cache "
              f"{env_cache}. Log: {args.out}.log\n\n")
    text = header + table(results)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
