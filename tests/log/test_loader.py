"""Recovery on open: what is trusted, what is re-validated, what is cut."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import pytest

from flowbus.log.checkpoint import CHECKPOINT_FILE, read_checkpoint
from flowbus.log.errors import CorruptLogError
from flowbus.log.partition_log import PartitionLog
from flowbus.log.segment import LogSegment
from tests.log.conftest import START_MS, batch_offsets, make_batch


def _log_file(plog: PartitionLog, index: int = -1) -> Path:
    return plog.segments()[index].path


def _crash(plog: PartitionLog) -> None:
    """Drop the log without a clean close (what SIGKILL leaves behind)."""
    for segment in plog.segments():
        segment.close()
    plog._closed = True


def _all_offsets(plog: PartitionLog) -> list[int]:
    return [h.base_offset for h, _ in plog.iter_batches()]


def test_torn_tail_is_truncated_and_logged(open_log, caplog) -> None:
    plog = open_log(index_interval_bytes="1")
    for _ in range(5):
        plog.append(make_batch(2))
    path = _log_file(plog)
    size = path.stat().st_size
    _crash(plog)
    with open(path, "r+b") as handle:
        handle.truncate(size - 7)
    with caplog.at_level(logging.WARNING):
        reopened = open_log(index_interval_bytes="1")
    assert reopened.log_end_offset == 8
    assert reopened.bytes_cut_on_open == size - 7 - (size // 5) * 4
    assert any("cut" in r.getMessage() and path.name in r.getMessage() for r in caplog.records)
    assert reopened.append(make_batch(1)).base_offset == 8
    assert len(reopened.segments()[-1].offset_index) == 4


def test_corrupt_batch_in_the_middle_is_mapped_not_cut(open_log, caplog) -> None:
    plog = open_log()
    for _ in range(5):
        plog.append(make_batch(1, value_size=20))
    batch_bytes = len(make_batch(1, value_size=20))
    path = _log_file(plog)
    _crash(plog)
    with open(path, "r+b") as handle:
        handle.seek(batch_bytes * 2 + 70)
        handle.write(b"\xff")
    with caplog.at_level(logging.WARNING):
        reopened = open_log()
    assert _all_offsets(reopened) == [0, 1, 3, 4]
    assert path.stat().st_size == batch_bytes * 5 and reopened.bytes_cut_on_open == 0
    assert batch_offsets(reopened.read(0, 1 << 20)) == [(0, 0), (1, 1)]
    with pytest.raises(CorruptLogError) as raised:
        reopened.read(2, 1 << 20)
    assert raised.value.errno == 2 and (raised.value.first_offset, raised.value.end_offset) == (2, 3)
    assert batch_offsets(reopened.read(3, 1 << 20)) == [(3, 3), (4, 4)]
    assert reopened.append(make_batch(1)).base_offset == 5
    damage_lines = [r for r in caplog.records if "damaged data" in r.getMessage()]
    assert len(damage_lines) == 1 and f"bytes {batch_bytes * 2}..{batch_bytes * 3}" in damage_lines[0].getMessage()


def test_garbage_and_zeros_after_the_last_batch(open_log) -> None:
    plog = open_log()
    plog.append(make_batch(3))
    path = _log_file(plog)
    _crash(plog)
    with open(path, "ab") as handle:
        handle.write(b"\x00" * 4096)
    assert _all_offsets(open_log()) == [0]


def test_offsets_going_backwards_count_as_corruption(open_log) -> None:
    plog = open_log()
    plog.append(make_batch(1))
    path = _log_file(plog)
    _crash(plog)
    with open(path, "ab") as handle:
        handle.write(make_batch(1))  # base offset 0 again
    reopened = open_log()
    assert reopened.log_end_offset == 1


def test_corruption_in_an_early_segment_keeps_later_segments(open_log) -> None:
    plog = open_log(segment_bytes="200")
    for _ in range(6):
        plog.append(make_batch(1, value_size=60))
    assert plog.segment_count >= 4
    count = plog.segment_count
    first = _log_file(plog, 0)
    _crash(plog)
    (first.parent / CHECKPOINT_FILE).unlink(missing_ok=True)
    with open(first, "r+b") as handle:
        handle.seek(40)
        handle.write(b"\x00\x00")
    reopened = open_log(segment_bytes="200")
    assert reopened.log_end_offset == 6 and reopened.segment_count == count
    assert _all_offsets(reopened) == [1, 2, 3, 4, 5]
    with pytest.raises(CorruptLogError):
        reopened.read(0, 1 << 20)
    assert batch_offsets(reopened.read(1, 1 << 20))[0] == (1, 1)


def test_huge_length_in_a_middle_segment_after_clean_shutdown(open_log, caplog) -> None:
    """The damaged segment's tail hides offsets up to the next segment; later segments stay."""
    plog = open_log(segment_bytes="400")
    for _ in range(12):
        plog.append(make_batch(1, value_size=60))
    segments = plog.segments()
    assert len(segments) >= 4
    middle = segments[1]
    plog.close()
    data = bytearray(middle.path.read_bytes())
    batch_bytes = len(make_batch(1, value_size=60))
    assert len(data) == batch_bytes * 3
    struct.pack_into(">i", data, batch_bytes * 2 + 8, 0x7FFFFF00)  # the segment's last batch
    middle.path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        reopened = open_log(segment_bytes="400", clean_shutdown=True)
    assert reopened.segment_count == len(segments) and reopened.log_end_offset == 12
    hidden = {segments[2].base_offset - 1}
    assert _all_offsets(reopened) == [o for o in range(12) if o not in hidden]
    assert batch_offsets(reopened.read(middle.base_offset, 1 << 20)) == [(middle.base_offset,) * 2, (middle.base_offset + 1,) * 2]
    for offset in sorted(hidden):
        with pytest.raises(CorruptLogError):
            reopened.read(offset, 1 << 20)
    assert batch_offsets(reopened.read(segments[2].base_offset, 1 << 20))[0][0] == segments[2].base_offset
    assert len([r for r in caplog.records if "damaged data" in r.getMessage()]) == 1
    assert reopened.offset_for_timestamp(0) == (0, START_MS)


def test_damaged_base_offset_does_not_make_the_next_segment_look_overlapped(open_log) -> None:
    """The base offset is outside the CRC: a damaged one must not get later segments deleted."""
    plog = open_log(segment_bytes="400")
    for _ in range(12):
        plog.append(make_batch(1, value_size=60))
    segments = plog.segments()
    middle = segments[1]
    plog.close()
    data = bytearray(middle.path.read_bytes())
    batch_bytes = len(make_batch(1, value_size=60))
    data[batch_bytes * 2 + 7] ^= 0x80  # the last batch now claims an offset 128 further on
    middle.path.write_bytes(bytes(data))
    reopened = open_log(segment_bytes="400", clean_shutdown=True)
    assert reopened.segment_count == len(segments) and reopened.log_end_offset == 12
    lost = segments[2].base_offset - 1
    assert _all_offsets(reopened) == [o for o in range(12) if o != lost]
    with pytest.raises(CorruptLogError):
        reopened.read(lost, 1 << 20)


def test_damaged_tail_of_the_last_segment_keeps_checkpointed_offsets(open_log) -> None:
    """After a clean shutdown the checkpoint knows the log end: damaged offsets are not reused."""
    plog = open_log()
    for _ in range(4):
        plog.append(make_batch(1, value_size=30))
    path = _log_file(plog)
    plog.close()
    batch_bytes = len(make_batch(1, value_size=30))
    data = bytearray(path.read_bytes())
    struct.pack_into(">i", data, batch_bytes * 3 + 8, 0x7FFFFF00)  # the last batch
    path.write_bytes(bytes(data))
    reopened = open_log(clean_shutdown=True)
    assert reopened.log_end_offset == 4 and reopened.bytes_cut_on_open == 0
    with pytest.raises(CorruptLogError):
        reopened.read(3, 1 << 20)
    assert reopened.append(make_batch(1)).base_offset == 4
    assert batch_offsets(reopened.read(4, 1 << 20)) == [(4, 4)]


def test_clean_shutdown_trusts_everything(open_log, monkeypatch) -> None:
    plog = open_log()
    for _ in range(3):
        plog.append(make_batch(1))
    plog.close()
    calls: list[int] = []
    original = LogSegment._validate_tail

    def spy(self: LogSegment, validate_from: int) -> int:
        calls.append(validate_from)
        return original(self, validate_from)

    monkeypatch.setattr(LogSegment, "_validate_tail", spy)
    reopened = open_log(clean_shutdown=True)
    assert reopened.log_end_offset == 3 and reopened.recovery_point == 3
    assert calls == [reopened.segments()[0].size_bytes]  # nothing re-validated


def test_only_bytes_after_the_recovery_point_are_revalidated(open_log, monkeypatch) -> None:
    plog = open_log(segment_bytes="400")
    for _ in range(10):
        plog.append(make_batch(1, value_size=60))
    plog.flush()
    checkpoint = read_checkpoint(plog.directory)
    assert checkpoint is not None and checkpoint.recovery_offset == 10
    for _ in range(3):
        plog.append(make_batch(1, value_size=60))
    _crash(plog)
    validated: list[tuple[int, int]] = []
    original = LogSegment._validate_tail

    def spy(self: LogSegment, validate_from: int) -> int:
        validated.append((self.base_offset, validate_from))
        return original(self, validate_from)

    monkeypatch.setattr(LogSegment, "_validate_tail", spy)
    reopened = open_log(segment_bytes="400")
    assert reopened.log_end_offset == 13
    by_base = dict(validated)
    assert by_base[checkpoint.recovery_segment] == checkpoint.recovery_position
    for base, start in validated:
        if base < checkpoint.recovery_segment:
            assert start == (plog.directory / f"{base:020d}.log").stat().st_size
        if base > checkpoint.recovery_segment:
            assert start == 0
    # The recovered data is not yet durable: the next flush covers it.
    assert reopened.recovery_point == 10 and reopened.flush_due() in (True, False)
    reopened.flush()
    assert reopened.recovery_point == 13


def test_damaged_checkpoint_means_full_validation(open_log) -> None:
    plog = open_log()
    plog.append(make_batch(2))
    plog.flush()
    _crash(plog)
    checkpoint = plog.directory / CHECKPOINT_FILE
    checkpoint.write_bytes(checkpoint.read_bytes().replace(b"2", b"3"))
    reopened = open_log()
    assert reopened.log_end_offset == 2 and reopened.recovery_point == 0


def test_damaged_index_is_rebuilt(open_log) -> None:
    plog = open_log(index_interval_bytes="1")
    for _ in range(6):
        plog.append(make_batch(1))
    plog.close()
    index_path = plog.segments()[0].offset_index.path
    expected = plog.segments()[0].offset_index.entries()
    with open(index_path, "ab") as handle:
        handle.write(b"\x01\x02\x03")
    reopened = open_log(index_interval_bytes="1", clean_shutdown=True)
    assert reopened.segments()[0].offset_index.entries() == expected
    assert batch_offsets(reopened.read(4, 1 << 20))[0] == (4, 4)


def test_leftover_files_are_cleaned_and_swaps_finished(open_log, tmp_path: Path) -> None:
    plog = open_log(segment_bytes="200")
    for _ in range(4):
        plog.append(make_batch(1, value_size=60))
    plog.close()
    directory = plog.directory
    first = plog.segments()[0]
    # A finished .swap of segment 0 holding only its batch, and assorted leftovers.
    (directory / f"{first.base_offset:020d}.log.swap").write_bytes(first.path.read_bytes())
    (directory / "00000000000000000099.log.cleaned").write_bytes(b"junk")
    (directory / "00000000000000000098.log.deleted").write_bytes(b"junk")
    (directory / "00000000000000000097.index").write_bytes(b"")
    reopened = open_log(segment_bytes="200")
    names = sorted(os.listdir(directory))
    assert not [n for n in names if n.endswith((".swap", ".cleaned", ".deleted"))]
    assert "00000000000000000097.index" not in names
    assert reopened.log_end_offset == 4


def test_missing_directory_is_created(tmp_path: Path, open_log) -> None:
    plog = open_log(directory=tmp_path / "new" / "t-0")
    assert plog.log_end_offset == 0 and plog.segment_count == 1


@pytest.mark.parametrize("cut", [1, 11, 12, 60, 61, 62])
def test_every_torn_length_recovers(open_log, cut: int) -> None:
    plog = open_log()
    plog.append(make_batch(1, value_size=30))
    plog.append(make_batch(1, value_size=30))
    path = _log_file(plog)
    full = path.stat().st_size
    _crash(plog)
    with open(path, "r+b") as handle:
        handle.truncate(full - len(make_batch(1, value_size=30)) + cut)
    assert _all_offsets(open_log()) == [0]
