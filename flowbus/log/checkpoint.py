"""The per-partition checkpoint file: recovery point, log start offset, cleaner position.

``partition.checkpoint`` in the partition directory is one JSON object plus its CRC-32C::

    {"version": 1, "recovery_offset": 1200, "recovery_segment": 1000, "recovery_position": 81920,
     "log_start_offset": 0, "cleaner_offset": 0, "crc": 3735928559}

``recovery_*`` say that every byte before ``recovery_position`` of segment ``recovery_segment``
(and all of every earlier segment) was fsynced, and that those bytes end at offset
``recovery_offset``. Recovery after a crash re-validates only what comes after.

Why it may be written without fsync: every field is safe to lose. An older or missing file
only means more re-validation on the next unclean open, an older log start offset is raised to
the first segment's base offset, and an older cleaner offset means some clean data is cleaned
again. The CRC catches a file torn by power loss, which is then treated as missing. It is
written after the data it describes was fsynced, so it never claims more than is durable.
It is written with fsync (``durable=True``) at clean shutdown, before the clean-shutdown marker.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import crc32c

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "partition.checkpoint"
CHECKPOINT_VERSION = 1
#: A checkpoint is a few hundred bytes; anything larger is not ours.
MAX_CHECKPOINT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PartitionCheckpoint:
    """What the partition knows about itself beyond its segment files."""

    recovery_offset: int
    recovery_segment: int
    recovery_position: int
    log_start_offset: int
    cleaner_offset: int

    def __post_init__(self) -> None:
        assert self.recovery_segment <= self.recovery_offset or self.recovery_position == 0
        assert self.recovery_position >= 0 and self.log_start_offset >= 0 and self.cleaner_offset >= 0


def _payload(fields: dict[str, int]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def write_checkpoint(directory: Path, checkpoint: PartitionCheckpoint, *, durable: bool = False) -> None:
    """Replace the checkpoint atomically (write a temporary file, then rename over)."""
    fields = {"version": CHECKPOINT_VERSION, **asdict(checkpoint)}
    body = _payload(fields)
    text = _payload({**fields, "crc": crc32c.crc32c(body)})
    assert len(text) <= MAX_CHECKPOINT_BYTES
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, text) == len(text)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / CHECKPOINT_FILE)
    if durable:
        fsync_directory(directory)


def read_checkpoint(directory: Path) -> PartitionCheckpoint | None:
    """The checkpoint, or None when missing or damaged (which is logged)."""
    path = directory / CHECKPOINT_FILE
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_CHECKPOINT_BYTES + 1)
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(text)
        crc = fields.pop("crc")
        if len(text) > MAX_CHECKPOINT_BYTES or crc32c.crc32c(_payload(fields)) != crc:
            raise ValueError("checksum mismatch")
        if fields.pop("version") != CHECKPOINT_VERSION:
            raise ValueError("unknown version")
        return PartitionCheckpoint(**{k: int(v) for k, v in fields.items()})
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        log.warning("ignoring damaged checkpoint %s (%s); the partition is fully re-validated", path, exc)
        return None


def fsync_directory(directory: Path) -> None:
    """fsync a directory so that file creations, renames and deletions in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
