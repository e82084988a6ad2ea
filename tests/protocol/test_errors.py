"""Error codes and KafkaError classes: numbers checked against kafka-python's independent table."""

from __future__ import annotations

import kafka.errors as kafka_errors
import pytest

from flowbus.errors import FlowbusError
from flowbus.protocol import ErrorCode, errors
from flowbus.protocol.error_codes import is_retriable
from flowbus.protocol.errors import (
    KafkaError,
    ProtocolError,
    RemoteProtocolError,
    kafka_error_for_code,
)

REQUIRED = {
    "NONE": 0, "OFFSET_OUT_OF_RANGE": 1, "CORRUPT_MESSAGE": 2, "UNKNOWN_TOPIC_OR_PARTITION": 3,
    "NOT_LEADER_OR_FOLLOWER": 6, "COORDINATOR_LOAD_IN_PROGRESS": 14, "COORDINATOR_NOT_AVAILABLE": 15,
    "NOT_COORDINATOR": 16, "ILLEGAL_GENERATION": 22, "INCONSISTENT_GROUP_PROTOCOL": 23, "UNKNOWN_MEMBER_ID": 25,
    "INVALID_SESSION_TIMEOUT": 26, "REBALANCE_IN_PROGRESS": 27, "UNSUPPORTED_VERSION": 35,
    "TOPIC_ALREADY_EXISTS": 36, "INVALID_PARTITIONS": 37, "INVALID_CONFIG": 40,
    "OUT_OF_ORDER_SEQUENCE_NUMBER": 45, "DUPLICATE_SEQUENCE_NUMBER": 46, "INVALID_PRODUCER_EPOCH": 47,
    "INVALID_TXN_STATE": 48, "INVALID_PRODUCER_ID_MAPPING": 49, "INVALID_TRANSACTION_TIMEOUT": 50,
    "CONCURRENT_TRANSACTIONS": 51, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED": 53, "UNKNOWN_PRODUCER_ID": 59,
    "GROUP_ID_NOT_FOUND": 69, "MEMBER_ID_REQUIRED": 79, "PRODUCER_FENCED": 90,
}


@pytest.mark.parametrize("name,code", REQUIRED.items())
def test_required_codes(name: str, code: int) -> None:
    assert ErrorCode[name] == code


def test_numbers_agree_with_kafka_python() -> None:
    theirs = {cls.errno for cls in vars(kafka_errors).values()
              if isinstance(cls, type) and isinstance(getattr(cls, "errno", None), int)}
    ours = {int(code) for code in ErrorCode}
    assert theirs <= ours


def test_retriable_flags() -> None:
    for code in ("NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "UNKNOWN_TOPIC_OR_PARTITION",
                 "CONCURRENT_TRANSACTIONS", "NOT_LEADER_OR_FOLLOWER", "REQUEST_TIMED_OUT"):
        assert is_retriable(ErrorCode[code]) and kafka_error_for_code(ErrorCode[code]).retriable
    for code in ("ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS", "INVALID_PRODUCER_EPOCH",
                 "PRODUCER_FENCED", "OUT_OF_ORDER_SEQUENCE_NUMBER", "OFFSET_OUT_OF_RANGE"):
        assert not is_retriable(ErrorCode[code])


def test_classes_by_code_and_name() -> None:
    cls = kafka_error_for_code(16)
    assert cls is errors.NotCoordinatorError  # type: ignore[attr-defined]
    error = cls("moved")
    assert isinstance(error, KafkaError) and isinstance(error, FlowbusError)
    assert error.errno == 16 and error.code is ErrorCode.NOT_COORDINATOR and str(error) == "moved"
    assert kafka_error_for_code(17).__name__ == "InvalidTopicError"
    assert kafka_error_for_code(12345).__name__ == "UnknownServerError"
    assert kafka_error_for_code(-1).errno == -1
    assert str(kafka_error_for_code(3)())  # a description by default
    with pytest.raises(ValueError):
        kafka_error_for_code(0)


def test_unsupported_version_names_do_not_collide() -> None:
    assert issubclass(errors.UnsupportedVersionError, ProtocolError)
    assert not issubclass(errors.UnsupportedVersionError, RemoteProtocolError)
    assert kafka_error_for_code(35).__name__ == "UnsupportedVersionKafkaError"


def test_every_code_has_a_distinct_class() -> None:
    classes = {kafka_error_for_code(code) for code in ErrorCode if code != ErrorCode.NONE}
    assert len(classes) == len(ErrorCode) - 1
