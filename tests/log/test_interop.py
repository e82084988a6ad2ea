"""The log against a real client's codec: batches built by kafka-python go in, and what the log
returns is read back by kafka-python with its own CRC check, offsets as the broker assigned."""

from __future__ import annotations

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

from tests.log.conftest import START_MS


def _client_batch(codec: int, count: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=False, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20,
    )
    for i in range(count):
        builder.append(i, timestamp=START_MS + i, key=b"k%d" % i, value=b"value-%d" % i, headers=[("h", b"1")])
    return bytes(builder.build())


@pytest.mark.parametrize("codec", [0, 1, 3])  # none, gzip, lz4
def test_kafka_python_batches_round_trip(open_log, codec: int) -> None:
    plog = open_log(message_timestamp_type="LogAppendTime")
    plog.append(_client_batch(codec, 3))
    plog.append(_client_batch(codec, 2), leader_epoch=4)
    records = MemoryRecords(plog.read(0, 1 << 20))
    seen = []
    while records.has_next():
        batch = records.next_batch()
        assert isinstance(batch, DefaultRecordBatch)
        assert batch.validate_crc()
        assert batch.timestamp_type == 1  # LogAppendTime, with a CRC kafka-python accepts
        for record in batch:
            seen.append((record.offset, record.key, record.value, record.timestamp))
    assert [(o, k, v) for o, k, v, _ in seen] == [
        (0, b"k0", b"value-0"), (1, b"k1", b"value-1"), (2, b"k2", b"value-2"), (3, b"k0", b"value-0"), (4, b"k1", b"value-1"),
    ]
    assert {t for *_, t in seen} == {START_MS}  # the ManualClock's time, stamped on append
