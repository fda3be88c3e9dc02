"""Atomic file replacement: write beside the target, fsync, then os.replace, so a reader (or a rerun
after a crash) sees either the old file or the complete new one, never a half-written file."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path in the target's directory; on success it replaces `path`, on any
    error (or interruption) it is removed and `path` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
