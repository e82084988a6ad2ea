"""One memory budget for every RocksDB database a worker opens.

A worker opens one database per assigned partition, and RocksDB's defaults give each database its
own 8 MiB-ish block cache and 64 MiB memtables per column family: memory would grow with the
partition count and the number of tables. Instead every database gets :meth:`MemoryBudget.options`,
which wires it to the budget's single LRU block cache and single write buffer manager:

- the block cache holds data blocks *and* index and filter blocks (``cache_index_and_filter_blocks``),
  so the per-file metadata that otherwise lives outside any limit is bounded too;
- the write buffer manager charges memtable memory to that same cache (``cost to cache``), and
  asks a database to flush when the memtables of all databases together pass
  ``write_buffer_bytes``.

So ``capacity_bytes = cache_bytes + write_buffer_bytes`` bounds the cache's usage: blocks get at
least ``cache_bytes`` of it and use whatever the memtables leave free. The LRU cache is not
strict: blocks pinned by live iterators and memtables that have not flushed yet can overshoot the
capacity for a moment (see :meth:`MemoryBudget.usage_bytes`).

The write buffer manager does not stall writers (``allow_stall=False``): one event loop writes to
every database, so a write stalled in database B waiting for database A's memtables to shrink
would wait for a flush only A's next write could trigger — a deadlock. Flushes triggered by the
manager plus the small per-column-family write buffer keep memtables near the budget instead.
"""

from __future__ import annotations

import rocksdict

MIB = 1024 * 1024

STATE_CACHE_BYTES_DEFAULT = 64 * MIB
"""Block cache for data, index and filter blocks, shared by every database of a worker."""
STATE_WRITE_BUFFER_BYTES_DEFAULT = 64 * MIB
"""Memtables of every database of a worker together; a flush is asked for beyond this."""

STATE_COLUMN_FAMILY_WRITE_BUFFER_BYTES = 4 * MIB
"""One memtable's size before it is flushed (RocksDB's default, 64 MiB, times every store of every
partition would dwarf the shared budget)."""
STATE_COLUMN_FAMILY_WRITE_BUFFERS_MAX = 2
"""Memtables per store: the one being written and one being flushed."""
STATE_BLOCK_BYTES = 16 * 1024
"""Data block size: 4x RocksDB's default, so the index (one entry per block, held in the cache)
is 4x smaller; point lookups read 16 KiB instead of 4 KiB, which is cheap on SSD."""
STATE_BLOOM_BITS_PER_KEY = 10
"""Bloom filter bits per key: about 1% false positives, so a lookup of a missing key (the first
event of every new key) rarely reads a data block."""
STATE_OPEN_FILES_MAX = 32
"""Table files kept open per database. With 4 MiB memtables and RocksDB's level sizes a partition's
database has a handful of files; the bound keeps 100 partitions under the usual 4096-descriptor
limit, and index and filter blocks live in the cache, not in open-file readers."""
STATE_BACKGROUND_JOBS_MAX = 2
"""Concurrent flushes and compactions: the machines we target have few cores, and the event loop
needs one."""
STATE_WAL_BYTES_MAX = 32 * MIB
"""Write-ahead log size per database beyond which its memtables are flushed, bounding disk use and
replay time after a crash."""
STATE_INFO_LOG_FILES_KEPT = 2
"""RocksDB's text LOG files kept per database (it starts a new one at every open, and keeps 1000
by default: a partition that moves often would collect hundreds)."""
STATE_INFO_LOG_FILE_BYTES_MAX = 1 * MIB
"""Size at which RocksDB's text LOG rolls over."""


class MemoryBudget:
    """The block cache and write buffer manager shared by every RocksDB database of a worker.

    Args:
        cache_bytes: room for data, index and filter blocks.
        write_buffer_bytes: room for memtables of all databases together; charged to the same
            cache, whose capacity is the sum of both.

    Example::

        budget = MemoryBudget(cache_bytes=32 * MIB)
        db = rocksdict.Rdict(path, budget.options())
    """

    def __init__(
        self,
        cache_bytes: int = STATE_CACHE_BYTES_DEFAULT,
        write_buffer_bytes: int = STATE_WRITE_BUFFER_BYTES_DEFAULT,
    ) -> None:
        if cache_bytes <= 0 or write_buffer_bytes <= 0:
            raise ValueError(f"cache_bytes ({cache_bytes}) and write_buffer_bytes ({write_buffer_bytes}) must be > 0")
        self.cache_bytes = cache_bytes
        self.write_buffer_bytes = write_buffer_bytes
        self._cache = rocksdict.Cache(self.capacity_bytes)
        self._write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            write_buffer_bytes, False, self._cache
        )

    @property
    def capacity_bytes(self) -> int:
        """The shared cache's capacity: blocks and memtables together."""
        return self.cache_bytes + self.write_buffer_bytes

    def options(self) -> rocksdict.Options:
        """Options for one database, or one column family of it, wired to the shared cache and
        write buffer manager (raw mode: keys and values are bytes, never pickled).

        Database-wide settings (write buffer manager, open files, background jobs, atomic flush)
        are ignored where RocksDB reads the options of a column family, so the same options serve
        both.
        """
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self._cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_block_size(STATE_BLOCK_BYTES)
        table.set_bloom_filter(STATE_BLOOM_BITS_PER_KEY, False)

        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(self._write_buffers)
        options.set_write_buffer_size(STATE_COLUMN_FAMILY_WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(STATE_COLUMN_FAMILY_WRITE_BUFFERS_MAX)
        options.set_compression_type(rocksdict.DBCompressionType.lz4())
        options.set_max_open_files(STATE_OPEN_FILES_MAX)
        options.set_max_background_jobs(STATE_BACKGROUND_JOBS_MAX)
        options.set_max_total_wal_size(STATE_WAL_BYTES_MAX)
        options.set_keep_log_file_num(STATE_INFO_LOG_FILES_KEPT)
        options.set_max_log_file_size(STATE_INFO_LOG_FILE_BYTES_MAX)
        # Restore writes skip the WAL: a flush must never persist the metadata store (changelog
        # offsets) without the data written in the same batch, or a crash would leave offsets
        # claiming data that is gone. Atomic flush writes every column family's memtable together.
        options.set_atomic_flush(True)
        return options

    def usage_bytes(self) -> int:
        """Bytes held in the shared cache now: cached blocks plus memtable reservations."""
        return self._cache.get_usage()

    def pinned_usage_bytes(self) -> int:
        """The part of :meth:`usage_bytes` that cannot be evicted (blocks held by open iterators or
        reads in progress, and memtable reservations)."""
        return self._cache.get_pinned_usage()

    def write_buffer_usage_bytes(self) -> int:
        """Bytes of memtables across every database sharing this budget."""
        return self._write_buffers.get_usage()
