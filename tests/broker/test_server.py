"""Protocol-level tests of the socket server, in-process, with raw frames on real sockets."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import BrokerCore
from flowbus.broker.group_coordinator import GroupConfig
from flowbus.broker.server import BrokerServer, ServerLimits
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from flowbus.protocol.error_codes import ErrorCode
from flowbus.records.builder import BatchBuilder

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")


class Client:
    """A minimal Kafka client over one connection: send raw requests, read raw responses."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.correlation_id = 0

    def send(self, api_key: int, version: int, body: dict[str, Any]) -> int:
        self.correlation_id += 1
        self.writer.write(
            encode_request(api_key, version, self.correlation_id, "test", body)
        )
        return self.correlation_id

    async def read_frame(self, timeout_s: float = 5) -> bytes:
        size = struct.unpack(
            ">i", await asyncio.wait_for(self.reader.readexactly(4), timeout_s)
        )[0]
        return await asyncio.wait_for(self.reader.readexactly(size), timeout_s)

    async def call(
        self, api_key: int, version: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        cid = self.send(api_key, version, body)
        got, response = decode_response(api_key, version, await self.read_frame())
        assert got == cid
        return response

    async def closed(self, timeout_s: float = 5) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout_s)
        except (ConnectionResetError, BrokenPipeError):
            return True
        return data == b""


class Harness:
    def __init__(self, core: BrokerCore, server: BrokerServer) -> None:
        self.core = core
        self.server = server

    async def connect(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        return Client(reader, writer)


def run_with_broker(
    tmp_path: Path,
    body: Callable[[Harness], Awaitable[T]],
    limits: ServerLimits | None = None,
) -> T:
    async def main() -> T:
        config = BrokerConfig(
            data_dir=tmp_path / "data",
            groups=GroupConfig(group_initial_rebalance_delay_ms=0),
        )
        core = BrokerCore(config)
        await core.start()
        await core.wait_loaded()
        server = BrokerServer(core, host="127.0.0.1", port=0, limits=limits)
        await server.start()
        try:
            return await body(Harness(core, server))
        finally:
            await server.close()
            await core.close()

    return asyncio.run(main())


def produce_body(topic: str, values: list[bytes], acks: int = -1) -> dict[str, Any]:
    builder = BatchBuilder()
    for value in values:
        builder.append(None, value, timestamp_ms=1_700_000_000_000)
    return {
        "transactional_id": None,
        "acks": acks,
        "timeout_ms": 5000,
        "topic_data": [
            {
                "name": topic,
                "partition_data": [{"index": 0, "records": builder.build()}],
            }
        ],
    }


def fetch_body(
    topic: str, offset: int, max_wait_ms: int = 0, min_bytes: int = 1
) -> dict[str, Any]:
    return {
        "replica_id": -1,
        "max_wait_ms": max_wait_ms,
        "min_bytes": min_bytes,
        "max_bytes": 1 << 20,
        "isolation_level": 0,
        "topics": [
            {
                "topic": topic,
                "partitions": [
                    {
                        "partition": 0,
                        "fetch_offset": offset,
                        "partition_max_bytes": 1 << 20,
                    }
                ],
            }
        ],
    }


async def create(client: Client, topic: str) -> None:
    response = await client.call(
        ApiKey.CREATE_TOPICS,
        4,
        {
            "topics": [
                {
                    "name": topic,
                    "num_partitions": 1,
                    "replication_factor": 1,
                    "assignments": [],
                    "configs": [],
                }
            ],
            "timeout_ms": 1000,
        },
    )
    assert response["topics"][0]["error_code"] == 0


def test_api_versions_and_unknown_version_fallback(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        client = await h.connect()
        response = await client.call(
            ApiKey.API_VERSIONS,
            3,
            {"client_software_name": "t", "client_software_version": "1"},
        )
        ranges = {
            k["api_key"]: (k["min_version"], k["max_version"])
            for k in response["api_keys"]
        }
        assert ranges[ApiKey.PRODUCE] == (3, 9) and ranges[ApiKey.FETCH] == (4, 12)
        # ApiVersions v99: a raw header, since our own codec refuses to encode it.
        client.writer.write(
            struct.pack(">ihhi", 10, ApiKey.API_VERSIONS, 99, 42) + struct.pack(">h", 0)
        )
        got, fallback = decode_response(
            ApiKey.API_VERSIONS, 0, await client.read_frame()
        )
        assert got == 42 and fallback["error_code"] == ErrorCode.UNSUPPORTED_VERSION
        assert fallback["api_keys"][0]["api_key"] == ApiKey.API_VERSIONS
        # The connection is still usable.
        again = await client.call(ApiKey.API_VERSIONS, 0, {})
        assert again["error_code"] == 0

    run_with_broker(tmp_path, body)


def test_malformed_frame_closes_only_that_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness) -> None:
        good = await h.connect()
        bad = await h.connect()
        with caplog.at_level(logging.WARNING, logger="flowbus.broker.server"):
            # A Metadata v1 frame whose topic array claims a million entries that are not there.
            bad.writer.write(
                struct.pack(">ihhih", 14, ApiKey.METADATA, 1, 7, -1)
                + struct.pack(">i", 1_000_000)
            )
            assert await bad.closed()
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        response = await good.call(ApiKey.METADATA, 1, {"topics": None})
        assert response["brokers"][0]["port"] == h.server.port or response["brokers"]

    run_with_broker(tmp_path, body)


def test_oversized_frame_closes_the_connection(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        other = await h.connect()
        big = await h.connect()
        big.writer.write(struct.pack(">i", 10_000_000) + b"\x00" * 100)
        assert await big.closed()
        assert (await other.call(ApiKey.API_VERSIONS, 0, {}))["error_code"] == 0

    run_with_broker(tmp_path, body, ServerLimits(max_frame_bytes=1 << 20))


def test_acks_zero_gets_no_response_and_order_is_kept(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        client = await h.connect()
        await create(client, "a0")
        client.send(ApiKey.PRODUCE, 7, produce_body("a0", [b"one"], acks=0))
        cid = client.send(ApiKey.API_VERSIONS, 0, {})
        got, _ = decode_response(ApiKey.API_VERSIONS, 0, await client.read_frame())
        assert got == cid  # the produce was not answered
        fetched = await client.call(ApiKey.FETCH, 11, fetch_body("a0", 0))
        assert fetched["responses"][0]["partitions"][0]["high_watermark"] == 1

    run_with_broker(tmp_path, body)


async def until_parked(core: BrokerCore, topic: str, partition: int) -> None:
    """Until a fetch long poll waits on ``topic``-``partition`` (so an append now wakes it)."""
    deadline = asyncio.get_running_loop().time() + 10
    while (topic, partition) not in core._waiters._by_partition:
        assert asyncio.get_running_loop().time() < deadline, "the fetch never started waiting"
        await asyncio.sleep(0.005)


def test_pipelined_requests_answered_in_order_behind_a_long_poll(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        client = await h.connect()
        await create(client, "lp")
        producer = await h.connect()
        # A long poll first, then quick requests behind it on the same connection.
        fetch_id = client.send(ApiKey.FETCH, 11, fetch_body("lp", 0, max_wait_ms=5000))
        quick_ids = [client.send(ApiKey.API_VERSIONS, 0, {}) for _ in range(5)]
        await until_parked(h.core, "lp", 0)
        produced = await producer.call(ApiKey.PRODUCE, 8, produce_body("lp", [b"wake"]))
        assert produced["responses"][0]["partition_responses"][0]["error_code"] == 0
        got, fetched = decode_response(ApiKey.FETCH, 11, await client.read_frame())
        assert got == fetch_id
        assert fetched["responses"][0]["partitions"][0]["records"]
        for expected in quick_ids:
            got, _ = decode_response(ApiKey.API_VERSIONS, 0, await client.read_frame())
            assert got == expected

    run_with_broker(tmp_path, body)


def test_long_poll_is_woken_by_an_append_not_by_its_timeout(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        client = await h.connect()
        await create(client, "wake")
        loop = asyncio.get_running_loop()
        start = loop.time()
        poll = asyncio.ensure_future(
            client.call(ApiKey.FETCH, 11, fetch_body("wake", 0, max_wait_ms=10_000))
        )
        await until_parked(h.core, "wake", 0)
        await h.core.produce(
            "wake",
            0,
            produce_body("wake", [b"x"])["topic_data"][0]["partition_data"][0][
                "records"
            ],
        )
        response = await poll
        assert loop.time() - start < 2
        assert response["responses"][0]["partitions"][0]["records"]

    run_with_broker(tmp_path, body)


def test_idle_connections_are_reaped(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        client = await h.connect()
        assert (await client.call(ApiKey.API_VERSIONS, 0, {}))["error_code"] == 0
        assert await client.closed(timeout_s=5)

    run_with_broker(tmp_path, body, ServerLimits(connections_max_idle_ms=200))


def test_corrupt_batch_is_rejected(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        client = await h.connect()
        await create(client, "crc")
        request = produce_body("crc", [b"payload"])
        raw = bytearray(request["topic_data"][0]["partition_data"][0]["records"])
        raw[-1] ^= 0xFF
        request["topic_data"][0]["partition_data"][0]["records"] = bytes(raw)
        produced = await client.call(ApiKey.PRODUCE, 8, request)
        assert (
            produced["responses"][0]["partition_responses"][0]["error_code"]
            == ErrorCode.CORRUPT_MESSAGE
        )

    run_with_broker(tmp_path, body)


def test_failed_acks_zero_produce_closes_the_connection(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        client = await h.connect()
        before = client.send(ApiKey.API_VERSIONS, 0, {})
        client.send(ApiKey.PRODUCE, 7, produce_body("no-such-topic", [b"x"], acks=0))
        got, _ = decode_response(ApiKey.API_VERSIONS, 0, await client.read_frame())
        assert got == before  # answered before the close
        assert await client.closed()

    run_with_broker(tmp_path, body)


def test_garbage_frames_never_hurt_other_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import random

    rng = random.Random(1234)

    async def body(h: Harness) -> None:
        good = await h.connect()
        for i in range(60):
            bad = await h.connect()
            api_key = rng.choice([0, 1, 2, 3, 8, 9, 10, 11, 12, 14, 18, 19, 32, 99])
            version = rng.randrange(0, 14)
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
            frame = (
                struct.pack(">hhi", api_key, version, i)
                + struct.pack(">h", -1)
                + payload
            )
            bad.writer.write(struct.pack(">i", len(frame)) + frame)
            try:
                await asyncio.wait_for(bad.reader.read(65536), 2)
            except (TimeoutError, ConnectionResetError):
                pass
            bad.writer.close()
        assert (await good.call(ApiKey.API_VERSIONS, 0, {}))["error_code"] == 0
        response = await good.call(ApiKey.METADATA, 1, {"topics": None})
        assert response["brokers"]

    with caplog.at_level(logging.WARNING, logger="flowbus"):
        run_with_broker(tmp_path, body)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []  # bad input is the peer's fault: never an internal error


def test_odd_but_well_formed_requests_get_error_codes_not_internal_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    requests: list[tuple[int, int, dict[str, Any]]] = [
        (
            ApiKey.FETCH,
            11,
            {**fetch_body("nope", -5), "max_bytes": -1, "min_bytes": -1},
        ),
        (ApiKey.FETCH, 11, fetch_body("", 0)),
        (
            ApiKey.LIST_OFFSETS,
            5,
            {
                "replica_id": -1,
                "isolation_level": 7,
                "topics": [
                    {
                        "name": "x",
                        "partitions": [{"partition_index": -1, "timestamp": -99}],
                    }
                ],
            },
        ),
        (
            ApiKey.METADATA,
            9,
            {
                "topics": [{"name": "bad name!"}, {"name": ""}],
                "allow_auto_topic_creation": True,
            },
        ),
        (
            ApiKey.JOIN_GROUP,
            7,
            {
                "group_id": "",
                "session_timeout_ms": 10000,
                "rebalance_timeout_ms": -1,
                "member_id": "",
                "protocol_type": "consumer",
                "protocols": [],
            },
        ),
        (
            ApiKey.JOIN_GROUP,
            5,
            {
                "group_id": "g",
                "session_timeout_ms": 10000,
                "rebalance_timeout_ms": -1,
                "member_id": "",
                "protocol_type": "consumer",
                "protocols": [],
            },
        ),
        (
            ApiKey.SYNC_GROUP,
            5,
            {
                "group_id": "none",
                "generation_id": 5,
                "member_id": "m",
                "assignments": [],
            },
        ),
        (ApiKey.HEARTBEAT, 4, {"group_id": "", "generation_id": -1, "member_id": ""}),
        (ApiKey.LEAVE_GROUP, 4, {"group_id": "none", "members": [{"member_id": "x"}]}),
        (ApiKey.LEAVE_GROUP, 1, {"group_id": "none", "member_id": "x"}),
        (
            ApiKey.OFFSET_COMMIT,
            8,
            {
                "group_id": "",
                "generation_id_or_member_epoch": -1,
                "member_id": "",
                "topics": [
                    {
                        "name": "t",
                        "partitions": [
                            {
                                "partition_index": 0,
                                "committed_offset": -7,
                                "committed_metadata": None,
                            }
                        ],
                    }
                ],
            },
        ),
        (ApiKey.OFFSET_FETCH, 7, {"group_id": "none", "topics": None}),
        (
            ApiKey.OFFSET_FETCH,
            1,
            {
                "group_id": "none",
                "topics": [{"name": "t", "partition_indexes": [0, -1]}],
            },
        ),
        (ApiKey.FIND_COORDINATOR, 3, {"key": "g", "key_type": 9}),
        (ApiKey.DESCRIBE_GROUPS, 5, {"groups": ["", "none"]}),
        (ApiKey.LIST_GROUPS, 4, {"states_filter": ["nonsense"]}),
        (
            ApiKey.CREATE_TOPICS,
            5,
            {
                "topics": [
                    {
                        "name": "ct",
                        "num_partitions": -5,
                        "replication_factor": 0,
                        "assignments": [],
                        "configs": [{"name": "retention.ms", "value": "abc"}],
                    }
                ],
                "timeout_ms": 1,
                "validate_only": False,
            },
        ),
        (ApiKey.DELETE_TOPICS, 4, {"topic_names": ["", "none"], "timeout_ms": 1}),
        (
            ApiKey.DESCRIBE_CONFIGS,
            4,
            {
                "resources": [
                    {
                        "resource_type": 99,
                        "resource_name": "x",
                        "configuration_keys": None,
                    },
                    {
                        "resource_type": 2,
                        "resource_name": "none",
                        "configuration_keys": [],
                    },
                ]
            },
        ),
        (
            ApiKey.OFFSET_FOR_LEADER_EPOCH,
            3,
            {
                "replica_id": -1,
                "topics": [
                    {
                        "topic": "none",
                        "partitions": [{"partition": 0, "leader_epoch": 5}],
                    }
                ],
            },
        ),
        (
            ApiKey.INIT_PRODUCER_ID,
            4,
            {"transactional_id": "tx", "transaction_timeout_ms": 1000},
        ),
        (
            ApiKey.END_TXN,
            3,
            {
                "transactional_id": "tx",
                "producer_id": 1,
                "producer_epoch": 0,
                "committed": True,
            },
        ),
        (ApiKey.SASL_HANDSHAKE, 1, {"mechanism": "GSSAPI"}),
    ]

    async def body(h: Harness) -> None:
        client = await h.connect()
        for api_key, version, request in requests:
            await client.call(api_key, version, request)

    with caplog.at_level(logging.WARNING, logger="flowbus"):
        run_with_broker(tmp_path, body)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
