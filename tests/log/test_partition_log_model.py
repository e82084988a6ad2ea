"""Property test: a PartitionLog behaves like a list of batches, across rolls, flushes and reopens."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowbus.clock import ManualClock
from flowbus.log.config import TopicConfig
from flowbus.log.errors import RecordTooLargeError
from flowbus.log.partition_log import PartitionLog
from flowbus.records import iter_batches
from tests.log.conftest import START_MS, make_batch

_append = st.tuples(st.just("append"), st.lists(st.tuples(st.integers(1, 20), st.integers(0, 300)), min_size=1, max_size=3))
_read = st.tuples(
    st.just("read"), st.tuples(st.floats(0, 1), st.integers(0, 3000), st.booleans(), st.none() | st.floats(0, 1.2))
)
_other = st.tuples(st.sampled_from(["roll", "flush", "reopen_clean", "reopen_crash"]), st.just(None))
_ops = st.lists(st.one_of(_append, _append, _read, _read, _other), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=_ops,
    segment_bytes=st.sampled_from([200, 1000, 100_000]),
    interval_bytes=st.sampled_from([0, 100, 4096]),
)
def test_log_matches_model(ops: list[tuple[str, object]], segment_bytes: int, interval_bytes: int) -> None:
    config = TopicConfig.from_overrides(
        {"segment.bytes": str(segment_bytes), "index.interval.bytes": str(interval_bytes), "max.message.bytes": "100000"}
    )
    clock = ManualClock(now_ms=START_MS)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "t-0"
        plog = PartitionLog.open(directory, "t", 0, config, clock=clock)
        model: list[tuple[int, int, bytes]] = []  # (base, last, bytes after the leader epoch)
        try:
            for op, arg in ops:
                if op == "append":
                    batches = [make_batch(count, value_size=size, timestamp_ms=clock.now_ms()) for count, size in arg]  # type: ignore[union-attr]
                    if max(len(b) for b in batches) > segment_bytes:
                        with pytest.raises(RecordTooLargeError):
                            plog.append(b"".join(batches))
                        continue
                    result = plog.append(b"".join(batches))
                    offset = result.base_offset
                    assert offset == (model[-1][1] + 1 if model else 0)
                    for batch, (count, _) in zip(batches, arg):  # type: ignore[arg-type]
                        model.append((offset, offset + count - 1, batch[16:]))
                        offset += count
                    clock.advance(7)
                elif op == "read":
                    fraction, max_bytes, min_one, max_fraction = arg  # type: ignore[misc]
                    end = plog.log_end_offset
                    target = int(fraction * end)
                    max_offset = None if max_fraction is None else int(max_fraction * end)
                    data = plog.read(target, max_bytes, min_one_batch=min_one, max_offset=max_offset)
                    expected = [m for m in model if m[1] >= target and (max_offset is None or m[1] < max_offset)]
                    got = [(h.base_offset, h.last_offset, data[p + 16 : p + h.size_bytes]) for p, h in iter_batches(data)]
                    assert got == expected[: len(got)]
                    if expected and min_one:
                        assert got, "at least one batch"
                    if got and len(got) < len(expected):
                        # Stopped early only for the byte limit (the next batch would not fit)
                        # or at the end of a segment (reads stay in one segment, as Kafka's do).
                        next_base = expected[len(got)][0]
                        at_segment_end = next_base in {seg.base_offset for seg in plog.segments()}
                        assert at_segment_end or len(data) + len(expected[len(got)][2]) + 16 > max_bytes
                    assert len(data) <= max_bytes or len(got) == 1
                elif op == "roll":
                    plog.roll()
                elif op == "flush":
                    plog.flush()
                    assert plog.recovery_point == plog.log_end_offset
                elif op == "reopen_clean":
                    plog.close()
                    plog = PartitionLog.open(directory, "t", 0, config, clock=clock, clean_shutdown=True)
                else:
                    for segment in plog.segments():
                        segment.close()
                    plog._closed = True
                    plog = PartitionLog.open(directory, "t", 0, config, clock=clock)
                assert plog.log_end_offset == (model[-1][1] + 1 if model else 0)
            stored = [(h.base_offset, h.last_offset, data[16:]) for h, data in plog.iter_batches()]
            assert stored == model
        finally:
            plog.close()
