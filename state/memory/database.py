"""The memory backend: a partition's stores as dicts, for tests and for state small enough to
restore from its changelog at every start.

Nothing is written to disk: ``path`` is kept only to name the database in messages, and a
database opened again at the same path starts empty (the changelog brings the state back).
Behaviour matches the RocksDB backend wherever the contract says something: unsigned byte order,
atomic writes, the format marker in the metadata store, errors after close.

Range scans need keys in order, and a dict has none: each store keeps its keys sorted, refreshed
lazily. A refresh after writes merges the keys added since (sorted) into the previous sorted list
— two sorted runs, which ``list.sort`` merges in linear time — so a scan with no writes since the
last one costs a binary search, and one after ``k`` new keys costs ``O(n + k log k)``.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from flowbus.state.base import (
    FORMAT_KEY,
    FORMAT_VALUE,
    META_STORE,
    Backend,
    Changes,
    PartitionDatabase,
    check_store_names,
)
from flowbus.state.errors import StoreClosedError


class _Store:
    """One store: its dict, and its keys in byte order as of the last refresh."""

    __slots__ = ("_added", "_removed", "_sorted", "data")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] = []
        self._added: set[bytes] = set()  # keys inserted since the last refresh
        self._removed = False  # whether any key was deleted since the last refresh

    def apply(self, entries: Mapping[bytes, bytes | None]) -> None:
        data = self.data
        for key, value in entries.items():
            if value is None:
                if data.pop(key, None) is not None:
                    self._removed = True
            else:
                if key not in data:
                    self._added.add(key)
                data[key] = value

    def sorted_keys(self) -> list[bytes]:
        """Every key in byte order. The list returned is never changed afterwards, so a scan
        in progress keeps walking the keys it started with."""
        added = self._added
        if not added and not self._removed:
            return self._sorted
        data = self.data
        if self._removed:
            # A key deleted and then inserted again is in both the old list and ``added``.
            keys = [key for key in self._sorted if key in data and key not in added]
        else:
            keys = self._sorted.copy()
        keys.extend(sorted(key for key in added if key in data))
        keys.sort()
        self._sorted = keys
        self._added = set()
        self._removed = False
        return keys

    def clear(self) -> None:
        self.data.clear()
        self._sorted = []
        self._added = set()
        self._removed = False


def _check_bytes(store: str, entries: Mapping[bytes, bytes | None]) -> None:
    """The RocksDB backend refuses anything but bytes; refusing it here too keeps apps portable."""
    for key, value in entries.items():
        if not isinstance(key, bytes) or not (value is None or isinstance(value, bytes)):
            raise TypeError(f"store {store!r}: keys and values must be bytes, got {key!r}: {value!r}")


class MemoryPartition(PartitionDatabase):
    """The stores of one partition in dicts. Open it with :class:`MemoryBackend`."""

    def __init__(self, path: Path | None, stores: Sequence[str]) -> None:
        check_store_names(stores)
        self.path = path
        self._stores = sorted(set(stores))
        self._by_name: dict[str, _Store] = {name: _Store() for name in [*self._stores, META_STORE]}
        # The dicts themselves, for get(): one lookup and one dict.get per call.
        self._data: dict[str, dict[bytes, bytes]] = {name: store.data for name, store in self._by_name.items()}
        self._by_name[META_STORE].apply({FORMAT_KEY: FORMAT_VALUE})
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryPartition({str(self.path)!r}, stores={self._stores}, closed={self._closed})"

    def stores(self) -> list[str]:
        return list(self._stores)

    def get(self, store: str, key: bytes) -> bytes | None:
        try:
            data = self._data[store]
        except KeyError:
            raise self._unknown_store(store) from None
        return data.get(key)

    def items(
        self,
        store: str,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Like the RocksDB backend's, but a scan sees writes made while it runs: deleted keys
        are skipped and values are read as each key is reached. Do not rely on either."""
        target = self._by_name.get(store)
        if target is None:
            raise self._unknown_store(store)
        keys = target.sorted_keys()
        low = 0 if start is None else bisect_left(keys, start)
        high = len(keys) if end is None else bisect_left(keys, end)
        indexes = range(high - 1, low - 1, -1) if reverse else range(low, high)
        return self._scan(target.data, keys, indexes)

    def _scan(self, data: dict[bytes, bytes], keys: list[bytes], indexes: range) -> Iterator[tuple[bytes, bytes]]:
        for index in indexes:
            if self._closed:
                raise self._closed_error()
            key = keys[index]
            value = data.get(key)
            if value is not None:
                yield key, value

    def write(self, changes: Changes, meta: Mapping[bytes, bytes | None] | None = None, *, bulk: bool = False) -> None:
        """Check every store name and every key and value first, then apply: a bad entry
        anywhere leaves every store untouched, as a rejected RocksDB batch does."""
        if self._closed:
            raise self._closed_error()
        batches: list[tuple[_Store, Mapping[bytes, bytes | None]]] = []
        for name, entries in changes.items():
            target = self._by_name.get(name)
            if target is None or name == META_STORE:
                raise self._unknown_store(name)
            _check_bytes(name, entries)
            batches.append((target, entries))
        if meta:
            _check_bytes(META_STORE, meta)
            batches.append((self._by_name[META_STORE], meta))
        for target, entries in batches:
            target.apply(entries)

    def wipe(self) -> None:
        """Empty every store and the metadata; the format marker is written again, as RocksDB's
        wipe does."""
        if self._closed:
            raise self._closed_error()
        for target in self._by_name.values():
            target.clear()
        self._by_name[META_STORE].apply({FORMAT_KEY: FORMAT_VALUE})

    def close(self) -> None:
        """Drop the data (it lives in the changelog); scans in progress raise
        :class:`StoreClosedError` at their next step."""
        self._closed = True
        self._by_name = {}
        self._data = {}

    @property
    def closed(self) -> bool:
        return self._closed

    def _closed_error(self) -> StoreClosedError:
        return StoreClosedError(f"{self.path}: the partition database is closed")

    def _unknown_store(self, store: str) -> Exception:
        if self._closed:
            return self._closed_error()
        return KeyError(f"{self.path}: no store {store!r} (stores: {self._stores})")


class MemoryBackend(Backend):
    """Opens memory partition databases (nothing to share: no cache, no files)."""

    name = "memory"

    def __init__(self) -> None:
        self._partitions: weakref.WeakSet[MemoryPartition] = weakref.WeakSet()
        self._closed = False

    def open(self, path: Path, stores: Sequence[str]) -> MemoryPartition:
        """A new, empty database (``path`` names it; nothing is read or written there)."""
        if self._closed:
            raise StoreClosedError(f"{path}: the memory backend is closed")
        partition = MemoryPartition(path, stores)
        self._partitions.add(partition)
        return partition

    def close(self) -> None:
        """Close every database still open; later :meth:`open` calls raise
        :class:`StoreClosedError`."""
        self._closed = True
        for partition in list(self._partitions):
            partition.close()
