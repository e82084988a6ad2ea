"""Large request frames are decoded, and large responses encoded, on the server's codec thread
(issue 10, item 4): at the element budget each takes 3-8 ms, which every other client waited for
while it ran on the event loop. Order is kept: a connection's requests are dispatched, and its
responses written, in the order they arrived, whichever thread decoded them.

In-process server on a real socket; the codec functions are wrapped to record which thread ran
them (no timing).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from flowbus.broker import server as server_module
from flowbus.broker.core import NewTopic
from flowbus.broker.server import ServerLimits
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response
from flowbus.records.builder import BatchBuilder
from flowbus.records.record import iter_records
from tests.broker.test_server import Harness, fetch_body, run_with_broker

pytestmark = pytest.mark.timeout(60)
PARTITIONS = 400
BIG = b"b" * 100


def batch(value: bytes, count: int = 1) -> bytes:
    builder = BatchBuilder()
    for _ in range(count):
        builder.append(None, value, timestamp_ms=1_700_000_000_000)
    return builder.build()


def wide_produce(topic: str, value: bytes) -> dict[str, Any]:
    """A batch of 3 records to each of PARTITIONS partitions: a frame over 64 KiB (~170 KB)."""
    return {"transactional_id": None, "acks": -1, "timeout_ms": 5000, "topic_data": [
        {"name": topic, "partition_data": [
            {"index": p, "records": batch(value, 3)} for p in range(PARTITIONS)]}]}


def record_threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, str]]]:
    """Wrap the server's decode and encode to record (api key, thread name) per call."""
    seen: dict[str, list[tuple[int, str]]] = {"decode": [], "encode": []}
    decode, encode = server_module.decode_request, server_module.encode_response

    def traced_decode(frame: bytes) -> Any:
        request = decode(frame)
        seen["decode"].append((request.header.api_key, threading.current_thread().name))
        return request

    def traced_encode(header: Any, body: Any) -> bytes:
        seen["encode"].append((header.api_key, threading.current_thread().name))
        return encode(header, body)

    monkeypatch.setattr(server_module, "decode_request", traced_decode)
    monkeypatch.setattr(server_module, "encode_response", traced_encode)
    return seen


def test_large_frames_decode_and_encode_off_the_event_loop_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = record_threads(monkeypatch)

    async def body(h: Harness) -> None:
        await h.core.create_topics([NewTopic("wide", PARTITIONS, 1, {})], validate_only=False)
        client = await h.connect()
        # Pipelined on one connection: a large produce, then a small produce to partition 0,
        # then a small ApiVersions. The small ones must not overtake the large one.
        first = client.send(ApiKey.PRODUCE, 8, wide_produce("wide", BIG))
        small = {"transactional_id": None, "acks": -1, "timeout_ms": 5000,
                 "topic_data": [{"name": "wide", "partition_data": [{"index": 0, "records": batch(b"small")}]}]}
        second = client.send(ApiKey.PRODUCE, 8, small)
        third = client.send(ApiKey.API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
        got = [decode_response(ApiKey.PRODUCE, 8, await client.read_frame()),
               decode_response(ApiKey.PRODUCE, 8, await client.read_frame()),
               decode_response(ApiKey.API_VERSIONS, 3, await client.read_frame())]
        assert [cid for cid, _ in got] == [first, second, third]
        wide = got[0][1]["responses"][0]["partition_responses"]
        assert len(wide) == PARTITIONS and {p["error_code"] for p in wide} == {0}
        assert got[1][1]["responses"][0]["partition_responses"][0]["base_offset"] == 3  # after the big one
        # The answer to a Fetch of every partition is large: encoded off the loop too.
        fetch = fetch_body("wide", 0)
        fetch["topics"][0]["partitions"] = [
            dict(fetch["topics"][0]["partitions"][0], partition=p) for p in range(PARTITIONS)]
        answer = await client.call(ApiKey.FETCH, 11, fetch)
        partitions = answer["responses"][0]["partitions"]
        assert len(partitions) == PARTITIONS
        values = [r.value for r in iter_records(bytes(partitions[0]["records"]))]
        assert values == [BIG, BIG, BIG, b"small"]

    run_with_broker(tmp_path, body)
    codec = "flowbus-codec"
    assert [(k, t.startswith(codec)) for k, t in seen["decode"][:3]] == [
        (ApiKey.PRODUCE, True), (ApiKey.PRODUCE, False), (ApiKey.API_VERSIONS, False)]
    # Handlers run concurrently, so encodes finish in any order (responses are still written in
    # request order, checked above): the large produce's and the fetch's answers went off the loop.
    encodes = sorted((k, t.startswith(codec)) for k, t in seen["encode"])
    assert encodes == [(ApiKey.PRODUCE, False), (ApiKey.PRODUCE, True), (ApiKey.FETCH, True),
                       (ApiKey.API_VERSIONS, False)]


def test_offload_off_keeps_everything_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = record_threads(monkeypatch)

    async def body(h: Harness) -> None:
        await h.core.create_topics([NewTopic("wide", PARTITIONS, 1, {})], validate_only=False)
        client = await h.connect()
        cid = client.send(ApiKey.PRODUCE, 8, wide_produce("wide", BIG))
        got, _ = decode_response(ApiKey.PRODUCE, 8, await client.read_frame())
        assert got == cid

    run_with_broker(tmp_path, body, limits=ServerLimits(codec_offload_frame_bytes=0))
    main = threading.main_thread().name
    assert seen["decode"] == [(ApiKey.PRODUCE, main)] and seen["encode"] == [(ApiKey.PRODUCE, main)]


def test_a_malformed_large_frame_closes_only_its_connection(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        bad = await h.connect()
        other = await h.connect()
        frame = bytearray(70_000)
        frame[0:4] = (len(frame) - 4).to_bytes(4, "big")
        frame[4:6] = int(ApiKey.METADATA).to_bytes(2, "big")
        frame[6:8] = (12).to_bytes(2, "big")
        frame[12:] = b"\xff" * (len(frame) - 12)  # a garbage client id length and body
        bad.writer.write(bytes(frame))
        assert await bad.closed()
        answer = await other.call(ApiKey.API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
        assert answer["error_code"] == 0

    run_with_broker(tmp_path, body)


def test_the_response_size_bound_counts_nested_arrays_together() -> None:
    """99 topics of 100 partitions: no single array reaches the bound, together they do."""
    many_topics = {"responses": [{"topic": f"t{i}", "partitions": [{"p": p} for p in range(100)]} for i in range(99)]}
    assert server_module._has_many_elements(many_topics)
    few = {"responses": [{"topic": "t", "partitions": [{"p": 0}]}], "throttle_time_ms": 0}
    assert not server_module._has_many_elements(few)
    assert server_module._has_many_elements({"topics": [{"name": f"t{i}"} for i in range(256)]})


def test_a_large_apiversions_frame_at_an_unknown_version_is_answered_and_the_connection_goes_on(
    tmp_path: Path,
) -> None:
    """Decoded on the codec thread, an ApiVersions of an unknown version still gets Kafka's
    fallback answer, and the requests pipelined behind it are answered after it, in order."""
    import struct

    async def body(h: Harness) -> None:
        client = await h.connect()
        client_id = b"big"
        header = struct.pack(">hhih", int(ApiKey.API_VERSIONS), 99, 41, len(client_id)) + client_id
        frame = header + b"\x00" * 70_000  # past codec_offload_frame_bytes
        client.writer.write(struct.pack(">i", len(frame)) + frame)
        second = client.send(ApiKey.API_VERSIONS, 3, {"client_software_name": "t", "client_software_version": "1"})
        got, fallback = decode_response(ApiKey.API_VERSIONS, 0, await client.read_frame())
        assert (got, fallback["error_code"]) == (41, 35)
        got, answer = decode_response(ApiKey.API_VERSIONS, 3, await client.read_frame())
        assert (got, answer["error_code"]) == (second, 0)

    run_with_broker(tmp_path, body)
