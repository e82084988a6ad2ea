"""The store interface the framework uses: one database per (app, partition), a store per table.

A :class:`PartitionDatabase` holds every store (a RocksDB column family, or a dict in the memory
backend) of one partition of one app, plus a metadata store. Everything is bytes: typed codecs
sit on top (:mod:`flowbus.state.table`). The only way to change a database is :meth:`write`,
which applies the changes of every store *and* the metadata in one atomic batch — that is what
lets a commit record "these values, as of changelog offset N" together, so a crash can never
leave data and offsets disagreeing.

Ordering: keys sort as unsigned bytes, in every backend, so range and prefix scans see the same
order everywhere (windowed keys encode times big-endian so byte order is time order).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

META_STORE = "__flowbus_meta__"
"""The reserved store holding per-partition metadata (changelog offsets, stream time, format)."""
FORMAT_VERSION = 1
"""Bumped when the on-disk layout changes; a database of another version is rebuilt from the changelog."""
FORMAT_KEY = b"format"

Changes = Mapping[str, Mapping[bytes, bytes | None]]
"""store name -> key -> new value (``None`` deletes the key)."""


class PartitionDatabase(abc.ABC):
    """The stores of one partition. Not thread-safe: one worker's event loop uses it."""

    path: Path | None
    """Where it lives on disk (``None`` for the memory backend)."""

    @abc.abstractmethod
    def stores(self) -> list[str]:
        """Names of the stores this database holds (the metadata store excluded)."""

    @abc.abstractmethod
    def get(self, store: str, key: bytes) -> bytes | None:
        """The value of ``key`` in ``store``, ``None`` if absent.

        Raises:
            KeyError: ``store`` is not one of :meth:`stores`.
            StoreClosedError: the database was closed.
        """

    @abc.abstractmethod
    def items(
        self,
        store: str,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with ``start <= key < end`` in byte order (either bound may be
        ``None``: unbounded); ``reverse`` walks from the largest key down."""

    def prefix_items(self, store: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs whose key starts with ``prefix``, in byte order."""
        return self.items(store, prefix, prefix_end(prefix))

    @abc.abstractmethod
    def write(self, changes: Changes, meta: Mapping[bytes, bytes | None] | None = None, *, bulk: bool = False) -> None:
        """Apply ``changes`` to the stores and ``meta`` to the metadata store atomically.

        ``bulk`` is for restore: large batches with the write-ahead log off (a crash during
        restore only loses what the next restore reads again, since the changelog offset is in
        the same batch).
        """

    def get_meta(self, key: bytes) -> bytes | None:
        """A metadata value (written through ``write(..., meta=...)``)."""
        return self.get(META_STORE, key)

    @abc.abstractmethod
    def wipe(self) -> None:
        """Delete every key of every store and all metadata (before a full restore)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the database; later calls raise :class:`~flowbus.state.errors.StoreClosedError`.
        Closing twice is allowed."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True after :meth:`close`."""


class Backend(abc.ABC):
    """Opens partition databases; one per worker, owning the memory budget they share."""

    name: str

    @abc.abstractmethod
    def open(self, path: Path, stores: Sequence[str]) -> PartitionDatabase:
        """Open (creating if missing) the database at ``path`` with these stores.

        Stores missing from an existing database are added; stores it has beyond ``stores`` are
        kept (a table removed from the app does not lose its data on the next start).

        Raises:
            StoreOpenError: the files are corrupt or of another format version (the caller moves
                them aside and rebuilds from the changelog).
        """

    def close(self) -> None:
        """Release what the databases share (block cache); every database is closed first."""


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``
    (``None`` when there is none: the prefix is all ``0xff`` or empty)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


FORMAT_VALUE = FORMAT_VERSION.to_bytes(4, "big")
"""How every backend stores :data:`FORMAT_VERSION` under :data:`FORMAT_KEY`: a 4-byte big-endian int."""

RESERVED_STORE_NAMES = frozenset({META_STORE, "default"})
"""Names no table may use: the metadata store, and RocksDB's own ``default`` column family (every
RocksDB database has one, so it could not tell a table of that name from an empty database)."""


def check_store_names(stores: Sequence[str]) -> None:
    """Reject reserved or empty store names, in every backend alike (an app that runs on the
    memory backend must run on RocksDB too).

    Raises:
        ValueError: a name is empty or in :data:`RESERVED_STORE_NAMES`.
    """
    for store in stores:
        if not store or store in RESERVED_STORE_NAMES:
            raise ValueError(f"store name {store!r} is reserved or empty (reserved: {sorted(RESERVED_STORE_NAMES)})")
