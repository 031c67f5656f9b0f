"""The one rule for paths users pass (workdir, pretrained, data_dir, image folders, exports).

Relative paths are taken from the current directory and ``~`` is the home directory, in the
command line and the Python API alike. Paths are made absolute once, where they enter
(``train.train_and_evaluate``, ``restore_workdir``, ``load_model``, ``export.load``), because
Orbax accepts only absolute paths and a run's saved config must not depend on where the
command was started.
"""

from __future__ import annotations

import os


def absolute(path: str | os.PathLike | None) -> str | None:
    """``path`` with ``~`` expanded and made absolute; empty, None and URLs (gs://...) as given."""
    if path is None:
        return None
    path = os.fspath(path)
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))
