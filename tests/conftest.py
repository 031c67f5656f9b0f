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


# ----------------------------------------------------------------------------- tiny runs
# Shared by the train-loop tests (test_train, test_checkpoint_recovery, test_paths); see
# run_helpers.py.

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data_dir with small synthetic CheXpert and Tuberculosis sets, prepared (the demo's
    collections, smaller and in the "grid" style, whose blobs a few steps learn)."""
    from input_pipeline import datasets
    from input_pipeline.datasets import synthetic

    root = tmp_path_factory.mktemp("demo_data")
    synthetic.write_chexpert(root / "chexpert", n_train=48, n_valid=12, image_size=(40, 36),
                             small=True, seed=0)
    synthetic.write_tuberculosis(root / "tb", n_shenzhen=24, n_montgomery=8, image_size=(40, 36),
                                 seed=1)
    data = str(root / "tfds")
    datasets.prepare("chexpert_v1", manual_dir=root / "chexpert", data_dir=data, config="full",
                     num_workers=1)
    datasets.prepare("tuberculosis_cxr", manual_dir=root / "tb", data_dir=data, config="full",
                     num_workers=1)
    return data


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory):
    """A random BiT-R14x0.5 in the official .npz layout, standing in for a pre-trained model."""
    import run_helpers

    path = tmp_path_factory.mktemp("pretrained") / "small.npz"
    run_helpers.random_npz(path, 13)
    return str(path)


@pytest.fixture(scope="session")
def reference_run(data_dir, small_npz, tmp_path_factory):
    """One uninterrupted single-device CLI run: the baseline the other runs must reproduce.

    Checkpoints at steps 2, 4 and 6 (run_helpers.STEPS); its export holds the final params.
    """
    import run_helpers

    workdir = str(tmp_path_factory.mktemp("reference"))
    run_helpers.cli(run_helpers.train_args(data_dir, small_npz, workdir))
    return workdir
