"""State stores, changelogs and windows, installed as ``flowbus.state``."""

from __future__ import annotations

from flowbus.app_errors import ConfigurationError
from flowbus.state.base import Backend, PartitionDatabase
from flowbus.state.budget import MemoryBudget
from flowbus.state.errors import StateError
from flowbus.state.memory import MemoryBackend
from flowbus.state.rocksdb import RocksDBBackend

BACKEND_NAMES = ("rocksdb", "memory")
"""Valid values of :func:`make_backend`'s ``name``; the first is the default."""


class UnknownBackendError(StateError, ConfigurationError):
    """The app named a state backend that does not exist (a configuration error of the state
    layer: caught by ``except ConfigurationError`` and by ``except StateError``)."""


def make_backend(name: str = BACKEND_NAMES[0], budget: MemoryBudget | None = None) -> Backend:
    """The state backend called ``name``.

    Args:
        budget: the memory shared by every RocksDB database (ignored by the memory backend,
            which has no cache); a default-sized one when ``None``.

    Raises:
        UnknownBackendError: ``name`` is not one of :data:`BACKEND_NAMES`.
    """
    if name == "rocksdb":
        return RocksDBBackend(budget)
    if name == "memory":
        return MemoryBackend()
    raise UnknownBackendError(f"unknown state backend {name!r}; valid: {', '.join(BACKEND_NAMES)}")


__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "MemoryBudget",
    "PartitionDatabase",
    "UnknownBackendError",
    "make_backend",
]
