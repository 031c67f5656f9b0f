"""Test-wide settings: CPU only, quiet TensorFlow, no network, float32 matmuls."""

import os

# These must be set before jax or tensorflow is imported anywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Downloads must never happen in tests; TFDS would otherwise try GCS for metadata.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")

import sys  # noqa: E402
import tempfile  # noqa: E402

# Compilations are shared by every test process (xdist workers, CLI subprocesses) through
# JAX's persistent cache: the same small train step is otherwise recompiled in each of them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "bit_medical_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# torchvision imports torch._dynamo, which loads triton, and libtriton segfaults in a process
# that loaded TensorFlow first (both bundle LLVM). Triton compiles GPU kernels; no test uses it.
sys.modules.setdefault("triton", None)

import jax  # noqa: E402

from bit_medical import parallel  # noqa: E402

# The CLI's CPU setting, so that in-process runs and parity tests see what users run.
parallel.tune_xla_cpu()

# Parity tests compare against PyTorch float32; XLA's CPU default is already full
# precision, but make it explicit so a changed default cannot loosen the tests.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s on 2 CPU cores")
