"""The transport interface's own pieces: RecordRun, and polled batches cut into runs."""

from __future__ import annotations

import pytest

from flowbus.transports.base import Record, RecordRun, TopicPartition, runs_of


def record(topic: str, partition: int, offset: int) -> Record:
    return Record(topic, partition, offset, 100 + offset, b"k%d" % offset, b"v%d" % offset, (("h", b"x"),))


def test_runs_of_cuts_a_batch_where_the_topic_or_the_partition_changes() -> None:
    batch = [record("a", 0, 1), record("a", 0, 2), record("b", 0, 7), record("a", 1, 4), record("a", 0, 3)]
    runs = runs_of(batch)
    assert [(r.tp, r.count, r.first_offset, r.next_offset) for r in runs] == [
        (TopicPartition("a", 0), 2, 1, 3), (TopicPartition("b", 0), 1, 7, 8),
        (TopicPartition("a", 1), 1, 4, 5), (TopicPartition("a", 0), 1, 3, 4)]
    assert [r for run in runs for r in run.records()] == batch
    assert (runs[0].first_timestamp_ms, runs[0].last_timestamp_ms) == (101, 102)
    assert runs[0].keys_values() == ([b"k1", b"k2"], [b"v1", b"v2"])
    assert runs[0].record(1) == batch[1]
    one = runs_of(batch[:2])
    assert one[0].records() is not None and len(one) == 1


def test_a_run_given_columns_makes_its_records_once_and_one_record_alone() -> None:
    built: list[int] = []
    source = [record("t", 3, offset) for offset in range(5, 9)]

    def build(part: object) -> list[Record]:
        built.append(len(part))  # type: ignore[arg-type]
        return list(part)  # type: ignore[call-overload]

    run = RecordRun(TopicPartition("t", 3), 4, 5, 9, 105, 108,
                    columns=([r.key for r in source], [r.value for r in source]), build=build, source=source)
    assert run.keys_values()[1] == [b"v5", b"v6", b"v7", b"v8"] and built == []
    assert run.record(2) == source[2] and built == [1]
    assert run.records() == source and run.records() == source and built == [1, 4]
    assert run.record(3) == source[3] and built == [1, 4], "once made, the records serve record() too"
    assert "t[3] 5..8" in repr(run)


def test_a_run_given_builders_makes_only_what_is_asked() -> None:
    source = [record("t", 1, offset) for offset in range(3)]
    made: list[str] = []

    def build(part: object) -> list[Record]:
        made.append("records")
        return list(part)  # type: ignore[call-overload]

    def build_columns(part: object) -> tuple[list[bytes | None], list[bytes | None]]:
        made.append("columns")
        return [r.key for r in part], [r.value for r in part]  # type: ignore[attr-defined]

    for_agents = RecordRun(TopicPartition("t", 1), 3, 0, 3, 100, 102, build=build, build_columns=build_columns,
                           source=source)
    assert for_agents.records() == source and made == ["records"]
    assert for_agents.keys_values() == ([b"k0", b"k1", b"k2"], [b"v0", b"v1", b"v2"]) and made == ["records"]
    made.clear()
    for_dataflows = RecordRun(TopicPartition("t", 1), 3, 0, 3, 100, 102, build=build, build_columns=build_columns,
                              source=source)
    assert for_dataflows.keys_values()[0] == [b"k0", b"k1", b"k2"] and made == ["columns"]


def test_a_run_needs_its_records_or_a_builder() -> None:
    with pytest.raises(ValueError, match="needs its records"):
        RecordRun(TopicPartition("t", 0), 1, 0, 1, -1, -1, columns=([b"k"], [b"v"]))
