"""Requests built the way kafka-python's client builds them decode with our codec, and the broker's
typical answers decode with kafka-python's response classes."""

from __future__ import annotations

import uuid

from kafka.protocol import producer
from kafka.protocol.consumer import fetch, group
from kafka.protocol.metadata import api_versions, metadata

from flowbus.protocol.codec import (
    RequestHeader,
    api_versions_body,
    decode_request,
    encode_response,
)


def _wire(message: object, correlation_id: int, client_id: str | None = "kafka-python") -> bytes:
    message.with_header(correlation_id=correlation_id, client_id=client_id)  # type: ignore[attr-defined]
    return bytes(message.encode(header=True, framed=True))  # type: ignore[attr-defined]


def test_api_versions_v4_request() -> None:
    request = decode_request(_wire(api_versions.ApiVersionsRequest(
        version=4, client_software_name="kafka-python", client_software_version="3.0.12"), 1)[4:])
    assert request.header == RequestHeader(18, 4, 1, "kafka-python")
    assert request.body == {"client_software_name": "kafka-python", "client_software_version": "3.0.12"}


def test_produce_v9_request_keeps_records_zero_copy() -> None:
    topic = producer.ProduceRequest.TopicProduceData
    frame = _wire(producer.ProduceRequest(version=9, transactional_id="tx", acks=-1, timeout_ms=1500, topic_data=[
        topic(name="orders", partition_data=[topic.PartitionProduceData(index=2, records=b"batch-bytes")])]), 7)
    request = decode_request(frame[4:])
    partition = request.body["topic_data"][0]["partition_data"][0]
    assert request.body["transactional_id"] == "tx" and partition["index"] == 2
    assert isinstance(partition["records"], memoryview) and partition["records"] == b"batch-bytes"


def test_metadata_v12_request_with_null_topics_and_null_client_id() -> None:
    request = decode_request(_wire(metadata.MetadataRequest(version=12, topics=None), 3, None)[4:])
    assert request.header.client_id is None
    assert request.body["topics"] is None and request.body["allow_auto_topic_creation"] is True


def test_join_group_v7_request() -> None:
    protocol = group.JoinGroupRequest.JoinGroupRequestProtocol
    request = decode_request(_wire(group.JoinGroupRequest(
        version=7, group_id="g", session_timeout_ms=10_000, rebalance_timeout_ms=30_000, member_id="",
        group_instance_id=None, protocol_type="consumer",
        protocols=[protocol(name="range", metadata=b"\x00\x01meta")]), 11)[4:])
    assert request.body["protocols"] == [{"name": "range", "metadata": b"\x00\x01meta"}]
    assert request.body["rebalance_timeout_ms"] == 30_000 and request.body["group_instance_id"] is None


def test_broker_answers_decode_with_kafka_python() -> None:
    frame = encode_response(RequestHeader(18, 4, 5, "c"), api_versions_body())
    answer = api_versions.ApiVersionsResponse.decode(frame, version=4, header=True, framed=True)
    assert answer.header.correlation_id == 5
    assert {(k.api_key, k.min_version, k.max_version) for k in answer.api_keys} >= {(0, 3, 9), (1, 4, 12), (18, 0, 4)}

    frame = encode_response(RequestHeader(3, 12, 6, "c"), {
        "brokers": [{"node_id": 1, "host": "127.0.0.1", "port": 9092}], "cluster_id": "flowbus", "controller_id": 1,
        "topics": [{"name": "orders", "topic_id": uuid.UUID(int=0), "partitions": [
            {"partition_index": 0, "leader_id": 1, "replica_nodes": [1], "isr_nodes": [1]}]}]})
    answer = metadata.MetadataResponse.decode(frame, version=12, header=True, framed=True)
    assert answer.brokers[0].host == "127.0.0.1" and answer.topics[0].partitions[0].leader_id == 1
    assert answer.topics[0].partitions[0].leader_epoch == -1  # default filled in by our encoder

    frame = encode_response(RequestHeader(1, 12, 8, "c"), {"responses": [{"topic": "orders", "partitions": [
        {"partition_index": 0, "high_watermark": 42, "last_stable_offset": 42, "aborted_transactions": None,
         "records": b"\x00" * 70}]}]})
    answer = fetch.FetchResponse.decode(frame, version=12, header=True, framed=True)
    partition = answer.responses[0].partitions[0]
    assert (partition.high_watermark, partition.aborted_transactions, bytes(partition.records)) == (42, None, b"\x00" * 70)
