"""The one rule for paths users pass (workdir, pretrained, data_dir, image folders, exports).

Relative paths are taken from the current directory and ``~`` is the home directory, in the
command line and the Python API alike. Paths are made absolute once, where they enter
(``train.train_and_evaluate``, ``restore_workdir``, ``load_model``, ``export.load``), because
Orbax accepts only absolute paths and a run's saved config must not depend on where the
command was started.

Cloud storage: a workdir, a runs root, a data_dir or a checkpoint may be a URL (``gs://...``,
as TPU VM users keep them). Every file this project reads or writes there goes through
:func:`path` (``etils.epath``, the path API Orbax and TFDS use themselves), never through
``open`` or ``os.path``, so local folders and buckets take the same code.
"""

from __future__ import annotations

import os

from etils import epath


def absolute(path: str | os.PathLike | None) -> str | None:
    """``path`` with ``~`` expanded and made absolute; empty, None and URLs (gs://...) as given."""
    if path is None:
        return None
    path = os.fspath(path)
    if not path or is_url(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an object store (``gs://bucket/...``) rather than a local file."""
    return "://" in os.fspath(path)


def path(p: str | os.PathLike) -> epath.Path:
    """``p`` (local, relative, ``~`` or a URL) as an absolute ``epath.Path`` for file access."""
    return epath.Path(absolute(p))
