"""The memory backend: a partition's stores as dicts, rebuilt from the changelog at every start."""

from __future__ import annotations

from flowbus.state.memory.database import MemoryBackend, MemoryPartition

__all__ = ["MemoryBackend", "MemoryPartition"]
