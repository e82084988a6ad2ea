"""No single request within the element budget holds the broker's event loop for long (issue 10,
item 4): while one client sends big-but-allowed requests (10,000 partitions; Metadata for 2,000
topics), another client's small requests keep being answered, and the big ones are answered right.

Against a real ``flowbus broker`` process; the request builders are those of
``benchmarks/loop_hold_bench.py``. Every loop is bounded (a count) and every socket has a timeout.

Two checks per kind, both loose enough for a loaded 2-core CI machine:

* the other client completes round trips *while the broker works on each big request* (from its
  last byte sent to the first byte of its answer), one per :data:`BROKER_MS_PER_ROUND_TRIP` at
  least; a request that held the loop from start to end would let through none;
* its slowest round trip stays under :data:`ROUND_TRIP_MS_MAX` (before the fix an OffsetCommit of
  10,000 partitions held the loop for seconds with many topics; Produce ~180 ms, Fetch ~55 ms).
"""

from __future__ import annotations

import socket
import statistics
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import loop_hold_bench as bench
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

#: Big requests per kind (each 30-200 ms of broker time).
REPEATS = 5
#: The other client's slowest round trip while big requests run: a bound against a request held
#: for seconds (an OffsetCommit took 9 s before), loose because a garbage collection or the
#: broker's periodic maintenance adds tens of ms at times on a loaded machine (105 and 112 ms seen
#: in a full CI-like run with 100 as the bound). The round trips completed *during* each big
#: request are the check that tells sliced from held.
ROUND_TRIP_MS_MAX = 300.0
#: The other client must complete one round trip per this much of a big request's broker time
#: (median over the repeats, rounded down). Sliced, the handler yields every ms and each of the
#: other client's round trips needs about three event-loop turns; decoding and encoding a request
#: at the budget still take one turn each (up to ~8 ms, Fetch). Held from start to end (before
#: issue 10, item 4), a request let no round trip through.
BROKER_MS_PER_ROUND_TRIP = 15.0
#: Metadata names 2,000 topics (its budget); this many exist, the rest are unknown.
METADATA_EXISTING_TOPICS = 200


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("loop-hold") / "data"
    with BrokerProcess(data_dir, extra_args=DEFAULT_EXTRA_ARGS) as process:
        with bench.connect(process.host, process.port) as sock:
            topics = [(bench.TOPIC, bench.PARTITIONS)]
            topics += [(f"{bench.METADATA_TOPIC_PREFIX}{i:04d}", 1) for i in range(METADATA_EXISTING_TOPICS)]
            bench.create_topics(sock, topics)
        yield process


def check_metadata(response: dict[str, Any]) -> None:
    """The existing topics answered with their partition, the others UNKNOWN_TOPIC_OR_PARTITION."""
    topics = response["topics"]
    assert len(topics) == bench.METADATA_TOPICS
    existing = {f"{bench.METADATA_TOPIC_PREFIX}{i:04d}" for i in range(METADATA_EXISTING_TOPICS)}
    for topic in topics:
        if topic["name"] in existing:
            assert (topic["error_code"], len(topic["partitions"])) == (0, 1), topic
        else:
            assert topic["error_code"] == 3, topic


KINDS = {
    "fetch": bench.KINDS["fetch"],
    "list_offsets": bench.KINDS["list_offsets"],
    "offset_commit": bench.KINDS["offset_commit"],
    "produce": bench.KINDS["produce"],
    "metadata": (ApiKey.METADATA, bench.metadata_body, check_metadata),
}


def timed_round_trip(sock: socket.socket, api_key: ApiKey, correlation_id: int,
                     body: dict[str, Any]) -> tuple[tuple[float, float], dict[str, Any]]:
    """One request; returns ``((sent, answered), response)``: from the last byte sent to the first
    byte of the answer, the broker's time (the client's own encoding and decoding left out)."""
    version = bench.VERSIONS[api_key]
    frame = encode_request(int(api_key), version, correlation_id, "loop-hold", body)
    sock.sendall(frame)
    sent = time.perf_counter()
    (size,) = struct.unpack(">i", bench.recv_exactly(sock, 4))
    answered = time.perf_counter()
    got, response = decode_response(int(api_key), version, bench.recv_exactly(sock, size))
    assert got == correlation_id
    return (sent, answered), response


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(KINDS))
def test_other_clients_are_served_while_a_big_request_runs(broker: BrokerProcess, kind: str) -> None:
    api_key, build, check = KINDS[kind]
    body = build()
    windows: list[tuple[float, float]] = []
    probe = bench.Probe(broker.host, broker.port).start()
    try:
        time.sleep(0.1)  # the other client is going before the first big request
        with bench.connect(broker.host, broker.port) as sock:
            for correlation_id in range(1, REPEATS + 1):
                window, response = timed_round_trip(sock, api_key, correlation_id, body)
                check(response)
                windows.append(window)
    finally:
        probe.stop()
    samples = list(probe.samples)
    during = [
        sum(1 for s, seconds in samples if start <= s and s + seconds <= end)
        for start, end in windows
    ]
    round_trips_ms = [seconds * 1000 for s, seconds in samples if windows[0][0] <= s <= windows[-1][1]]
    big_ms = [(end - start) * 1000 for start, end in windows]
    figures = (f"{kind}: big request {statistics.median(big_ms):.1f} ms of broker time (median), other client's round trips "
               f"completed during each {during}, slowest {max(round_trips_ms):.1f} ms")
    print(figures)  # shown with -s: the figures docs/broker.md quotes
    assert statistics.median(during) >= statistics.median(big_ms) // BROKER_MS_PER_ROUND_TRIP, figures
    assert max(round_trips_ms) < ROUND_TRIP_MS_MAX, figures


def send(sock: socket.socket, api_key: ApiKey, version: int, correlation_id: int, body: dict[str, Any]) -> None:
    sock.sendall(encode_request(int(api_key), version, correlation_id, "loop-hold", body))


def receive(sock: socket.socket, api_key: ApiKey, version: int, correlation_id: int) -> dict[str, Any]:
    (size,) = struct.unpack(">i", bench.recv_exactly(sock, 4))
    got, response = decode_response(int(api_key), version, bench.recv_exactly(sock, size))
    assert got == correlation_id
    return response


@pytest.mark.timeout(60)
def test_a_produce_behind_a_sliced_one_is_appended_after_it(broker: BrokerProcess) -> None:
    """Pipelined on one connection: the big produce yields between partitions, yet the small one
    behind it (to a partition the big one names) lands after every batch of the big one."""
    version = bench.VERSIONS[ApiKey.PRODUCE]
    small = {"transactional_id": None, "acks": 1, "timeout_ms": 30_000,
             "topic_data": [{"name": bench.TOPIC, "partition_data": [{"index": 0, "records": bench.small_batch()}]}]}
    with bench.connect(broker.host, broker.port) as sock:
        send(sock, ApiKey.PRODUCE, version, 1, bench.produce_body())
        send(sock, ApiKey.PRODUCE, version, 2, small)
        big = receive(sock, ApiKey.PRODUCE, version, 1)
        after = receive(sock, ApiKey.PRODUCE, version, 2)
    big_offsets = [p["base_offset"] for t in big["responses"] for p in t["partition_responses"] if p["index"] == 0]
    assert len(big_offsets) == bench.TOPIC_ENTRIES
    assert big_offsets == sorted(big_offsets)  # the request's own batches in request order
    (small_answer,) = after["responses"][0]["partition_responses"]
    assert small_answer["error_code"] == 0
    assert small_answer["base_offset"] > max(big_offsets)


@pytest.mark.timeout(60)
def test_a_commit_behind_a_sliced_one_is_applied_after_it(broker: BrokerProcess) -> None:
    """Pipelined: a commit of 9,900 partitions (committed in slices) then a commit of one of them;
    the group's committed offset is the later one."""
    commit_version = bench.VERSIONS[ApiKey.OFFSET_COMMIT]
    group = "loop-hold-order"
    big = dict(bench.offset_commit_body(), group_id=group)
    small = {"group_id": group, "generation_id_or_member_epoch": -1, "member_id": "",
             "topics": [{"name": bench.TOPIC, "partitions": [
                 {"partition_index": 5, "committed_offset": 42, "committed_metadata": ""}]}]}
    with bench.connect(broker.host, broker.port) as sock:
        send(sock, ApiKey.OFFSET_COMMIT, commit_version, 1, big)
        send(sock, ApiKey.OFFSET_COMMIT, commit_version, 2, small)
        bench.check_entries(receive(sock, ApiKey.OFFSET_COMMIT, commit_version, 1), "topics", "partitions")
        assert receive(sock, ApiKey.OFFSET_COMMIT, commit_version, 2)["topics"][0]["partitions"][0]["error_code"] == 0
        send(sock, ApiKey.OFFSET_FETCH, 7, 3, {"group_id": group, "require_stable": False,
                                               "topics": [{"name": bench.TOPIC, "partition_indexes": [5, 6]}]})
        fetched = receive(sock, ApiKey.OFFSET_FETCH, 7, 3)
    committed = {p["partition_index"]: p["committed_offset"] for p in fetched["topics"][0]["partitions"]}
    assert committed == {5: 42, 6: 1}
