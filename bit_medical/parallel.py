"""The one parallel path: ``jax.jit`` over a device mesh with ``NamedSharding``.

The mesh has two axes. The batch is split over both (every device sees its own examples);
parameters and optimiser state are replicated, or, with ``fsdp > 1``, their large tensors are
split over the ``fsdp`` axis so that models such as R152x4 fit (XLA inserts the gathers).
Across hosts, ``jax.distributed`` joins the processes and each host feeds its own shard of the
batch, assembled into global arrays with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# Tensors smaller than this stay replicated under FSDP: splitting them saves little memory
# and costs a collective each.
FSDP_MIN_SIZE = 1 << 16


# XLA:CPU (jaxlib >= 0.10) hands convolutions and their fused neighbours to YNNPACK by default;
# for BiT's weight-standardised convolutions and GroupNorm that runs a train step 1.5-1.7x
# slower on 2 cores than XLA's own kernels (benchmarks/RESULTS.md). Older jaxlibs do not know
# the flag and would abort on it.
_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_CPU_FLAG_SINCE = (0, 10)


def tune_xla_cpu() -> None:
    """Adds BiT's faster XLA:CPU setting to ``XLA_FLAGS`` unless the user set that flag.

    Call before the first JAX computation (flags are read when the backend starts); accelerator
    backends ignore it. ``BIT_MEDICAL_KEEP_XLA_FLAGS=1`` leaves ``XLA_FLAGS`` untouched.
    """
    from importlib import metadata

    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("BIT_MEDICAL_KEEP_XLA_FLAGS") or "ynn_fusion_type" in flags:
        return
    try:
        version = tuple(int(v) for v in metadata.version("jaxlib").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return
    if version >= _CPU_FLAG_SINCE:
        os.environ["XLA_FLAGS"] = f"{flags} {_CPU_FLAG}".strip()


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto: bool = False) -> None:
    """Joins a multi-process run (``jax.distributed.initialize``) when asked to.

    With explicit arguments (e.g. two local processes), those are used; with ``auto`` JAX
    detects the cluster (TPU VM pods, SLURM, ...). A single process does nothing.
    """
    if coordinator_address or (num_processes or 1) > 1:
        if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
            # CPU processes exchange gradients through gloo (tests, CPU clusters).
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif auto:
        jax.distributed.initialize()
    if jax.process_count() > 1:
        logging.info("Process %d of %d, %d local / %d global devices", jax.process_index(),
                     jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(fsdp: int = 1) -> Mesh:
    """A (data, fsdp) mesh over all devices; ``fsdp`` devices share each parameter tensor."""
    count = jax.device_count()
    if fsdp < 1 or count % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the {count} devices")
    devices = mesh_utils.create_device_mesh((count // fsdp, fsdp), allow_split_physical_axes=True)
    return Mesh(devices, (DATA_AXIS, FSDP_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P((DATA_AXIS, FSDP_AXIS)))


def _fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return P()
    # Split the largest axis that divides evenly (for HWIO kernels, usually channels).
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            return P(*(FSDP_AXIS if a == axis else None for a in range(len(shape))))
    return P()


def state_sharding(mesh: Mesh, abstract_tree: Any) -> Any:
    """Shardings for a tree of arrays (params, optimiser state): replicated, or FSDP-split.

    The rule depends only on a tensor's shape, so a parameter and its momentum buffer are
    split the same way.
    """
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), fsdp)), abstract_tree)


def global_batch(local: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles every host's local batch into global arrays split over the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def to_host(tree: Any) -> Any:
    """Full numpy copies of (possibly sharded, multi-host) arrays, on every host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
