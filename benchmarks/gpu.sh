#!/usr/bin/env bash
# One call, every GPU row of benchmarks/RESULTS.md in at most 8 minutes on one H100/H200,
# written as a markdown table (default gpu_results.md; see benchmarks/gpu.py for the rows).
#   benchmarks/gpu.sh [--out=FILE] [--budget_s=480] [--peak_tflops=989]
# Needs jax[cuda], flax, optax, numpy, torch and timm (no TensorFlow).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu.py "$@"
