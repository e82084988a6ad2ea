"""``memory://[NAME]``: the flowbus broker core in this process, on a temporary directory.

This is the transport of the test harness (``app.test_context()``) and of quick experiments. It is
not a second implementation of a broker: it is :class:`~flowbus.transports.embedded.EmbeddedTransport`
(the same :class:`~flowbus.broker.core.BrokerCore`, log, group coordinator and transaction
coordinator that ``flowbus broker`` serves over TCP) on a directory that lives only as long as the
transport. So what a test sees (offsets, group assignment and hand-over, committed offsets, the
last stable offset, aborted records left out, producer fencing by epoch and consumer group
generation) is what production does.

Two differences from ``embedded://DIR``:

* **Nothing outlives the process.** An unnamed ``memory://`` gets its own directory, removed when
  its last user closes it. ``memory://NAME`` is shared by every transport of that name in the
  process, and its directory is removed at exit.
* **Nothing expires by time.** Topics default to ``retention.ms=-1``: records carry the app's
  clock (a manual one in the harness), which the core's real clock would take for old data.
* **The core keeps the system clock.** ``clock`` (a :class:`~flowbus.clock.ManualClock` in the
  harness) gives the timestamps of the records sent; group sessions and transaction timeouts run
  on real time, so moving an app's manual clock by an hour never expires its own session.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import uuid
from pathlib import Path

from flowbus.clock import SYSTEM_CLOCK, Clock
from flowbus.transports.embedded import EmbeddedTransport

DIRECTORY_PREFIX = "flowbus-memory-"
"""Prefix of the temporary directories (under the system's temporary directory)."""

_NAMED: dict[str, Path] = {}
"""The directory of each ``memory://NAME`` of this process."""
_DIRECTORIES: set[Path] = set()
"""Every directory a memory transport of this process chose, removed at exit (an unnamed one is
removed earlier, when its last user closes it)."""


def _remove_all() -> None:
    for path in _DIRECTORIES:
        shutil.rmtree(path, ignore_errors=True)
    _DIRECTORIES.clear()
    _NAMED.clear()


atexit.register(_remove_all)


def _new_directory() -> Path:
    """A fresh path under the system's temporary directory; the broker core creates it on start,
    so a transport never started leaves nothing behind."""
    path = Path(tempfile.gettempdir()) / f"{DIRECTORY_PREFIX}{uuid.uuid4().hex}"
    _DIRECTORIES.add(path)
    return path


class MemoryTransport(EmbeddedTransport):
    """The broker core on a temporary directory: see the module's documentation.

    Args:
        url: ``memory://`` (a broker of its own) or ``memory://NAME`` (shared by name).
        clock: timestamps of the records sent (the app's clock).
    """

    def __init__(self, url: str = "memory://", *, clock: Clock = SYSTEM_CLOCK, _directory: Path | None = None) -> None:
        self.name = url.removeprefix("memory://")
        if _directory is not None:
            directory = _directory
        elif self.name:
            directory = _NAMED.get(self.name)
            if directory is None:
                directory = _NAMED[self.name] = _new_directory()
        else:
            directory = _new_directory()
        super().__init__(f"embedded://{directory}", clock=clock, broker_clock=SYSTEM_CLOCK)
        self.url = url
        # Records carry the app's (often manual) clock; time retention on the core's real clock
        # would take them for years-old data. Nothing here outlives the process anyway.
        self._broker_settings["log_retention_ms"] = -1

    def alias(self) -> MemoryTransport:
        """Another transport on the same core, started and closed on its own (the core and an
        unnamed transport's directory last until the last of them closes)."""
        return MemoryTransport(self.url, clock=self.clock, _directory=self.data_dir)

    async def close(self) -> None:
        """Release the core; the last user of an unnamed transport removes its directory."""
        handle = self._handle
        last = self._started and handle is not None and handle.users == 1
        await super().close()
        if last and not self.name:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            _DIRECTORIES.discard(self.data_dir)


__all__ = ["MemoryTransport"]
