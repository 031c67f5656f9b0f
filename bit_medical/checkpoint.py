"""Train-state checkpoints (Orbax CheckpointManager): periodic, asynchronous, resumable.

``DIR/checkpoints/<step>/`` holds the whole train state (step, params, optimiser state); the
data stream is a function of the step (see ``input_pipeline``), so restoring the latest
checkpoint and continuing gives exactly the run that was interrupted. The params-only export
for other code is ``bit_medical.models.export``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, *, every: int, keep: int = 3, asynchronous: bool = True
            ) -> ocp.CheckpointManager:
    """A manager saving every ``every`` steps into ``workdir/checkpoints``, keeping ``keep``."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1),
        max_to_keep=keep,
        enable_async_checkpointing=asynchronous,
        create=True,
    )
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options)


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restores ``step`` into arrays with the shapes, dtypes and shardings of ``abstract_state``."""
    return mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def save(mgr: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if due (or ``force``); returns whether it did."""
    return mgr.save(step, args=ocp.args.StandardSave(state), force=force)


def abstract(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a state tree, the target of a restore."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
