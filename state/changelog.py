"""Changelog topics: where every table change goes, and what a restore reads back.

``<app>-<table>-changelog``, compacted (only the last value of each key matters), one partition
per table partition (partition ``p`` of the changelog belongs to partition ``p`` of the input).
A record's key is the table key's bytes; its value the encoded value, or ``None`` (a tombstone)
for a deleted key. The database of a partition remembers, per table, the changelog offset it
holds everything before (``changelog:<table>`` in its metadata store), written in the same batch
as the data.
"""

from __future__ import annotations

import struct

from flowbus.transports.base import TopicSpec

CHANGELOG_CONFIG = {"cleanup.policy": "compact"}
"""Compaction keeps the changelog's size bounded by the key count, not the update count."""

_OFFSET = struct.Struct(">q")


def changelog_spec(topic: str, partitions: int, config: dict[str, str] | None = None) -> TopicSpec:
    return TopicSpec(topic, partitions, config=dict(CHANGELOG_CONFIG if config is None else config))


def offset_meta_key(store: str) -> bytes:
    """The metadata key holding a store's next changelog offset."""
    return b"changelog:" + store.encode()


def encode_offset(offset: int) -> bytes:
    return _OFFSET.pack(offset)


def decode_offset(data: bytes | None) -> int | None:
    return None if data is None else int(_OFFSET.unpack(data)[0])
