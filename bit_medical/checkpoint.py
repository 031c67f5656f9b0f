"""Train-state checkpoints (Orbax CheckpointManager): periodic, asynchronous, resumable.

``DIR/checkpoints/<step>/`` holds the whole train state (step, params, optimiser state); the
data stream is a function of the step (see ``input_pipeline``), so restoring the latest
checkpoint and continuing gives exactly the run that was interrupted. The params-only export
for other code is ``bit_medical.models.export``.

A save never leaves a step that looks complete before it is: Orbax writes into
``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>`` once every file is written (on
object stores, where renames are not atomic, it lists a step only once its
``commit_success.txt`` exists). A save cut short (process killed, node lost, disk full) leaves
only such a temporary directory, which the next run's manager removes. A step that was
committed but cannot be read back (files truncated or damaged later) is moved to
``DIR/checkpoints_bad/<step>`` by :func:`restore_latest`, which resumes from the newest
readable step instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bit_medical import paths
from bit_medical.models.convert import CheckpointError

__all__ = ["CheckpointError", "manager", "save", "restore_latest", "BAD_DIRNAME"]

BAD_DIRNAME = "checkpoints_bad"  # beside DIR/checkpoints: steps that could not be read back
_REASON_CHARS = 300


def manager(workdir: str | epath.Path, *, keep: int) -> ocp.CheckpointManager:
    """A manager of ``workdir/checkpoints`` (``workdir`` absolute) keeping the ``keep`` latest.

    Saves are asynchronous (training continues while the files are written); the train loop
    decides when to save. Close it (``mgr.close()``) when done, also after an error: that
    waits for a save in flight, which would otherwise be torn down at interpreter exit.
    """
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(paths.path(workdir) / "checkpoints", options=options)


def save(mgr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Starts saving ``state`` as ``step`` (the caller decides when; Orbax does not skip it)."""
    mgr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(mgr: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any]:
    """``(step, state)`` of the newest checkpoint that reads back, into ``abstract_state``'s layout.

    ``abstract_state`` gives the shapes, dtypes and shardings of the arrays to restore. Newer
    steps that cannot be read are logged (one line each, with the reason) and moved to
    ``checkpoints_bad/`` beside the checkpoints, never deleted. If no step reads back, nothing
    is moved (a config that no longer matches the run fails every step the same way) and a
    :class:`CheckpointError` names the directory and each step's reason.

    Every process must call this: a step counts as readable only if it read on all of them.
    """
    _quiet_abandoned_reads()
    failures: dict[int, str] = {}
    for step in sorted(mgr.all_steps(), reverse=True):
        reason = None
        try:
            state = _read(mgr, step, abstract_state)
        except Exception as e:  # noqa: BLE001  Orbax/TensorStore raise many kinds for bad files
            reason = _reason(e)
        if _all_processes_agree(reason is None):
            break
        failures[step] = reason or "unreadable on another process"
    else:
        if not failures:
            raise CheckpointError(f"No checkpoint in {mgr.directory}")
        raise CheckpointError(
            f"No readable checkpoint in {mgr.directory}: "
            + "; ".join(f"step {s}: {r}" for s, r in failures.items())
            + ". Nothing was moved: if the config still matches the run, its files are "
              "damaged; move the step directories away to start without them")
    for bad, reason in failures.items():
        where = _set_aside(mgr.directory, bad)
        logging.warning("Checkpoint step %d in %s is unreadable (%s); moved it to %s, using "
                        "step %d instead", bad, mgr.directory, reason, where, step)
    if failures:
        mgr.reload()  # forget the moved steps, so that they are saved again when reached
    return step, state


def _read(mgr: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Reads one step with Orbax's handler, which, unlike ``mgr.restore``, ends in no barrier.

    After a restore, ``mgr.restore`` waits for all processes; a process whose shards failed to
    read never arrives there, so the others would hang (or pair the barrier with the next
    collective). Agreement is reached afterwards instead (``_all_processes_agree``).
    """
    handler = ocp.StandardCheckpointHandler()
    try:
        return handler.restore(mgr.directory / str(step) / ocp.checkpoint_manager.DEFAULT_ITEM_NAME,
                               args=ocp.args.StandardRestore(abstract_state))
    finally:
        handler.close()


def _reason(error: BaseException) -> str:
    """The innermost cause's message, one line: TensorStore's own errors name the file."""
    while True:  # down the chain Python prints as "The above exception was the direct cause..."
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            break
        error = inner
    text = str(error).split("[tensorstore_spec", 1)[0].strip().splitlines()
    text = text[0] if text else ""
    if len(text) > _REASON_CHARS:
        text = text[:_REASON_CHARS] + "..."
    return f"{type(error).__name__}: {text}"


def _all_processes_agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (each host reads only its own shards)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _set_aside(directory, step: int) -> epath.Path:
    """Moves ``directory/<step>`` to ``../checkpoints_bad/<step>`` (``<step>.1``, ... if taken).

    Every process returns the same target; process 0 moves the directory.
    """
    directory = epath.Path(directory)
    bad_dir = directory.parent / BAD_DIRNAME
    target, n = bad_dir / str(step), 0
    while target.exists():
        n += 1
        target = bad_dir / f"{step}.{n}"
    _sync(f"bit_medical.checkpoint.set_aside.{step}.looked")
    if jax.process_index() == 0:
        bad_dir.mkdir(parents=True, exist_ok=True)
        (directory / str(step)).rename(target)
    _sync(f"bit_medical.checkpoint.set_aside.{step}.moved")
    return target


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _quiet_abandoned_reads() -> None:
    """Stops the echoes of a failed restore: the reads Orbax abandoned when one array failed.

    Orbax then closes its event loop while the other TensorStore reads still run. As each
    finishes, its callback finds the loop closed ("RuntimeError: Event loop is closed"), and
    its task or coroutine, never awaited again, reports its own error when collected ("Task
    exception was never retrieved", "Exception ignored in: <coroutine ...>"): dozens of
    tracebacks, some long after the restore returned, for an error already reported. Those,
    and only those, are dropped.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_abandoned_reads", False):
        return

    def hook(unraisable):
        error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if not (closed_loop or (code is not None and _is_orbax(code.co_filename))):
            previous(unraisable)

    hook._drops_abandoned_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_abandoned_task_filter)


def _abandoned_task_filter(record: logging.LogRecord) -> bool:
    """False for asyncio's report of an Orbax task whose error nobody awaited."""
    if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
        return True
    tb = record.exc_info[2]
    while tb is not None:
        if _is_orbax(tb.tb_frame.f_code.co_filename):
            return False
        tb = tb.tb_next
    return True


def _is_orbax(filename: str) -> bool:
    return f"{os.sep}orbax{os.sep}" in filename
