"""How the kafka:// transport turns librdkafka's transaction errors into flowbus errors.

The worker's reaction depends on the class: :class:`ProducerFencedError` (another producer took
the transactional id: stop), :class:`GroupFencedError` (KIP-447, the group moved on: abort and
rejoin), any other :class:`TransactionError` (abort and retry). The mapping is checked on
librdkafka's own error objects, and fencing end to end against a real ``flowbus broker``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException

from flowbus.transports.base import TopicSpec
from flowbus.transports.errors import (
    GroupFencedError,
    ProducerFencedError,
    TransactionError,
)
from flowbus.transports.kafka import KafkaTransport, _transaction_error
from tests.support.broker_process import BrokerProcess


@pytest.mark.parametrize("code", [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH])
def test_fencing_codes_become_producer_fenced(code: int) -> None:
    error = _transaction_error(KafkaException(KafkaError(code, "fenced", fatal=True)))
    assert type(error) is ProducerFencedError
    assert "fenced" in str(error)


@pytest.mark.parametrize("code", [KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION,
                                  KafkaError.FENCED_INSTANCE_ID])
def test_abortable_group_codes_become_group_fenced(code: int) -> None:
    error = _transaction_error(KafkaException(KafkaError(code, "stale member", txn_requires_abort=True)))
    assert type(error) is GroupFencedError


@pytest.mark.parametrize("code", [KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION])
def test_a_fatal_group_error_is_not_treated_as_a_rejoin(code: int) -> None:
    error = _transaction_error(KafkaException(KafkaError(code, "fatal", fatal=True)))
    assert type(error) is TransactionError


@pytest.mark.parametrize("exc", [
    KafkaException(KafkaError(KafkaError._TIMED_OUT, "EndTxn timed out", retriable=True)),
    KafkaException(KafkaError(KafkaError.CONCURRENT_TRANSACTIONS)),
    KafkaException(KafkaError(KafkaError._STATE, "no transaction")),
    KafkaException(),
    KafkaException("not a KafkaError"),
])
def test_other_errors_become_plain_transaction_errors(exc: KafkaException) -> None:
    assert type(_transaction_error(exc)) is TransactionError


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("kafka-errors") / "data") as process:
        yield process


def test_a_producer_whose_id_is_taken_over_is_fenced(broker: BrokerProcess) -> None:
    """A second producer initialising the same transactional id bumps the epoch; the first one's
    next transactional call fails with ProducerFencedError, not a retriable TransactionError."""

    async def main() -> None:
        t = KafkaTransport(f"kafka://{broker.bootstrap}?transaction.timeout.ms=10000")
        topic = f"fence-{time.monotonic_ns()}"
        await t.create_topics([TopicSpec(topic, 1)])
        txn_id = f"tx-{time.monotonic_ns()}"
        old = t.producer(transactional_id=txn_id)
        await old.init_transactions()
        old.begin_transaction()
        old.send(topic, b"from the zombie", partition=0)
        new = t.producer(transactional_id=txn_id)
        await new.init_transactions()  # fences ``old`` and aborts its open transaction
        with pytest.raises(ProducerFencedError):
            await old.commit_transaction()
        new.begin_transaction()
        new.send(topic, b"from the successor", partition=0)
        await new.commit_transaction()
        await new.close()
        await old.close()  # a fenced producer still closes
        await t.close()

    asyncio.run(main())
