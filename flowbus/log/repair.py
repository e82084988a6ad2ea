"""Check and repair a data directory offline: ``flowbus data check DIR`` / ``flowbus data repair DIR``.

**Check** reads every segment's records file of every partition, checks each batch (lengths,
CRC-32C, offsets increasing and fitting the segment) and reports each damaged range: the file,
the bytes, and the offsets they hid. It changes nothing and may run while a broker has the
directory open (then the newest bytes of an active segment may still be being written).

**Repair** needs the directory to itself (it takes the lock a running broker or worker holds)
and cuts each damaged range out of its segment: the valid bytes around it are written to a
``.cleaned`` file, fsynced, renamed over the segment, and the segment's indexes rebuilt from the
result; transaction index entries whose abort marker was cut are dropped. The offsets a range
hid become a gap, like the gaps compaction leaves, so consumers read on past it. A damaged end
of a partition's last segment is cut too; when the partition's checkpoint says the log went
further, an empty segment is started at that offset so no offset a client saw is handed out
again. Each partition repaired gets a checkpoint that makes the next unclean start re-validate
it entirely. A crash during repair leaves either the old or the new segment file (a leftover
``.cleaned`` file is deleted when the broker opens the partition).

Both work per batch with the same walk as the broker's recovery (:func:`validate_records`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flowbus.log.catalog import Catalog
from flowbus.log.checkpoint import fsync_directory, read_checkpoint, write_checkpoint
from flowbus.log.config import TopicConfig
from flowbus.log.errors import LogError
from flowbus.log.loader import CLEANED_SUFFIX, SWAP_SUFFIX
from flowbus.log.manager import DELETE_DIR_SUFFIX, LOCK_FILE
from flowbus.log.partition_log import segment_limits
from flowbus.log.segment import (
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
    DamagedRange,
    LogSegment,
    RecordsFileCheck,
    SegmentLimits,
    check_records_file,
)

_RECORDS_FILE = re.compile(r"^(\d{20})\.log$")
_PARTITION_DIR = re.compile(r"^(.+)-(\d+)$")
#: Bytes copied per read while rewriting a segment without its damaged ranges.
COPY_CHUNK_BYTES = 8 * 1024 * 1024


class DataDirInUseError(LogError):
    """A broker or worker holds the data directory's lock."""


@dataclass(frozen=True, slots=True)
class PartitionCheck:
    """Every records file of one partition directory, and the damage found in them."""

    directory: Path
    files: list[RecordsFileCheck]
    #: ``(file, range)`` with each range's end offset filled in where the next file tells it.
    damaged: list[tuple[RecordsFileCheck, DamagedRange]]
    #: The offset the checkpoint says the log reached (None without a checkpoint).
    checkpoint_end: int | None

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


@dataclass(frozen=True, slots=True)
class Cut:
    """One range ``flowbus data repair`` removed."""

    partition: str
    path: Path
    damaged: DamagedRange


def partition_directories(data_dir: Path) -> list[Path]:
    """The partition directories of a data directory (or ``data_dir`` itself if it is one).

    Raises:
        LogError: ``data_dir`` is neither.
    """
    if not data_dir.is_dir():
        raise LogError(f"{data_dir} is not a directory")
    if _records_files(data_dir):
        return [data_dir]
    found = [
        child
        for child in sorted(data_dir.iterdir())
        if child.is_dir() and _PARTITION_DIR.match(child.name) and not child.name.endswith(DELETE_DIR_SUFFIX)
    ]
    if not found and not (data_dir / LOCK_FILE).exists():
        raise LogError(f"{data_dir} is not a flowbus data directory (no partitions, no {LOCK_FILE})")
    return found


def _records_files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for name in os.listdir(directory):
        match = _RECORDS_FILE.match(name)
        if match:
            found.append((int(match.group(1)), directory / name))
    return sorted(found)


def check_partition(directory: Path) -> PartitionCheck:
    """CRC-check every records file of one partition, read-only."""
    found = _records_files(directory)
    limits = [base for base, _ in found[1:]] + [None]
    files = [check_records_file(path, base, limit) for (base, path), limit in zip(found, limits)]
    checkpoint = read_checkpoint(directory)
    checkpoint_end = checkpoint.recovery_offset if checkpoint is not None else None
    damaged: list[tuple[RecordsFileCheck, DamagedRange]] = []
    for i, checked in enumerate(files):
        following = files[i + 1].base_offset if i + 1 < len(files) else None
        if following is None and checkpoint_end is not None and checkpoint_end > checked.next_offset:
            following = checkpoint_end
        for damaged_range in checked.damaged:
            if damaged_range.end_offset is None and following is not None and following > damaged_range.first_offset:
                damaged_range = dataclasses.replace(damaged_range, end_offset=following)
            damaged.append((checked, damaged_range))
    return PartitionCheck(directory, files, damaged, checkpoint_end)


def check_data_dir(data_dir: Path) -> list[PartitionCheck]:
    """:func:`check_partition` for every partition of ``data_dir``."""
    return [check_partition(directory) for directory in partition_directories(data_dir)]


def is_locked(data_dir: Path) -> bool | None:
    """Whether a broker or worker holds ``data_dir`` right now; None when that cannot be told.

    Reads ``/proc/locks`` (Linux) instead of trying the lock: taking it, even for a moment,
    could make a broker starting at that moment refuse the directory.
    """
    try:
        stat = (data_dir / LOCK_FILE).stat()
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            lines = handle.read(4 * 1024 * 1024).splitlines()
    except FileNotFoundError:
        return False if not (data_dir / LOCK_FILE).exists() else None
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 29647 fe:00:2207537 0 EOF"
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(stat.st_ino):
            major, minor = (int(part, 16) for part in fields[5].split(":")[:2])
            if os.makedev(major, minor) == stat.st_dev:
                return True
    return False


@contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock, as a broker does, for the duration of a repair."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUseError(
                f"{data_dir} is in use by a running broker or worker; stop it before repairing"
            ) from None
        yield
    finally:
        os.close(fd)


def repair_data_dir(data_dir: Path) -> list[Cut]:
    """Cut every damaged range out of every partition of ``data_dir``; returns what was cut.

    Raises:
        DataDirInUseError: a broker or worker has the directory open.
        LogError: not a data directory, or a partition has an unfinished cleaner swap (start and
            stop the broker once: it finishes the swap).
    """
    directories = partition_directories(data_dir)
    if directories == [data_dir]:
        raise LogError(f"{data_dir} is a partition directory; repair takes the data directory (it locks it)")
    limits_by_topic = _topic_limits(data_dir)
    cuts: list[Cut] = []
    with _exclusive(data_dir):
        for directory in directories:
            checked = check_partition(directory)
            if not checked.damaged:
                continue
            if any(name.endswith(SWAP_SUFFIX) for name in os.listdir(directory)):
                raise LogError(f"{directory} has an unfinished cleaner swap; start and stop the broker once, then repair")
            match = _PARTITION_DIR.match(directory.name)
            topic = match.group(1) if match else directory.name
            limits = limits_by_topic.get(topic, segment_limits(TopicConfig()))
            cuts.extend(_repair_partition(checked, limits))
    return cuts


def _topic_limits(data_dir: Path) -> dict[str, SegmentLimits]:
    try:
        catalog = Catalog(data_dir)
    except LogError:
        return {}
    return {name: segment_limits(TopicConfig.from_overrides(entry.overrides)) for name, entry in catalog.topics.items()}


def _repair_partition(checked: PartitionCheck, limits: SegmentLimits) -> list[Cut]:
    directory = checked.directory
    cuts: list[Cut] = []
    by_file: dict[Path, list[DamagedRange]] = {}
    for file_check, damaged in checked.damaged:
        by_file.setdefault(file_check.path, []).append(damaged)
        cuts.append(Cut(directory.name, file_check.path, damaged))
    last = checked.files[-1]
    for file_check in checked.files:
        ranges = by_file.get(file_check.path)
        if ranges:
            _rewrite_without(file_check, ranges, limits, is_last=file_check is last)
    if last.path in by_file and checked.checkpoint_end is not None and checked.checkpoint_end > last.next_offset:
        # The checkpoint says offsets up to there were written: never hand them out again.
        LogSegment.create(directory, checked.checkpoint_end, limits).close()
    fsync_directory(directory)
    checkpoint = read_checkpoint(directory)
    if checkpoint is not None:
        # Byte positions in the repaired files moved: after an unclean stop, re-validate it all.
        first = checked.files[0].base_offset
        restart = dataclasses.replace(checkpoint, recovery_offset=first, recovery_segment=first, recovery_position=0)
        write_checkpoint(directory, restart, durable=True)
    return cuts


def _rewrite_without(file_check: RecordsFileCheck, ranges: list[DamagedRange], limits: SegmentLimits, *, is_last: bool) -> None:
    """Replace a records file by its bytes outside ``ranges``, then rebuild its indexes."""
    path = file_check.path
    directory = path.parent
    temporary = path.with_name(path.name + CLEANED_SUFFIX)
    kept: list[tuple[int, int]] = []
    position = 0
    for damaged in sorted(ranges, key=lambda r: r.position):
        kept.append((position, damaged.position))
        position = damaged.end_position
    kept.append((position, file_check.size_bytes))
    source = os.open(path, os.O_RDONLY)
    target = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start, end in kept:
            _copy(source, target, start, end)
        os.fsync(target)
    finally:
        os.close(source)
        os.close(target)
    stem = path.name[: -len(LOG_SUFFIX)]
    for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
        (directory / f"{stem}{suffix}").unlink(missing_ok=True)  # rebuilt below from the new file
    os.replace(temporary, path)
    fsync_directory(directory)
    segment, _ = LogSegment.open_existing(directory, file_check.base_offset, limits, validate_from_position=0)
    try:
        cut_offsets = [(r.first_offset, r.end_offset) for r in ranges]
        kept_txns = [
            entry
            for entry in segment.txn_index.entries
            if not any(first <= entry.last_offset and (end is None or entry.last_offset < end) for first, end in cut_offsets)
        ]
        if len(kept_txns) != len(segment.txn_index.entries):
            segment.txn_index.clear()
            for entry in kept_txns:
                segment.txn_index.append(entry)
        assert not segment.damaged, f"{path} still damaged after repair: {segment.damaged}"
        if not is_last:
            segment.on_become_inactive()
        segment.sync()
    finally:
        segment.close()


def _copy(source: int, target: int, start: int, end: int) -> None:
    position = start
    while position < end:  # bounded: each pass copies at least one byte or raises
        chunk = os.pread(source, min(COPY_CHUNK_BYTES, end - position), position)
        if not chunk:
            raise LogError(f"short read at byte {position} while repairing")
        view = memoryview(chunk)
        while view:  # bounded: each write consumes at least one byte or raises
            view = view[os.write(target, view) :]
        position += len(chunk)
