"""Checks shared by the KafkaJS and sarama tests (test_kafkajs.py, test_sarama.py).

Both run the same scenarios through a client in another language; each scenario prints JSON
of what it did and saw, and the functions here assert on that JSON, on the batches the broker
stored, and on what librdkafka (confluent-kafka) reads back from the same topics.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import confluent_kafka

from flowbus.records.header import BatchHeader, iter_batches

#: Compression ids in a batch's attributes (KIP-98 RecordBatch v2, bits 0-2).
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
CODECS = tuple(CODEC_IDS)
#: How many records the codec scenario writes (two sends over two partitions).
CODEC_RECORDS = 200
#: The group scenario's partitions and how many records each phase writes.
GROUP_PARTITIONS = 3
GROUP_PHASES = {
    "two members": range(60),
    "one member": range(60, 90),
    "resumed": range(90, 110),
}


def stored_batches(data_dir: Path, topic: str, partition: int) -> list[BatchHeader]:
    """Headers of every batch the broker stored for a partition, CRCs checked.

    The broker writes batches to its segment files as it receives them, so the headers are
    the ones the client sent (apart from the offsets the broker assigns).
    """
    directory = data_dir / f"{topic}-{partition}"
    headers: list[BatchHeader] = []
    for segment in sorted(directory.glob("*.log")):
        headers.extend(header for _, header in iter_batches(segment.read_bytes()))
    return headers


def as_text(data: str | bytes | None) -> str | None:
    return data.decode() if isinstance(data, bytes) else data


def read_with_librdkafka(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    isolation: str = "read_uncommitted",
    timeout_s: float = 20.0,
) -> list[dict[str, Any]]:
    """Read ``topic`` from the start with confluent-kafka until ``count`` records arrived.

    Waits 0.5 s more so that records which should not be there show up too.
    """
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"librdkafka-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    consumer.subscribe([topic])
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    linger_until: float | None = None
    try:
        while time.monotonic() < deadline:  # bounded by timeout_s
            if linger_until is None and len(got) >= count:
                linger_until = time.monotonic() + 0.5
            if linger_until is not None and time.monotonic() >= linger_until:
                break
            msg = consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            # A consumed message's headers are a list of pairs (the type allows a dict too).
            headers = cast("list[tuple[str, bytes | None]]", msg.headers() or [])
            got.append(
                {
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                    "key": as_text(msg.key()),
                    "value": as_text(msg.value()),
                    "headers": {name: as_text(value) for name, value in headers},
                }
            )
    finally:
        consumer.close()
    return got


def record_identity(record: dict[str, Any]) -> tuple[Any, ...]:
    """What must survive a round trip: partition, key, value and headers."""
    return (
        record["partition"],
        record["key"],
        record["value"],
        tuple(sorted(record["headers"].items())),
    )


def check_codec_round_trip(out: dict[str, Any], consumed: list[dict[str, Any]]) -> None:
    """The client read back exactly what it produced, at contiguous offsets from 0."""
    produced = out["produced"]
    assert len(produced) == CODEC_RECORDS
    assert Counter(map(record_identity, consumed)) == Counter(
        map(record_identity, produced)
    )
    for partition in (0, 1):
        offsets = sorted(r["offset"] for r in consumed if r["partition"] == partition)
        assert offsets == list(range(CODEC_RECORDS // 2))


def check_codec_stored_and_readable(
    data_dir: Path,
    bootstrap: str,
    topic: str,
    codec: str,
    produced: list[dict[str, Any]],
) -> None:
    """Every stored batch carries the codec; librdkafka decodes them to the same records."""
    for partition in (0, 1):
        batches = stored_batches(data_dir, topic, partition)
        assert batches, f"nothing stored for partition {partition}"
        assert {b.compression for b in batches} == {CODEC_IDS[codec]}
        assert sum(b.record_count for b in batches) == CODEC_RECORDS // 2
    by_librdkafka = read_with_librdkafka(bootstrap, topic, len(produced))
    assert Counter(map(record_identity, by_librdkafka)) == Counter(
        map(record_identity, produced)
    )


def check_idempotent_batches(data_dir: Path, topic: str, count: int) -> None:
    """The batches carry one producer id and sequence numbers that continue batch to batch."""
    batches = stored_batches(data_dir, topic, 0)
    assert sum(b.record_count for b in batches) == count
    assert {b.producer_id for b in batches} != {-1}
    assert len({(b.producer_id, b.producer_epoch) for b in batches}) == 1
    expected_sequence = 0
    for batch in batches:
        assert batch.base_sequence == expected_sequence
        assert batch.base_sequence == batch.base_offset  # one producer from offset 0
        expected_sequence += batch.record_count


def phase_values(phase: str) -> list[str]:
    return [f"m-{i}" for i in GROUP_PHASES[phase]]


def check_group_two_members(out: dict[str, Any]) -> None:
    """Two members split the partitions and each read only its own; offsets were committed."""
    assert out["balanced"], out["assignmentsTwoMembers"]
    first = out["assignmentsTwoMembers"]["a"]["assignment"]
    second = out["assignmentsTwoMembers"]["b"]["assignment"]
    assert first and second and sorted(first + second) == list(range(GROUP_PARTITIONS))
    records = out["phaseTwoMembers"]
    assert sorted(r["value"] for r in records) == sorted(phase_values("two members"))
    for record in records:
        owner = first if record["member"] == "a" else second
        assert record["partition"] in owner, record
    assert {r["member"] for r in records} == {"a", "b"}


def check_group_one_member(out: dict[str, Any]) -> None:
    """After b left, a owns every partition and reads the new records once, none again."""
    assert out["tookOver"], out["assignmentsOneMember"]
    assert out["assignmentsOneMember"]["a"]["assignment"] == list(
        range(GROUP_PARTITIONS)
    )
    records = out["phaseOneMember"]
    assert sorted(r["value"] for r in records) == sorted(phase_values("one member"))
    assert {r["member"] for r in records} == {"a"}


def check_group_resumed(
    resumed: dict[str, Any], committed_before: dict[str, int]
) -> None:
    """The restarted client starts at the committed offsets: the new records, each once."""
    assert resumed["committedAtStart"] == committed_before
    assert resumed["assignment"] == list(range(GROUP_PARTITIONS))
    records = resumed["resumed"]
    assert sorted(r["value"] for r in records) == sorted(phase_values("resumed"))
    for partition in range(GROUP_PARTITIONS):
        offsets = sorted(r["offset"] for r in records if r["partition"] == partition)
        assert offsets[0] == committed_before[str(partition)]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    watermarks = resumed["watermarks"]
    assert resumed["committedAtEnd"] == {p: w["high"] for p, w in watermarks.items()}


def check_offsets_by_timestamp(
    out: dict[str, Any], consumed: list[dict[str, Any]], after_last: int
) -> None:
    """Each probe finds the first record at or after its time; reading from it starts there.

    ``after_last`` is what the client reports past the last record: Kafka answers -1, which
    KafkaJS replaces with the end offset.
    """
    assert out["answers"] == {
        "beforeAll": 0,
        "first": 0,
        "justAfterFirst": 1,
        "between3and4": 4,
        "last": 9,
        "afterLast": after_last,
    }
    assert [
        (r["offset"], r["value"], r["timestamp"] - out["base"]) for r in consumed
    ] == [(i, f"t-{i}", i * 1000) for i in range(4, 10)]


def check_delete_records(out: dict[str, Any], consumed: list[dict[str, Any]]) -> None:
    """Partition 0 starts at 4 and partition 1 at its end; a reader sees only what is left."""
    assert out["before"]["ok"] == {
        "0": {"low": 0, "high": 10},
        "1": {"low": 0, "high": 10},
    }
    assert out["after"]["ok"] == {
        "0": {"low": 4, "high": 10},
        "1": {"low": 10, "high": 10},
    }
    # Partition 0 holds r-0, r-2, ... (even indexes): offset k is r-(2k).
    assert [(r["partition"], r["offset"], r["value"]) for r in consumed] == [
        (0, k, f"r-{2 * k}") for k in range(4, 10)
    ]


def check_configs_replaced(out: dict[str, Any]) -> None:
    """AlterConfigs sets, validate-only changes nothing, and a later call replaces the set.

    Kafka's (non-incremental) AlterConfigs sets a resource's whole config: what the request
    does not name reverts to the default.
    """
    initial = out["initial"]["ok"]
    assert (
        initial["retention.ms"]["value"] == "3600000"
        and not initial["retention.ms"]["isDefault"]
    )
    assert initial["max.message.bytes"]["isDefault"]
    after_set = out["afterSet"]["ok"]
    assert after_set["retention.ms"] == {
        "value": "7200000",
        "isDefault": False,
        "readOnly": False,
    }
    assert after_set["max.message.bytes"] == {
        "value": "200000",
        "isDefault": False,
        "readOnly": False,
    }
    assert after_set["cleanup.policy"]["value"] == "delete"
    assert out["afterValidateOnly"]["ok"] == after_set
    replaced = out["afterReplace"]["ok"]
    assert replaced["cleanup.policy"] == {
        "value": "compact",
        "isDefault": False,
        "readOnly": False,
    }
    assert replaced["max.message.bytes"] == initial["max.message.bytes"]
    assert (
        replaced["retention.ms"]["isDefault"]
        and replaced["retention.ms"]["value"] != "7200000"
    )
