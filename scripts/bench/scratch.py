"""Scratch folders of the benchmark scripts (run output folders, a saved random model): removed when the process
that made them ends, after an error too, so that repeated benchmark runs leave nothing behind in the temp folder."""
from __future__ import annotations

import atexit
import shutil
import tempfile


def scratch_dir(prefix: str) -> str:
    """A new empty folder under the temp folder, deleted with its contents at this process's exit."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
