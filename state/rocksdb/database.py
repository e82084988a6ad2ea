"""RocksDB partition databases: one ``Rdict`` per partition directory, one column family per store.

Every store is a column family of the same database, and the metadata store
(:data:`~flowbus.state.base.META_STORE`) is one more, so :meth:`RocksDBPartition.write` puts the
changes of every store and the changelog offsets into one ``WriteBatch``: RocksDB applies it
atomically, and atomic flush (see :mod:`flowbus.state.budget`) persists it atomically too.

Keys and values are raw bytes (rocksdict's ``raw_mode``: no pickling, bytewise comparator), so
iteration order is unsigned byte order, the same as the memory backend's.

What rocksdict 0.3 does that this module works around:

- ``Rdict.close()`` only really closes the database (and releases RocksDB's ``LOCK``) once every
  column-family ``Rdict``, ``ColumnFamily`` handle and iterator taken from it is gone; while one
  lives, reopening fails with "lock hold by current process". :meth:`RocksDBPartition.close`
  drops its handles and releases the iterators it handed out.
- ``ReadOptions.set_iterate_lower_bound`` sets the *upper* bound, so the lower bound of a
  reverse scan is checked here, and only the upper bound is given to RocksDB.
- ``Rdict.items()`` ends silently when the iterator hits an I/O error or a checksum mismatch;
  scans here use ``RdictIter`` and check its status at the end.
- ``ReadOptions.set_iterate_upper_bound`` does not keep the bound alive: an ``RdictIter`` made
  with it reads freed memory once the ``ReadOptions`` and the bound's ``bytes`` are gone, so a
  scan whose caller allocates between steps stopped early (measured: 1 of 10 keys). Each cursor
  holds both for its lifetime.
- ``Rdict.flush()`` flushes the default column family only; each column family is flushed
  through its own ``Rdict``.
- ``WriteOptions.disable_wal`` is a property, although the type stub declares a method.
- RocksDB failures are raised as plain ``Exception`` (rocksdict's argument checks raise
  ``KeyError`` or ``ValueError``); closing twice raises ``DbClosedError``.
- Every successful open, read-only and secondary ones included, rewrites ``rocksdict-config.json``
  in the database directory (same bytes for our options: raw mode, no prefix extractors).

Reading a database another process is writing (:func:`open_rocksdb_read_only`, for ``flowbus
tables get``): RocksDB's ``ReadOnly`` mode snapshots the file list at open and fails with
"Corruption: ... No such file" when the writer's flush or compaction deletes a file meanwhile
(about one open in 25 against a busy writer, measured on rocksdict 0.3.29). A *secondary* instance
is RocksDB's mode for following a live primary: it replays the primary's MANIFEST and WAL, keeps
its own info log in a directory of its own, and takes no lock (0 failures in 1,000 opens under the
same writer). So reads open a secondary instance on a temporary directory.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import rocksdict

from flowbus.state.base import (
    FORMAT_KEY,
    FORMAT_VALUE,
    FORMAT_VERSION,
    META_STORE,
    Backend,
    Changes,
    PartitionDatabase,
    check_store_names,
)
from flowbus.state.budget import MemoryBudget
from flowbus.state.errors import (
    StateError,
    StoreClosedError,
    StoreLockedError,
    StoreOpenError,
)

DEFAULT_COLUMN_FAMILY = "default"
"""RocksDB's own column family, present in every database; no store lives there."""
CURRENT_FILENAME = "CURRENT"
"""RocksDB's pointer to the live MANIFEST: its presence means a database exists in the directory."""
_LOCK_ERROR_MARKERS = ("lock hold by current process", "While lock file")
"""How RocksDB says another handle holds the database's LOCK file (another process, or a handle of
this process that was not released): the files are fine, so this is not a corrupt database."""
READ_ONLY_OPEN_ATTEMPTS_MAX = 3
"""Opens tried by :func:`open_rocksdb_read_only`: a writer deleting a file between the listing of
column families and the open fails one attempt, not the next (a corrupt database fails them all)."""
READ_ONLY_RETRY_INTERVAL_S = 0.05
"""Pause between two read-only open attempts, time for the writer's flush to settle."""
SECONDARY_DIR_PREFIX = "flowbus-read-"
"""Prefix of the temporary directory a secondary instance keeps its info log in (removed on close)."""


def _one_line(exc: BaseException) -> str:
    """RocksDB's message on a single line (corruption messages carry a second, indented line)."""
    return " ".join(str(exc).split())


def _is_rocksdb_error(exc: BaseException) -> bool:
    """rocksdict raises RocksDB statuses as plain ``Exception``; its subclasses are argument errors."""
    return type(exc) is Exception


def _as_state_error(exc: Exception, path: Path | None, action: str) -> Exception:
    """A RocksDB failure as a :class:`StateError` naming the database; any other error unchanged."""
    if not _is_rocksdb_error(exc):
        return exc
    error = StateError(f"{path}: {action} failed: {_one_line(exc)}")
    error.__cause__ = exc
    return error


def _closed_error(path: Path | None) -> StoreClosedError:
    return StoreClosedError(f"{path}: the partition database is closed")


class _Cursor:
    """A scan over one column family, from a positioned ``RdictIter``.

    The partition keeps a weak reference to every cursor and calls :meth:`release` when it
    closes, because a live ``RdictIter`` keeps the whole database open; a released cursor raises
    :class:`StoreClosedError` instead of quietly ending a scan halfway.
    """

    __slots__ = ("__weakref__", "_bound", "_floor", "_iterator", "_path", "_released", "_reverse")

    def __init__(
        self,
        iterator: rocksdict.RdictIter,
        *,
        floor: bytes | None,
        reverse: bool,
        path: Path | None,
        bound: tuple[rocksdict.ReadOptions, bytes | None],
    ) -> None:
        self._iterator: rocksdict.RdictIter | None = iterator
        self._bound = bound
        """The read options and upper bound the iterator was made with: RocksDB reads the bound
        from their memory at every step, and rocksdict does not keep them alive itself."""
        self._floor = floor  # the inclusive lower bound of a reverse scan (RocksDB's is unusable)
        self._reverse = reverse
        self._path = path
        self._released = False

    def __iter__(self) -> _Cursor:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        iterator = self._iterator
        if iterator is None:
            if self._released:
                raise _closed_error(self._path)
            raise StopIteration
        try:
            if iterator.valid():
                key: bytes = iterator.key()
                floor = self._floor
                if floor is None or key >= floor:
                    value: bytes = iterator.value()
                    if self._reverse:
                        iterator.prev()
                    else:
                        iterator.next()
                    return key, value
            # Not valid: the end of the range, or an error the iterator stopped on.
            iterator.status()
        except Exception as exc:  # noqa: BLE001 -- rocksdict raises RocksDB errors as bare Exception
            self._iterator = None
            raise _as_state_error(exc, self._path, "scan")
        self._iterator = None
        raise StopIteration

    def release(self) -> None:
        """Drop the RocksDB iterator; a later ``next()`` raises :class:`StoreClosedError`."""
        if self._iterator is not None:
            self._iterator = None
            self._released = True


def _last_key(column: rocksdict.Rdict) -> bytes | None:
    iterator = column.iter()
    iterator.seek_to_last()
    if iterator.valid():
        key: bytes = iterator.key()
        return key
    iterator.status()
    return None


def _add_to_batch(
    batch: rocksdict.WriteBatch, handle: rocksdict.ColumnFamily, entries: Mapping[bytes, bytes | None], store: str
) -> None:
    put = batch.put
    delete = batch.delete
    for key, value in entries.items():
        try:
            if value is None:
                delete(key, handle)
            else:
                put(key, value, handle)
        except (KeyError, ValueError):  # raw mode refuses anything but bytes (keys: KeyError, values: ValueError)
            raise TypeError(f"store {store!r}: keys and values must be bytes, got {key!r}: {value!r}") from None


class RocksDBPartition(PartitionDatabase):
    """The stores of one partition in one RocksDB database. Open it with :class:`RocksDBBackend`.

    Not thread-safe: one event loop uses it.
    """

    read_only = False

    def __init__(self, path: Path, rdict: rocksdict.Rdict, column_families: Sequence[str]) -> None:
        assert META_STORE in column_families
        self.path = path
        self._rdict: rocksdict.Rdict | None = rdict
        # Handles are looked up once: get() is one dict lookup and one rocksdict call.
        self._columns: dict[str, rocksdict.Rdict] = {name: rdict.get_column_family(name) for name in column_families}
        self._store_handles: dict[str, rocksdict.ColumnFamily] = {
            name: rdict.get_column_family_handle(name) for name in column_families if name != META_STORE
        }
        self._meta_handle: rocksdict.ColumnFamily | None = rdict.get_column_family_handle(META_STORE)
        self._stores = sorted(self._store_handles)
        self._cursors: weakref.WeakSet[_Cursor] = weakref.WeakSet()
        self._write_options = rocksdict.WriteOptions()
        self._bulk_write_options = rocksdict.WriteOptions()
        # A property in rocksdict 0.3.29, although its stub declares a method.
        self._bulk_write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        # Writes made without the WAL since the last flush. A WAL write on top of them would
        # survive a crash that loses them, leaving newer offsets over older data: flush first.
        self._unflushed_bulk = False

    def __repr__(self) -> str:
        return f"RocksDBPartition({str(self.path)!r}, stores={self._stores}, closed={self.closed})"

    # -- reading ----------------------------------------------------------------------------

    def stores(self) -> list[str]:
        return list(self._stores)

    def get(self, store: str, key: bytes) -> bytes | None:
        try:
            column = self._columns[store]
        except KeyError:
            raise self._unknown_store(store) from None
        try:
            value: bytes | None = column.get(key)
        except Exception as exc:  # noqa: BLE001 -- rocksdict raises RocksDB errors as bare Exception
            raise _as_state_error(exc, self.path, f"get from {store!r}")
        return value

    def items(
        self,
        store: str,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        try:
            column = self._columns[store]
        except KeyError:
            raise self._unknown_store(store) from None
        if start == b"":
            start = None
        if end is not None and (end == b"" or (start is not None and start >= end)):
            return iter(())
        read_options = rocksdict.ReadOptions()
        if end is not None:
            read_options.set_iterate_upper_bound(end)
        try:
            iterator = column.iter(read_options)
            if reverse:
                iterator.seek_to_last()  # the last key below the upper bound
            elif start is not None:
                iterator.seek(start)
            else:
                iterator.seek_to_first()
        except Exception as exc:  # noqa: BLE001 -- rocksdict raises RocksDB errors as bare Exception
            raise _as_state_error(exc, self.path, f"scan of {store!r}")
        cursor = _Cursor(iterator, floor=start if reverse else None, reverse=reverse, path=self.path,
                         bound=(read_options, end))
        self._cursors.add(cursor)
        return cursor

    # -- writing ----------------------------------------------------------------------------

    def write(self, changes: Changes, meta: Mapping[bytes, bytes | None] | None = None, *, bulk: bool = False) -> None:
        rdict = self._rdict
        if rdict is None or self._meta_handle is None:
            raise _closed_error(self.path)
        batch = rocksdict.WriteBatch(raw_mode=True)
        for store, entries in changes.items():
            handle = self._store_handles.get(store)
            if handle is None:
                raise self._unknown_store(store)
            _add_to_batch(batch, handle, entries, store)
        if meta:
            _add_to_batch(batch, self._meta_handle, meta, META_STORE)
        if batch.is_empty():
            return
        try:
            if bulk:
                self._unflushed_bulk = True
                rdict.write(batch, self._bulk_write_options)
                return
            if self._unflushed_bulk:
                self._flush()
            rdict.write(batch, self._write_options)
        except Exception as exc:  # noqa: BLE001 -- rocksdict raises RocksDB errors as bare Exception
            raise _as_state_error(exc, self.path, "write")

    def wipe(self) -> None:
        """Delete every key of every store and all metadata in one atomic batch.

        One batch (a range delete per column family, up to its last key) rather than dropping
        and recreating column families: a crash halfway cannot leave offsets that describe data
        already gone. The space comes back as compactions drop the covered files. The format
        marker is written again in the same batch.
        """
        rdict = self._rdict
        if rdict is None or self._meta_handle is None:
            raise _closed_error(self.path)
        batch = rocksdict.WriteBatch(raw_mode=True)
        try:
            for name, column in self._columns.items():
                last = _last_key(column)
                if last is not None:
                    handle = self._meta_handle if name == META_STORE else self._store_handles[name]
                    batch.delete_range(b"", last, handle)
                    batch.delete(last, handle)
            batch.put(FORMAT_KEY, FORMAT_VALUE, self._meta_handle)
            rdict.write(batch, self._write_options)
        except Exception as exc:  # noqa: BLE001 -- rocksdict raises RocksDB errors as bare Exception
            raise _as_state_error(exc, self.path, "wipe")

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        rdict = self._rdict
        if rdict is None:
            return
        for cursor in list(self._cursors):
            cursor.release()
        error: Exception | None = None
        try:
            if self._unflushed_bulk:
                self._flush()
        except Exception as exc:  # noqa: BLE001 -- rocksdict raises RocksDB errors as bare Exception
            error = _as_state_error(exc, self.path, "flush before close")
        # Every handle must go before close() for RocksDB to really close (module docstring).
        self._rdict = None
        self._columns = {}
        self._store_handles = {}
        self._meta_handle = None
        try:
            rdict.close()
        except Exception as exc:  # noqa: BLE001 -- rocksdict raises RocksDB errors as bare Exception
            error = error or _as_state_error(exc, self.path, "close")
        if error is not None:
            raise error

    @property
    def closed(self) -> bool:
        return self._rdict is None

    # -- internals --------------------------------------------------------------------------

    def _flush(self) -> None:
        """Flush the memtables of every store, then the metadata's.

        In that order, so no crash can persist offsets without the data they describe (data
        ahead of its offsets only makes a restore replay records it already has).
        """
        for name, column in self._columns.items():
            if name != META_STORE:
                column.flush()
        self._columns[META_STORE].flush()
        self._unflushed_bulk = False

    def _unknown_store(self, store: str) -> Exception:
        if self._rdict is None:
            return _closed_error(self.path)
        return KeyError(f"{self.path}: no store {store!r} (stores: {self._stores})")

    def _check_format(self) -> None:
        """Check the format marker; write it into a new, empty database.

        Raises:
            StoreOpenError: another format version, or data without any marker.
        """
        value = self.get(META_STORE, FORMAT_KEY)
        if value == FORMAT_VALUE:
            return
        if value is not None:
            found = int.from_bytes(value, "big") if len(value) == len(FORMAT_VALUE) else value
            raise StoreOpenError(f"{self.path}: format version {found!r}, expected {FORMAT_VERSION}")
        if any(_last_key(column) is not None for column in self._columns.values()):
            raise StoreOpenError(f"{self.path}: holds data but no format marker: not a flowbus database")
        if not self.read_only:  # an empty database a reader finds gets its marker from its writer
            self.write({}, {FORMAT_KEY: FORMAT_VALUE})


def _open_rdict(path: Path, stores: Sequence[str], budget: MemoryBudget) -> tuple[rocksdict.Rdict, list[str]]:
    """The ``Rdict`` at ``path`` with every column family it has, plus ``stores`` and the metadata.

    RocksDB refuses to open a database without naming all its column families, so the existing
    ones are listed first (only when a database exists: listing an empty directory fails).
    """
    path.mkdir(parents=True, exist_ok=True)
    existing = rocksdict.Rdict.list_cf(str(path), budget.options()) if (path / CURRENT_FILENAME).exists() else []
    names = sorted({*existing, *stores, META_STORE} - {DEFAULT_COLUMN_FAMILY})
    column_families = {name: budget.options() for name in names}
    return rocksdict.Rdict(str(path), budget.options(), column_families=column_families), names


def open_rocksdb_partition(path: Path, stores: Sequence[str], budget: MemoryBudget) -> RocksDBPartition:
    """Open (creating if missing) the partition database at ``path``; see :meth:`Backend.open`.

    Raises:
        StoreOpenError: RocksDB could not open the files (corrupt CURRENT or MANIFEST, missing or
            truncated table files, garbage), or the format marker is foreign.
        StoreLockedError: another handle holds RocksDB's own LOCK on the files.
        ValueError: a store name is reserved.
    """
    check_store_names(stores)
    try:
        rdict, names = _open_rdict(path, stores, budget)
    except Exception as exc:
        if not (_is_rocksdb_error(exc) or isinstance(exc, OSError)):
            raise
        message = _one_line(exc)
        if any(marker in message for marker in _LOCK_ERROR_MARKERS):
            raise StoreLockedError(f"{path}: the database is open elsewhere: {message}") from exc
        raise StoreOpenError(f"{path}: cannot open the RocksDB database: {message}") from exc
    partition = RocksDBPartition(path, rdict, names)
    try:
        partition._check_format()
    except BaseException as exc:
        partition.close()  # releases RocksDB's LOCK, so the caller can move the files aside
        if isinstance(exc, StateError) and not isinstance(exc, StoreOpenError):  # corrupt files
            raise StoreOpenError(str(exc)) from exc
        raise
    return partition


class ReadOnlyRocksDBPartition(RocksDBPartition):
    """A partition database opened for reading only, as a RocksDB secondary instance; see
    :func:`open_rocksdb_read_only`.

    It sees the database as it was when opened: writes made by a worker afterwards are not
    followed. :meth:`write` and :meth:`wipe` raise :class:`StateError`.
    """

    read_only = True

    def __init__(
        self, path: Path, rdict: rocksdict.Rdict, column_families: Sequence[str], secondary_dir: Path
    ) -> None:
        super().__init__(path, rdict, column_families)
        self.secondary_dir = secondary_dir

    def __repr__(self) -> str:
        return f"ReadOnlyRocksDBPartition({str(self.path)!r}, stores={self._stores}, closed={self.closed})"

    def write(self, changes: Changes, meta: Mapping[bytes, bytes | None] | None = None, *, bulk: bool = False) -> None:
        raise StateError(f"{self.path}: opened read-only; only the worker holding the partition writes to it")

    def wipe(self) -> None:
        raise StateError(f"{self.path}: opened read-only; only the worker holding the partition wipes it")

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.secondary_dir, ignore_errors=True)


def _read_options() -> rocksdict.Options:
    """Options for a reader: never create anything, and keep every table file open from the start
    (``max_open_files=-1``, what RocksDB asks of a secondary instance), so a file the writer's
    compaction deletes later stays readable through the open descriptor."""
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(False)
    options.create_missing_column_families(False)
    options.set_max_open_files(-1)
    return options


def list_stores(path: Path) -> list[str]:
    """The stores of the database at ``path``, read from its MANIFEST without opening it (so
    without any lock, even while a worker has it open).

    Raises:
        StoreOpenError: no database at ``path``, or its MANIFEST cannot be read.
    """
    if not (path / CURRENT_FILENAME).exists():
        raise StoreOpenError(f"{path}: no database here")
    try:
        names = rocksdict.Rdict.list_cf(str(path), _read_options())
    except Exception as exc:  # rocksdict raises RocksDB errors as bare Exception
        raise StoreOpenError(f"{path}: cannot list the stores: {_one_line(exc)}") from exc
    return sorted(set(names) - {DEFAULT_COLUMN_FAMILY, META_STORE})


def _open_secondary(path: Path, secondary_dir: Path) -> ReadOnlyRocksDBPartition:
    options = _read_options()
    names = sorted(set(rocksdict.Rdict.list_cf(str(path), options)) - {DEFAULT_COLUMN_FAMILY})
    column_families = {name: _read_options() for name in names}
    rdict = rocksdict.Rdict(
        str(path), options, column_families=column_families,
        access_type=rocksdict.AccessType.secondary(str(secondary_dir)),
    )
    if META_STORE not in names:  # a database this module did not make
        rdict.close()
        raise StoreOpenError(f"{path}: no {META_STORE} store: not a flowbus database")
    return ReadOnlyRocksDBPartition(path, rdict, names, secondary_dir)


def open_rocksdb_read_only(path: Path) -> ReadOnlyRocksDBPartition:
    """Open the partition database at ``path`` for reading, even while a worker has it open.

    Neither RocksDB's ``LOCK`` nor the partition's ``LOCK.flowbus`` is taken, and nothing in the
    database changes (but see the module docstring on ``rocksdict-config.json``). What a reader
    sees is what the worker had stored when the reader opened it: the last commit's batch (a
    commit is one atomic batch with its changelog offsets), so it lags the changelog by up to one
    commit interval. Restores write without the WAL: what a restore wrote is seen only once the
    worker flushed it (before its next commit on that partition, or when it stops).

    Raises:
        StoreOpenError: no database at ``path``; or it could not be opened in
            :data:`READ_ONLY_OPEN_ATTEMPTS_MAX` attempts (corrupt files); or its format marker is
            foreign.

    Example::

        db = open_rocksdb_read_only(partition_dir / "db")
        try:
            value = db.get("counts", b"apple")
        finally:
            db.close()
    """
    if not (path / CURRENT_FILENAME).exists():  # a reader must not create one
        raise StoreOpenError(f"{path}: no database here")
    error: BaseException | None = None
    for attempt in range(READ_ONLY_OPEN_ATTEMPTS_MAX):
        if attempt:
            time.sleep(READ_ONLY_RETRY_INTERVAL_S)
        secondary_dir = Path(tempfile.mkdtemp(prefix=SECONDARY_DIR_PREFIX))
        try:
            partition = _open_secondary(path, secondary_dir)
        except StoreOpenError:
            shutil.rmtree(secondary_dir, ignore_errors=True)
            raise
        except Exception as exc:  # rocksdict raises RocksDB errors as bare Exception
            shutil.rmtree(secondary_dir, ignore_errors=True)
            if not (_is_rocksdb_error(exc) or isinstance(exc, OSError)):
                raise
            error = exc
            continue
        try:
            partition._check_format()
        except BaseException as exc:
            partition.close()
            if isinstance(exc, StateError) and not isinstance(exc, StoreOpenError):  # corrupt files
                raise StoreOpenError(str(exc)) from exc
            raise
        return partition
    assert error is not None
    raise StoreOpenError(
        f"{path}: cannot open the RocksDB database for reading "
        f"({READ_ONLY_OPEN_ATTEMPTS_MAX} attempts): {_one_line(error)}"
    ) from error


class RocksDBBackend(Backend):
    """Opens RocksDB partition databases that share one :class:`MemoryBudget`.

    Args:
        budget: the worker's shared cache and write buffers; a default-sized one when ``None``.
    """

    name = "rocksdb"

    def __init__(self, budget: MemoryBudget | None = None) -> None:
        self.budget = budget if budget is not None else MemoryBudget()
        self._partitions: weakref.WeakSet[RocksDBPartition] = weakref.WeakSet()
        self._closed = False

    def open(self, path: Path, stores: Sequence[str]) -> RocksDBPartition:
        if self._closed:
            raise StoreClosedError(f"{path}: the rocksdb backend is closed")
        partition = open_rocksdb_partition(path, stores, self.budget)
        self._partitions.add(partition)
        return partition

    def close(self) -> None:
        """Close every database still open; later :meth:`open` calls raise
        :class:`StoreClosedError`."""
        self._closed = True
        errors = []
        for partition in list(self._partitions):
            try:
                partition.close()
            except StateError as exc:  # close the others anyway; report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]
