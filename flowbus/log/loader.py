"""Opening a partition directory: finish or undo interrupted operations, then recover.

Steps, in order (Kafka's ``LogLoader`` does the same kind of work):

1. Delete leftovers: ``*.deleted`` (segments waiting for deletion), ``*.cleaned`` (a cleaner
   output never swapped in), checkpoint temporaries, and index files without a records file.
2. Finish cleaner swaps: a ``X.log.swap`` file is a complete, fsynced replacement for segment
   ``X``; it replaces ``X``'s files. Index ``.swap`` files without a records ``.swap`` are dropped.
3. Open every segment. After a clean shutdown everything is trusted. Otherwise segments before
   the checkpoint's recovery segment are trusted, the recovery segment is re-validated from the
   checkpointed position, and later segments entirely: CRC of every batch, offsets increasing,
   indexes rebuilt.
4. Damage is mapped, never followed by deleting good data: a bad batch starts a damaged range
   that ends at the next valid batch (batches carry their own offsets, so everything after it is
   still usable) or at the end of its file. A range at the end of a segment that has a successor
   hides the offsets up to the successor's base offset. A range at the end of the *last* segment
   is a torn write and is cut, unless the checkpoint says the log went further (then the bytes
   are kept as damage and a new segment starts at the checkpointed end, so no offset a client
   may have seen is handed out again). Each range and each cut is logged once (file, bytes,
   offsets); reads of a damaged range fail with CORRUPT_MESSAGE until ``flowbus data repair``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from flowbus.log.checkpoint import (
    CHECKPOINT_FILE,
    PartitionCheckpoint,
    fsync_directory,
    read_checkpoint,
)
from flowbus.log.segment import (
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
    TXN_INDEX_SUFFIX,
    LogSegment,
    SegmentLimits,
    segment_stem,
)
from flowbus.log.segments import LogSegments

log = logging.getLogger(__name__)

DELETED_SUFFIX = ".deleted"
CLEANED_SUFFIX = ".cleaned"
SWAP_SUFFIX = ".swap"
_SEGMENT_FILE = re.compile(r"^(\d{20})(\.log|\.index|\.timeindex|\.txnindex)(\.swap|\.cleaned|\.deleted)?$")


@dataclass(slots=True)
class LoadedLog:
    """What :func:`load_partition` found: the segments and the partition's durable state."""

    segments: LogSegments
    log_start_offset: int
    recovery_offset: int
    recovery_segment: int
    recovery_position: int
    cleaner_offset: int
    bytes_cut: int
    #: Bytes whose CRC was checked because they lay after the recovery point.
    bytes_validated: int


def load_partition(directory: Path, limits: SegmentLimits, *, clean_shutdown: bool) -> LoadedLog:
    """Open (creating if needed) the partition in ``directory`` and recover it.

    Args:
        limits: index settings for the segments.
        clean_shutdown: the data directory's clean-shutdown marker was present, so every byte
            on disk was fsynced and the checkpoint is exact.
    """
    directory.mkdir(parents=True, exist_ok=True)
    swapped = _remove_leftovers(directory)
    bases = sorted(
        int(name[:20]) for name in os.listdir(directory) if _SEGMENT_FILE.match(name) and name.endswith(LOG_SUFFIX)
    )
    checkpoint = read_checkpoint(directory)
    trust_all = clean_shutdown and checkpoint is not None
    segments = LogSegments()
    bytes_validated = 0
    for i, base in enumerate(bases):
        if segments and base < segments.active.next_offset:
            # Left over from a cleaner swap cut short: the swapped-in segment covers it.
            _delete_later(directory, [base], reason="overlapped by the cleaned segment before it")
            continue
        validate_from, trusted_next = _validation_start(base, checkpoint, trust_all, directory)
        segment, _ = LogSegment.open_existing(
            directory,
            base,
            limits,
            validate_from_position=validate_from,
            trusted_next_offset=trusted_next,
            truncate_damaged_tail=False,
            # Only a segment swapped in just now may overlap the ones after it (deleted above).
            offset_limit=bases[i + 1] if i + 1 < len(bases) and base not in swapped else None,
        )
        if validate_from < segment.size_bytes:
            segment._records_dirty = True  # re-validated bytes may not be on disk yet
        segments.add(segment)
        bytes_validated += max(0, segment.size_bytes - validate_from)
    if not segments:
        start = checkpoint.log_start_offset if checkpoint is not None else 0
        segments.add(LogSegment.create(directory, start, limits))
    bytes_cut = _settle_damage(directory, segments, limits, checkpoint)
    active = segments.active
    log_end = active.next_offset
    first_base = segments.first.base_offset
    log_start = max(first_base, min(checkpoint.log_start_offset if checkpoint else 0, log_end))
    recovery = _recovery_point(segments, checkpoint, trust_all)
    cleaner_offset = max(log_start, min(checkpoint.cleaner_offset if checkpoint else 0, log_end))
    return LoadedLog(segments, log_start, *recovery, cleaner_offset, bytes_cut, bytes_validated)


def _settle_damage(
    directory: Path, segments: LogSegments, limits: SegmentLimits, checkpoint: PartitionCheckpoint | None
) -> int:
    """Bound every damaged range found while opening, cut a torn tail, and log each once.

    Returns the bytes cut (only ever from the end of the last segment).
    """
    ordered = list(segments)
    for segment, following in itertools.pairwise(ordered):
        segment.close_damaged_tail(following.base_offset)
    last = ordered[-1]
    cut_bytes = 0
    tail = last.damaged_tail
    if tail is not None:
        known_end = checkpoint.recovery_offset if checkpoint is not None else None
        if known_end is not None and known_end > last.next_offset and last.close_damaged_tail(known_end):
            # Offsets up to known_end were fsynced (the checkpoint says so): keep them damaged
            # rather than hand them out again; appends continue in a new segment.
            segments.add(LogSegment.create(directory, known_end, limits))
            fsync_directory(directory)
        else:
            cut_bytes = last.cut_damaged_tail()
            log.warning(
                "truncated %s: cut %d bytes at byte %d, offsets from %d (%s)",
                last.path,
                cut_bytes,
                tail.position,
                tail.first_offset,
                tail.reason,
            )
    for segment in ordered:
        for damaged in segment.damaged:
            log.error(
                "damaged data in %s; kept the data after it, reads of these offsets fail with "
                "CORRUPT_MESSAGE until `flowbus data repair` cuts it out",
                damaged.describe(segment.path),
            )
    return cut_bytes


def _validation_start(
    base: int, checkpoint: PartitionCheckpoint | None, trust_all: bool, directory: Path
) -> tuple[int, int | None]:
    """Position from which to re-validate segment ``base``, and the offset the trusted bytes end at."""
    size = (directory / f"{segment_stem(base)}{LOG_SUFFIX}").stat().st_size
    if trust_all:
        return size, None
    if checkpoint is None or base > checkpoint.recovery_segment:
        return 0, None
    if base < checkpoint.recovery_segment:
        return size, None
    if checkpoint.recovery_position > size:
        return 0, None  # the checkpoint promises bytes that are not there: trust nothing
    return checkpoint.recovery_position, checkpoint.recovery_offset


def _recovery_point(
    segments: LogSegments, checkpoint: PartitionCheckpoint | None, trust_all: bool
) -> tuple[int, int, int]:
    """``(offset, segment, position)`` up to which the loaded data is known to be durable."""
    active = segments.active
    if trust_all:
        return active.next_offset, active.base_offset, active.size_bytes
    if checkpoint is not None:
        segment = segments.get(checkpoint.recovery_segment)
        if (
            segment is not None
            and checkpoint.recovery_position <= segment.size_bytes
            and checkpoint.recovery_offset <= active.next_offset
        ):
            return checkpoint.recovery_offset, segment.base_offset, checkpoint.recovery_position
    first = segments.first
    return first.base_offset, first.base_offset, 0


def _delete_later(directory: Path, bases: list[int], reason: str) -> int:
    """Delete whole segments overlapped by a cleaned segment before them."""
    cut = 0
    for base in bases:
        for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX):
            path = directory / f"{segment_stem(base)}{suffix}"
            if not path.exists():
                continue
            if suffix == LOG_SUFFIX:
                size = path.stat().st_size
                cut += size
                log.warning("deleted %s: cut %d bytes %s", path, size, reason)
            path.unlink()
    return cut


def _remove_leftovers(directory: Path) -> set[int]:
    """Delete leftovers and finish interrupted swaps; returns the base offsets swapped in."""
    swapped: set[int] = set()
    names = set(os.listdir(directory))
    for name in sorted(names):
        if name == CHECKPOINT_FILE + ".tmp" or name.endswith((DELETED_SUFFIX, CLEANED_SUFFIX)):
            (directory / name).unlink()
    names = set(os.listdir(directory))
    for name in sorted(names):
        if name.endswith(LOG_SUFFIX + SWAP_SUFFIX):
            _finish_swap(directory, name[:20], names)
            swapped.add(int(name[:20]))
    names = set(os.listdir(directory))
    for name in sorted(names):
        match = _SEGMENT_FILE.match(name)
        if match is None:
            continue
        stem, kind, extra = match.groups()
        if extra == SWAP_SUFFIX or (kind != LOG_SUFFIX and f"{stem}{LOG_SUFFIX}" not in names):
            (directory / name).unlink()
    return swapped


def _finish_swap(directory: Path, stem: str, names: set[str]) -> None:
    """Replace segment ``stem`` with its complete ``.swap`` files (a cleaner swap cut short)."""
    log.info("completing an interrupted cleaner swap of %s/%s", directory, stem)
    for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX):
        swap = f"{stem}{suffix}{SWAP_SUFFIX}"
        target = directory / f"{stem}{suffix}"
        if swap in names:
            os.replace(directory / swap, target)
        elif target.exists():
            target.unlink()  # stale index of the replaced segment; rebuilt from the records
    os.replace(directory / f"{stem}{LOG_SUFFIX}{SWAP_SUFFIX}", directory / f"{stem}{LOG_SUFFIX}")
