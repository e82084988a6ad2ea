"""The RocksDB backend: a partition's stores as column families of one database on disk."""

from __future__ import annotations

from flowbus.state.rocksdb.database import RocksDBBackend, RocksDBPartition

__all__ = ["RocksDBBackend", "RocksDBPartition"]
