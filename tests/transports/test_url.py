"""transport_from_url dispatches on the scheme and fails clearly on anything else."""

from __future__ import annotations

import pytest

from flowbus.transports import transport_from_url
from flowbus.transports.errors import TransportError, UnknownTransportError
from flowbus.transports.kafka import KafkaTransport
from flowbus.transports.memory import MemoryTransport


def test_memory_and_kafka_schemes() -> None:
    assert isinstance(transport_from_url("memory://"), MemoryTransport)
    kafka = transport_from_url("kafka://127.0.0.1:9092,127.0.0.1:9093")
    assert isinstance(kafka, KafkaTransport)
    assert kafka.bootstrap == "127.0.0.1:9092,127.0.0.1:9093"


@pytest.mark.parametrize("url", ["nats://x", "127.0.0.1:9092"])
def test_unknown_scheme(url: str) -> None:
    with pytest.raises(UnknownTransportError):
        transport_from_url(url)


def test_kafka_settings_in_the_url() -> None:
    kafka = transport_from_url("kafka://127.0.0.1:9092?session.timeout.ms=6000&linger.ms=1")
    assert isinstance(kafka, KafkaTransport)
    assert kafka.bootstrap == "127.0.0.1:9092"
    assert kafka.extra == {"session.timeout.ms": "6000", "linger.ms": "1"}


def test_kafka_without_host() -> None:
    with pytest.raises(TransportError):
        transport_from_url("kafka://")
