"""The broker's private files (``credentials.json``, ``acls.json``): replaced atomically and
durably, readable by the broker's user only."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from flowbus.log.checkpoint import fsync_directory


def write_private_file(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload``, mode 0600: a temporary file beside it, fsynced, renamed
    over it, and the directory fsynced, so a crash leaves the old file or the new one, whole.

    Raises:
        OSError: the file could not be written (the old one is left as it was).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(payload)
        while view:  # os.write may write less than asked
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)
