"""Disk faults during an append: a failing ``pwrite`` becomes :class:`StorageError`, leaves no
partial batch behind (in the file or in the log's offsets), and the log goes on afterwards;
a short write is completed, not mistaken for success or failure."""

from __future__ import annotations

import errno
import os

import pytest

from flowbus.log.errors import StorageError
from flowbus.log.partition_log import PartitionLog
from flowbus.records import decode_batch
from tests.log.conftest import make_batch


class PwriteFaults:
    """Wraps ``os.pwrite`` for one segment's records file only (index files write normally).

    ``plan`` says what each call on that file does: ``"ok"`` writes everything, an int writes at
    most that many bytes, an exception instance is raised before writing.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fd: int, plan: list[object]) -> None:
        self.fd = fd
        self.plan = list(plan)
        self.calls: list[int] = []
        real = os.pwrite

        def pwrite(target: int, data: bytes | memoryview, offset: int) -> int:
            if target != self.fd or not self.plan:
                return real(target, data, offset)
            step = self.plan.pop(0)
            self.calls.append(len(data))
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, int):
                return real(target, bytes(data[:step]), offset)
            return real(target, data, offset)

        monkeypatch.setattr(os, "pwrite", pwrite)


def _values(plog: PartitionLog) -> list[bytes | None]:
    out: list[bytes | None] = []
    for _, data in plog.iter_batches():
        out.extend(r.value for r in decode_batch(data)[1])
    return out


def _records_fd(plog: PartitionLog) -> int:
    return plog.segments()[-1]._fd


def test_a_failed_append_raises_storage_error_and_leaves_nothing_behind(open_log, monkeypatch) -> None:
    plog = open_log()
    plog.append(make_batch(2, values=[b"a", b"b"]))
    size = os.path.getsize(plog.segments()[-1].path)
    faults = PwriteFaults(monkeypatch, _records_fd(plog), [OSError(errno.ENOSPC, "No space left on device")])
    with pytest.raises(StorageError, match="No space left") as raised:
        plog.append(make_batch(3, values=[b"x", b"y", b"z"]))
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == errno.ENOSPC
    assert len(faults.calls) == 1, "the injected failure never fired"
    assert plog.log_end_offset == 2
    assert os.path.getsize(plog.segments()[-1].path) == size
    # The log is still usable: the next append takes the offsets the failed one did not.
    assert plog.append(make_batch(1, values=[b"c"])).base_offset == 2
    assert _values(plog) == [b"a", b"b", b"c"]
    plog.close()
    assert _values(open_log()) == [b"a", b"b", b"c"]


def test_a_short_write_then_a_failure_is_cut_back_to_the_last_whole_batch(open_log, monkeypatch) -> None:
    plog = open_log()
    plog.append(make_batch(1, values=[b"a"]))
    size = os.path.getsize(plog.segments()[-1].path)
    faults = PwriteFaults(monkeypatch, _records_fd(plog), [20, OSError(errno.EIO, "Input/output error")])
    with pytest.raises(StorageError):
        plog.append(make_batch(2, values=[b"x", b"y"]))
    assert len(faults.calls) == 2 and faults.calls[1] == faults.calls[0] - 20
    # The 20 bytes that did reach the file were truncated away.
    assert os.path.getsize(plog.segments()[-1].path) == size
    assert plog.log_end_offset == 1
    plog.close()
    reopened = open_log()
    assert _values(reopened) == [b"a"] and reopened.log_end_offset == 1


def test_short_writes_are_completed(open_log, monkeypatch) -> None:
    plog = open_log()
    batch = make_batch(3, values=[b"x", b"y", b"z"])
    faults = PwriteFaults(monkeypatch, _records_fd(plog), [7, 1, 30, "ok"])
    plog.append(batch)
    assert len(faults.calls) == 4 and faults.calls[0] == len(batch)
    assert faults.calls[1:] == [len(batch) - 7, len(batch) - 8, len(batch) - 38]
    assert os.path.getsize(plog.segments()[-1].path) == len(batch)
    plog.close()
    assert _values(open_log()) == [b"x", b"y", b"z"]


def test_a_write_of_zero_bytes_is_an_error_not_a_hang(open_log, monkeypatch) -> None:
    plog = open_log()
    faults = PwriteFaults(monkeypatch, _records_fd(plog), [0])
    with pytest.raises(StorageError, match="wrote 0 bytes"):
        plog.append(make_batch(1))
    assert len(faults.calls) == 1 and plog.log_end_offset == 0
    assert os.path.getsize(plog.segments()[-1].path) == 0
