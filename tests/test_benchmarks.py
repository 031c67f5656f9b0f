"""The one-call GPU benchmark (benchmarks/gpu.py) at toy size on CPU: it runs with only jax,
flax, optax, numpy, torch and timm importable, and writes a consistent table."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the GPU machine lacks: the benchmark's processes must not import any of it.
ABSENT = ("tensorflow", "tensorflow_datasets", "ml_collections", "clu", "sklearn")


@pytest.mark.slow
def test_gpu_benchmark_writes_its_table_without_tensorflow(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in ABSENT))
    out = tmp_path / "gpu.md"
    env = dict(os.environ, PYTHONPATH=str(blocker), PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    proc = subprocess.run([os.path.join(REPO, "benchmarks", "gpu.sh"), "--toy", "--rows=1,2",
                           f"--out={out}"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "gpu.md.log").read_text()
    assert "No module named" not in log and "import of" not in log

    lines = [line for line in out.read_text().splitlines() if line.startswith("| BiT")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert [(c[0], c[1]) for c in cells] == [("BiT-R50x1 train 224 px", "train"),
                                             ("BiT-R50x1 train 224 px", "eval"),
                                             ("BiT-R152x4 fine-tune 480 px, remat", "train")]
    for label, kind, batch, ours, timm, ratio, mfu, _, largest, _ in cells:
        assert float(ours) > 0 and float(mfu.rstrip("%")) > 0
        if "R50x1" in label:  # against timm at the same batch; ratio = ours / timm
            timm_rate, timm_batch = re.fullmatch(r"([\d.]+) \((\d+)\)", timm).groups()
            assert timm_batch == batch
            assert float(ratio.rstrip("x")) == pytest.approx(float(ours) / float(timm_rate),
                                                             rel=0.02, abs=0.01)
        if kind == "train":  # the batch run fits by XLA's memory analysis
            assert int(largest) >= int(batch) >= 8
    assert cells[2][2] == "8"  # the fixed fine-tune batch (16 on a GPU) at toy size
