"""The default transactional id of an exactly-once worker: its own, and its predecessor's after a restart.

Why not one id per app and host (the default before): every worker of the app on that host
shared it, and each one's InitProducerId fenced the others, so a second worker started to use a
second core crashed the first.

Why one id per worker is enough: since KIP-447 a transactional producer commits its consumer's
offsets with the group's metadata (generation, member id), and the group coordinator refuses
them from a member the group moved on without. A zombie (a worker paused, or cut off, while its
partitions moved to another) is fenced by the group, not by sharing a transactional id with the
partitions' new owner, so the id no longer has to follow the partitions.

What the id still has to do: end the transaction a dead worker left open. Until that transaction
ends, every read_committed reader of a partition it wrote to is held at its first record (the
last stable offset). A new InitProducerId for the same id ends it at once (the coordinator
aborts it and bumps the epoch); otherwise the coordinator aborts it when its
``transaction.timeout.ms`` (60 s with the flowbus transports) runs out.

So the id is a *slot* of the worker's state directory, claimed with a lock file:

* ``<state dir>/<app id>/transactional-ids/slot-<n>/LOCK.flowbus``, an exclusive ``flock``
  (:class:`~flowbus.state.locking.PartitionLock`) held while the worker runs. The kernel drops
  it when the process dies, even by SIGKILL, so a dead worker's slot is free again at once.
* A starting worker takes the lowest free slot: a worker restarted next to its old peers takes
  back the slot of the one that died, and its InitProducerId ends the transaction left open.
* The lock file holds the holder's pid and is emptied by a clean release (after the worker
  ended its last transaction). A free slot whose file still holds a pid was held by a process
  that died: an *orphan*, maybe with a transaction open. A starting worker ends the orphans'
  transactions too (one InitProducerId each, while holding their locks), so when fewer workers
  come back than died, their transactions do not wait for the timeout either.
* The id is ``<app id>-<hostname>-<tag>-<n>`` where ``tag`` is 8 hex digits of SHA-256 of the
  state directory's resolved path: workers sharing a state directory (the default for every
  worker started in one directory) get distinct slots; workers with different state
  directories, or on different hosts, never share an id.

A dead worker's open transaction is therefore ended when the next worker of the app starts in
the same state directory on the same host (its restart, typically), and by the transaction
timeout otherwise. An explicit ``App(transactional_id=...)`` bypasses all this: the user then
gives each worker its own id, stable across its restarts.

Example::

    slot = claim_slot("clicks", Path("./flowbus-state"))
    slot.transactional_id            # 'clicks-myhost-3f9a02c1-0'
    ...                              # the worker runs with it
    slot.release()                   # after its last transaction ended
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from flowbus.app_errors import ConfigurationError
from flowbus.state.errors import StoreLockedError
from flowbus.state.locking import PartitionLock

SLOTS_DIRNAME = "transactional-ids"
"""Inside ``<state dir>/<app id>``: one directory per slot, ``slot-<n>``."""
SLOTS_MAX = 256
"""Workers of one app sharing one state directory on one host, at most (claims and sweeps are
bounded by it)."""
STATE_DIR_TAG_HEX_DIGITS = 8
_SLOT_DIR = re.compile(r"slot-(\d+)")
_process_ids = itertools.count()


@dataclass(eq=False)
class TransactionalIdSlot:
    """A slot this process holds: its transactional id belongs to one worker until :meth:`release`.

    Attributes:
        index: ``n`` of ``slot-<n>``.
        transactional_id: the id of the slot.
        orphaned: the previous holder died holding it, so a transaction of this id may be open
            (the first InitProducerId ends it).
    """

    index: int
    transactional_id: str
    lock: PartitionLock
    orphaned: bool

    def release(self) -> None:
        """Free the slot and mark it clean; call it once the id's last transaction ended (a
        process that dies without calling it leaves the slot orphaned, which is the point)."""
        self.lock.release()


def slots_dir(app_id: str, state_dir: Path) -> Path:
    return Path(state_dir) / app_id / SLOTS_DIRNAME


def state_dir_tag(state_dir: Path) -> str:
    """A short, stable name of the state directory (of its resolved absolute path)."""
    resolved = str(Path(state_dir).resolve())
    return hashlib.sha256(resolved.encode()).hexdigest()[:STATE_DIR_TAG_HEX_DIGITS]


def slot_transactional_id(app_id: str, state_dir: Path, index: int, *, host: str | None = None) -> str:
    """The transactional id of slot ``index``: ``<app id>-<hostname>-<state dir tag>-<index>``."""
    return f"{app_id}-{host or socket.gethostname()}-{state_dir_tag(state_dir)}-{index}"


def process_transactional_id(app_id: str, *, host: str | None = None) -> str:
    """An id unique to this process and call, for transports whose data dies with the process
    (``memory://``): nothing can be left open for a later process to end, so no slot is needed."""
    return f"{app_id}-{host or socket.gethostname()}-{os.getpid()}-{next(_process_ids)}"


def _try_take(directory: Path, index: int, app_id: str, state_dir: Path, host: str | None) -> TransactionalIdSlot | None:
    lock = PartitionLock(directory)
    # Read before taking: taking the lock overwrites the file with our own pid.
    orphaned = lock.holder_pid() is not None
    try:
        lock.acquire(0)
    except StoreLockedError:
        return None
    return TransactionalIdSlot(index, slot_transactional_id(app_id, state_dir, index, host=host), lock, orphaned)


def claim_slot(app_id: str, state_dir: Path, *, host: str | None = None) -> TransactionalIdSlot:
    """Take the lowest free slot of ``app_id`` in ``state_dir`` (creating directories as needed).

    Raises:
        ConfigurationError: all :data:`SLOTS_MAX` slots are held by running workers.
    """
    base = slots_dir(app_id, state_dir)
    for index in range(SLOTS_MAX):
        slot = _try_take(base / f"slot-{index}", index, app_id, state_dir, host)
        if slot is not None:
            return slot
    raise ConfigurationError(
        f"{SLOTS_MAX} exactly-once workers of {app_id!r} already run with state directory {state_dir}: "
        "give this one another state_dir or an explicit transactional_id"
    )


def take_orphans(
    app_id: str, state_dir: Path, *, skip: frozenset[int] | set[int] = frozenset(), host: str | None = None
) -> list[TransactionalIdSlot]:
    """Lock every slot (other than ``skip``) whose last holder died holding it.

    The caller ends each one's transaction (an InitProducerId with its id) and then releases it,
    which marks it clean. Slots held by running workers and slots released cleanly are left alone.
    """
    base = slots_dir(app_id, state_dir)
    try:
        children = sorted(base.iterdir())
    except FileNotFoundError:
        return []
    found = []
    for child in children:
        match = _SLOT_DIR.fullmatch(child.name)
        if match is None or not child.is_dir():
            continue
        index = int(match[1])
        if index in skip or index >= SLOTS_MAX:
            continue
        if PartitionLock(child).holder_pid() is None:
            continue  # released cleanly (or never written): nothing can be open
        slot = _try_take(child, index, app_id, state_dir, host)
        if slot is not None and slot.orphaned:
            found.append(slot)
        elif slot is not None:
            slot.release()  # released cleanly between the two looks
    return sorted(found, key=lambda s: s.index)
